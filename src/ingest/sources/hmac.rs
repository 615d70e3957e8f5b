//! `kind = "hmac"`: any sender that puts an HMAC of the body in a header.
//!
//! ```toml
//! [[source]]
//! route = "acme"
//! kind = "hmac"
//! secrets = ["s3cret"]
//! header = "X-Acme-Signature"   # required
//! algorithm = "sha256"          # sha256 (default) | sha512 | sha1
//! encoding = "hex"              # hex (default) | base64
//! prefix = "sha256="            # optional, stripped before decoding
//! id_pointer = "/id"            # or id_header = "X-Acme-Delivery" (one is required)
//! type_pointer = "/type"        # or type_header; optional
//! ```
//!
//! The header may hold several signatures separated by commas or spaces
//! (a sender rotating its secret); any one may match any secret. The event
//! time is the arrival time: a generic sender's timestamps are not signed
//! in a known way. [`HeaderSignature`] is the check itself, shared with the
//! envelope, GitHub and Shopify.

use std::borrow::Cow;

use serde_json::Value;

use super::mac::{Algorithm, Encoding, Keys};
use super::spec::Reading;
use super::util::{body_digest_id, event_id, event_type, header_text};
use super::{Admitted, Identity, Kind, Request, SourceError, Unauthorized};
use crate::ingest::{IngestError, Ingestor};

/// An HMAC of the body in one header (spelt one of `headers`).
#[derive(Debug)]
pub struct HeaderSignature {
    headers: Vec<String>,
    prefix: Option<String>,
    encoding: Encoding,
    keys: Keys,
}

impl HeaderSignature {
    /// A fixed scheme (GitHub, Shopify): the header names, prefix and encoding
    /// are the sender's; only the secrets come from the file.
    pub(super) fn fixed(
        r: &mut Reading<'_>,
        headers: &[&str],
        prefix: Option<&str>,
        encoding: Encoding,
    ) -> Result<Self, SourceError> {
        Ok(Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            prefix: prefix.map(str::to_string),
            encoding,
            keys: r.keys(Algorithm::Sha256)?,
        })
    }

    /// A sender's fixed scheme by name (the presets): one header, its
    /// algorithm, prefix and encoding; the secrets from the file.
    pub(super) fn preset(
        r: &mut Reading<'_>,
        header: &str,
        algorithm: Algorithm,
        prefix: Option<&str>,
        encoding: Encoding,
    ) -> Result<Self, SourceError> {
        Ok(Self {
            headers: vec![header.to_string()],
            prefix: prefix.map(str::to_string),
            encoding,
            keys: r.keys(algorithm)?,
        })
    }

    /// `header`, `algorithm`, `encoding`, `prefix` and the secrets from the
    /// file; `None` when no `header` is given.
    pub(super) fn configured(r: &mut Reading<'_>) -> Result<Option<Self>, SourceError> {
        let Some(header) = r.header_name("header")? else { return Ok(None) };
        let algorithm = r.algorithm()?;
        let encoding = r.encoding()?;
        let prefix = r.text("prefix").filter(|p| !p.is_empty());
        Ok(Some(Self { headers: vec![header], prefix, encoding, keys: r.keys(algorithm)? }))
    }

    /// Checks the header's signature(s) over the body.
    pub(crate) fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        let names: Vec<&str> = self.headers.iter().map(String::as_str).collect();
        let value = super::util::either(&req.headers, &names)?;
        let malformed = || Unauthorized::Malformed(self.headers[0].clone());
        let mut candidates = Vec::new();
        for encoded in signatures(value, self.prefix.as_deref().map(str::as_bytes)).ok_or_else(malformed)? {
            candidates.push(self.encoding.decode(encoded).ok_or_else(malformed)?);
        }
        if candidates.is_empty() {
            return Err(malformed());
        }
        if self.keys.any_matches(&[req.body], &candidates) {
            Ok(())
        } else {
            Err(Unauthorized::NoMatch)
        }
    }
}

