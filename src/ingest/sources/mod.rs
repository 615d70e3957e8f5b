//! Webhook sources: who may post to which route, and how their requests
//! become jobs. One file per sender kind (vector's one-file-per-source):
//!
//! | kind | verifies | event id | event type |
//! |---|---|---|---|
//! | [`envelope`] | nothing, or an HMAC header like `hmac` | body `eventId` | – |
//! | [`stripe`] | `Stripe-Signature` `t=…,v1=…` over `t.body` | body `id` | body `type` |
//! | [`github`] | `X-Hub-Signature-256` over the body | `X-GitHub-Delivery` | `X-GitHub-Event` |
//! | [`shopify`] | `X-Shopify-Hmac-Sha256` (base64) over the body | `X-Shopify-Event-Id`, else `-Webhook-Id` | `X-Shopify-Topic` |
//! | [`slack`] | `X-Slack-Signature` over `v0:ts:body` | body `event_id` | body `event.type` |
//! | [`standard_webhooks`] | `webhook-signature` over `id.ts.body` | `webhook-id` | body `type` |
//! | [`paddle`] | `Paddle-Signature` `ts=…;h1=…` over `ts:body` | body `event_id` | body `event_type` |
//! | [`hmac`] | any header, HMAC-SHA256/512/1, hex or base64 | a header or JSON pointer | likewise |
//! | [`discord`] | Ed25519 `X-Signature-Ed25519` over `ts + body` | body `id` | `interaction.<type>` |
//! | [`sendgrid`] | ECDSA P-256 over `ts + body` | `sg_event_id` (a batch: body SHA-256) | `event` |
//! | [`twilio`] | `X-Twilio-Signature` over URL + sorted form | idempotency token, else SID:status | status |
//! | [`hubspot`] | v3: `POST` + URI + body + ts | `eventId` (a batch: body SHA-256) | `subscriptionType` |
//! | [`square`] | URL + body | `event_id` | `type` |
//! | [`zoom`] | `v0:ts:body` | body SHA-256 | `event` |
//! | [`twitch`] | `id + ts + body` | message id | `subscription.type` |
//! | [`mailgun`] | in the body: `timestamp + token` | `event-data.id` | `event-data.event` |
//! | [`gitlab`] | `X-Gitlab-Token`, the secret itself | `Idempotency-Key` / `X-Gitlab-Event-UUID` | `X-Gitlab-Event` |
//! | [`preset`] | ten senders by name on the schemes above | per preset | per preset |
//!
//! The Standard Webhooks senders by name ([`STANDARD_WEBHOOKS_SENDERS`])
//! are that kind itself; [`kind_names`] lists all 33 names.
//!
//! The contract every kind follows ([`Kind`]): the signature is checked on the
//! raw body bytes before anything is parsed, against every (signature ×
//! secret) pair, each decoded and compared in constant time ([`mac`]); a
//! missing, garbled or wrong signature or a timestamp outside the scheme's
//! window is a 401 whose reason names no secret (public-key kinds check a
//! signature instead of a MAC; Mailgun's lives in the body, which is read
//! for it first). Only then is the body
//! parsed, held to what `jsonb` can store, and read for the sender's own id,
//! type and time. A challenge (Slack's `url_verification`, GitHub's `ping`,
//! Discord's `PING`, Zoom's URL validation, Twitch's callback verification)
//! is answered there and then, and not stored.
//!
//! Without a `SOURCES_FILE`, [`Sources::default`] has one unsigned envelope
//! source that takes every `/webhooks/:provider`: the seed's contract.

pub mod catalog;
pub mod discord;
pub mod envelope;
mod file_error;
pub mod github;
pub mod gitlab;
pub mod headers;
pub mod hmac;
pub mod hubspot;
pub mod mac;
pub mod mailgun;
pub mod paddle;
pub mod preset;
pub mod sendgrid;
pub mod shopify;
pub mod slack;
mod spec;
pub mod square;
pub mod standard_webhooks;
pub mod stripe;
pub mod twilio;
pub mod twitch;
pub(crate) mod util;
pub mod zoom;

