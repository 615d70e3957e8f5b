//! `kind = "twilio"`: Twilio's `X-Twilio-Signature`, the base64 HMAC of
//! the full URL Twilio called followed by the form's parameters, as the
//! `twilio` library's `RequestValidator` computes it (it signs the tests):
//!
//! * the URL is `public_url` (the origin Twilio is configured with, and any
//!   path prefix a proxy strips) followed by the request's own path and
//!   query; like the library, the URL is tried as it is and with its default
//!   port added or removed (Twilio's signing is not consistent about ports);
//! * a form body (SMS, voice, status callbacks): every parameter name
//!   sorted, each followed by its values sorted (a repeated identical pair
//!   counts once, as the library's `sorted(set(…))`), appended to the URL;
//! * a JSON body: the URL carries `bodySHA256=<hex SHA-256 of the body>`,
//!   which must match, and the signature covers the URL alone;
//! * the algorithm is HMAC-SHA1 keyed with the account's Auth Token, or
//!   HMAC-SHA256 with a shared key when `X-Twilio-Webhooks-Signature-Settings`
//!   says `algorithm=HMAC_SHA256` (list the Auth Token and the shared key in
//!   `secrets` while either may sign).
//!
//! Twilio signs no timestamp: a captured request replays until the secret
//! changes; its dedupe id makes a replay one row, not two.
//!
//! Stored: a form as the JSON object of its fields (the raw form as
//! `raw_body`). The id is `I-Twilio-Idempotency-Token` when Twilio sends it
//! (the same on every retry; not signed), else the resource's SID and its
//! status (`MessageSid:delivered`: a message's status callbacks share the
//! SID), else the body's SHA-256. The type is the status
//! (`MessageStatus`, `CallStatus`, `SmsStatus`) or `EventType`.
//!
//! ```toml
//! [[source]]
//! route = "twilio"
//! kind = "twilio"
//! secrets = ["<auth token>"]
//! public_url = "https://hooks.example.com"
//! ```

use super::mac::{Algorithm, Encoding, Keys};
use super::spec::Reading;
use super::util::{
    body_digest_id, event_id, event_type, fields_as_json, form_fields, header_text, is_form, required,
};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const SIGNATURE: &str = "X-Twilio-Signature";
const SETTINGS: &str = "X-Twilio-Webhooks-Signature-Settings";
const IDEMPOTENCY: &str = "I-Twilio-Idempotency-Token";
const SIDS: [&str; 6] = ["MessageSid", "CallSid", "SmsSid", "RecordingSid", "TranscriptionSid", "Sid"];
const STATUSES: [&str; 5] = ["MessageStatus", "CallStatus", "SmsStatus", "RecordingStatus", "EventType"];

/// The Twilio source.
#[derive(Debug)]
pub struct Twilio {
    sha1: Keys,
    sha256: Keys,
    /// `public_url` as given and with its default port added or removed:
    /// the port only ever lies in the origin, so both are made once.
    origins: Vec<String>,
}

impl Twilio {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        let secrets: Vec<Vec<u8>> = r.secrets()?.into_iter().map(String::into_bytes).collect();
        Ok(Self {
            sha1: Keys::new(Algorithm::Sha1, &secrets),
            sha256: Keys::new(Algorithm::Sha256, &secrets),
            origins: port_variants(&r.public_url()?),
        })
    }
}

