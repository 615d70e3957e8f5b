//! Stage 2: body → [`WebhookJob`], or the list of reasons it is not one.
//!
//! Input: the `:provider` path segment (already checked against
//! `[a-z0-9_-]{1,64}` by `http/`), the raw body, and the accept time.
//! Output: a job carrying the body **byte for byte** (never re-serialised),
//! or an [`IngestError`] that `http/` turns into a 400 with every message.
//!
//! Parsing reads only the four contract fields and skips the rest without
//! allocating (see [`envelope`]). Which JSON parser runs is decided by
//! measurement (`benches/ingest.rs`, figures in `tuning.md`): both are kept
//! behind [`JsonParser`] so the choice stays measurable.

pub mod envelope;
mod jsonb;
pub mod sources;
pub(crate) mod validate;

use thiserror::Error;

pub use jsonb::DEFAULT_MAX_DEPTH;
pub use validate::{parse_iso8601_us, MAX_EVENT_ID_BYTES, MIN_TIMESTAMP_US};

use crate::job::WebhookJob;
use envelope::Envelope;

/// Why a body is not a job. Both variants are the client's fault (400).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IngestError {
    /// The body is not well-formed JSON (or not UTF-8).
    #[error("body is not valid JSON: {0}")]
    Json(String),
    /// Well-formed JSON that breaks the contract; one message per failed rule.
    #[error("body failed validation: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

impl IngestError {
    /// The messages of the 400 answer, in class-validator's style.
    pub fn messages(&self) -> Vec<String> {
        match self {
            Self::Json(detail) => vec![format!("body must be valid JSON ({detail})")],
            Self::Invalid(messages) => messages.clone(),
        }
    }
}

/// The two JSON parsers, both reading the same [`Envelope`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonParser {
    /// `simd-json`'s serde front end on a scratch copy (it parses in place).
    Simd,
    /// `serde_json` straight from the received bytes.
    Serde,
}

/// Per-core parsing state: reused scratch buffers, so the hot path does not
/// allocate for the parse itself.
pub struct Ingestor {
    parser: JsonParser,
    /// `MAX_JSON_DEPTH`; 0 = unchecked.
    max_depth: usize,
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
}

impl Ingestor {
    /// Parser chosen by `benches/ingest.rs` (see `tuning.md`): serde_json into
    /// borrowed fields ties simd-json on the seed's 230-byte body and is 1.5×
    /// faster on a 3.9 KiB Stripe event, because only four fields are read.
    pub const DEFAULT_PARSER: JsonParser = JsonParser::Serde;

    /// A fresh ingestor using `parser`, refusing nesting deeper than
    /// [`DEFAULT_MAX_DEPTH`].
    pub fn new(parser: JsonParser) -> Self {
        Self {
            parser,
            max_depth: DEFAULT_MAX_DEPTH,
            scratch: Vec::new(),
            buffers: simd_json::Buffers::new(4096),
        }
    }

    /// The same, refusing nesting deeper than `max_depth` (0 = no check).
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Starts over with fresh buffers, as after a panic that may have left
    /// them half-written.
    pub fn reset(&mut self) {
        *self = Self::new(self.parser).with_max_depth(self.max_depth);
    }

    /// Parses and validates `body` posted to `/webhooks/{provider}`. The
    /// provider is taken by value so the router's string becomes the job's.
    ///
    /// # Errors
    /// [`IngestError::Json`] for malformed JSON, [`IngestError::Invalid`] with
    /// every failed rule otherwise.
    pub fn ingest(
        &mut self,
        provider: impl Into<String>,
        body: &[u8],
        received_at_us: i64,
    ) -> Result<WebhookJob, IngestError> {
        let provider = provider.into();
        let (event_id, event_timestamp_us) = self.envelope(&provider, body)?;
        Ok(WebhookJob {
            provider,
            event_id,
            event_type: String::new(),
            event_timestamp_us,
            received_at_us,
            verified_by: None,
            payload: body.to_vec(),
            raw_body: None,
            unsigned_fields: String::new(),
            replay_of: None,
        })
    }

