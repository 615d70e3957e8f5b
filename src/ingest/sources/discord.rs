//! `kind = "discord"`: Discord's interactions endpoint. Each request carries
//! `X-Signature-Ed25519` (hex, 64 bytes), an Ed25519 signature of
//! `"{X-Signature-Timestamp}{body}"` by the application's public key (the
//! "Public Key" of the developer portal, hex, 32 bytes), as Discord's
//! documentation and `discord-interactions` verify it (PyNaCl signs the
//! tests). ed25519-dalek's `verify` refuses non-canonical signatures; a
//! weak (small-order) key is refused once, when the file is read, rather
//! than on every request as `verify_strict` would (a third of the cost,
//! tuning.md §29; the key is Discord's, not the attacker's).
//!
//! Discord's libraries do not bound the timestamp; this source refuses one
//! more than `tolerance_secs` (default 300, 0 = unchecked) away from now in
//! either direction, so a captured request cannot be replayed later.
//!
//! A `PING` (`"type": 1`, sent when the endpoint URL is saved and now and
//! then after) is answered `{"type":1}` at once and not stored. Every other
//! interaction is stored: its `id` (a snowflake, unique per interaction) as
//! the event id, `interaction.<type>` (with the command's name for an
//! application command, `interaction.2.<name>`) as the type, the arrival
//! time as the event time (an interaction carries none).
//!
//! Discord must be answered within three seconds in its own words, or the
//! user sees "interaction failed"; a 202 is not one. So once Redis has the
//! interaction (the 202's promise), the answer is 200 with Discord's
//! deferred response: `{"type":5}` for a command or a modal submission
//! ("thinking…"), `{"type":6}` for a component (the message is left as it
//! is), `{"type":8,"data":{"choices":[]}}` for an autocomplete (which cannot
//! be deferred: no choices). The application that consumes the event
//! finishes it through Discord's follow-up API (the interaction `token` is
//! in the stored body, valid 15 minutes).
//!
//! Several keys may be listed while an application is replaced.
//!
//! ```toml
//! [[source]]
//! route = "discord"
//! kind = "discord"
//! public_keys = ["<64 hex digits>"]
//! ```

use std::borrow::Cow;

use ed25519_dalek::ed25519::signature::MultipartVerifier as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;

use super::mac::Encoding;
use super::spec::Reading;
use super::util::{event_id, event_type, fresh, required, secs};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const SIGNATURE: &str = "X-Signature-Ed25519";
const TIMESTAMP: &str = "X-Signature-Timestamp";

/// The Discord interactions source.
#[derive(Debug)]
pub struct Discord {
    keys: Vec<VerifyingKey>,
    tolerance: u64,
}

impl Discord {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        let keys = r.public_keys(|text| {
            let bytes: [u8; 32] = hex::decode(text)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or("the application's public key: 64 hex digits")?;
            match VerifyingKey::from_bytes(&bytes) {
                Ok(k) if !k.is_weak() => Ok(k),
                Ok(_) => Err("a weak (small-order) key: not an application's key".to_string()),
                Err(_) => Err("not a point of Ed25519".to_string()),
            }
        })?;
        Ok(Self { keys, tolerance: r.tolerance(300)? })
    }
}

#[derive(Deserialize)]
struct Data<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

/// What of an interaction the gateway reads.
#[derive(Deserialize)]
struct Interaction<'a> {
    #[serde(rename = "type")]
    kind: Option<u8>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<Data<'a>>,
}