impl Kind for Twilio {
    fn scheme(&self) -> Option<&'static str> {
        Some("twilio")
    }

    fn unsigned_fields(&self) -> &'static str {
        "event_id"
    }

    fn takes_form(&self) -> bool {
        true
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        let encoded = required(&req.headers, SIGNATURE)?;
        let candidate =
            Encoding::Base64.decode(encoded).ok_or_else(|| Unauthorized::Malformed(SIGNATURE.into()))?;
        let keys = match header_text(&req.headers, &[SETTINGS]) {
            Some(s) if s.split(',').any(|p| p.trim().eq_ignore_ascii_case("algorithm=HMAC_SHA256")) => {
                &self.sha256
            }
            _ => &self.sha1,
        };
        let params = if is_form(req) {
            let mut fields = form_fields(req.body);
            fields.sort();
            fields.dedup();
            fields
        } else {
            // JSON: the URL names the body's digest and is all that is signed.
            use sha2::Digest as _;
            let digest = hex::encode(sha2::Sha256::digest(req.body));
            let named = query_value(req.target, "bodySHA256").ok_or(Unauthorized::NoMatch)?;
            if !bool::from(subtle::ConstantTimeEq::ct_eq(named.as_bytes(), digest.as_bytes())) {
                return Err(Unauthorized::NoMatch);
            }
            Vec::new()
        };
        // Origin, target, then each name and value, MACed where they lie.
        let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + 2 * params.len());
        parts.extend([&b""[..], req.target.as_bytes()]);
        for (name, value) in &params {
            parts.extend([&name[..], &value[..]]);
        }
        let candidates = std::slice::from_ref(&candidate);
        let mut signed = false;
        for origin in &self.origins {
            parts[0] = origin.as_bytes();
            signed = keys.any_matches(&parts, candidates);
            if signed {
                break;
            }
        }
        if signed {
            Ok(())
        } else {
            Err(Unauthorized::NoMatch)
        }
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let token = header_text(&req.headers, &[IDEMPOTENCY]);
        if !is_form(req) {
            let _: serde::de::IgnoredAny = ingestor.parse_storable(req.body)?;
            let id = token.map(str::to_string).unwrap_or_else(|| body_digest_id(req.body));
            return Ok(Admitted::Event(Identity {
                event_id: event_id(Some(&id), IDEMPOTENCY)?,
                event_type: String::new(),
                event_timestamp_us: req.received_at_us,
            }));
        }
        let fields = form_fields(req.body);
        let field = |names: &[&str]| -> Option<String> {
            names.iter().find_map(|n| {
                fields
                    .iter()
                    .find(|(name, v)| name == n.as_bytes() && !v.is_empty())
                    .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
            })
        };
        let status = field(&STATUSES);
        let id = match (token, field(&SIDS)) {
            (Some(t), _) => t.to_string(),
            (None, Some(sid)) => match &status {
                Some(st) => format!("{sid}:{st}"),
                None => sid,
            },
            (None, None) => body_digest_id(req.body),
        };
        let json = fields_as_json(fields)?;
        let _: serde::de::IgnoredAny = ingestor.parse_storable(&json)?;
        let identity = Identity {
            event_id: event_id(Some(&id), "the SID")?,
            event_type: event_type(status.as_deref(), "the status")?,
            event_timestamp_us: req.received_at_us,
        };
        Ok(Admitted::Decoded(identity, json))
    }
}

/// A query parameter's raw value in `url`.
fn query_value<'u>(url: &'u str, name: &str) -> Option<&'u str> {
    let query = url.split_once('?')?.1.split('#').next()?;
    query.split('&').find_map(|pair| pair.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v))
}

/// `url` as it is, and with its scheme's default port added (when it has
/// none) or removed (when it has one), as `RequestValidator` tries both.
fn port_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else { return out };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host_end = authority.rfind(':').filter(|&i| {
        !authority[i + 1..].is_empty() && authority[i + 1..].bytes().all(|b| b.is_ascii_digit())
    });
    let other = match host_end {
        Some(i) => format!("{scheme}://{}{tail}", &authority[..i]),
        None => {
            let port = if scheme.eq_ignore_ascii_case("https") { 443 } else { 80 };
            format!("{scheme}://{authority}:{port}{tail}")
        }
    };
    out.push(other);
    out
}

#[cfg(test)]
mod tests {
    use super::super::testing::request_to;
    use super::super::Sources;
    use super::*;

