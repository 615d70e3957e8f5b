//! `kind = "github"`: `X-Hub-Signature-256: sha256=<hex>`, an HMAC-SHA256
//! of the body, as octokit's `verify` checks it (the prefix is required, a
//! signature that is not 32 bytes never matches; the legacy SHA-1
//! `X-Hub-Signature` is not accepted). GitHub's `ping`, sent when a hook is
//! created, is answered 200 and not stored.
//!
//! Both content types a hook can be set to are taken: `application/json`,
//! and `application/x-www-form-urlencoded` (the default GitHub offers for a
//! new hook), whose body is `payload=<the JSON, percent-encoded>`. The
//! signature covers the form's raw bytes; the decoded JSON is what is
//! stored, held to what `jsonb` takes like any body.
//!
//! Stored: `X-GitHub-Delivery` as the event id, `X-GitHub-Event` as the
//! type, the arrival time (GitHub signs no timestamp). A delivery GUID is per
//! event, not per hook: two hooks (a repository's and its organisation's)
//! sending the same event to one route send the same GUID, and would be
//! stored once. `dedupe_on = "hook-and-delivery"` keeps them apart
//! (`<X-GitHub-Hook-ID>:<delivery>`).
//!
//! ```toml
//! [[source]]
//! route = "github"
//! kind = "github"
//! secrets = ["…"]
//! # dedupe_on = "hook-and-delivery"
//! ```

use super::hmac::HeaderSignature;
use super::mac::Encoding;
use super::spec::Reading;
use super::util::{event_id, event_type, form_payload, header_text, is_form};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

/// The GitHub source.
#[derive(Debug)]
pub struct GitHub {
    signature: HeaderSignature,
    per_hook: bool,
}

impl GitHub {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        let per_hook = match r.text("dedupe_on").as_deref() {
            None | Some("delivery") => false,
            Some("hook-and-delivery") => true,
            Some(_) => return Err(r.error("dedupe_on", "`delivery` (default) or `hook-and-delivery`")),
        };
        let signature = HeaderSignature::fixed(r, &["X-Hub-Signature-256"], Some("sha256="), Encoding::Hex)?;
        Ok(Self { signature, per_hook })
    }
}