/// The encoded signatures of a header: items separated by `,` or spaces,
/// each after `prefix` when there is one. The prefix is matched whole
/// before the header is split, so one holding a space or a comma (`sha256 `,
/// `v1, `) still matches. `None`: an item lacks the prefix.
fn signatures<'v>(value: &'v [u8], prefix: Option<&[u8]>) -> Option<Vec<&'v [u8]>> {
    let separator = |b: &u8| *b == b',' || *b == b' ';
    let Some(prefix) = prefix else {
        return Some(value.split(separator).filter(|p| !p.is_empty()).collect());
    };
    let mut out = Vec::new();
    let mut rest = value;
    loop {
        let start = rest.iter().position(|b| !separator(b)).unwrap_or(rest.len());
        rest = &rest[start..];
        if rest.is_empty() {
            return Some(out);
        }
        let after = rest.strip_prefix(prefix)?;
        let end = after.iter().position(separator).unwrap_or(after.len());
        out.push(&after[..end]);
        rest = &after[end..];
    }
}

/// Where a sender's id or type comes from: a header, a JSON pointer into
/// the body, or (a sender with no id stable across retries) the body's
/// SHA-256. Configured here (`id_header`…), fixed by the presets.
#[derive(Debug, Clone)]
pub(super) enum Locator {
    Header(Cow<'static, str>),
    Pointer(Cow<'static, str>),
    BodyDigest,
}

impl Locator {
    fn read(
        r: &mut Reading<'_>,
        header: &'static str,
        pointer: &'static str,
    ) -> Result<Option<Self>, SourceError> {
        match (r.header_name(header)?, r.pointer(pointer)?) {
            (Some(_), Some(_)) => Err(r.error(header, format!("give `{header}` or `{pointer}`, not both"))),
            (Some(h), None) => Ok(Some(Self::Header(h.into()))),
            (None, Some(p)) => Ok(Some(Self::Pointer(p.into()))),
            (None, None) => Ok(None),
        }
    }

    /// The value in `req` (whose body parsed is `body`).
    pub(super) fn find(&self, req: &Request<'_>, body: &Value) -> Option<String> {
        match self {
            Self::Header(h) => header_text(&req.headers, &[h]).map(str::to_string),
            Self::Pointer(p) => match body.pointer(p)? {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            },
            Self::BodyDigest => Some(body_digest_id(req.body)),
        }
    }

    /// How a 400 names it.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Header(h) => format!("the {h} header"),
            Self::Pointer(p) => format!("the body's {p}"),
            Self::BodyDigest => "the body".into(),
        }
    }

    /// What of an id and a type read from these places is only the
    /// headers' word: a body MAC covers no header.
    pub(super) fn unsigned(id: &Self, kind: Option<&Self>) -> &'static str {
        match (id, kind) {
            (Self::Header(_), Some(Self::Header(_))) => "event_id,event_type",
            (Self::Header(_), _) => "event_id",
            (_, Some(Self::Header(_))) => "event_type",
            _ => "",
        }
    }
}

/// The generic HMAC source.
#[derive(Debug)]
pub struct GenericHmac {
    signature: HeaderSignature,
    id: Locator,
    kind: Option<Locator>,
}

impl GenericHmac {
    pub(super) fn read(r: &mut Reading<'_>) -> Result<Self, SourceError> {
        let signature = HeaderSignature::configured(r)?
            .ok_or_else(|| r.error("header", "required: the header that carries the signature"))?;
        let id = Locator::read(r, "id_header", "id_pointer")?.ok_or_else(|| {
            r.error("id_header", "required: `id_header` or `id_pointer`, the sender's event id")
        })?;
        let kind = Locator::read(r, "type_header", "type_pointer")?;
        Ok(Self { signature, id, kind })
    }
}

