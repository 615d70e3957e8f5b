//! `kind = "stripe"`: Stripe's `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]`,
//! an HMAC-SHA256 of `"{t}.{body}"` keyed with the endpoint secret as
//! written (`whsec_…`, prefix included), as stripe-python's `_webhook.py`
//! and stripe-node do it:
//!
//! * the header splits on `,`, each item on the first `=` (an item with
//!   none is skipped); `t` is the first `t`; every `v1` is a candidate (Stripe sends two while a rolled secret
//!   is still active); `v0` and unknown schemes are ignored;
//! * a `v1` that is not 64 hex digits never matches;
//! * the signature is checked first, then the age: older than
//!   `tolerance_secs` (default 300, 0 = unchecked) is refused, a future
//!   timestamp is not (none of Stripe's libraries refuse it).
//!
//! Stored: `id` (`evt_…`, the same on every retry) as the event id, `type`,
//! and `created` as the event time.
//!
//! ```toml
//! [[source]]
//! route = "stripe"
//! kind = "stripe"
//! secrets = ["whsec_…"]
//! tolerance_secs = 300
//! ```

use std::borrow::Cow;

use serde::Deserialize;

use super::mac::{Algorithm, Encoding, Keys};
use super::spec::Reading;
use super::util::{event_id, event_type, fresh, given_time, required, secs, secs_to_us};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const HEADER: &str = "Stripe-Signature";

/// The Stripe source.
#[derive(Debug)]
pub struct Stripe {
    keys: Keys,
    tolerance: u64,
}

impl Stripe {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        Ok(Self { keys: r.keys(Algorithm::Sha256)?, tolerance: r.tolerance(300)? })
    }
}

/// What of a Stripe event the gateway reads.
#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    created: Option<i64>,
}

impl Kind for Stripe {
    fn scheme(&self) -> Option<&'static str> {
        Some("stripe")
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        verify_t_v1(&self.keys, HEADER, req, self.tolerance)
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let event: Event<'_> = ingestor.parse_storable(req.body)?;
        Ok(Admitted::Event(Identity {
            event_id: event_id(event.id.as_deref(), "id")?,
            event_type: event_type(event.kind.as_deref(), "type")?,
            event_timestamp_us: given_time(event.created, secs_to_us, "created", req.received_at_us)?,
        }))
    }
}

/// Stripe's form of signature, which Calendly and Mux took too:
/// `header: t=<unix>,v1=<hex>[,v1=…]`, an HMAC of `"{t}.{body}"`, read as
/// stripe-python reads it (see the module docs); `t` older than
/// `tolerance` seconds (0: unchecked) is refused, a future one is not.
pub(super) fn verify_t_v1(
    keys: &Keys,
    header_name: &str,
    req: &Request<'_>,
    tolerance: u64,
) -> Result<(), Unauthorized> {
    let header = required(&req.headers, header_name)?;
    let malformed = || Unauthorized::Malformed(header_name.into());
    let mut t: Option<&[u8]> = None;
    let mut candidates = Vec::new();
    for item in header.split(|&b| b == b',') {
        let item = item.trim_ascii();
        // An item without `=` is skipped, as stripe-python and
        // stripe-node skip it (a proxy's stray token must not cost a 401).
        let Some(eq) = item.iter().position(|&b| b == b'=') else { continue };
        let (key, value) = (&item[..eq], &item[eq + 1..]);
        match key {
            b"t" if t.is_none() => t = Some(value),
            // A v1 that is not hex cannot match; skipping it lets another match (stripe-go).
            b"v1" => candidates.extend(Encoding::Hex.decode(value)),
            _ => {}
        }
    }
    let t = t.ok_or_else(malformed)?;
    let ts = secs(t).ok_or_else(malformed)?;
    if candidates.is_empty() {
        return Err(Unauthorized::NoMatch);
    }
    if !keys.any_matches(&[t, b".", req.body], &candidates) {
        return Err(Unauthorized::NoMatch);
    }
    fresh(req.now_secs, ts, tolerance, false)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, source};
    use super::*;

    const FILE: &str =
        "[[source]]\nroute = \"stripe\"\nkind = \"stripe\"\nsecrets = [\"whsec_new\", \"whsec_old\"]";
    const BODY: &[u8] =
        br#"{"id":"evt_1","object":"event","type":"invoice.paid","created":1700000000,"data":{}}"#;

    fn v1(secret: &str, t: i64, body: &[u8]) -> String {
        let keys = Keys::new(Algorithm::Sha256, &[secret.as_bytes().to_vec()]);
        keys.sign(&[t.to_string().as_bytes(), b".", body], Encoding::Hex)
    }

    fn verdict(header: &str, now: i64) -> Result<(), Unauthorized> {
        request(&source(FILE, "stripe"), &format!("Stripe-Signature: {header}\r\n"), BODY, now).0
    }

    #[test]
    fn stripe_signatures_as_the_official_libraries_read_them() {
        let t = 1_700_000_100;
        let good = v1("whsec_old", t, BODY);
        assert_eq!(verdict(&format!("t={t},v1={good}"), t), Ok(()));
        assert_eq!(
            verdict(&format!("t={t},v0=abc,v1={}, v1={good},x=1", "0".repeat(64)), t),
            Ok(()),
            "any v1"
        );
        assert_eq!(verdict(&format!("t={t},v1=zz,v1={good}"), t), Ok(()), "a non-hex v1 is skipped");
        assert_eq!(verdict(&format!("t={t},v1={good}"), t + 300), Ok(()), "300 s old");
        assert_eq!(verdict(&format!("t={t},v1={good}"), t + 301), Err(Unauthorized::Stale));
        assert_eq!(verdict(&format!("t={t},v1={good}"), t - 3600), Ok(()), "the future is accepted");
        assert_eq!(
            verdict(&format!("t={t},v1={}", v1("whsec_other", t, BODY)), t),
            Err(Unauthorized::NoMatch)
        );
        assert_eq!(verdict(&format!("t={},v1={good}", t + 1), t), Err(Unauthorized::NoMatch), "t is signed");
        assert_eq!(verdict(&format!("t={t},v1={}", &good[..62]), t), Err(Unauthorized::NoMatch), "31 bytes");
        assert_eq!(verdict(&format!("t={t},v1={good}00"), t), Err(Unauthorized::NoMatch), "33 bytes");
        assert_eq!(verdict(&format!("t={t},v1="), t), Err(Unauthorized::NoMatch), "empty");
        assert_eq!(verdict(&format!("t={t}"), t), Err(Unauthorized::NoMatch));
        for bad in [format!("v1={good}"), "t=soon,v1=00".into(), "garbage".into()] {
            assert_eq!(verdict(&bad, t), Err(Unauthorized::Malformed(HEADER.into())), "{bad}");
        }
        let s = source(FILE, "stripe");
        assert_eq!(request(&s, "", BODY, t).0, Err(Unauthorized::Missing(HEADER.into())));
    }

    #[test]
    fn the_event_id_type_and_creation_time_are_stored() {
        let (_, admitted) = request(&source(FILE, "stripe"), "", BODY, 0);
        let Ok(Admitted::Event(id)) = admitted else { panic!("{admitted:?}") };
        assert_eq!(id.event_id, "evt_1");
        assert_eq!(id.event_type, "invoice.paid");
        assert_eq!(id.event_timestamp_us, 1_700_000_000_000_000);
        let (_, no_id) = request(&source(FILE, "stripe"), "", br#"{"type":"x"}"#, 0);
        assert_eq!(no_id.unwrap_err().messages(), ["id should not be empty"]);
    }
}
