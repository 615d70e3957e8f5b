//! `kind = "sendgrid"`: SendGrid's signed Event Webhook.
//! `X-Twilio-Email-Event-Webhook-Signature` is an ECDSA P-256 / SHA-256
//! signature (base64 of its DER encoding) of
//! `"{X-Twilio-Email-Event-Webhook-Timestamp}{body}"`, checked against the
//! verification key the Mail Settings page shows (base64 of a DER
//! `SubjectPublicKeyInfo`), as the `sendgrid` library's
//! `EventWebhook.verify_signature` checks it (it verifies the tests). The
//! key is read and checked (a point of the curve) once at start; each
//! signature is verified by `ring`, whose P-256 is five times faster than
//! the pure-Rust one here (tuning.md §29).
//!
//! The library does not bound the timestamp; this source refuses one older
//! than `tolerance_secs` (default 600, 0 = unchecked): SendGrid signs each
//! attempt when it sends it, so a retry is fresh.
//!
//! The body is a JSON array of events, posted in batches. Stored as one row:
//! a one-event batch by that event's `sg_event_id` (with its `event` as the
//! type and `timestamp` as the time); a larger batch by the SHA-256 of the
//! body (a retried batch is resent byte for byte), type `batch`, the arrival
//! time. A consumer that wants one row per event unrolls the array.
//!
//! ```toml
//! [[source]]
//! route = "sendgrid"
//! kind = "sendgrid"
//! public_keys = ["MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE…"]
//! ```

use std::borrow::Cow;

use base64::Engine as _;
use p256::pkcs8::DecodePublicKey as _;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::Deserialize;

use super::spec::Reading;
use super::util::{batch_identity, event_id, event_type, fresh, given_time, required, secs, secs_to_us};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const SIGNATURE: &str = "X-Twilio-Email-Event-Webhook-Signature";
const TIMESTAMP: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// The SendGrid Event Webhook source.
#[derive(Debug)]
pub struct SendGrid {
    /// Each key's uncompressed point (SEC1), as `ring` takes it.
    keys: Vec<UnparsedPublicKey<Vec<u8>>>,
    tolerance: u64,
}

impl SendGrid {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        let keys = r.public_keys(|text| {
            let der = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| "the verification key as SendGrid shows it: base64")?;
            let key = p256::PublicKey::from_public_key_der(&der)
                .map_err(|_| "not a P-256 public key (DER SubjectPublicKeyInfo)".to_string())?;
            Ok(UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, key.to_sec1_bytes().to_vec()))
        })?;
        Ok(Self { keys, tolerance: r.tolerance(600)? })
    }
}

/// What of one event the gateway reads.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    sg_event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    timestamp: Option<i64>,
}

