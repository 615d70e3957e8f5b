//! `kind = "zoom"`: Zoom's `x-zm-signature: v0=<hex>`, an HMAC-SHA256 of
//! `"v0:{x-zm-request-timestamp}:{body}"` keyed with the app's Secret Token
//! (Slack's scheme under other header names: [`super::slack::verify_v0`]),
//! as Zoom's webhook documentation gives the recipe (Zoom publishes no
//! verifying library; the tests sign with Python's `hmac` as the docs'
//! sample does). A timestamp more than `tolerance_secs` (default 300) away
//! from now, either way, is refused.
//!
//! The challenge: an `endpoint.url_validation` event (sent when the URL is
//! saved, and every 72 hours) is verified like any event, then answered 200
//! `{"plainToken": …, "encryptedToken": <hex HMAC-SHA256 of plainToken>}`
//! keyed with the first listed secret, and not stored.
//!
//! Stored: Zoom puts no event id in a delivery, and a retry resends the same
//! body, so the id is the body's SHA-256; `event` as the type, `event_ts`
//! (ms) as the time.
//!
//! ```toml
//! [[source]]
//! route = "zoom"
//! kind = "zoom"
//! secrets = ["<secret token>"]
//! ```

use std::borrow::Cow;

use serde::Deserialize;

use super::mac::{Algorithm, Encoding, Keys};
use super::slack::verify_v0;
use super::spec::Reading;
use super::util::{body_digest_id, event_type, given_time, millis_to_us};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const SIGNATURE: &str = "x-zm-signature";
const TIMESTAMP: &str = "x-zm-request-timestamp";

/// The Zoom source.
#[derive(Debug)]
pub struct Zoom {
    keys: Keys,
    /// The first secret alone: it answers the URL validation.
    current: Keys,
    tolerance: u64,
}

impl Zoom {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        let secrets: Vec<Vec<u8>> = r.secrets()?.into_iter().map(String::into_bytes).collect();
        Ok(Self {
            keys: Keys::new(Algorithm::Sha256, &secrets),
            current: Keys::new(Algorithm::Sha256, &secrets[..1]),
            tolerance: r.tolerance(300)?,
        })
    }
}

#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow, rename = "plainToken")]
    plain_token: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    event_ts: Option<i64>,
    #[serde(borrow)]
    payload: Option<Payload<'a>>,
}

impl Kind for Zoom {
    fn scheme(&self) -> Option<&'static str> {
        Some("zoom")
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        verify_v0(&self.keys, [SIGNATURE, TIMESTAMP], req, self.tolerance)
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let event: Event<'_> = ingestor.parse_storable(req.body)?;
        if event.event.as_deref() == Some("endpoint.url_validation") {
            let plain = event.payload.and_then(|p| p.plain_token).unwrap_or_default();
            let encrypted = self.current.sign(&[plain.as_bytes()], Encoding::Hex);
            let reply = serde_json::json!({ "plainToken": plain, "encryptedToken": encrypted });
            return Ok(Admitted::Reply(serde_json::to_vec(&reply).unwrap_or_default()));
        }
        let at = given_time(event.event_ts, millis_to_us, "event_ts", req.received_at_us)?;
        Ok(Admitted::Event(Identity {
            event_id: body_digest_id(req.body),
            event_type: event_type(event.event.as_deref(), "event")?,
            event_timestamp_us: at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, source};
    use super::*;

    const FILE: &str =
        "[[source]]\nroute = \"zoom\"\nkind = \"zoom\"\nsecrets = [\"new-token\", \"old-token\"]";
    const BODY: &[u8] = br#"{"event":"meeting.started","event_ts":1626230691572,"payload":{"account_id":"a","object":{"id":"1"}}}"#;

    fn headers(secret: &str, ts: i64, body: &[u8]) -> String {
        let keys = Keys::new(Algorithm::Sha256, &[secret.as_bytes().to_vec()]);
        let sig = keys.sign(&[b"v0:", ts.to_string().as_bytes(), b":", body], Encoding::Hex);
        format!("x-zm-signature: v0={sig}\r\nx-zm-request-timestamp: {ts}\r\n")
    }

    #[test]
    fn v0_signatures_and_their_window() {
        let s = source(FILE, "zoom");
        let t = 1_700_000_000;
        assert_eq!(request(&s, &headers("old-token", t, BODY), BODY, t + 300).0, Ok(()));
        assert_eq!(request(&s, &headers("new-token", t, BODY), BODY, t - 301).0, Err(Unauthorized::Stale));
        assert_eq!(request(&s, &headers("other", t, BODY), BODY, t).0, Err(Unauthorized::NoMatch));
        let Ok(Admitted::Event(id)) = request(&s, "", BODY, t).1 else { panic!() };
        assert_eq!((id.event_id, id.event_type.as_str()), (body_digest_id(BODY), "meeting.started"));
        assert_eq!(id.event_timestamp_us, 1_626_230_691_572_000);
    }

    #[test]
    fn the_url_validation_is_answered_with_the_tokens_hmac() {
        let body = br#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
        let Ok(Admitted::Reply(reply)) = request(&source(FILE, "zoom"), "", body, 0).1 else { panic!() };
        let doc: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        let expected = Keys::new(Algorithm::Sha256, &[b"new-token".to_vec()])
            .sign(&[b"qgg8vlvZRS6UYooatFL8Aw"], Encoding::Hex);
        assert_eq!(
            doc,
            serde_json::json!({"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": expected})
        );
    }
}
