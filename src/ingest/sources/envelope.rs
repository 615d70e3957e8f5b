//! `kind = "envelope"`: the seed's contract, `{"provider", "eventId",
//! "timestamp", "data"}` with `provider` equal to the route (see
//! [`crate::ingest::envelope`]). Unsigned by default, as every route is
//! without a `SOURCES_FILE`; with `header` (and `algorithm`, `encoding`,
//! `prefix`, `secrets` as for [`super::hmac`]) the body must carry an HMAC.
//!
//! ```toml
//! [[source]]
//! route = "internal"
//! kind = "envelope"
//! header = "X-Signature"    # optional: without it, anyone may post
//! secrets = ["s3cret"]
//! ```

use super::hmac::HeaderSignature;
use super::spec::Reading;
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

/// The envelope source.
#[derive(Debug)]
pub struct Envelope {
    signature: Option<HeaderSignature>,
}

impl Envelope {
    /// Anyone may post (the default without a sources file).
    pub fn unsigned() -> Self {
        Self { signature: None }
    }

    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        let signature = HeaderSignature::configured(r)?;
        if signature.is_none() && (r.spec.secrets.is_some() || r.spec.secrets_env.is_some()) {
            return Err(r.error("header", "required with secrets: the header that carries the signature"));
        }
        Ok(Self { signature })
    }
}

impl Kind for Envelope {
    fn scheme(&self) -> Option<&'static str> {
        self.signature.as_ref().map(|_| "hmac")
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        match &self.signature {
            Some(s) => s.verify(req),
            None => Ok(()),
        }
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let (event_id, event_timestamp_us) = ingestor.envelope(req.route, req.body)?;
        Ok(Admitted::Event(Identity { event_id, event_type: String::new(), event_timestamp_us }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::mac::{Algorithm, Encoding, Keys};
    use super::super::testing::{request, source};
    use super::*;

    #[test]
    fn a_signed_envelope_needs_its_header_and_an_unsigned_one_nothing() {
        let body = br#"{"provider":"internal","eventId":"e1","timestamp":"2026-01-01","data":{}}"#;
        let signed = source(
            "[[source]]\nroute = \"internal\"\nkind = \"envelope\"\nheader = \"X-Signature\"\nsecrets = [\"k\"]",
            "internal",
        );
        let sig = Keys::new(Algorithm::Sha256, &[b"k".to_vec()]).sign(&[body], Encoding::Hex);
        let (verdict, admitted) = request(&signed, &format!("X-Signature: {sig}\r\n"), body, 0);
        assert_eq!(verdict, Ok(()));
        let Ok(Admitted::Event(id)) = admitted else { panic!("{admitted:?}") };
        assert_eq!(id.event_id, "e1");
        assert_eq!(signed.get(0).unwrap().kind.scheme(), Some("hmac"));
        assert_eq!(request(&signed, "", body, 0).0, Err(Unauthorized::Missing("X-Signature".into())));

        let open = source("[[source]]\nroute = \"internal\"\nkind = \"envelope\"", "internal");
        assert_eq!(request(&open, "", body, 0).0, Ok(()));
        assert_eq!(open.get(0).unwrap().kind.scheme(), None);
        let e =
            Sources::parse("[[source]]\nroute = \"x\"\nkind = \"envelope\"\nsecrets = [\"k\"]", &|_| None)
                .unwrap_err();
        assert_eq!(e.field, "header");
    }

    use super::super::Sources;
}
