//! `kind = "mailgun"`: Mailgun's signature lives in the body. A webhook
//! posts `{"signature": {"timestamp", "token", "signature"}, "event-data":
//! {…}}`; `signature` is the hex HMAC-SHA256, keyed with the HTTP webhook
//! signing key, of `timestamp` followed by `token`, as Mailgun's "Securing
//! webhooks" documentation gives the recipe (Mailgun publishes no verifying
//! library; the tests sign with Python's `hmac` as its sample does). The
//! body is read for those three fields before anything else; the signature
//! does not cover `event-data`, so the body as a whole is not signed:
//! Mailgun's own limit, recorded as `unsigned_fields` =
//! `event_id,event_type`.
//!
//! As Mailgun advises, a `timestamp` more than `tolerance_secs` (default
//! 300) from now either way is refused, and a token is never accepted twice
//! within that window for two different bodies: each process remembers the
//! tokens it took with the SHA-256 of their body (at most [`MAX_TOKENS`];
//! past that the oldest are forgotten first). That is the attack the token
//! stops: the signature does not cover `event-data`, so a captured
//! signature pasted onto a forged event is a 401 (`replayed_token`). The
//! same body again is let through: it is a retry of a delivery that was
//! refused (a 503 while Redis was down must not turn every retry into a
//! 401), and the event's id makes it one row. Several gateways do not share
//! this memory.
//!
//! Stored: `event-data.id` as the event id, `event-data.event` as the type,
//! `event-data.timestamp` (seconds, fractional) as the time.
//!
//! ```toml
//! [[source]]
//! route = "mailgun"
//! kind = "mailgun"
//! secrets = ["<HTTP webhook signing key>"]
//! ```

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Deserialize;

use super::mac::{Algorithm, Encoding, Keys};
use super::spec::Reading;
use super::util::{event_id, event_type, fresh, secs, secs_to_us};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

/// Most tokens one process remembers: about 115 bytes each (two digests in
/// the map, the expiry queue), so at most ~120 MiB, reached at ~3,500
/// deliveries a second held for the 300 s window.
pub const MAX_TOKENS: usize = 1 << 20;

/// The Mailgun source.
pub struct Mailgun {
    keys: Keys,
    tolerance: u64,
    seen: Mutex<Seen>,
}

// By hand: `check-config` and the start log show a source, and the tokens
// taken (up to a million) are no part of its configuration.
impl std::fmt::Debug for Mailgun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailgun").field("keys", &self.keys).field("tolerance", &self.tolerance).finish()
    }
}

/// Tokens taken (their SHA-256), each with its body's SHA-256, and when
/// each may be forgotten.
#[derive(Default)]
struct Seen {
    bodies: HashMap<[u8; 32], [u8; 32]>,
    order: VecDeque<(i64, [u8; 32])>,
}

impl Seen {
    /// Remembers `token` with `body` until `until`; false when the token is
    /// remembered with another body.
    fn take(&mut self, token: [u8; 32], body: [u8; 32], now: i64, until: i64) -> bool {
        while let Some(&(expiry, old)) = self.order.front() {
            if expiry >= now && self.order.len() < MAX_TOKENS {
                break;
            }
            self.order.pop_front();
            self.bodies.remove(&old);
        }
        match self.bodies.get(&token) {
            Some(taken) => *taken == body,
            None => {
                self.bodies.insert(token, body);
                self.order.push_back((until, token));
                true
            }
        }
    }
}

impl Mailgun {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        Ok(Self { keys: r.keys(Algorithm::Sha256)?, tolerance: r.tolerance(300)?, seen: Mutex::default() })
    }
}

const FIELD: &str = "the body's signature";

#[derive(Deserialize)]
struct Signature<'a> {
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow)]
    token: Cow<'a, str>,
    #[serde(borrow)]
    signature: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Signed<'a> {
    #[serde(borrow)]
    signature: Option<Signature<'a>>,
}

#[derive(Deserialize)]
struct EventData<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Option<Cow<'a, str>>,
    timestamp: Option<f64>,
}

#[derive(Deserialize)]
struct Delivery<'a> {
    #[serde(borrow, rename = "event-data")]
    event_data: Option<EventData<'a>>,
}