use std::collections::HashMap;
use std::fmt;

use thiserror::Error;

use super::{IngestError, Ingestor};
pub use catalog::{every_kind_sample, kind_names, STANDARD_WEBHOOKS_SENDERS};
pub use headers::Headers;
use spec::{File, Reading};

/// A request as a sender's kind sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The `:provider` path segment.
    pub route: &'a str,
    /// The request target as received: path and query (the URL-signing
    /// senders sign the public URL, which ends with it).
    pub target: &'a str,
    /// Every header of the request.
    pub headers: Headers<'a>,
    /// The raw body, byte for byte.
    pub body: &'a [u8],
    /// Seconds since the Unix epoch now (timestamped schemes).
    pub now_secs: i64,
    /// When the gateway took the request, µs since the epoch.
    pub received_at_us: i64,
}

/// Why a request is refused as not from the sender (401). The message is
/// safe to show: it names headers, never a secret or a computed MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unauthorized {
    /// The signature header (or a header it needs) is absent: its name.
    Missing(String),
    /// The header is there but cannot be read: its name.
    Malformed(String),
    /// No signature matches any secret.
    NoMatch,
    /// The signed timestamp is outside the scheme's window.
    Stale,
    /// A one-time token already taken (Mailgun's `token`).
    Replayed,
}

impl Unauthorized {
    /// The label of `webhook_source_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing_signature",
            Self::Malformed(_) => "malformed_signature",
            Self::NoMatch => "bad_signature",
            Self::Stale => "stale_timestamp",
            Self::Replayed => "replayed_token",
        }
    }

    /// The 401's message.
    pub fn message(&self) -> String {
        match self {
            Self::Missing(h) => format!("missing {h} header"),
            Self::Malformed(h) => format!("malformed {h} header"),
            Self::NoMatch => "no signature matches".into(),
            Self::Stale => "signature timestamp outside the allowed window".into(),
            Self::Replayed => "this signature's token was already used".into(),
        }
    }
}

/// Every label of `webhook_source_rejected_total`, in a fixed order.
pub const REJECTION_REASONS: [&str; 6] = [
    "missing_signature",
    "malformed_signature",
    "bad_signature",
    "stale_timestamp",
    "replayed_token",
    "invalid_body",
];

/// What a verified request carries for the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The sender's own id: retries carry it again, so it is the dedupe key.
    pub event_id: String,
    /// The sender's event type (empty when it has none).
    pub event_type: String,
    /// When the sender says the event happened, else when it arrived (µs).
    pub event_timestamp_us: i64,
}

/// A verified request: an event to store, or a challenge to answer now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// Store it.
    Event(Identity),
    /// Store it with this JSON as the payload instead of the raw body (a
    /// form delivery's `payload` field, decoded: `jsonb` takes no form).
    Decoded(Identity, Vec<u8>),
    /// Store it and, once Redis has it, answer 200 with this JSON instead
    /// of the 202: a sender that must be answered in its own words
    /// (Discord's deferred interaction response).
    Acknowledged(Identity, &'static [u8]),
    /// Answer 200 with this JSON document and store nothing.
    Reply(Vec<u8>),
    /// Answer 200 with this plain text and store nothing (Twitch's
    /// challenge is echoed as the raw text).
    Text(Vec<u8>),
}

/// One sender kind's rules. Implementations live one per file.
pub trait Kind: Send + Sync + fmt::Debug {
    /// The scheme's name, stored as `verified_by` (`None`: nothing verified).
    fn scheme(&self) -> Option<&'static str>;

