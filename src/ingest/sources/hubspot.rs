//! `kind = "hubspot"`: HubSpot's v3 request signature.
//! `X-HubSpot-Signature-v3` is the base64 HMAC-SHA256, keyed with the app's
//! client secret, of `"{method}{uri}{body}{X-HubSpot-Request-Timestamp}"`,
//! as `hubspot-api-client`'s `Signature.get_signature(…, "v3", …)` computes
//! it (it signs the tests). The URI is `public_url` followed by the
//! request's own path and query; HubSpot decodes a fixed set of
//! percent-escapes in it before signing (`%3A %2F %3F %40 %21 %24 %27 %28
//! %29 %2A %2C %3B`), and so does this source. The timestamp is in
//! milliseconds; one older than `tolerance_secs` (default 300, HubSpot's
//! five minutes) is refused.
//!
//! The body is a JSON array of up to 100 events. Stored as one row: a
//! one-event batch by that event's `eventId` (with `subscriptionType` as
//! the type and `occurredAt`, ms, as the time), a larger batch by the
//! SHA-256 of the body, type `batch`.
//!
//! ```toml
//! [[source]]
//! route = "hubspot"
//! kind = "hubspot"
//! secrets = ["<client secret>"]
//! public_url = "https://hooks.example.com"
//! ```

use std::borrow::Cow;

use serde::Deserialize;

use super::mac::{Algorithm, Encoding, Keys};
use super::spec::Reading;
use super::util::{batch_identity, event_id, event_type, fresh, given_time, millis_to_us, required, secs};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const SIGNATURE: &str = "X-HubSpot-Signature-v3";
const TIMESTAMP: &str = "X-HubSpot-Request-Timestamp";
/// The escapes HubSpot decodes in the URI before signing.
const DECODED: [(&str, &str); 12] = [
    ("%3A", ":"),
    ("%2F", "/"),
    ("%3F", "?"),
    ("%40", "@"),
    ("%21", "!"),
    ("%24", "$"),
    ("%27", "'"),
    ("%28", "("),
    ("%29", ")"),
    ("%2A", "*"),
    ("%2C", ","),
    ("%3B", ";"),
];

/// The HubSpot source.
#[derive(Debug)]
pub struct HubSpot {
    keys: Keys,
    tolerance: u64,
    /// `public_url` with HubSpot's escapes decoded, once.
    public_url: String,
}

impl HubSpot {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        Ok(Self {
            keys: r.keys(Algorithm::Sha256)?,
            tolerance: r.tolerance(300)?,
            public_url: hubspot_uri(&r.public_url()?).into_owned(),
        })
    }
}

/// What of one event the gateway reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    event_id: Option<serde_json::Number>,
    #[serde(borrow)]
    subscription_type: Option<Cow<'a, str>>,
    occurred_at: Option<i64>,
}

/// `uri` with HubSpot's escapes decoded (either letter case).
///
/// Borrowed when it holds no escape (a request's target, most often).
fn hubspot_uri(uri: &str) -> Cow<'_, str> {
    if !uri.contains('%') {
        return Cow::Borrowed(uri);
    }
    let mut out = String::with_capacity(uri.len());
    let mut rest = uri;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let escape = rest.get(i..i + 3).unwrap_or(&rest[i..]);
        match DECODED.iter().find(|(e, _)| e.eq_ignore_ascii_case(escape)) {
            Some((_, plain)) => out.push_str(plain),
            None => out.push_str(escape),
        }
        rest = &rest[i + escape.len()..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

impl Kind for HubSpot {
    fn scheme(&self) -> Option<&'static str> {
        Some("hubspot")
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        let encoded = required(&req.headers, SIGNATURE)?;
        let ts_text = required(&req.headers, TIMESTAMP)?;
        let ms = secs(ts_text).ok_or_else(|| Unauthorized::Malformed(TIMESTAMP.into()))?;
        let candidate =
            Encoding::Base64.decode(encoded).ok_or_else(|| Unauthorized::Malformed(SIGNATURE.into()))?;
        // The URI is the (decoded) origin and the request's own target; an
        // escape cannot straddle the two (the origin is a whole URL prefix).
        let target = hubspot_uri(req.target);
        let uri: [&[u8]; 2] = [self.public_url.as_bytes(), target.as_bytes()];
        if !self.keys.any_matches(&[b"POST", uri[0], uri[1], req.body, ts_text], &[candidate]) {
            return Err(Unauthorized::NoMatch);
        }
        fresh(req.now_secs, ms.div_euclid(1000), self.tolerance, false)
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let events: Vec<Event<'_>> = ingestor.parse_storable(req.body)?;
        let identity = batch_identity(&events, req, |one| {
            Ok(Identity {
                event_id: event_id(one.event_id.as_ref().map(|n| n.to_string()).as_deref(), "eventId")?,
                event_type: event_type(one.subscription_type.as_deref(), "subscriptionType")?,
                event_timestamp_us: given_time(
                    one.occurred_at,
                    millis_to_us,
                    "occurredAt",
                    req.received_at_us,
                )?,
            })
        })?;
        Ok(Admitted::Event(identity))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::request_to;
    use super::super::Sources;
    use super::*;

    const FILE: &str = "[[source]]\nroute = \"hubspot\"\nkind = \"hubspot\"\nsecrets = [\"yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy\"]\npublic_url = \"https://www.example.com\"";
    const BODY: &[u8] = br#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#;

    fn headers(target: &str, body: &[u8], ms: i64) -> String {
        let keys = Keys::new(Algorithm::Sha256, &[b"yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy".to_vec()]);
        let uri = hubspot_uri(&format!("https://www.example.com{target}")).into_owned();
        let sig = keys.sign(&[b"POST", uri.as_bytes(), body, ms.to_string().as_bytes()], Encoding::Base64);
        format!("{SIGNATURE}: {sig}\r\n{TIMESTAMP}: {ms}\r\n")
    }

    #[test]
    fn v3_signatures_over_method_uri_body_and_timestamp() {
        let s = Sources::parse(FILE, &|_| None).unwrap();
        let (target, ms) = ("/webhooks/hubspot?portal=62515", 1_700_000_000_000);
        let t = ms / 1000;
        let (verdict, admitted) = request_to(&s, target, &headers(target, BODY, ms), BODY, t + 300);
        assert_eq!(verdict, Ok(()));
        let Ok(Admitted::Event(id)) = admitted else { panic!() };
        assert_eq!((id.event_id.as_str(), id.event_type.as_str()), ("1", "contact.creation"));
        assert_eq!(id.event_timestamp_us, 1_564_113_600_000_000);
        assert_eq!(
            request_to(&s, target, &headers(target, BODY, ms), BODY, t + 301).0,
            Err(Unauthorized::Stale)
        );
        let other = "/webhooks/hubspot?portal=1";
        assert_eq!(
            request_to(&s, other, &headers(target, BODY, ms), BODY, t).0,
            Err(Unauthorized::NoMatch),
            "the URI is signed"
        );
        let later = headers(target, BODY, ms).replace(&ms.to_string(), &(ms + 1).to_string());
        assert_eq!(
            request_to(&s, target, &later, BODY, t).0,
            Err(Unauthorized::NoMatch),
            "the timestamp is signed"
        );
    }

    #[test]
    fn the_escapes_hubspot_decodes_and_no_others() {
        assert_eq!(hubspot_uri("https://a.com/x%3Fy%2cz%20w%"), "https://a.com/x?y,z%20w%");
        assert_eq!(hubspot_uri("https://a.com/%40%2F%3a"), "https://a.com/@/:");
    }
}
