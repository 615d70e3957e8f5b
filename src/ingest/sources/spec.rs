//! The `SOURCES_FILE` as written: one `[[source]]` table per route. Fields
//! are read here and checked by the kind that uses them; every problem names
//! the source (its route, or its position) and the field.

use serde::Deserialize;

use super::mac::{Algorithm, Encoding, Keys};
use super::SourceError;

/// The file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    pub(super) source: Vec<Spec>,
}

/// One `[[source]]` table, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Spec {
    pub(super) route: Option<String>,
    pub(super) kind: Option<String>,
    pub(super) secrets: Option<Vec<String>>,
    pub(super) secrets_env: Option<String>,
    pub(super) tolerance_secs: Option<u64>,
    pub(super) header: Option<String>,
    pub(super) algorithm: Option<String>,
    pub(super) encoding: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) id_header: Option<String>,
    pub(super) id_pointer: Option<String>,
    pub(super) type_header: Option<String>,
    pub(super) type_pointer: Option<String>,
    pub(super) dedupe_on: Option<String>,
    pub(super) max_body_bytes: Option<u64>,
    pub(super) silent_after_secs: Option<u64>,
    pub(super) public_keys: Option<Vec<String>>,
    pub(super) public_url: Option<String>,
}

/// A [`Spec`] being turned into a source: remembers which fields were used,
/// so one that the kind does not read is an error rather than ignored.
pub(crate) struct Reading<'a> {
    pub(super) spec: Spec,
    /// How problems name this source: `source "stripe"` or `source #3`.
    pub(super) name: String,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    used: Vec<&'static str>,
}

impl<'a> Reading<'a> {
    pub(super) fn new(spec: Spec, position: usize, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        let name = match &spec.route {
            Some(r) => format!("source {r:?}"),
            None => format!("source #{position}"),
        };
        Self { spec, name, env, used: vec!["route", "kind"] }
    }

    pub(super) fn error(&self, field: &'static str, problem: impl Into<String>) -> SourceError {
        SourceError { source_name: self.name.clone(), field, problem: problem.into() }
    }

    fn mark(&mut self, field: &'static str) {
        self.used.push(field);
    }

    /// The secrets, from `secrets` or the comma list in `secrets_env`;
    /// required, each non-empty. Their bytes are as written.
    pub(super) fn secrets(&mut self) -> Result<Vec<String>, SourceError> {
        self.mark("secrets");
        self.mark("secrets_env");
        let listed = match (self.spec.secrets.take(), self.spec.secrets_env.take()) {
            (Some(_), Some(_)) => {
                return Err(self.error("secrets", "give `secrets` or `secrets_env`, not both"))
            }
            (Some(list), None) => list,
            (None, Some(var)) => match (self.env)(&var) {
                Some(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
                _ => return Err(self.error("secrets_env", format!("the variable {var} is unset or empty"))),
            },
            (None, None) => return Err(self.error("secrets", "required: a list of signing secrets")),
        };
        if listed.is_empty() {
            return Err(self.error("secrets", "must not be empty"));
        }
        if listed.iter().any(|s| s.is_empty()) {
            return Err(self.error("secrets", "a secret is empty"));
        }
        Ok(listed)
    }

    /// Keys for `secrets()` taken verbatim.
    pub(super) fn keys(&mut self, algorithm: Algorithm) -> Result<Keys, SourceError> {
        let secrets: Vec<Vec<u8>> = self.secrets()?.into_iter().map(String::into_bytes).collect();
        Ok(Keys::new(algorithm, &secrets))
    }

    /// `public_keys`: the sender's verification keys (public, so shown by
    /// `check-config`), each decoded by `decode` or refused with its message.
    pub(super) fn public_keys<K>(
        &mut self,
        decode: impl Fn(&str) -> Result<K, String>,
    ) -> Result<Vec<K>, SourceError> {
        self.mark("public_keys");
        let listed = self.spec.public_keys.take().unwrap_or_default();
        if listed.is_empty() {
            return Err(self.error("public_keys", "required: the sender's public verification key"));
        }
        let mut keys = Vec::with_capacity(listed.len());
        for (i, text) in listed.iter().enumerate() {
            match decode(text.trim()) {
                Ok(k) => keys.push(k),
                Err(why) => return Err(self.error("public_keys", format!("key #{}: {why}", i + 1))),
            }
        }
        Ok(keys)
    }

    /// `public_url`: the origin the sender calls (`https://host[:port]`, and
    /// any path prefix a proxy strips before the gateway sees the request),
    /// required by the kinds that sign the URL.
    pub(super) fn public_url(&mut self) -> Result<String, SourceError> {
        let url = self.text("public_url").ok_or_else(|| {
            self.error("public_url", "required: the public URL's origin, such as https://hooks.example.com")
        })?;
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !url.contains(['?', '#', ' ']) => {
                Ok(url.trim_end_matches('/').to_string())
            }
            _ => Err(self.error(
                "public_url",
                "an origin such as https://hooks.example.com (optionally with a path prefix; no query)",
            )),
        }
    }