impl Kind for SendGrid {
    fn scheme(&self) -> Option<&'static str> {
        Some("sendgrid")
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        let encoded = required(&req.headers, SIGNATURE)?;
        let ts_text = required(&req.headers, TIMESTAMP)?;
        let ts = secs(ts_text).ok_or_else(|| Unauthorized::Malformed(TIMESTAMP.into()))?;
        // The DER is checked by ring as it verifies; a signature that is not
        // DER never matches, but one that is not base64 is malformed.
        let signature = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| Unauthorized::Malformed(SIGNATURE.into()))?;
        let mut message = Vec::with_capacity(ts_text.len() + req.body.len());
        message.extend_from_slice(ts_text);
        message.extend_from_slice(req.body);
        if !self.keys.iter().any(|k| k.verify(&message, &signature).is_ok()) {
            return Err(Unauthorized::NoMatch);
        }
        fresh(req.now_secs, ts, self.tolerance, false)
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let events: Vec<Event<'_>> = ingestor.parse_storable(req.body)?;
        let identity = batch_identity(&events, req, |one| {
            Ok(Identity {
                event_id: event_id(one.sg_event_id.as_deref(), "sg_event_id")?,
                event_type: event_type(one.event.as_deref(), "event")?,
                event_timestamp_us: given_time(one.timestamp, secs_to_us, "timestamp", req.received_at_us)?,
            })
        })?;
        Ok(Admitted::Event(identity))
    }
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Signer as _;
    use p256::ecdsa::{Signature, SigningKey};
    use p256::pkcs8::EncodePublicKey as _;

    use super::super::testing::{request, source};
    use super::super::Sources;
    use super::*;

    const BODY: &[u8] =
        br#"[{"email":"a@example.com","event":"delivered","sg_event_id":"sg1","timestamp":1700000000}]"#;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 32]).unwrap()
    }

    fn public(k: &SigningKey) -> String {
        let der = k.verifying_key().to_public_key_der().unwrap();
        base64::engine::general_purpose::STANDARD.encode(der.as_bytes())
    }

    fn headers(k: &SigningKey, ts: i64, body: &[u8]) -> String {
        let mut message = ts.to_string().into_bytes();
        message.extend_from_slice(body);
        let sig: Signature = k.sign(&message);
        let encoded = base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes());
        format!("{SIGNATURE}: {encoded}\r\n{TIMESTAMP}: {ts}\r\n")
    }

    fn file() -> String {
        format!(
            "[[source]]\nroute = \"sendgrid\"\nkind = \"sendgrid\"\npublic_keys = [\"{}\"]",
            public(&key(7))
        )
    }

    #[test]
    fn ecdsa_p256_signatures_over_timestamp_and_body() {
        let s = source(&file(), "sendgrid");
        let t = 1_700_000_000;
        assert_eq!(request(&s, &headers(&key(7), t, BODY), BODY, t + 600).0, Ok(()));
        assert_eq!(request(&s, &headers(&key(7), t, BODY), BODY, t + 601).0, Err(Unauthorized::Stale));
        assert_eq!(request(&s, &headers(&key(8), t, BODY), BODY, t).0, Err(Unauthorized::NoMatch));
        assert_eq!(request(&s, &headers(&key(7), t, BODY), b"[]", t).0, Err(Unauthorized::NoMatch));
        let garbled = headers(&key(7), t, BODY).replacen("Signature: ", "Signature: AAAA", 1);
        assert_eq!(request(&s, &garbled, BODY, t).0, Err(Unauthorized::NoMatch), "base64, not DER");
        let not_base64 = headers(&key(7), t, BODY).replacen("Signature: ", "Signature: %", 1);
        assert_eq!(request(&s, &not_base64, BODY, t).0, Err(Unauthorized::Malformed(SIGNATURE.into())));
        assert_eq!(request(&s, "", BODY, t).0, Err(Unauthorized::Missing(SIGNATURE.into())));
    }

    #[test]
    fn one_event_is_stored_by_its_id_a_batch_by_its_digest() {
        let s = source(&file(), "sendgrid");
        let Ok(Admitted::Event(id)) = request(&s, "", BODY, 0).1 else { panic!() };
        assert_eq!((id.event_id.as_str(), id.event_type.as_str()), ("sg1", "delivered"));
        assert_eq!(id.event_timestamp_us, 1_700_000_000_000_000);
        let two = br#"[{"sg_event_id":"a","event":"open"},{"sg_event_id":"b","event":"click"}]"#;
        let Ok(Admitted::Event(id)) = request(&s, "", two, 0).1 else { panic!() };
        assert_eq!((id.event_id, id.event_type.as_str()), (super::super::util::body_digest_id(two), "batch"));
        assert!(request(&s, "", b"[]", 0).1.is_err());
        assert!(request(&s, "", br#"{"event":"x"}"#, 0).1.is_err(), "an object is not a batch");
    }

    #[test]
    fn a_key_that_is_not_p256_is_refused_by_name() {
        for key in ["%%%", "AAAA", "MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE="] {
            let text = format!("[[source]]\nroute = \"s\"\nkind = \"sendgrid\"\npublic_keys = [\"{key}\"]");
            let e = Sources::parse(&text, &|_| None).unwrap_err();
            assert_eq!(e.field, "public_keys", "{e}");
        }
    }
}
