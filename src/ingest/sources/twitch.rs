//! `kind = "twitch"`: Twitch EventSub over webhooks.
//! `Twitch-Eventsub-Message-Signature: sha256=<hex>` is an HMAC-SHA256,
//! keyed with the subscription's secret, of `Twitch-Eventsub-Message-Id`,
//! `Twitch-Eventsub-Message-Timestamp` and the body concatenated, as
//! Twitch's EventSub guide gives the recipe (no official verifying library;
//! the tests sign with Python's `hmac`). A message older than
//! `tolerance_secs` (default 600, Twitch's ten minutes) is refused.
//!
//! `Twitch-Eventsub-Message-Type`:
//! * `webhook_callback_verification`: answered 200 with the body's
//!   `challenge` as plain text, and not stored;
//! * `notification`: stored by its message id (signed, the same on every
//!   retry), `subscription.type` as the type, the signed message timestamp
//!   as the time;
//! * `revocation`: stored too, type `revocation.<subscription.type>`.
//!
//! ```toml
//! [[source]]
//! route = "twitch"
//! kind = "twitch"
//! secrets = ["<subscription secret>"]
//! ```

use std::borrow::Cow;

use serde::Deserialize;

use super::mac::{Algorithm, Encoding, Keys};
use super::spec::Reading;
use super::util::{event_id, event_type, fresh, header_text, iso_to_us, required};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const ID: &str = "Twitch-Eventsub-Message-Id";
const TIMESTAMP: &str = "Twitch-Eventsub-Message-Timestamp";
const SIGNATURE: &str = "Twitch-Eventsub-Message-Signature";
const TYPE: &str = "Twitch-Eventsub-Message-Type";

/// The Twitch EventSub source.
#[derive(Debug)]
pub struct Twitch {
    keys: Keys,
    tolerance: u64,
}

impl Twitch {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        Ok(Self { keys: r.keys(Algorithm::Sha256)?, tolerance: r.tolerance(600)? })
    }
}

#[derive(Deserialize)]
struct Subscription<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    challenge: Option<Cow<'a, str>>,
    #[serde(borrow)]
    subscription: Option<Subscription<'a>>,
}

impl Kind for Twitch {
    fn scheme(&self) -> Option<&'static str> {
        Some("twitch")
    }

    // The message type header is not signed; it only picks the challenge,
    // which is verified like any message.
    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        let id = required(&req.headers, ID)?;
        let ts_text = required(&req.headers, TIMESTAMP)?;
        let signature = required(&req.headers, SIGNATURE)?;
        let ts = std::str::from_utf8(ts_text)
            .ok()
            .and_then(iso_to_us)
            .ok_or_else(|| Unauthorized::Malformed(TIMESTAMP.into()))?;
        let hex =
            signature.strip_prefix(b"sha256=").ok_or_else(|| Unauthorized::Malformed(SIGNATURE.into()))?;
        let candidate = Encoding::Hex.decode(hex).ok_or_else(|| Unauthorized::Malformed(SIGNATURE.into()))?;
        if !self.keys.any_matches(&[id, ts_text, req.body], &[candidate]) {
            return Err(Unauthorized::NoMatch);
        }
        fresh(req.now_secs, ts.div_euclid(1_000_000), self.tolerance, false)
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let message: Message<'_> = ingestor.parse_storable(req.body)?;
        let kind = header_text(&req.headers, &[TYPE]).unwrap_or("notification");
        if kind == "webhook_callback_verification" {
            let challenge = message.challenge.unwrap_or_default();
            return Ok(Admitted::Text(challenge.as_bytes().to_vec()));
        }
        let sub = message.subscription.as_ref().and_then(|s| s.kind.as_deref());
        let event_kind = match (kind, sub) {
            ("revocation", Some(s)) => Some(format!("revocation.{s}")),
            ("revocation", None) => Some("revocation".to_string()),
            (_, s) => s.map(str::to_string),
        };
        let at = header_text(&req.headers, &[TIMESTAMP]).and_then(iso_to_us).unwrap_or(req.received_at_us);
        Ok(Admitted::Event(Identity {
            event_id: event_id(header_text(&req.headers, &[ID]), ID)?,
            event_type: event_type(event_kind.as_deref(), "subscription.type")?,
            event_timestamp_us: at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, source};
    use super::*;

    const FILE: &str = "[[source]]\nroute = \"twitch\"\nkind = \"twitch\"\nsecrets = [\"s3cRe7s3cRe7\"]";
    const BODY: &[u8] =
        br#"{"subscription":{"id":"f1c2","type":"channel.follow","version":"2"},"event":{"user_id":"1"}}"#;
    const TS: &str = "2023-11-14T22:13:20.123456789Z";

    fn headers(secret: &str, id: &str, ts: &str, kind: &str, body: &[u8]) -> String {
        let keys = Keys::new(Algorithm::Sha256, &[secret.as_bytes().to_vec()]);
        let sig = keys.sign(&[id.as_bytes(), ts.as_bytes(), body], Encoding::Hex);
        format!("{ID}: {id}\r\n{TIMESTAMP}: {ts}\r\n{SIGNATURE}: sha256={sig}\r\n{TYPE}: {kind}\r\n")
    }

    #[test]
    fn signatures_over_id_timestamp_and_body() {
        let s = source(FILE, "twitch");
        let t = 1_700_000_000;
        let good = headers("s3cRe7s3cRe7", "m1", TS, "notification", BODY);
        let (verdict, admitted) = request(&s, &good, BODY, t + 600);
        assert_eq!(verdict, Ok(()));
        let Ok(Admitted::Event(id)) = admitted else { panic!() };
        assert_eq!((id.event_id.as_str(), id.event_type.as_str()), ("m1", "channel.follow"));
        assert_eq!(id.event_timestamp_us, 1_700_000_000_123_457);
        assert_eq!(request(&s, &good, BODY, t + 601).0, Err(Unauthorized::Stale));
        let other_id = good.replace(&format!("{ID}: m1"), &format!("{ID}: m2"));
        assert_eq!(request(&s, &other_id, BODY, t).0, Err(Unauthorized::NoMatch), "the id is signed");
        let wrong = headers("other", "m1", TS, "notification", BODY);
        assert_eq!(request(&s, &wrong, BODY, t).0, Err(Unauthorized::NoMatch));
        let revoked = headers("s3cRe7s3cRe7", "m3", TS, "revocation", BODY);
        let Ok(Admitted::Event(id)) = request(&s, &revoked, BODY, t).1 else { panic!() };
        assert_eq!(id.event_type, "revocation.channel.follow");
    }

    #[test]
    fn the_callback_verification_is_answered_with_the_challenge_as_text() {
        let body =
            br#"{"challenge":"pogchamp-kappa-360noscope-vohiyo","subscription":{"type":"channel.follow"}}"#;
        let h = headers("s3cRe7s3cRe7", "m0", TS, "webhook_callback_verification", body);
        let (verdict, admitted) = request(&source(FILE, "twitch"), &h, body, 1_700_000_000);
        assert_eq!(verdict, Ok(()));
        assert_eq!(admitted, Ok(Admitted::Text(b"pogchamp-kappa-360noscope-vohiyo".to_vec())));
    }
}