    /// Checks the signature over the raw bytes, before any parsing.
    ///
    /// # Errors
    /// [`Unauthorized`], the 401's reason.
    fn verify(&self, req: &Request<'_>) -> Result<(), Unauthorized>;

    /// Reads the sender's id, type and time from a verified request (the
    /// body through `ingestor`, so it is held to what `jsonb` stores).
    ///
    /// # Errors
    /// [`IngestError`], a 400 with its messages.
    fn admit(&self, ingestor: &mut Ingestor, req: &Request<'_>) -> Result<Admitted, IngestError>;

    /// Which of `event_id`, `event_type`, `event_timestamp` this kind reads
    /// from headers its signature does not cover (comma-separated; empty:
    /// none). Stored with every row as `unsigned_fields`.
    fn unsigned_fields(&self) -> &'static str {
        ""
    }

    /// Whether the sender may post `application/x-www-form-urlencoded`
    /// (the kind then finds the JSON in it); others get 415 for it.
    fn takes_form(&self) -> bool {
        false
    }
}

/// What GitHub sends at most ("payloads are capped at 25 MB"): a `github`
/// route's body limit unless its `max_body_bytes` says otherwise.
pub const GITHUB_MAX_BODY: usize = 25 << 20;

/// One route's source.
#[derive(Debug)]
pub struct Source {
    /// The `:provider` path segment it answers (`*` for the default).
    pub route: String,
    /// Its position, for per-source metrics.
    pub index: usize,
    /// The kind's name as configured (`stripe`, `envelope`, …).
    pub kind_name: &'static str,
    /// `max_body_bytes`: this route's body limit, when it has its own
    /// (GitHub: 25 MiB, what GitHub sends at most); else `MAX_BODY_BYTES`.
    pub max_body: Option<usize>,
    /// `silent_after_secs`: the longest quiet the sender's traffic normally
    /// has (exported as `webhook_source_silent_after_seconds` for the alert
    /// on a silent source); `None`: not watched.
    pub silent_after: Option<std::time::Duration>,
    /// The rules.
    pub kind: Box<dyn Kind>,
}

/// Every source of the process, by route.
pub struct Sources {
    list: Vec<Source>,
    by_route: HashMap<String, usize>,
    /// No `SOURCES_FILE`: one envelope source for every route.
    catch_all: bool,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.list.iter()).finish()
    }
}

impl Default for Sources {
    /// The seed's contract: every `/webhooks/:provider` takes the unsigned envelope.
    fn default() -> Self {
        let source = Source {
            route: "*".into(),
            index: 0,
            kind_name: "envelope",
            kind: Box::new(envelope::Envelope::unsigned()),
            max_body: None,
            silent_after: None,
        };
        Self { list: vec![source], by_route: HashMap::new(), catch_all: true }
    }
}

/// A source that cannot be used, named by route (or position) and field.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{source_name}: {field}: {problem}")]
pub struct SourceError {
    /// `source "stripe"` or `source #3`.
    pub source_name: String,
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl Sources {
    /// Reads a sources file. `env` resolves `secrets_env`.
    ///
    /// # Errors
    /// The first problem, naming the source and the field ([`SourceError`]);
    /// a TOML syntax error or an unknown field names its line and column,
    /// never the text there (it may be a secret).
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, SourceError> {
        let file: File = toml::from_str(text).map_err(|e| file_error::describe(&e, text))?;
        if file.source.is_empty() {
            return Err(SourceError {
                source_name: "the file".into(),
                field: "source",
                problem: "no [[source]] table: every route would be 404".into(),
            });
        }
        let mut list = Vec::with_capacity(file.source.len());
        let mut by_route = HashMap::new();
        for (i, spec) in file.source.into_iter().enumerate() {
            let mut r = Reading::new(spec, i + 1, env);
            let route = r.spec.route.clone().ok_or_else(|| r.error("route", "required: the path segment"))?;
            if !crate::job::is_provider(&route) {
                return Err(r.error("route", "must match ^[a-z0-9_-]{1,64}$"));
            }
            if by_route.contains_key(&route) {
                return Err(r.error("route", "another source already has this route"));
            }
            let kind_name = r.spec.kind.clone().ok_or_else(|| r.error("kind", "required"))?;
            let (kind_name, kind) = catalog::read_kind(&kind_name, &mut r)?;
            let max_body = r.max_body((kind_name == "github").then_some(GITHUB_MAX_BODY))?;
            let silent_after = r.silent_after()?;
            r.finish(kind_name)?;
            by_route.insert(route.clone(), i);
            list.push(Source { route, index: i, kind_name, kind, max_body, silent_after });
        }
        Ok(Self { list, by_route, catch_all: false })
    }

    /// The source for `/webhooks/{route}` (every valid route without a file).
    pub fn lookup(&self, route: &str) -> Option<&Source> {
        if self.catch_all {
            return self.list.first();
        }
        self.by_route.get(route).map(|&i| &self.list[i])
    }

    /// The source at `index`.
    pub fn get(&self, index: usize) -> Option<&Source> {
        self.list.get(index)
    }

    /// Every source, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Source> {
        self.list.iter()
    }