impl Kind for Mailgun {
    fn scheme(&self) -> Option<&'static str> {
        Some("mailgun")
    }

    fn unsigned_fields(&self) -> &'static str {
        "event_id,event_type,event_timestamp"
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        let signed: Signed<'_> =
            serde_json::from_slice(req.body).map_err(|_| Unauthorized::Malformed(FIELD.into()))?;
        let s = signed.signature.ok_or_else(|| Unauthorized::Missing(FIELD.into()))?;
        let ts = secs(s.timestamp.as_bytes()).ok_or_else(|| Unauthorized::Malformed(FIELD.into()))?;
        let candidate = Encoding::Hex
            .decode(s.signature.as_bytes())
            .ok_or_else(|| Unauthorized::Malformed(FIELD.into()))?;
        if !self.keys.any_matches(&[s.timestamp.as_bytes(), s.token.as_bytes()], &[candidate]) {
            return Err(Unauthorized::NoMatch);
        }
        fresh(req.now_secs, ts, self.tolerance, true)?;
        use sha2::Digest as _;
        let token: [u8; 32] = sha2::Sha256::digest(s.token.as_bytes()).into();
        let body: [u8; 32] = sha2::Sha256::digest(req.body).into();
        let until = ts.saturating_add(self.tolerance as i64);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.take(token, body, req.now_secs, until) {
            Ok(())
        } else {
            Err(Unauthorized::Replayed)
        }
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let delivery: Delivery<'_> = ingestor.parse_storable(req.body)?;
        let data = delivery
            .event_data
            .ok_or_else(|| IngestError::Invalid(vec!["event-data should not be empty".into()]))?;
        let at = match data.timestamp {
            Some(t) if t.is_finite() => secs_to_us(t.trunc() as i64)
                .map(|us| us + ((t.fract() * 1e6).round() as i64))
                .ok_or_else(|| {
                    IngestError::Invalid(vec!["event-data.timestamp must be a time PostgreSQL stores".into()])
                })?,
            Some(_) => {
                return Err(IngestError::Invalid(vec![
                    "event-data.timestamp must be a number of seconds".into()
                ]))
            }
            None => req.received_at_us,
        };
        Ok(Admitted::Event(Identity {
            event_id: event_id(data.id.as_deref(), "event-data.id")?,
            event_type: event_type(data.event.as_deref(), "event-data.event")?,
            event_timestamp_us: at,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, source};
    use super::*;

    const FILE: &str =
        "[[source]]\nroute = \"mailgun\"\nkind = \"mailgun\"\nsecrets = [\"key-new\", \"key-old\"]";

    fn body(secret: &str, ts: i64, token: &str) -> Vec<u8> {
        let keys = Keys::new(Algorithm::Sha256, &[secret.as_bytes().to_vec()]);
        let sig = keys.sign(&[ts.to_string().as_bytes(), token.as_bytes()], Encoding::Hex);
        format!(r#"{{"signature":{{"timestamp":"{ts}","token":"{token}","signature":"{sig}"}},"event-data":{{"id":"CPgfbmQMTCKtHW6uIWtuVe","event":"delivered","timestamp":1521472262.908181}}}}"#).into_bytes()
    }

    #[test]
    fn the_signature_in_the_body_and_each_token_once() {
        let s = source(FILE, "mailgun");
        let t = 1_700_000_000;
        let good = body("key-old", t, "tok-1");
        assert_eq!(request(&s, "", &good, t).0, Ok(()));
        assert_eq!(request(&s, "", &good, t + 1).0, Ok(()), "a retry of the same body");
        let forged = String::from_utf8(good.clone()).unwrap().replace("delivered", "failed");
        assert_eq!(
            request(&s, "", forged.as_bytes(), t + 1).0,
            Err(Unauthorized::Replayed),
            "the token on another body"
        );
        assert_eq!(request(&s, "", &body("key-new", t, "tok-2"), t + 300).0, Ok(()));
        assert_eq!(request(&s, "", &body("key-new", t, "tok-3"), t + 301).0, Err(Unauthorized::Stale));
        assert_eq!(request(&s, "", &body("other", t, "tok-4"), t).0, Err(Unauthorized::NoMatch));
        let moved = String::from_utf8(body("key-new", t, "tok-5")).unwrap().replace("tok-5", "tok-6");
        assert_eq!(request(&s, "", moved.as_bytes(), t).0, Err(Unauthorized::NoMatch), "the token is signed");
        assert_eq!(request(&s, "", b"{}", t).0, Err(Unauthorized::Missing(FIELD.into())));
        assert_eq!(request(&s, "", b"not json", t).0, Err(Unauthorized::Malformed(FIELD.into())));
        let Ok(Admitted::Event(id)) = request(&s, "", &good, t).1 else { panic!() };
        assert_eq!((id.event_id.as_str(), id.event_type.as_str()), ("CPgfbmQMTCKtHW6uIWtuVe", "delivered"));
        assert_eq!(id.event_timestamp_us, 1_521_472_262_908_181);
    }

    #[test]
    fn remembered_tokens_are_forgotten_once_expired_and_bounded() {
        let mut seen = Seen::default();
        assert!(seen.take([1; 32], [9; 32], 100, 200));
        assert!(seen.take([1; 32], [9; 32], 150, 250), "the same body");
        assert!(!seen.take([1; 32], [8; 32], 150, 250), "another body");
        assert!(seen.take([2; 32], [8; 32], 201, 300), "the first has expired");
        assert!(seen.take([1; 32], [8; 32], 201, 300), "and is forgotten");
        assert_eq!((seen.bodies.len(), seen.order.len()), (2, 2));
        let s = source(FILE, "mailgun");
        let _ = request(&s, "", &body("key-new", 1_700_000_000, "tok-shown"), 1_700_000_000);
        let shown = format!("{s:?}");
        assert!(shown.contains("redacted") && !shown.contains("key-new"), "{shown}");
    }
}
