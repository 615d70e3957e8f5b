//! `kind = "square"`: Square's `x-square-hmacsha256-signature`, the base64
//! HMAC-SHA256, keyed with the subscription's signature key, of the
//! notification URL followed by the body, as `squareup`'s
//! `square.utils.webhooks_helper.verify_signature` checks it (it verifies
//! the tests). The notification URL is `public_url` followed by the
//! request's own path and query: it must be the URL as entered in Square's
//! Developer portal, byte for byte. Square signs no timestamp: a captured
//! request replays until the key changes; its `event_id` makes a replay one
//! row, not two.
//!
//! Stored: `event_id` (the same on every retry), `type`, and `created_at`.
//!
//! ```toml
//! [[source]]
//! route = "square"
//! kind = "square"
//! secrets = ["<signature key>"]
//! public_url = "https://hooks.example.com"
//! ```

use std::borrow::Cow;

use serde::Deserialize;

use super::mac::{Algorithm, Encoding, Keys};
use super::spec::Reading;
use super::util::{event_id, event_type, required, sender_time};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const SIGNATURE: &str = "x-square-hmacsha256-signature";

/// The Square source.
#[derive(Debug)]
pub struct Square {
    keys: Keys,
    public_url: String,
}

impl Square {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        Ok(Self { keys: r.keys(Algorithm::Sha256)?, public_url: r.public_url()? })
    }
}

#[derive(Deserialize)]
struct Event<'a> {
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    created_at: Option<Cow<'a, str>>,
}

impl Kind for Square {
    fn scheme(&self) -> Option<&'static str> {
        Some("square")
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        let encoded = required(&req.headers, SIGNATURE)?;
        let candidate =
            Encoding::Base64.decode(encoded).ok_or_else(|| Unauthorized::Malformed(SIGNATURE.into()))?;
        // The notification URL is the configured origin and the request's own target.
        if self.keys.any_matches(&[self.public_url.as_bytes(), req.target.as_bytes(), req.body], &[candidate])
        {
            Ok(())
        } else {
            Err(Unauthorized::NoMatch)
        }
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let event: Event<'_> = ingestor.parse_storable(req.body)?;
        Ok(Admitted::Event(Identity {
            event_id: event_id(event.event_id.as_deref(), "event_id")?,
            event_type: event_type(event.kind.as_deref(), "type")?,
            event_timestamp_us: sender_time(event.created_at.as_deref(), "created_at")?
                .unwrap_or(req.received_at_us),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::request_to;
    use super::super::Sources;
    use super::*;

    const FILE: &str = "[[source]]\nroute = \"square\"\nkind = \"square\"\nsecrets = [\"asdf1234\"]\npublic_url = \"https://webhook.site\"";
    const BODY: &[u8] = br#"{"merchant_id":"MLEFBHHSJGVHD","type":"payment.created","event_id":"ac3ac95b-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z","data":{}}"#;

    #[test]
    fn signatures_over_the_notification_url_and_body() {
        let s = Sources::parse(FILE, &|_| None).unwrap();
        let target = "/webhooks/square";
        let keys = Keys::new(Algorithm::Sha256, &[b"asdf1234".to_vec()]);
        let sig = keys.sign(&[b"https://webhook.site/webhooks/square", BODY], Encoding::Base64);
        let headers = format!("{SIGNATURE}: {sig}\r\n");
        let (verdict, admitted) = request_to(&s, target, &headers, BODY, 0);
        assert_eq!(verdict, Ok(()));
        let Ok(Admitted::Event(id)) = admitted else { panic!() };
        assert_eq!(
            (id.event_id.as_str(), id.event_type.as_str()),
            ("ac3ac95b-f97d-458c-a6e6-18981597e05f", "payment.created")
        );
        assert_eq!(id.event_timestamp_us, 1_657_744_259_037_340);
        assert_eq!(request_to(&s, "/webhooks/square?x=1", &headers, BODY, 0).0, Err(Unauthorized::NoMatch));
        assert_eq!(request_to(&s, target, &headers, b"{}", 0).0, Err(Unauthorized::NoMatch));
        assert_eq!(request_to(&s, target, "", BODY, 0).0, Err(Unauthorized::Missing(SIGNATURE.into())));
    }
}
