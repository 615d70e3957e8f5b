//! The one data contract: [`WebhookJob`], produced by `ingest/`, carried by
//! `queue/` into Redis, and consumed by the workers.
//!
//! In Redis a job is one stream entry with short field names, listed in
//! [`fields`]. The entry carries a format version ([`fields::VERSION`] =
//! [`FORMAT_VERSION`]) so the layout can change without a flag day: a reader
//! rejects versions it does not know instead of guessing. Version 2 added
//! the sender's event type and the verifying scheme; entries of version 1
//! still in a stream when the gateway is upgraded read as an untyped,
//! unverified envelope, which is what they were. Version 3 adds the raw
//! body when it differs from the stored payload (a form delivery); version
//! 4 the names of the fields read from headers the signature does not
//! cover; version 5 the dead letter a replayed job came from. Each is
//! written only for the jobs that need it, so a worker of
//! the version before still reads every other entry during a rolling
//! upgrade (and leaves the newer ones pending for a newer worker).

use std::collections::HashMap;

use thiserror::Error;

/// The newest version written in a stream entry; bump it when the field
/// layout changes. Entries that need nothing of it are written as version 2.
pub const FORMAT_VERSION: u32 = 5;

/// Field names of a job's stream entry. Short, because they are repeated in
/// every entry and Redis stores them per entry (unless the stream's listpack
/// can share them).
pub mod fields {
    /// Entry format version ([`super::FORMAT_VERSION`]).
    pub const VERSION: &str = "v";
    /// `provider` from the path, `[a-z0-9_-]{1,64}`.
    pub const PROVIDER: &str = "p";
    /// `eventId` from the body, 1..=255 bytes of UTF-8.
    pub const EVENT_ID: &str = "e";
    /// Body `timestamp`, normalised to microseconds since the Unix epoch (UTC).
    pub const EVENT_TIMESTAMP: &str = "t";
    /// Gateway clock when the request was accepted, microseconds since the epoch.
    pub const RECEIVED_AT: &str = "r";
    /// The raw request body, byte for byte as received.
    pub const PAYLOAD: &str = "b";
    /// The sender's event type (v2; empty for the envelope).
    pub const EVENT_TYPE: &str = "y";
    /// The scheme that verified the signature (v2; absent when none did).
    pub const VERIFIED_BY: &str = "s";
    /// The body as received when the payload is not it (v3; absent otherwise).
    pub const RAW_BODY: &str = "w";
    /// The fields read from headers the signature does not cover (v4;
    /// absent when there are none).
    pub const UNSIGNED_FIELDS: &str = "u";
    /// The `webhook_dead_letters` row a replayed job came from (v5; absent
    /// otherwise): the write that stores the job deletes that row.
    pub const REPLAY_OF: &str = "d";
}

/// A validated webhook, the unit that crosses every stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookJob {
    /// The `:provider` path segment (equal to the body's `provider`).
    pub provider: String,
    /// The sender's id (the envelope's `eventId`, Stripe's `id`, GitHub's
    /// `X-GitHub-Delivery`…); with `provider`, the idempotency key.
    pub event_id: String,
    /// The sender's event type (`invoice.paid`, `push`…); empty for the envelope.
    pub event_type: String,
    /// The body's `timestamp`, parsed from ISO 8601, in µs since the Unix epoch.
    pub event_timestamp_us: i64,
    /// When the gateway accepted the request, in µs since the Unix epoch.
    pub received_at_us: i64,
    /// The signature scheme that verified the request (`stripe`, `hmac`…);
    /// `None` for an unsigned envelope.
    pub verified_by: Option<String>,
    /// The JSON stored as `payload jsonb`: the request body exactly as
    /// received, unless [`Self::raw_body`] holds that.
    pub payload: Vec<u8>,
    /// The request body exactly as received (the bytes a signature covers),
    /// when it is not `payload`: a form delivery whose `payload` field is
    /// the JSON. `None`: `payload` is the body as received.
    pub raw_body: Option<Vec<u8>>,
    /// Which of `event_id`, `event_type`, `event_timestamp` came from
    /// headers the signature does not cover (GitHub's delivery id, Shopify's
    /// topic…), comma-separated; empty when every one is signed or nothing
    /// is. Stored as `unsigned_fields`, so a reader knows what the
    /// signature proves of the row.
    pub unsigned_fields: String,
    /// The `webhook_dead_letters` row this job is a replay of: the
    /// transaction that stores it (or finds it stored) deletes that row, so
    /// a dead letter leaves the table only once its event is in it.
    pub replay_of: Option<i64>,
}

