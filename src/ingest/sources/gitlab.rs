//! `kind = "gitlab"`: GitLab's secret token. GitLab sends the webhook's
//! secret token as it is in `X-Gitlab-Token`; it is compared with every
//! listed secret in constant time (both sides hashed with SHA-256 first,
//! so neither the content nor the length leaks through timing). The token
//! proves who sent the request, not what: the body is not signed. GitLab's
//! signed webhooks (a signing token, `webhook-signature` headers) follow
//! Standard Webhooks: use `kind = "standard-webhooks"` for them.
//!
//! Stored: `Idempotency-Key` as the event id (GitLab 17.4+: the same on
//! every retry), else `X-Gitlab-Event-UUID`; `X-Gitlab-Event` (`Push Hook`,
//! `Merge Request Hook`…) as the type; the arrival time. None of these
//! headers is signed.
//!
//! ```toml
//! [[source]]
//! route = "gitlab"
//! kind = "gitlab"
//! secrets = ["<secret token>"]
//! ```

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use super::spec::Reading;
use super::util::{event_id, event_type, header_text, required};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

const TOKEN: &str = "X-Gitlab-Token";

/// The GitLab source: the SHA-256 of each secret, never the secret itself.
pub struct GitLab {
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for GitLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} secret(s), redacted", self.digests.len())
    }
}

impl GitLab {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        Ok(Self { digests: r.secrets()?.iter().map(|s| Sha256::digest(s.as_bytes()).into()).collect() })
    }
}

impl Kind for GitLab {
    fn scheme(&self) -> Option<&'static str> {
        Some("gitlab")
    }

    fn unsigned_fields(&self) -> &'static str {
        "event_id,event_type"
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        let token: [u8; 32] = Sha256::digest(required(&req.headers, TOKEN)?).into();
        // Every secret is compared, whichever matches: no early exit.
        let matched = self.digests.iter().fold(0u8, |any, d| any | d.ct_eq(&token).unwrap_u8());
        if matched == 1 {
            Ok(())
        } else {
            Err(Unauthorized::NoMatch)
        }
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let _: serde::de::IgnoredAny = ingestor.parse_storable(req.body)?;
        let id = header_text(&req.headers, &["Idempotency-Key", "X-Gitlab-Event-UUID"]);
        Ok(Admitted::Event(Identity {
            event_id: event_id(id, "the X-Gitlab-Event-UUID header")?,
            event_type: event_type(
                header_text(&req.headers, &["X-Gitlab-Event"]),
                "the X-Gitlab-Event header",
            )?,
            event_timestamp_us: req.received_at_us,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, source};
    use super::*;

    const FILE: &str =
        "[[source]]\nroute = \"gitlab\"\nkind = \"gitlab\"\nsecrets = [\"glt-new\", \"glt-old\"]";
    const BODY: &[u8] = br#"{"object_kind":"push","ref":"refs/heads/main"}"#;

    #[test]
    fn the_token_is_any_listed_secret_and_nothing_else() {
        let s = source(FILE, "gitlab");
        let with = |token: &str| {
            format!("X-Gitlab-Token: {token}\r\nX-Gitlab-Event: Push Hook\r\nX-Gitlab-Event-UUID: u-1\r\n")
        };
        assert_eq!(request(&s, &with("glt-old"), BODY, 0).0, Ok(()));
        assert_eq!(request(&s, &with("glt-new"), BODY, 0).0, Ok(()));
        for bad in ["glt-ne", "glt-new2", "GLT-NEW", "x"] {
            assert_eq!(request(&s, &with(bad), BODY, 0).0, Err(Unauthorized::NoMatch), "{bad}");
        }
        assert_eq!(request(&s, "", BODY, 0).0, Err(Unauthorized::Missing(TOKEN.into())));
        let Ok(Admitted::Event(id)) = request(&s, &with("glt-new"), BODY, 0).1 else { panic!() };
        assert_eq!((id.event_id.as_str(), id.event_type.as_str()), ("u-1", "Push Hook"));
        let keyed = format!("{}Idempotency-Key: k-9\r\n", with("glt-new"));
        let Ok(Admitted::Event(id)) = request(&s, &keyed, BODY, 0).1 else { panic!() };
        assert_eq!(id.event_id, "k-9", "the retry-stable key first");
        assert!(!format!("{s:?}").contains("glt-"), "the secrets are not shown");
    }
}