impl Kind for GenericHmac {
    fn scheme(&self) -> Option<&'static str> {
        Some("hmac")
    }

    // Only the body is under the MAC: an id or type read from a header is not.
    fn unsigned_fields(&self) -> &'static str {
        Locator::unsigned(&self.id, self.kind.as_ref())
    }

    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized> {
        self.signature.verify(req)
    }

    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError> {
        let body: Value = ingestor.parse_storable(req.body)?;
        let id = self.id.find(req, &body);
        let event_type = match &self.kind {
            Some(k) => event_type(k.find(req, &body).as_deref(), &k.describe())?,
            None => String::new(),
        };
        Ok(Admitted::Event(Identity {
            event_id: event_id(id.as_deref(), &self.id.describe())?,
            event_type,
            event_timestamp_us: req.received_at_us,
        }))
    }
}

#[cfg(test)]
mod signature_list {
    use super::signatures;

    #[test]
    fn a_prefix_may_hold_the_separators() {
        let got = |v: &str, p: Option<&str>| {
            signatures(v.as_bytes(), p.map(str::as_bytes))
                .map(|s| s.iter().map(|x| String::from_utf8_lossy(x).into_owned()).collect::<Vec<_>>())
        };
        assert_eq!(got("ab, cd", None), Some(vec!["ab".into(), "cd".into()]));
        assert_eq!(got("v1=ab v1=cd", Some("v1=")), Some(vec!["ab".into(), "cd".into()]));
        assert_eq!(got("sha256 ab", Some("sha256 ")), Some(vec!["ab".into()]));
        assert_eq!(got("v1, ab, v1, cd", Some("v1, ")), Some(vec!["ab".into(), "cd".into()]));
        assert_eq!(got("v1=ab cd", Some("v1=")), None, "an item without the prefix");
        assert_eq!(got("", Some("v1=")), Some(vec![]));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{request, source};
    use super::*;

    const FILE: &str = r#"
        [[source]]
        route = "acme"
        kind = "hmac"
        secrets = ["new", "old"]
        header = "X-Acme-Signature"
        algorithm = "sha512"
        encoding = "base64"
        prefix = "v1="
        id_pointer = "/meta/id"
        type_header = "X-Acme-Event"
    "#;

    fn sign(secret: &str, body: &[u8]) -> String {
        let keys = Keys::new(Algorithm::Sha512, &[secret.as_bytes().to_vec()]);
        format!("v1={}", keys.sign(&[body], Encoding::Base64))
    }

    #[test]
    fn a_configured_hmac_verifies_and_finds_its_id_and_type() {
        let s = source(FILE, "acme");
        let body = br#"{"meta":{"id":42},"x":1}"#;
        let good =
            format!("X-Acme-Signature: v1=AAAA, {}\r\nX-Acme-Event: thing.made\r\n", sign("old", body));
        let (verdict, admitted) = request(&s, &good, body, 0);
        assert_eq!(verdict, Ok(()));
        let Ok(Admitted::Event(id)) = admitted else { panic!("{admitted:?}") };
        assert_eq!((id.event_id.as_str(), id.event_type.as_str()), ("42", "thing.made"));
        for (headers, expected) in [
            (format!("X-Acme-Signature: {}\r\n", sign("wrong", body)), Unauthorized::NoMatch),
            ("X-Other: 1\r\n".to_string(), Unauthorized::Missing("X-Acme-Signature".into())),
            ("X-Acme-Signature: v1=@@@\r\n".to_string(), Unauthorized::Malformed("X-Acme-Signature".into())),
            ("X-Acme-Signature: nope\r\n".to_string(), Unauthorized::Malformed("X-Acme-Signature".into())),
        ] {
            assert_eq!(request(&s, &headers, body, 0).0, Err(expected), "{headers}");
        }
        let no_id = br#"{"x":1}"#;
        let (_, admitted) = request(&s, &format!("X-Acme-Signature: {}\r\n", sign("new", no_id)), no_id, 0);
        assert_eq!(admitted.unwrap_err().messages(), ["the body's /meta/id should not be empty"]);
    }
}