    /// `max_body_bytes`, the route's own body limit (`None`: `MAX_BODY_BYTES`,
    /// unless the kind has a default of its own).
    pub(super) fn max_body(&mut self, default: Option<usize>) -> Result<Option<usize>, SourceError> {
        self.mark("max_body_bytes");
        match self.spec.max_body_bytes {
            Some(n) if !(64..=1 << 30).contains(&n) => {
                Err(self.error("max_body_bytes", "between 64 and 1073741824"))
            }
            Some(n) => Ok(Some(n as usize)),
            None => Ok(default),
        }
    }

    /// `silent_after_secs`: how long the sender may stay quiet before the
    /// source counts as silent (exported for the alert rule; every kind).
    pub(super) fn silent_after(&mut self) -> Result<Option<std::time::Duration>, SourceError> {
        self.mark("silent_after_secs");
        match self.spec.silent_after_secs {
            Some(t) if !(60..=31 * 86_400).contains(&t) => {
                Err(self.error("silent_after_secs", "between 60 and 2678400 (31 days)"))
            }
            other => Ok(other.map(std::time::Duration::from_secs)),
        }
    }

    /// `tolerance_secs`, or the scheme's default.
    pub(super) fn tolerance(&mut self, default: u64) -> Result<u64, SourceError> {
        self.mark("tolerance_secs");
        match self.spec.tolerance_secs {
            Some(t) if t > 31 * 86_400 => Err(self.error("tolerance_secs", "at most 31 days (2678400)")),
            Some(t) => Ok(t),
            None => Ok(default),
        }
    }

    pub(super) fn text(&mut self, field: &'static str) -> Option<String> {
        self.mark(field);
        let value = match field {
            "header" => self.spec.header.take(),
            "algorithm" => self.spec.algorithm.take(),
            "encoding" => self.spec.encoding.take(),
            "prefix" => self.spec.prefix.take(),
            "id_header" => self.spec.id_header.take(),
            "id_pointer" => self.spec.id_pointer.take(),
            "type_header" => self.spec.type_header.take(),
            "type_pointer" => self.spec.type_pointer.take(),
            "dedupe_on" => self.spec.dedupe_on.take(),
            "public_url" => self.spec.public_url.take(),
            _ => None,
        };
        value.map(|v| v.trim().to_string())
    }

    pub(super) fn algorithm(&mut self) -> Result<Algorithm, SourceError> {
        match self.text("algorithm") {
            None => Ok(Algorithm::Sha256),
            Some(a) => {
                Algorithm::parse(&a).ok_or_else(|| self.error("algorithm", "`sha256`, `sha512` or `sha1`"))
            }
        }
    }

    pub(super) fn encoding(&mut self) -> Result<Encoding, SourceError> {
        match self.text("encoding") {
            None => Ok(Encoding::Hex),
            Some(e) => Encoding::parse(&e).ok_or_else(|| self.error("encoding", "`hex` or `base64`")),
        }
    }

    /// A header name: visible ASCII without `:` or spaces.
    pub(super) fn header_name(&mut self, field: &'static str) -> Result<Option<String>, SourceError> {
        match self.text(field) {
            Some(h) if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') => {
                Err(self.error(field, "a header name such as X-Signature"))
            }
            other => Ok(other),
        }
    }

    /// A JSON pointer (RFC 6901): empty is the whole document, else `/a/b`.
    pub(super) fn pointer(&mut self, field: &'static str) -> Result<Option<String>, SourceError> {
        match self.text(field) {
            Some(p) if !p.starts_with('/') => Err(self.error(field, "a JSON pointer such as /data/id")),
            other => Ok(other),
        }
    }

    /// Fails on a field the kind did not read.
    pub(super) fn finish(self, kind: &str) -> Result<(), SourceError> {
        let s = &self.spec;
        let given: [(&'static str, bool); 16] = [
            ("route", true),
            ("kind", true),
            ("secrets", s.secrets.is_some()),
            ("secrets_env", s.secrets_env.is_some()),
            ("tolerance_secs", s.tolerance_secs.is_some()),
            ("header", s.header.is_some()),
            ("algorithm", s.algorithm.is_some()),
            ("encoding", s.encoding.is_some()),
            ("prefix", s.prefix.is_some()),
            ("id_header", s.id_header.is_some()),
            ("id_pointer", s.id_pointer.is_some()),
            ("type_header", s.type_header.is_some()),
            ("type_pointer", s.type_pointer.is_some()),
            ("dedupe_on", s.dedupe_on.is_some()),
            ("public_keys", s.public_keys.is_some()),
            ("public_url", s.public_url.is_some()),
        ];
        match given.iter().find(|(f, set)| *set && !self.used.contains(f)) {
            Some((field, _)) => Err(self.error(field, format!("not used by kind {kind:?}"))),
            None => Ok(()),
        }
    }
}