    /// The seed's envelope in `body`, posted to `/webhooks/{provider}`:
    /// its `eventId` and `timestamp` (µs), once the body is known storable.
    ///
    /// # Errors
    /// As [`Ingestor::ingest`].
    pub fn envelope(&mut self, provider: &str, body: &[u8]) -> Result<(String, i64), IngestError> {
        self.before_parse(body)?;
        let identity = match self.parser {
            JsonParser::Serde => {
                // serde_json does not check UTF-8 inside values it skips, and
                // the stored payload must be valid UTF-8 for jsonb: check it all.
                let text = std::str::from_utf8(body)
                    .map_err(|e| IngestError::Json(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
                let env: Envelope<'_> =
                    serde_json::from_str(text).map_err(|e| IngestError::Json(e.to_string()))?;
                extract(provider, &env)?
            }
            JsonParser::Simd => {
                // simd-json unescapes in place; the job must keep the original bytes.
                self.scratch.clear();
                self.scratch.extend_from_slice(body);
                let env: Envelope<'_> =
                    simd_json::serde::from_slice_with_buffers(&mut self.scratch, &mut self.buffers)
                        .map_err(|e| IngestError::Json(e.to_string()))?;
                extract(provider, &env)?
            }
        };
        Self::after_parse(body)?;
        Ok(identity)
    }

    /// A sender's own body format: `body` parsed into `T` (with serde_json,
    /// borrowing from the body), once it is known to be JSON that `jsonb`
    /// stores: UTF-8 throughout, no escape or nesting it refuses, no number
    /// beyond `numeric`.
    ///
    /// # Errors
    /// [`IngestError::Json`] for a body that is not JSON of that shape,
    /// [`IngestError::Invalid`] for one `jsonb` cannot store.
    pub fn parse_storable<'b, T: serde::Deserialize<'b>>(&self, body: &'b [u8]) -> Result<T, IngestError> {
        self.before_parse(body)?;
        let text = std::str::from_utf8(body)
            .map_err(|e| IngestError::Json(format!("invalid UTF-8 at byte {}", e.valid_up_to())))?;
        let parsed = serde_json::from_str(text).map_err(|e| IngestError::Json(e.to_string()))?;
        Self::after_parse(body)?;
        Ok(parsed)
    }

    /// What `jsonb` refuses that is best told before a parse.
    fn before_parse(&self, body: &[u8]) -> Result<(), IngestError> {
        if let Some(message) = jsonb::unstorable_escape(body) {
            return Err(IngestError::Invalid(vec![message.to_string()]));
        }
        if let Some(message) = jsonb::too_deep(body, self.max_depth) {
            return Err(IngestError::Invalid(vec![message]));
        }
        Ok(())
    }

    /// After the parse: the number check assumes well-formed JSON, and a
    /// malformed body should be told so first.
    fn after_parse(body: &[u8]) -> Result<(), IngestError> {
        match jsonb::unstorable_number(body) {
            Some(message) => Err(IngestError::Invalid(vec![message.to_string()])),
            None => Ok(()),
        }
    }
}

impl Default for Ingestor {
    fn default() -> Self {
        Self::new(Self::DEFAULT_PARSER)
    }
}

fn extract(provider: &str, env: &Envelope<'_>) -> Result<(String, i64), IngestError> {
    let valid = validate::validate(provider, env).map_err(IngestError::Invalid)?;
    Ok((valid.event_id.to_owned(), valid.event_timestamp_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &[u8] = br#"{"provider":"stripe","eventId":"evt_abc","timestamp":"2026-11-22T21:35:25.123Z","data":{"amount":1,"currency":"brl"},"extra":[1,2]}"#;

    fn both(provider: &str, body: &[u8]) -> Result<WebhookJob, IngestError> {
        let serde = Ingestor::new(JsonParser::Serde).ingest(provider, body, 7);
        let simd = Ingestor::new(JsonParser::Simd).ingest(provider, body, 7);
        match (&serde, &simd) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(IngestError::Invalid(a)), Err(IngestError::Invalid(b))) => assert_eq!(a, b),
            (Err(IngestError::Json(_)), Err(IngestError::Json(_))) => {}
            _ => panic!(
                "parsers disagree on {:.200?}: {serde:.200?} vs {simd:.200?}",
                String::from_utf8_lossy(body)
            ),
        }
        serde
    }

    fn messages(provider: &str, body: &str) -> Vec<String> {
        both(provider, body.as_bytes()).unwrap_err().messages()
    }

    #[test]
    fn the_seed_payload_becomes_a_job_with_the_raw_body() {
        let job = both("stripe", SEED).unwrap();
        assert_eq!(job.provider, "stripe");
        assert_eq!(job.event_id, "evt_abc");
        assert_eq!(job.event_timestamp_us, 1_795_383_325_123_000);
        assert_eq!(job.received_at_us, 7);
        assert_eq!(job.payload, SEED);
    }

    #[test]
    fn escaped_keys_and_values_are_read_after_unescaping() {
        let body = r#"{"provider":"str\u0069pe","event\u0049d":"evt\"1","timestamp":"2026-01-01","data":{}}"#;
        let job = both("stripe", body.as_bytes()).unwrap();
        assert_eq!(job.event_id, "evt\"1");
        assert_eq!(job.payload, body.as_bytes());
    }

    #[test]
    fn every_failed_rule_is_listed() {
        assert_eq!(
            messages("stripe", "{}"),
            [
                "provider should not be empty",
                "provider must be a string",
                "eventId should not be empty",
                "eventId must be a string",
                "timestamp should not be empty",
                "timestamp must be a valid ISO 8601 date string",
                "data should not be empty",
                "data must be an object",
            ]
        );
        assert_eq!(
            messages("stripe", r#"{"provider":"github","eventId":"","timestamp":"soon","data":[]}"#),
            [
                "provider must be equal to the path parameter (stripe)",
                "eventId should not be empty",
                "timestamp must be a valid ISO 8601 date string",
                "data must be an object",
            ]
        );
        let long = "x".repeat(256);
        let body = format!(r#"{{"provider":"s","eventId":"{long}","timestamp":"2026-01-01","data":{{}}}}"#);
        assert_eq!(messages("s", &body), ["eventId must be shorter than or equal to 255 bytes"]);
        let ok = "x".repeat(255);
        let body = format!(r#"{{"provider":"s","eventId":"{ok}","timestamp":"2026-01-01","data":{{}}}}"#);
        assert!(both("s", body.as_bytes()).is_ok());
    }

    #[test]
    fn non_objects_and_broken_json_are_told_apart() {
        assert_eq!(messages("s", "[1,2]"), ["body must be a JSON object"]);
        assert_eq!(messages("s", "null"), ["body must be a JSON object"]);
        assert_eq!(messages("s", "\"x\""), ["body must be a JSON object"]);
        for bad in [&b""[..], b"{", br#"{"a":1,}"#, b"{} x", b"{\"a\":\"\xff\"}", b"nul"] {
            let e = both("s", bad).unwrap_err();
            assert!(matches!(e, IngestError::Json(_)), "{bad:?} gave {e:?}");
        }
    }

    #[test]
    fn a_nul_escape_is_refused_but_an_escaped_backslash_is_not() {
        let nul = br#"{"provider":"s","eventId":"e\u0000","timestamp":"2026-01-01","data":{}}"#;
        assert_eq!(both("s", nul).unwrap_err().messages(), [jsonb::NUL_MESSAGE]);
        let literal = br#"{"provider":"s","eventId":"e\\u0000","timestamp":"2026-01-01","data":{}}"#;
        assert_eq!(both("s", literal).unwrap().event_id, "e\\u0000");
        let both_kinds = br#"{"provider":"s","eventId":"\\\u0000","timestamp":"2026-01-01","data":{}}"#;
        assert!(both("s", both_kinds).is_err());
    }

    #[test]
    fn lone_surrogate_escapes_are_refused_and_pairs_kept() {
        let body = |s: &str| {
            format!(r#"{{"provider":"s","eventId":"e","timestamp":"2026-01-01","data":{{"x":"{s}"}}}}"#)
        };
        for bad in [r"\ud800", r"\udc00", r"a\ud83dx", r"\ud83d\ud83d", r"\ud65d\ude00", r"\uDBFF\u0041"] {
            assert_eq!(
                both("s", body(bad).as_bytes()).unwrap_err().messages(),
                [jsonb::SURROGATE_MESSAGE],
                "{bad}"
            );
        }
        for good in [r"\ud83d\ude00", r"\uD83D\uDE00\u00e9", r"\\ud800", r"\ud7ff\ue000"] {
            assert!(both("s", body(good).as_bytes()).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_body_cut_inside_an_escape_is_a_json_error_not_a_panic() {
        // A body ending in a backslash once sent the escape scan past the end
        // and panicked the core (found by the `ingest` fuzz target).
        let whole =
            r#"{"provider":"s","eventId":"e","timestamp":"2026-01-01","data":{"x":"\ud83d\ude00\\"}}"#;
        let start = whole.find(r"\ud83d").unwrap();
        for end in start..whole.len() - 2 {
            let cut = &whole.as_bytes()[..end];
            for body in [cut.to_vec(), [cut, b"\\"].concat(), [cut, b"\\\\"].concat()] {
                for parser in [JsonParser::Serde, JsonParser::Simd] {
                    let r = Ingestor::new(parser).ingest("s", &body, 0);
                    assert!(r.is_err(), "{}", String::from_utf8_lossy(&body));
                }
            }
        }
    }

    #[test]
    fn numbers_beyond_64_bits_and_doubles_are_accepted() {
        // jsonb's numeric holds them; the payload is kept as sent, never re-encoded.
        let body = |n: &str| {
            format!(r#"{{"provider":"s","eventId":"e","timestamp":"2026-01-01","data":{{"x":{n}}}}}"#)
        };
        for n in [
            "4208888888888888888888888888888888888888888880",
            "-1e300",
            "1.5e-320",
            "123456789012345678901234567890.5",
        ] {
            assert!(both("s", body(n).as_bytes()).is_ok(), "{n}");
        }
        // Beyond a double's range only serde_json (the default) accepts it:
        // simd-json refuses such numbers, a documented cost of JSON_PARSER=simd.
        let huge = body("1e400");
        assert!(Ingestor::new(JsonParser::Serde).ingest("s", huge.as_bytes(), 0).is_ok());
        let refused = Ingestor::new(JsonParser::Simd).ingest("s", huge.as_bytes(), 0).unwrap_err();
        assert!(matches!(&refused, IngestError::Json(m) if m.contains("Number")), "{refused:?}");
    }

    #[test]
    fn numbers_numeric_cannot_hold_are_refused_after_the_parse() {
        let body = |n: &str| {
            format!(r#"{{"provider":"s","eventId":"e","timestamp":"2026-01-01","data":{{"x":{n}}}}}"#)
        };
        let serde = |b: &str| Ingestor::new(JsonParser::Serde).ingest("s", b.as_bytes(), 0);
        assert_eq!(serde(&body("1e131072")).unwrap_err().messages(), [jsonb::NUMBER_MESSAGE]);
        assert!(serde(&body("1e131071")).is_ok());
        // Both parsers refuse what is inside a double's range too.
        let long_fraction = body(&format!("0.{}", "3".repeat(16_384)));
        assert_eq!(both("s", long_fraction.as_bytes()).unwrap_err().messages(), [jsonb::NUMBER_MESSAGE]);
        assert!(both("s", body(&format!("0.{}", "3".repeat(16_383))).as_bytes()).is_ok());
        // A malformed body is told so first.
        assert!(matches!(serde(r#"{"x":1e131072"#), Err(IngestError::Json(_))));
    }

    #[test]
    fn deep_nesting_is_refused_at_the_limit_and_neither_crashes_nor_hangs() {
        let deep = |n: usize| {
            format!(
                r#"{{"provider":"s","eventId":"e","timestamp":"2026-01-01","data":{{"x":{}{}}}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        // The envelope and `data` are levels 1 and 2.
        let limit = DEFAULT_MAX_DEPTH;
        assert!(both("s", deep(limit - 2).as_bytes()).is_ok());
        let refused = both("s", deep(limit - 1).as_bytes()).unwrap_err().messages();
        assert_eq!(refused.len(), 1);
        assert!(refused[0].contains("deeper than 1000 levels"), "{refused:?}");
        // With the check off, serde_json skips nested values iteratively (no
        // depth limit needed); simd-json stops at depth 1024. Either way: an
        // answer, not a crash.
        let unchecked = |p| Ingestor::new(p).with_max_depth(0);
        assert!(unchecked(JsonParser::Serde).ingest("s", deep(100_000).as_bytes(), 0).is_ok());
        let simd = unchecked(JsonParser::Simd).ingest("s", deep(100_000).as_bytes(), 0);
        assert!(matches!(simd, Err(IngestError::Json(_))));
        let unclosed = "[".repeat(100_000);
        for parser in [JsonParser::Serde, JsonParser::Simd] {
            let r = unchecked(parser).ingest("s", unclosed.as_bytes(), 0);
            assert!(matches!(r, Err(IngestError::Json(_))), "{parser:?}");
            let r = Ingestor::new(parser).ingest("s", unclosed.as_bytes(), 0);
            assert!(matches!(r, Err(IngestError::Invalid(_))), "{parser:?}");
        }
    }

    #[test]
    fn instants_outside_postgresql_timestamptz_are_refused_and_sub_microseconds_round() {
        let body = |t: &str| format!(r#"{{"provider":"s","eventId":"e","timestamp":"{t}","data":{{}}}}"#);
        let at = |t: &str| both("s", body(t).as_bytes()).map(|j| j.event_timestamp_us);
        // Past the year 9999 in UTC, still PostgreSQL's: kept exactly.
        assert_eq!(at("9999-12-31T23:00:00-05:00"), Ok(253_402_315_200_000_000));
        assert_eq!(at("-004713-11-24T00:00:00Z"), Ok(MIN_TIMESTAMP_US));
        for before in ["-005000-01-01T00:00:00Z", "-004713-11-23T23:59:59.999999Z"] {
            assert_eq!(
                both("s", body(before).as_bytes()).unwrap_err().messages(),
                [validate::TIMESTAMP_RANGE_MESSAGE],
                "{before}"
            );
        }
        // PostgreSQL rounds to the microsecond (half to even); so do we.
        assert_eq!(at("1970-01-01T00:00:00.0000015Z"), Ok(2));
        assert_eq!(at("1970-01-01T00:00:00.0000025Z"), Ok(2));
        assert_eq!(at("1970-01-01T00:00:00.000002501Z"), Ok(3));
        assert_eq!(at("1969-12-31T23:59:59.9999985Z"), Ok(-2));
    }
}