/// Longest provider name.
pub const MAX_PROVIDER_LEN: usize = 64;

/// Whether `name` is a valid provider (the `:provider` path segment, a
/// source's route): `[a-z0-9_-]{1,64}`. The job's key starts with it, so
/// the rule is the job's.
pub fn is_provider(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PROVIDER_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Microseconds since the Unix epoch, from the system clock: the clock a
/// job's `received_at_us` and every other stored instant are read from.
pub fn now_us() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// Why a stream entry could not be read back as a [`WebhookJob`].
#[derive(Debug, Error, PartialEq, Eq)]
pub enum JobDecodeError {
    /// A required field is absent from the entry.
    #[error("stream entry has no `{0}` field")]
    MissingField(&'static str),
    /// The entry was written by a format this build does not know.
    #[error("stream entry has format version {0:?}, this build reads {FORMAT_VERSION}")]
    UnknownVersion(String),
    /// A field is present but does not hold what the format says.
    #[error("stream entry field `{0}` is malformed")]
    Malformed(&'static str),
}

/// Whatever takes a stream entry's fields one pair at a time: a
/// `redis::Cmd`, or the enqueue's RESP writer (which writes them straight
/// into the pipeline's bytes, so the body is copied once).
pub trait FieldSink {
    /// One field.
    fn field(&mut self, name: &str, value: &[u8]);
}

impl FieldSink for redis::Cmd {
    fn field(&mut self, name: &str, value: &[u8]) {
        self.arg(name).arg(value);
    }
}

impl WebhookJob {
    /// SHA-256 of [`Self::body_as_received`]: stored as `body_sha256` with
    /// the row and its dedupe key, so a second delivery of the id with
    /// another body is told apart (a conflict), never merged.
    pub fn body_sha256(&self) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(self.body_as_received()).into()
    }

    /// The request body exactly as received: stored as `raw_body bytea`.
    pub fn body_as_received(&self) -> &[u8] {
        self.raw_body.as_deref().unwrap_or(&self.payload)
    }

    /// Hands this job's entry fields, name then value, to `out`, in the
    /// order of an `XADD` after its id.
    pub fn stream_fields(&self, out: &mut impl FieldSink) {
        let version: &[u8] = if self.replay_of.is_some() {
            b"5"
        } else if !self.unsigned_fields.is_empty() {
            b"4"
        } else if self.raw_body.is_some() {
            b"3"
        } else {
            b"2"
        };
        let mut n = itoa::Buffer::new();
        out.field(fields::VERSION, version);
        out.field(fields::PROVIDER, self.provider.as_bytes());
        out.field(fields::EVENT_ID, self.event_id.as_bytes());
        out.field(fields::EVENT_TIMESTAMP, n.format(self.event_timestamp_us).as_bytes());
        out.field(fields::RECEIVED_AT, n.format(self.received_at_us).as_bytes());
        out.field(fields::EVENT_TYPE, self.event_type.as_bytes());
        if let Some(scheme) = &self.verified_by {
            out.field(fields::VERIFIED_BY, scheme.as_bytes());
        }
        if let Some(raw) = &self.raw_body {
            out.field(fields::RAW_BODY, raw);
        }
        if !self.unsigned_fields.is_empty() {
            out.field(fields::UNSIGNED_FIELDS, self.unsigned_fields.as_bytes());
        }
        if let Some(id) = self.replay_of {
            out.field(fields::REPLAY_OF, n.format(id).as_bytes());
        }
        out.field(fields::PAYLOAD, &self.payload);
    }

    /// Reads a job back from a stream entry's field map, taking the payload
    /// out of it, so the body is held once, not twice.
    ///
    /// # Errors
    /// [`Undecodable`], with the fields untouched, when a field is missing
    /// or malformed, or the entry's version is unknown.
    pub fn from_stream_fields(mut map: HashMap<String, redis::Value>) -> Result<Self, Undecodable> {
        let header = (|| {
            let version = text(&map, fields::VERSION)?;
            let version_number = match version.parse::<u32>() {
                Ok(n @ 1..=FORMAT_VERSION) => n,
                _ => return Err(JobDecodeError::UnknownVersion(version)),
            };
            let v2 = version_number >= 2;
            let (event_type, verified_by) = if v2 {
                let scheme = match map.contains_key(fields::VERIFIED_BY) {
                    true => Some(text(&map, fields::VERIFIED_BY)?),
                    false => None,
                };
                (text(&map, fields::EVENT_TYPE)?, scheme)
            } else {
                (String::new(), None)
            };
            Ok(Self {
                provider: text(&map, fields::PROVIDER)?,
                event_id: text(&map, fields::EVENT_ID)?,
                event_type,
                event_timestamp_us: int(&map, fields::EVENT_TIMESTAMP)?,
                received_at_us: int(&map, fields::RECEIVED_AT)?,
                verified_by,
                payload: Vec::new(),
                raw_body: None,
                unsigned_fields: match map.contains_key(fields::UNSIGNED_FIELDS) {
                    true => text(&map, fields::UNSIGNED_FIELDS)?,
                    false => String::new(),
                },
                replay_of: match map.contains_key(fields::REPLAY_OF) {
                    true => Some(int(&map, fields::REPLAY_OF)?),
                    false => None,
                },
            })
        })();
        // Only version 3 carries it; read it whatever the version, as the
        // payload is, so an entry is never stored without the body it holds.
        let raw_body = match map.remove(fields::RAW_BODY) {
            None => Ok(None),
            Some(redis::Value::BulkString(raw)) => Ok(Some(raw)),
            Some(other) => {
                map.insert(fields::RAW_BODY.to_string(), other);
                Err(JobDecodeError::Malformed(fields::RAW_BODY))
            }
        };
        let header = match (header, raw_body) {
            (Ok(job), Ok(raw_body)) => Ok(Self { raw_body, ..job }),
            (Err(e), Ok(raw)) => {
                // The fields go back whole, for the dead letter.
                map.extend(raw.map(|r| (fields::RAW_BODY.to_string(), redis::Value::BulkString(r))));
                Err(e)
            }
            (_, Err(e)) => Err(e),
        };
        let error = match (header, map.remove(fields::PAYLOAD)) {
            (Ok(job), Some(redis::Value::BulkString(payload))) => return Ok(Self { payload, ..job }),
            (Err(e), payload) => {
                map.extend(payload.map(|p| (fields::PAYLOAD.to_string(), p)));
                e
            }
            (Ok(_), Some(other)) => {
                map.insert(fields::PAYLOAD.to_string(), other);
                JobDecodeError::Malformed(fields::PAYLOAD)
            }
            (Ok(_), None) => JobDecodeError::MissingField(fields::PAYLOAD),
        };
        Err(Undecodable { error, fields: map })
    }
}

/// A stream entry that is not a job this build can read, with its fields
/// as found (for the dead-letter stream).
#[derive(Debug)]
pub struct Undecodable {
    /// Why it could not be read.
    pub error: JobDecodeError,
    /// The entry's fields.
    pub fields: HashMap<String, redis::Value>,
}

fn bytes<'m>(
    map: &'m HashMap<String, redis::Value>,
    field: &'static str,
) -> Result<&'m [u8], JobDecodeError> {
    match map.get(field) {
        Some(redis::Value::BulkString(b)) => Ok(b),
        Some(_) => Err(JobDecodeError::Malformed(field)),
        None => Err(JobDecodeError::MissingField(field)),
    }
}