impl Kind for Discord {
    fn scheme(&self) -> Option<&'static str> {
        Some("discord")
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        let hex = required(&req.headers, SIGNATURE)?;
        let ts_text = required(&req.headers, TIMESTAMP)?;
        let ts = secs(ts_text).ok_or_else(|| Unauthorized::Malformed(TIMESTAMP.into()))?;
        let signature = Encoding::Hex
            .decode(hex)
            .and_then(|s| <[u8; 64]>::try_from(s.as_slice()).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or_else(|| Unauthorized::Malformed(SIGNATURE.into()))?;
        // The message is the two parts as they lie: hashed in place, not copied.
        let message: [&[u8]; 2] = [ts_text, req.body];
        if !self.keys.iter().any(|k| k.multipart_verify(&message, &signature).is_ok()) {
            return Err(Unauthorized::NoMatch);
        }
        fresh(req.now_secs, ts, self.tolerance, true)
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let body: Interaction<'_> = ingestor.parse_storable(req.body)?;
        let kind = body.kind.ok_or_else(|| IngestError::Invalid(vec!["type should not be empty".into()]))?;
        if kind == 1 {
            return Ok(Admitted::Reply(br#"{"type":1}"#.to_vec()));
        }
        let name = body.data.as_ref().and_then(|d| d.name.as_deref()).filter(|_| kind == 2);
        let event_kind = match name {
            Some(n) => format!("interaction.{kind}.{n}"),
            None => format!("interaction.{kind}"),
        };
        let identity = Identity {
            event_id: event_id(body.id.as_deref(), "id")?,
            event_type: event_type(Some(&event_kind), "data.name")?,
            event_timestamp_us: req.received_at_us,
        };
        let deferred: &'static [u8] = match kind {
            2 | 5 => br#"{"type":5}"#,
            3 => br#"{"type":6}"#,
            4 => br#"{"type":8,"data":{"choices":[]}}"#,
            _ => return Ok(Admitted::Event(identity)),
        };
        Ok(Admitted::Acknowledged(identity, deferred))
    }
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::super::testing::{request, source};
    use super::*;

    // RFC 8032 §7.1, test 1: this secret key and its public key.
    const SECRET: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const BODY: &[u8] = br#"{"type":2,"id":"1234567890","data":{"name":"blep"}}"#;

    fn file() -> String {
        format!("[[source]]\nroute = \"discord\"\nkind = \"discord\"\npublic_keys = [\"{PUBLIC}\"]")
    }

    fn headers(ts: i64, body: &[u8], secret: &str) -> String {
        let key = SigningKey::from_bytes(&hex::decode(secret).unwrap().try_into().unwrap());
        let mut message = ts.to_string().into_bytes();
        message.extend_from_slice(body);
        let sig = hex::encode(key.sign(&message).to_bytes());
        format!("X-Signature-Ed25519: {sig}\r\nX-Signature-Timestamp: {ts}\r\n")
    }

    #[test]
    fn the_rfc_8032_vector_holds_with_the_key_as_configured() {
        let key = SigningKey::from_bytes(&hex::decode(SECRET).unwrap().try_into().unwrap());
        assert_eq!(hex::encode(key.verifying_key().to_bytes()), PUBLIC);
        // RFC 8032 §7.1 test 1: the empty message's signature.
        assert!(hex::encode(key.sign(b"").to_bytes()).starts_with("e5564300c360ac72"));
    }

    #[test]
    fn ed25519_signatures_over_timestamp_and_body() {
        let s = source(&file(), "discord");
        let t = 1_700_000_000;
        assert_eq!(request(&s, &headers(t, BODY, SECRET), BODY, t).0, Ok(()));
        assert_eq!(request(&s, &headers(t, BODY, SECRET), BODY, t + 301).0, Err(Unauthorized::Stale));
        assert_eq!(request(&s, &headers(t, BODY, SECRET), BODY, t - 301).0, Err(Unauthorized::Stale));
        let other = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
        assert_eq!(request(&s, &headers(t, BODY, other), BODY, t).0, Err(Unauthorized::NoMatch));
        let mut changed = BODY.to_vec();
        changed[10] ^= 1;
        assert_eq!(request(&s, &headers(t, BODY, SECRET), &changed, t).0, Err(Unauthorized::NoMatch));
        let moved =
            headers(t, BODY, SECRET).replace(&format!("Timestamp: {t}"), &format!("Timestamp: {}", t + 1));
        assert_eq!(request(&s, &moved, BODY, t).0, Err(Unauthorized::NoMatch), "the timestamp is signed");
        let short = headers(t, BODY, SECRET).replacen("Ed25519: ", "Ed25519: 00", 1);
        assert_eq!(request(&s, &short, BODY, t).0, Err(Unauthorized::Malformed(SIGNATURE.into())));
        assert_eq!(request(&s, "", BODY, t).0, Err(Unauthorized::Missing(SIGNATURE.into())));
    }

    #[test]
    fn a_ping_is_answered_and_an_interaction_stored_by_its_id() {
        let s = source(&file(), "discord");
        let (_, ping) = request(&s, "", br#"{"type":1,"id":"1"}"#, 0);
        assert_eq!(ping, Ok(Admitted::Reply(br#"{"type":1}"#.to_vec())));
        let Ok(Admitted::Acknowledged(id, reply)) = request(&s, "", BODY, 0).1 else { panic!() };
        assert_eq!((id.event_id.as_str(), id.event_type.as_str()), ("1234567890", "interaction.2.blep"));
        assert_eq!(reply, br#"{"type":5}"#, "a command: deferred, 'thinking'");
        let Ok(Admitted::Acknowledged(id, reply)) = request(&s, "", br#"{"type":3,"id":"9"}"#, 0).1 else {
            panic!()
        };
        assert_eq!((id.event_type.as_str(), reply), ("interaction.3", &br#"{"type":6}"#[..]));
        let Ok(Admitted::Acknowledged(_, reply)) = request(&s, "", br#"{"type":4,"id":"8"}"#, 0).1 else {
            panic!()
        };
        assert_eq!(reply, br#"{"type":8,"data":{"choices":[]}}"#);
        let Ok(Admitted::Event(id)) = request(&s, "", br#"{"type":9,"id":"7"}"#, 0).1 else { panic!() };
        assert_eq!(id.event_type, "interaction.9", "an unknown type: stored, answered 202");
    }

    #[test]
    fn a_key_that_is_not_ed25519_hex_is_refused_by_name() {
        // The identity point (01 00…00) is a valid encoding of a weak key.
        let weak = format!("01{}", "00".repeat(31));
        for key in ["abc", "zz", &"00".repeat(31), &weak] {
            let text = format!("[[source]]\nroute = \"d\"\nkind = \"discord\"\npublic_keys = [\"{key}\"]");
            let e = Sources::parse(&text, &|_| None).unwrap_err();
            assert_eq!(e.field, "public_keys", "{e}");
        }
        let e = Sources::parse("[[source]]\nroute = \"d\"\nkind = \"discord\"", &|_| None).unwrap_err();
        assert!(e.to_string().contains("public_keys: required"), "{e}");
    }

    use super::super::Sources;
}