    /// Whether routes come from a file (otherwise every route is the envelope's).
    pub fn from_file(&self) -> bool {
        !self.catch_all
    }

    /// The routes that take unsigned requests (`*` for every route).
    pub fn unsigned_routes(&self) -> Vec<&str> {
        self.list.iter().filter(|s| s.kind.scheme().is_none()).map(|s| s.route.as_str()).collect()
    }

    /// Every route with its scheme, for the start log and `check-config`:
    /// The largest body any route takes: `global` (`MAX_BODY_BYTES`) or a
    /// route's own `max_body_bytes` above it.
    pub fn largest_body(&self, global: usize) -> usize {
        self.list.iter().filter_map(|s| s.max_body).fold(global, usize::max)
    }

    /// `stripe=stripe, open=unsigned`, or `*=unsigned` without a file.
    pub fn describe_routes(&self) -> String {
        let route = |s: &Source| format!("{}={}", s.route, s.kind.scheme().unwrap_or("unsigned"));
        self.list.iter().map(route).collect::<Vec<_>>().join(", ")
    }
}

/// What the kinds' unit tests share: a source from a file's text, and a
/// request to it from header lines and a body.
#[cfg(test)]
pub(crate) mod testing {
    use super::headers::HeaderSpans;
    use super::*;

    /// The first source of `file` (which must parse); `route` documents it.
    pub(crate) fn source(file: &str, route: &str) -> Sources {
        let s = Sources::parse(file, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.lookup(route).is_some(), "{route} is in the file");
        s
    }

    /// Verifies and admits `body` with `headers` ("Name: value\r\n" lines)
    /// at `now_secs`, with the default ingestor.
    pub(crate) fn request(
        sources: &Sources,
        headers: &str,
        body: &[u8],
        now_secs: i64,
    ) -> (Result<(), Unauthorized>, Result<Admitted, IngestError>) {
        let source = sources.get(0).expect("one source");
        request_to(sources, &format!("/webhooks/{}", source.route), headers, body, now_secs)
    }