fn text(map: &HashMap<String, redis::Value>, field: &'static str) -> Result<String, JobDecodeError> {
    let b = bytes(map, field)?;
    String::from_utf8(b.to_vec()).map_err(|_| JobDecodeError::Malformed(field))
}

fn int(map: &HashMap<String, redis::Value>, field: &'static str) -> Result<i64, JobDecodeError> {
    text(map, field)?.parse().map_err(|_| JobDecodeError::Malformed(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry_of(job: &WebhookJob) -> HashMap<String, redis::Value> {
        let mut cmd = redis::cmd("XADD");
        job.stream_fields(&mut cmd);
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .skip(1) // the command name
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => unreachable!("XADD has only plain arguments"),
            })
            .collect();
        args.chunks(2)
            .map(|kv| (String::from_utf8(kv[0].clone()).unwrap(), redis::Value::BulkString(kv[1].clone())))
            .collect()
    }

    #[test]
    fn a_job_survives_the_round_trip_through_its_stream_fields() {
        let job = WebhookJob {
            provider: "stripe".into(),
            event_id: "evt_1".into(),
            event_type: "invoice.paid".into(),
            event_timestamp_us: 1_700_000_000_123_456,
            received_at_us: -5,
            verified_by: Some("stripe".into()),
            payload: b"{\"x\":\"\xff\"}".to_vec(),
            raw_body: None,
            unsigned_fields: String::new(),
            replay_of: None,
        };
        assert_eq!(WebhookJob::from_stream_fields(entry_of(&job)).unwrap(), job);
        let unverified = WebhookJob { verified_by: None, event_type: String::new(), ..job.clone() };
        assert_eq!(WebhookJob::from_stream_fields(entry_of(&unverified)).unwrap(), unverified);
        assert_eq!(entry_of(&job)["v"], redis::Value::BulkString(b"2".to_vec()), "no raw body: v2");
        let form = WebhookJob { raw_body: Some(b"payload=%7B%7D".to_vec()), ..job.clone() };
        let entry = entry_of(&form);
        assert_eq!(entry["v"], redis::Value::BulkString(b"3".to_vec()));
        let back = WebhookJob::from_stream_fields(entry).unwrap();
        assert_eq!(back.body_as_received(), b"payload=%7B%7D");
        assert_eq!(back, form);
        let github = WebhookJob { unsigned_fields: "event_id,event_type".into(), ..job };
        let entry = entry_of(&github);
        assert_eq!(entry["v"], redis::Value::BulkString(b"4".to_vec()), "unsigned fields named: v4");
        assert_eq!(WebhookJob::from_stream_fields(entry).unwrap(), github);
        let replayed = WebhookJob { replay_of: Some(42), ..github };
        let entry = entry_of(&replayed);
        assert_eq!(entry["v"], redis::Value::BulkString(b"5".to_vec()), "a replay: v5");
        assert_eq!(WebhookJob::from_stream_fields(entry).unwrap(), replayed);
    }

    #[test]
    fn an_unknown_version_is_refused_not_guessed() {
        let job = WebhookJob {
            provider: "p".into(),
            event_id: "e".into(),
            event_type: "t".into(),
            event_timestamp_us: 0,
            received_at_us: 0,
            verified_by: None,
            payload: vec![],
            raw_body: None,
            unsigned_fields: String::new(),
            replay_of: None,
        };
        let mut map = entry_of(&job);
        map.insert("v".into(), redis::Value::BulkString(b"6".to_vec()));
        map.insert("w".into(), redis::Value::BulkString(b"raw".to_vec()));
        let refused = WebhookJob::from_stream_fields(map).unwrap_err();
        assert_eq!(refused.error, JobDecodeError::UnknownVersion("6".into()));
        assert!(refused.fields.contains_key("w"), "the raw body comes back too");
        let mut map = refused.fields;
        assert!(map.contains_key("b"), "the fields come back whole");
        map.remove("p");
        map.insert("v".into(), redis::Value::BulkString(b"1".to_vec()));
        assert_eq!(WebhookJob::from_stream_fields(map).unwrap_err().error, JobDecodeError::MissingField("p"));
    }

    #[test]
    fn a_version_1_entry_reads_as_an_untyped_unverified_envelope() {
        // As the gateway before sources wrote it: no `y`, no `s`.
        let mut map = HashMap::new();
        for (k, v) in [("v", "1"), ("p", "stripe"), ("e", "evt_old"), ("t", "7"), ("r", "8"), ("b", "{}")] {
            map.insert(k.to_string(), redis::Value::BulkString(v.as_bytes().to_vec()));
        }
        let job = WebhookJob::from_stream_fields(map).unwrap();
        assert_eq!((job.event_id.as_str(), job.event_type.as_str(), job.verified_by), ("evt_old", "", None));
        assert_eq!((job.event_timestamp_us, job.received_at_us, job.payload), (7, 8, b"{}".to_vec()));
    }
}
