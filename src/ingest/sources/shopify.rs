//! `kind = "shopify"`: `X-Shopify-Hmac-Sha256: <base64>`, an HMAC-SHA256 of
//! the body keyed with the app's client secret. Shopify's newer deliveries
//! spell every header without the `X-` (`Shopify-Hmac-Sha256`…); both are
//! read. After a secret is rotated Shopify may sign with the old one for up
//! to an hour: list both.
//!
//! Stored: `X-Shopify-Event-Id` as the event id (one per event, however many
//! subscriptions deliver it), else `X-Shopify-Webhook-Id` (one per
//! delivery); `dedupe_on = "webhook-id"` prefers the latter.
//! `X-Shopify-Topic` is the type; `X-Shopify-Triggered-At` the event time
//! when it is there (it is not signed, so it is only a record; one that is
//! no instant gets 400, it is never replaced), else the arrival time.
//!
//! ```toml
//! [[source]]
//! route = "shopify"
//! kind = "shopify"
//! secrets = ["…", "…the previous one for an hour"]
//! ```

use super::hmac::HeaderSignature;
use super::mac::Encoding;
use super::spec::Reading;
use super::util::{event_id, event_type, header_text, sender_time};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const EVENT_ID: [&str; 2] = ["X-Shopify-Event-Id", "Shopify-Event-Id"];
const WEBHOOK_ID: [&str; 2] = ["X-Shopify-Webhook-Id", "Shopify-Webhook-Id"];

/// The Shopify source.
#[derive(Debug)]
pub struct Shopify {
    signature: HeaderSignature,
    webhook_id_first: bool,
}

impl Shopify {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        let webhook_id_first = match r.text("dedupe_on").as_deref() {
            None | Some("event-id") => false,
            Some("webhook-id") => true,
            Some(_) => return Err(r.error("dedupe_on", "`event-id` (default) or `webhook-id`")),
        };
        let signature = HeaderSignature::fixed(
            r,
            &["X-Shopify-Hmac-Sha256", "Shopify-Hmac-Sha256"],
            None,
            Encoding::Base64,
        )?;
        Ok(Self { signature, webhook_id_first })
    }
}

impl Kind for Shopify {
    fn scheme(&self) -> Option<&'static str> {
        Some("shopify")
    }

    // The id, topic and trigger time are headers; only the body is under the MAC.
    fn unsigned_fields(&self) -> &'static str {
        "event_id,event_type,event_timestamp"
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        self.signature.verify(req)
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let _: serde::de::IgnoredAny = ingestor.parse_storable(req.body)?;
        let h = &req.headers;
        let (first, second) =
            if self.webhook_id_first { (WEBHOOK_ID, EVENT_ID) } else { (EVENT_ID, WEBHOOK_ID) };
        let id = header_text(h, &first).or_else(|| header_text(h, &second));
        let at = sender_time(
            header_text(h, &["X-Shopify-Triggered-At", "Shopify-Triggered-At"]),
            "the X-Shopify-Triggered-At header",
        )?;
        Ok(Admitted::Event(Identity {
            event_id: event_id(id, "the X-Shopify-Event-Id or X-Shopify-Webhook-Id header")?,
            event_type: event_type(
                header_text(h, &["X-Shopify-Topic", "Shopify-Topic"]),
                "the X-Shopify-Topic header",
            )?,
            event_timestamp_us: at.unwrap_or(req.received_at_us),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::mac::{Algorithm, Keys};
    use super::super::testing::{request, source};
    use super::*;

    const FILE: &str = "[[source]]\nroute = \"shopify\"\nkind = \"shopify\"\nsecrets = [\"s\"]";

    #[test]
    fn both_spellings_of_every_header_are_read() {
        let s = source(FILE, "shopify");
        let body = br#"{"id":1}"#;
        let sig = Keys::new(Algorithm::Sha256, &[b"s".to_vec()]).sign(&[body], Encoding::Base64);
        let old = format!("X-Shopify-Hmac-Sha256: {sig}\r\nX-Shopify-Webhook-Id: w1\r\nX-Shopify-Event-Id: e1\r\nX-Shopify-Topic: orders/create\r\nX-Shopify-Triggered-At: 2026-01-01T00:00:00Z\r\n");
        let (verdict, admitted) = request(&s, &old, body, 0);
        assert_eq!(verdict, Ok(()));
        let Ok(Admitted::Event(id)) = admitted else { panic!("{admitted:?}") };
        assert_eq!((id.event_id.as_str(), id.event_type.as_str()), ("e1", "orders/create"));
        assert_eq!(id.event_timestamp_us, 1_767_225_600_000_000);
        let new = format!("Shopify-Hmac-Sha256: {sig}\r\nShopify-Webhook-Id: w2\r\n");
        let (verdict, admitted) = request(&s, &new, body, 0);
        assert_eq!(verdict, Ok(()));
        let Ok(Admitted::Event(id)) = admitted else { panic!("{admitted:?}") };
        assert_eq!((id.event_id.as_str(), id.event_timestamp_us), ("w2", 7), "webhook id when no event id");
        assert_eq!(
            request(&s, "X-Shopify-Hmac-Sha256: !!\r\n", body, 0).0,
            Err(Unauthorized::Malformed("X-Shopify-Hmac-Sha256".into()))
        );
        let by_webhook = source(&format!("{FILE}\ndedupe_on = \"webhook-id\""), "shopify");
        let Ok(Admitted::Event(id)) = request(&by_webhook, &old, body, 0).1 else { panic!() };
        assert_eq!(id.event_id, "w1");
    }

    #[test]
    fn a_triggered_at_that_is_no_instant_is_refused_not_replaced_by_the_arrival_time() {
        let s = source(FILE, "shopify");
        let body = br#"{"id":1}"#;
        let sig = Keys::new(Algorithm::Sha256, &[b"s".to_vec()]).sign(&[body], Encoding::Base64);
        for at in ["yesterday", "2026-01-01T25:00:00Z", "-005000-01-01T00:00:00Z"] {
            let head = format!(
                "X-Shopify-Hmac-Sha256: {sig}\r\nX-Shopify-Event-Id: e1\r\nX-Shopify-Triggered-At: {at}\r\n"
            );
            let Err(IngestError::Invalid(messages)) = request(&s, &head, body, 0).1 else { panic!("{at}") };
            assert!(messages[0].contains("X-Shopify-Triggered-At"), "{messages:?}");
        }
    }
}