    /// The same, with the request target (path and query) given.
    pub(crate) fn request_to(
        sources: &Sources,
        target: &str,
        headers: &str,
        body: &[u8],
        now_secs: i64,
    ) -> (Result<(), Unauthorized>, Result<Admitted, IngestError>) {
        let block = format!("{headers}\r\n");
        let mut spans = HeaderSpans::default();
        let headers = Headers::parse_block(block.as_bytes(), &mut spans);
        let source = sources.get(0).expect("one source");
        let req = Request { route: &source.route, target, headers, body, now_secs, received_at_us: 7 };
        let verdict = source.kind.verify(&req);
        let admitted = source.kind.admit(&mut Ingestor::default(), &req);
        (verdict, admitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Sources, SourceError> {
        Sources::parse(text, &|name| (name == "GH_SECRETS").then(|| "a, b".to_string()))
    }

    #[test]
    fn a_good_file_gives_one_source_per_route() {
        let s = parse(
            r#"
            [[source]]
            route = "stripe"
            kind = "stripe"
            secrets = ["whsec_x"]
            [[source]]
            route = "gh"
            kind = "github"
            secrets_env = "GH_SECRETS"
            "#,
        )
        .unwrap();
        assert_eq!(s.lookup("stripe").unwrap().kind_name, "stripe");
        assert_eq!(s.lookup("gh").unwrap().index, 1);
        assert!(s.lookup("other").is_none(), "only listed routes exist");
        assert!(s.from_file());
        let shown = format!("{s:?}");
        assert!(!shown.contains("whsec_x") && shown.contains("redacted"), "{shown}");
        assert!(Sources::default().lookup("anything").is_some());
    }

    #[test]
    fn the_shipped_example_parses_with_every_kind() {
        let s = Sources::parse(include_str!("../../../sources.example.toml"), &|_| None).unwrap();
        let kinds: Vec<&str> = s.iter().map(|x| x.kind_name).collect();
        assert_eq!(
            kinds,
            [
                "stripe",
                "github",
                "shopify",
                "slack",
                "standard-webhooks",
                "paddle",
                "hmac",
                "discord",
                "sendgrid",
                "twilio",
                "zoom",
                "mailgun",
                "gitlab",
                "linear",
                "envelope"
            ]
        );
        let every = Sources::parse(&every_kind_sample(), &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = every.iter().map(|s| s.kind_name).collect();
        assert_eq!(names, kind_names());
        // What check-config and the start log show of every kind: no secret.
        let shown = format!("{every:?}");
        assert!(!shown.contains("sample-secret") && !shown.contains("c2FtcGxl"), "{shown}");
        assert!(kind_names().len() >= 33, "{}", kind_names().len());
    }

    #[test]
    fn every_problem_names_the_source_and_the_field() {
        let cases = [
            ("[[source]]\nroute = \"a\"\nkind = \"nope\"", "kind", "unknown kind"),
            ("[[source]]\nroute = \"a\"\nkind = \"stripe\"", "secrets", "required"),
            ("[[source]]\nroute = \"a\"\nkind = \"stripe\"\nsecrets = []", "secrets", "must not be empty"),
            ("[[source]]\nroute = \"a\"\nkind = \"stripe\"\nsecrets = [\"\"]", "secrets", "empty"),
            ("[[source]]\nkind = \"stripe\"\nsecrets = [\"x\"]", "route", "required"),
            ("[[source]]\nroute = \"A!\"\nkind = \"stripe\"\nsecrets = [\"x\"]", "route", "must match"),
            (
                "[[source]]\nroute = \"a\"\nkind = \"stripe\"\nsecrets = [\"x\"]\n[[source]]\nroute = \"a\"\nkind = \"github\"\nsecrets = [\"x\"]",
                "route",
                "already",
            ),
            (
                "[[source]]\nroute = \"a\"\nkind = \"standard-webhooks\"\nsecrets = [\"whsec_%%%\"]",
                "secrets",
                "base64",
            ),
            ("[[source]]\nroute = \"a\"\nkind = \"hmac\"\nsecrets = [\"x\"]\nid_header = \"X-Id\"", "header", "required"),
            ("[[source]]\nroute = \"a\"\nkind = \"stripe\"\nsecrets = [\"x\"]\nheader = \"X\"", "header", "not used"),
            ("[[source]]\nroute = \"a\"\nkind = \"github\"\nsecrets_env = \"UNSET\"", "secrets_env", "unset"),
            ("[[source]]\nroute = \"a\"\nkind = \"stripe\"\nsecrte = [\"x\"]", "toml", "unknown field"),
            ("", "source", "no [[source]]"),
        ];
        for (text, field, problem) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(e.to_string().contains(problem), "{text}: {e}");
        }
        let e = parse("[[source]]\nroute = \"pay\"\nkind = \"stripe\"").unwrap_err();
        assert!(e.to_string().starts_with("source \"pay\": secrets:"), "{e}");
    }
}