    const FILE: &str = "[[source]]\nroute = \"twilio\"\nkind = \"twilio\"\nsecrets = [\"12345\"]\npublic_url = \"https://mycompany.com\"";

    fn sources() -> Sources {
        Sources::parse(FILE, &|_| None).unwrap()
    }

    #[test]
    fn twilios_documented_example_verifies() {
        // twilio.com/docs/usage/security's example request (this URL and
        // these parameters), signed with the token 12345 by twilio-python
        // 9.13's `RequestValidator.compute_signature`.
        let target = "/myapp.php?foo=1&bar=2";
        let body = b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B14158675310&To=%2B18005551212";
        let headers = "Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: yADUQgqSzuH7Q24JZuEXxH65/6Y=\r\n";
        let (verdict, admitted) = request_to(&sources(), target, headers, body, 0);
        assert_eq!(verdict, Ok(()));
        let Ok(Admitted::Decoded(id, json)) = admitted else { panic!("{admitted:?}") };
        assert_eq!(id.event_id, "CA1234567890ABCDE");
        let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(doc["From"], "+14158675310");
        let reordered = "X-Twilio-Signature: yADUQgqSzuH7Q24JZuEXxH65/6Y=\r\nContent-Type: application/x-www-form-urlencoded\r\n";
        let changed = b"CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1235&From=%2B14158675310&To=%2B18005551212";
        assert_eq!(request_to(&sources(), target, reordered, changed, 0).0, Err(Unauthorized::NoMatch));
        assert_eq!(
            request_to(&sources(), "/myapp.php?foo=1", headers, body, 0).0,
            Err(Unauthorized::NoMatch)
        );
    }

    #[test]
    fn a_json_body_is_signed_through_its_digest_in_the_url() {
        use sha2::Digest as _;
        let body = br#"{"property":"value","boolean":true}"#;
        let digest = hex::encode(sha2::Sha256::digest(body));
        let target = format!("/webhooks/twilio?bodySHA256={digest}");
        let keys = Keys::new(Algorithm::Sha1, &[b"12345".to_vec()]);
        let url = format!("https://mycompany.com{target}");
        let sig = keys.sign(&[url.as_bytes()], Encoding::Base64);
        let headers = format!("X-Twilio-Signature: {sig}\r\nI-Twilio-Idempotency-Token: tok-1\r\n");
        let (verdict, admitted) = request_to(&sources(), &target, &headers, body, 0);
        assert_eq!(verdict, Ok(()));
        assert_eq!(
            admitted.unwrap(),
            Admitted::Event(Identity {
                event_id: "tok-1".into(),
                event_type: String::new(),
                event_timestamp_us: 7
            })
        );
        assert_eq!(
            request_to(&sources(), &target, &headers, b"{}", 0).0,
            Err(Unauthorized::NoMatch),
            "digest differs"
        );
        let no_digest = "/webhooks/twilio";
        assert_eq!(request_to(&sources(), no_digest, &headers, body, 0).0, Err(Unauthorized::NoMatch));
    }

    #[test]
    fn ports_are_tried_both_ways() {
        assert_eq!(port_variants("https://a.com/x?y=1"), ["https://a.com/x?y=1", "https://a.com:443/x?y=1"]);
        assert_eq!(port_variants("http://a.com:8080/x"), ["http://a.com:8080/x", "http://a.com/x"]);
        assert_eq!(query_value("https://a/x?a=1&bodySHA256=ff", "bodySHA256"), Some("ff"));
        let e = Sources::parse("[[source]]\nroute = \"t\"\nkind = \"twilio\"\nsecrets = [\"x\"]", &|_| None)
            .unwrap_err();
        assert_eq!(e.field, "public_url");
        let e = Sources::parse("[[source]]\nroute = \"t\"\nkind = \"twilio\"\nsecrets = [\"x\"]\npublic_url = \"hooks.example.com\"", &|_| None).unwrap_err();
        assert_eq!(e.field, "public_url");
    }
}
