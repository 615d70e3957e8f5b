//! `kind = "paddle"`: Paddle Billing's `Paddle-Signature: ts=<unix>;h1=<hex>
//! [;h1=…]`, an HMAC-SHA256 of `"{ts}:{body}"` keyed with the notification
//! secret as written. As paddle-python-sdk's `Verifier` does it: any key but
//! `ts` and `h1` makes the header malformed, and a timestamp more than
//! `tolerance_secs` (default 5) away from now in either direction is refused.
//!
//! Stored: body `event_id`, `event_type`, and `occurred_at` as the event time
//! (one that is no instant gets 400; without one, the arrival time).
//!
//! ```toml
//! [[source]]
//! route = "paddle"
//! kind = "paddle"
//! secrets = ["pdl_ntfset_…"]
//! ```

use std::borrow::Cow;

use serde::Deserialize;

use super::mac::{Algorithm, Encoding, Keys};
use super::spec::Reading;
use super::util::{event_id, event_type, fresh, required, secs, sender_time};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const HEADER: &str = "Paddle-Signature";

/// The Paddle source.
#[derive(Debug)]
pub struct Paddle {
    keys: Keys,
    tolerance: u64,
}

impl Paddle {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        Ok(Self { keys: r.keys(Algorithm::Sha256)?, tolerance: r.tolerance(5)? })
    }
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow)]
    occurred_at: Option<Cow<'a, str>>,
}

impl Kind for Paddle {
    fn scheme(&self) -> Option<&'static str> {
        Some("paddle")
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        let header = required(&req.headers, HEADER)?;
        let malformed = || Unauthorized::Malformed(HEADER.into());
        let mut ts: Option<&[u8]> = None;
        let mut candidates = Vec::new();
        for part in header.split(|&b| b == b';') {
            let part = part.trim_ascii();
            let eq = part.iter().position(|&b| b == b'=').ok_or_else(malformed)?;
            match &part[..eq] {
                b"ts" => ts = Some(&part[eq + 1..]),
                b"h1" => candidates.extend(Encoding::Hex.decode(&part[eq + 1..])),
                _ => return Err(malformed()),
            }
        }
        let ts_text = ts.ok_or_else(malformed)?;
        let at = secs(ts_text).ok_or_else(malformed)?;
        fresh(req.now_secs, at, self.tolerance, true)?;
        if self.keys.any_matches(&[ts_text, b":", req.body], &candidates) {
            Ok(())
        } else {
            Err(Unauthorized::NoMatch)
        }
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let body: Body<'_> = ingestor.parse_storable(req.body)?;
        let at = sender_time(body.occurred_at.as_deref(), "occurred_at")?;
        Ok(Admitted::Event(Identity {
            event_id: event_id(body.event_id.as_deref(), "event_id")?,
            event_type: event_type(body.event_type.as_deref(), "event_type")?,
            event_timestamp_us: at.unwrap_or(req.received_at_us),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, source};
    use super::*;

    const FILE: &str = "[[source]]\nroute = \"paddle\"\nkind = \"paddle\"\nsecrets = [\"pdl_ntfset_old\", \"pdl_ntfset_new\"]";
    const BODY: &[u8] = br#"{"event_id":"evt_01","event_type":"transaction.completed","occurred_at":"2026-01-01T00:00:00.000000Z","data":{}}"#;

    fn h1(secret: &str, ts: i64) -> String {
        Keys::new(Algorithm::Sha256, &[secret.as_bytes().to_vec()])
            .sign(&[ts.to_string().as_bytes(), b":", BODY], Encoding::Hex)
    }

    #[test]
    fn paddle_signatures_strictly_and_within_five_seconds() {
        let s = source(FILE, "paddle");
        let t = 1_767_225_600;
        let header = |v: String| format!("Paddle-Signature: {v}\r\n");
        let good = h1("pdl_ntfset_new", t);
        assert_eq!(request(&s, &header(format!("ts={t};h1={good}")), BODY, t + 5).0, Ok(()));
        assert_eq!(request(&s, &header(format!("ts={t};h1={};h1={good}", h1("x", t))), BODY, t).0, Ok(()));
        assert_eq!(
            request(&s, &header(format!("ts={t};h1={good}")), BODY, t + 6).0,
            Err(Unauthorized::Stale)
        );
        assert_eq!(
            request(&s, &header(format!("ts={t};h1={good}")), BODY, t - 6).0,
            Err(Unauthorized::Stale)
        );
        assert_eq!(
            request(&s, &header(format!("ts={t};h1={good};v2=x")), BODY, t).0,
            Err(Unauthorized::Malformed(HEADER.into()))
        );
        assert_eq!(
            request(&s, &header(format!("ts={t};h1={}", h1("x", t))), BODY, t).0,
            Err(Unauthorized::NoMatch)
        );
        let Ok(Admitted::Event(id)) = request(&s, "", BODY, t).1 else { panic!() };
        assert_eq!((id.event_id.as_str(), id.event_type.as_str()), ("evt_01", "transaction.completed"));
        assert_eq!(id.event_timestamp_us, 1_767_225_600_000_000);
    }

    #[test]
    fn an_occurred_at_that_is_no_instant_is_refused_not_replaced_by_the_arrival_time() {
        let s = source(FILE, "paddle");
        let body = br#"{"event_id":"evt_01","event_type":"t","occurred_at":"2026-01-01T10:00:61Z"}"#;
        let Err(IngestError::Invalid(messages)) = request(&s, "", body, 0).1 else { panic!() };
        assert!(messages[0].contains("occurred_at"), "{messages:?}");
        let Ok(Admitted::Event(id)) = request(&s, "", br#"{"event_id":"e","event_type":"t"}"#, 0).1 else {
            panic!()
        };
        assert_eq!(id.event_timestamp_us, 7, "no occurred_at: the arrival time");
    }
}