impl Kind for GitHub {
    fn scheme(&self) -> Option<&'static str> {
        Some("github")
    }

    // X-GitHub-Delivery and X-GitHub-Event are not under the MAC: only the body is.
    fn unsigned_fields(&self) -> &'static str {
        "event_id,event_type"
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        self.signature.verify(req)
    }

    fn takes_form(&self) -> bool {
        true
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let decoded = is_form(req).then(|| form_payload(req.body)).transpose()?;
        // The body is stored: it must be JSON jsonb takes, whatever GitHub sent.
        let _: serde::de::IgnoredAny = ingestor.parse_storable(decoded.as_deref().unwrap_or(req.body))?;
        let kind = header_text(&req.headers, &["X-GitHub-Event"]);
        if kind == Some("ping") {
            return Ok(Admitted::Reply(br#"{"ok":true,"event":"ping"}"#.to_vec()));
        }
        let delivery = header_text(&req.headers, &["X-GitHub-Delivery"]);
        let id = match (self.per_hook, delivery) {
            (true, Some(d)) => {
                let hook = header_text(&req.headers, &["X-GitHub-Hook-ID"]).unwrap_or("");
                Some(format!("{hook}:{d}"))
            }
            (_, d) => d.map(str::to_string),
        };
        let identity = Identity {
            event_id: event_id(id.as_deref(), "the X-GitHub-Delivery header")?,
            event_type: event_type(kind, "the X-GitHub-Event header")?,
            event_timestamp_us: req.received_at_us,
        };
        Ok(match decoded {
            Some(json) => Admitted::Decoded(identity, json),
            None => Admitted::Event(identity),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, source};
    use super::*;

    const FILE: &str =
        "[[source]]\nroute = \"github\"\nkind = \"github\"\nsecrets = [\"It's a Secret to Everybody\"]";

    #[test]
    fn the_docs_vector_passes_and_its_variants_do_not() {
        // docs.github.com: this secret, a body of "Hello, World!" (not JSON, so
        // it stops at the body check, after verification).
        let s = source(FILE, "github");
        let sig = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let verdict = |h: &str| request(&s, h, b"Hello, World!", 0).0;
        assert_eq!(verdict(&format!("X-Hub-Signature-256: sha256={sig}\r\n")), Ok(()));
        assert_eq!(
            verdict(&format!("X-Hub-Signature-256: sha256={}\r\n", &sig[..62])),
            Err(Unauthorized::NoMatch)
        );
        assert_eq!(
            verdict(&format!("X-Hub-Signature-256: {sig}\r\n")),
            Err(Unauthorized::Malformed("X-Hub-Signature-256".into()))
        );
        assert_eq!(
            verdict("X-Hub-Signature: sha1=abc\r\n"),
            Err(Unauthorized::Missing("X-Hub-Signature-256".into()))
        );
        assert_eq!(verdict("X-Hub-Signature-256: sha256=\r\n"), Err(Unauthorized::NoMatch));
    }

    #[test]
    fn ping_is_answered_and_events_carry_the_delivery_and_event_headers() {
        let s = source(FILE, "github");
        let (_, ping) =
            request(&s, "X-GitHub-Event: ping\r\nX-GitHub-Delivery: d-0\r\n", b"{\"zen\":\"x\"}", 0);
        assert!(matches!(ping, Ok(Admitted::Reply(_))));
        let (_, push) = request(
            &s,
            "X-GitHub-Event: push\r\nX-GitHub-Delivery: d-1\r\nX-GitHub-Hook-ID: 9\r\n",
            b"{}",
            0,
        );
        let Ok(Admitted::Event(id)) = push else { panic!("{push:?}") };
        assert_eq!((id.event_id.as_str(), id.event_type.as_str(), id.event_timestamp_us), ("d-1", "push", 7));
        let per_hook = source(&format!("{FILE}\ndedupe_on = \"hook-and-delivery\""), "github");
        let (_, push) = request(
            &per_hook,
            "X-GitHub-Event: push\r\nX-GitHub-Delivery: d-1\r\nX-GitHub-Hook-ID: 9\r\n",
            b"{}",
            0,
        );
        let Ok(Admitted::Event(id)) = push else { panic!("{push:?}") };
        assert_eq!(id.event_id, "9:d-1");
        let (_, none) = request(&s, "X-GitHub-Event: push\r\n", b"{}", 0);
        assert_eq!(none.unwrap_err().messages(), ["the X-GitHub-Delivery header should not be empty"]);
    }

    #[test]
    fn a_form_delivery_stores_its_decoded_payload_field() {
        let s = source(FILE, "github");
        let head = "Content-Type: application/x-www-form-urlencoded\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: d-2\r\n";
        let (_, push) = request(
            &s,
            head,
            b"payload=%7B%22ref%22%3A%22refs%2Fheads%2Fmain%22%2C%22a%22%3A%22x+y%2Bz%22%7D",
            0,
        );
        let Ok(Admitted::Decoded(id, json)) = push else { panic!("{push:?}") };
        assert_eq!(id.event_id, "d-2");
        assert_eq!(json, br#"{"ref":"refs/heads/main","a":"x y+z"}"#);
        let (_, ping) = request(
            &s,
            "Content-Type: application/x-www-form-urlencoded\r\nX-GitHub-Event: ping\r\n",
            b"payload=%7B%22zen%22%3A%22x%22%7D",
            0,
        );
        assert!(matches!(ping, Ok(Admitted::Reply(_))), "{ping:?}");
        for bad in
            [&b"ref=x"[..], b"payload=%7B&payload=%7D", b"payload=%7B%22a%22%3A%FF%22%7D", b"payload=%7B"]
        {
            let (_, refused) = request(&s, head, bad, 0);
            assert!(matches!(refused, Err(IngestError::Invalid(_) | IngestError::Json(_))), "{refused:?}");
        }
    }
}
