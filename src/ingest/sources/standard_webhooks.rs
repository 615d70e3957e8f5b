//! `kind = "standard-webhooks"`: the Standard Webhooks spec (Svix and the
//! senders built on it: Clerk, Resend, OpenAI, Replicate…).
//! `webhook-signature: v1,<base64>[ v1,<base64>…]` is an HMAC-SHA256 of
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed with the secret's
//! base64 **decoded** bytes after its `whsec_` prefix. The `svix-*` spellings
//! of the three headers are read too. As the reference library does it:
//! the timestamp must be within `tolerance_secs` (default 300) of now in
//! both directions; space-separated signatures are candidates; versions
//! other than `v1` are skipped; a signature that does not decode to 32
//! bytes never matches (the `v1,` bug, svix-webhooks#1190).
//!
//! Stored: `webhook-id` as the event id, body `type` (the spec's), and the
//! signed `webhook-timestamp` as the event time.
//!
//! ```toml
//! [[source]]
//! route = "clerk"
//! kind = "standard-webhooks"
//! secrets = ["whsec_…"]
//! ```

use std::borrow::Cow;

use base64::Engine as _;
use serde::Deserialize;

use super::mac::{Algorithm, Encoding, Keys};
use super::spec::Reading;
use super::util::{either, event_id, event_type, fresh, header_text, secs, secs_to_us};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const ID: [&str; 2] = ["webhook-id", "svix-id"];
const TIMESTAMP: [&str; 2] = ["webhook-timestamp", "svix-timestamp"];
const SIGNATURE: [&str; 2] = ["webhook-signature", "svix-signature"];

/// The Standard Webhooks source.
#[derive(Debug)]
pub struct StandardWebhooks {
    keys: Keys,
    tolerance: u64,
}

impl StandardWebhooks {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        let mut keys = Vec::new();
        for secret in r.secrets()? {
            let encoded = secret.strip_prefix("whsec_").unwrap_or(&secret);
            match base64::engine::general_purpose::STANDARD.decode(encoded) {
                Ok(key) if !key.is_empty() => keys.push(key),
                _ => return Err(r.error("secrets", "a secret must be base64 after its whsec_ prefix")),
            }
        }
        Ok(Self { keys: Keys::new(Algorithm::Sha256, &keys), tolerance: r.tolerance(300)? })
    }
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
}

impl Kind for StandardWebhooks {
    fn scheme(&self) -> Option<&'static str> {
        Some("standard-webhooks")
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        let h = &req.headers;
        let (id, ts_text, signature) = (either(h, &ID)?, either(h, &TIMESTAMP)?, either(h, &SIGNATURE)?);
        let ts = secs(ts_text).ok_or_else(|| Unauthorized::Malformed(TIMESTAMP[0].into()))?;
        fresh(req.now_secs, ts, self.tolerance, true)?;
        let mut candidates = Vec::new();
        for element in signature.split(|&b| b == b' ').filter(|e| !e.is_empty()) {
            let comma = element.iter().position(|&b| b == b',');
            let Some(comma) = comma else { return Err(Unauthorized::Malformed(SIGNATURE[0].into())) };
            if &element[..comma] == b"v1" {
                candidates.extend(Encoding::Base64.decode(&element[comma + 1..]));
            }
        }
        if self.keys.any_matches(&[id, b".", ts_text, b".", req.body], &candidates) {
            Ok(())
        } else {
            Err(Unauthorized::NoMatch)
        }
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let body: Body<'_> = ingestor.parse_storable(req.body)?;
        let h = &req.headers;
        let at = header_text(h, &TIMESTAMP).and_then(|t| secs(t.as_bytes())).and_then(secs_to_us);
        Ok(Admitted::Event(Identity {
            event_id: event_id(header_text(h, &ID), "the webhook-id header")?,
            event_type: event_type(body.kind.as_deref(), "type")?,
            event_timestamp_us: at.unwrap_or(req.received_at_us),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, source};
    use super::*;

    // The standard-webhooks library's own test vector.
    const FILE: &str =
        "[[source]]\nroute = \"sw\"\nkind = \"standard-webhooks\"\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]";
    const BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIG: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn headers(sig: &str) -> String {
        format!("webhook-id: msg_27UH4WbU6Z5A5EzD8u03UvzRbpk\r\nwebhook-timestamp: 1649367553\r\nwebhook-signature: {sig}\r\n")
    }

    #[test]
    fn the_reference_vector_passes_and_its_variants_do_not() {
        let s = source(FILE, "sw");
        let t = 1_649_367_553;
        assert_eq!(request(&s, &headers(SIG), BODY, t).0, Ok(()));
        assert_eq!(request(&s, &headers(&format!("v1a,xyz v1,AAAA {SIG}")), BODY, t).0, Ok(()), "any v1");
        let svix = headers(SIG).replace("webhook-", "svix-");
        assert_eq!(request(&s, &svix, BODY, t).0, Ok(()), "svix-* headers");
        assert_eq!(
            request(&s, &headers("v1,"), BODY, t).0,
            Err(Unauthorized::NoMatch),
            "the empty signature"
        );
        assert_eq!(
            request(&s, &headers("v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kg=="), BODY, t).0,
            Err(Unauthorized::NoMatch),
            "31 bytes"
        );
        assert_eq!(request(&s, &headers(SIG), b"{}", t).0, Err(Unauthorized::NoMatch));
        assert_eq!(request(&s, &headers(SIG), BODY, t + 301).0, Err(Unauthorized::Stale));
        assert_eq!(request(&s, &headers(SIG), BODY, t - 301).0, Err(Unauthorized::Stale));
        assert_eq!(
            request(&s, &headers("garbage"), BODY, t).0,
            Err(Unauthorized::Malformed("webhook-signature".into()))
        );
        let (_, admitted) = request(&s, &headers(SIG), BODY, t);
        let Ok(Admitted::Event(id)) = admitted else { panic!("{admitted:?}") };
        assert_eq!(
            (id.event_id.as_str(), id.event_timestamp_us),
            ("msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1_649_367_553_000_000)
        );
    }
}
