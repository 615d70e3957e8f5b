//! Helpers the kinds share: required headers, ids, types and timestamps
//! read from a verified request, and the timestamp window.

use super::{Headers, IngestError, Unauthorized};
use crate::ingest::validate::{MAX_EVENT_ID_BYTES, MIN_TIMESTAMP_US};

/// A header's value, or [`Unauthorized::Missing`] naming it.
pub(crate) fn required<'a>(headers: &Headers<'a>, name: &str) -> Result<&'a [u8], Unauthorized> {
    headers.get(name).filter(|v| !v.is_empty()).ok_or_else(|| Unauthorized::Missing(name.to_string()))
}

/// The first of `names` that is present (a header spelt two ways).
pub(crate) fn either<'a>(headers: &Headers<'a>, names: &[&str]) -> Result<&'a [u8], Unauthorized> {
    names
        .iter()
        .find_map(|n| headers.get(n).filter(|v| !v.is_empty()))
        .ok_or_else(|| Unauthorized::Missing(names[0].to_string()))
}

/// A header as text, for ids and types (`None` when absent or not UTF-8).
pub(crate) fn header_text<'a>(headers: &Headers<'a>, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| headers.text(n).filter(|v| !v.is_empty()))
}

/// Whole seconds in a header or field.
pub(crate) fn secs(text: &[u8]) -> Option<i64> {
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}

/// Whether `ts` is within `tolerance` seconds of `now`: too old only, or
/// both ways. A tolerance of 0 turns the check off.
pub(crate) fn fresh(now: i64, ts: i64, tolerance: u64, future_too: bool) -> Result<(), Unauthorized> {
    let tol = tolerance as i64;
    if tol == 0 {
        return Ok(());
    }
    let age = now.saturating_sub(ts);
    if age > tol || (future_too && -age > tol) {
        return Err(Unauthorized::Stale);
    }
    Ok(())
}

/// A sender's id, checked like the envelope's `eventId`.
pub(crate) fn event_id(id: Option<&str>, what: &str) -> Result<String, IngestError> {
    match id {
        Some(id) if !id.is_empty() && id.len() <= MAX_EVENT_ID_BYTES => Ok(id.to_string()),
        Some(id) if !id.is_empty() => Err(IngestError::Invalid(vec![format!(
            "{what} must be shorter than or equal to {MAX_EVENT_ID_BYTES} bytes"
        )])),
        _ => Err(IngestError::Invalid(vec![format!("{what} should not be empty")])),
    }
}

/// A sender's event type: at most 255 bytes, empty when absent.
pub(crate) fn event_type(t: Option<&str>, what: &str) -> Result<String, IngestError> {
    match t {
        Some(t) if t.len() > MAX_EVENT_ID_BYTES => Err(IngestError::Invalid(vec![format!(
            "{what} must be shorter than or equal to {MAX_EVENT_ID_BYTES} bytes"
        )])),
        t => Ok(t.unwrap_or_default().to_string()),
    }
}

/// Seconds since the epoch as µs, when PostgreSQL can store the instant.
pub(crate) fn secs_to_us(secs: i64) -> Option<i64> {
    secs.checked_mul(1_000_000).filter(|us| *us >= MIN_TIMESTAMP_US)
}

/// Milliseconds since the epoch as µs, when PostgreSQL can store the instant.
pub(crate) fn millis_to_us(ms: i64) -> Option<i64> {
    ms.checked_mul(1_000).filter(|us| *us >= MIN_TIMESTAMP_US)
}

/// The id of a delivery whose sender gives none that is stable across its
/// retries: the SHA-256 of the raw body (a retry resends the same bytes,
/// and the bodies of two events differ in their own ids and times).
pub(crate) fn body_digest_id(body: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(body)))
}

/// What a batch delivery (a JSON array of events: SendGrid, HubSpot) is
/// stored as: one event by its own identity (`one`), a larger batch by the
/// body's SHA-256 with the type `batch` and the arrival time (a retried
/// batch is resent byte for byte). An empty batch is refused.
pub(crate) fn batch_identity<T>(
    events: &[T],
    req: &super::Request<'_>,
    one: impl FnOnce(&T) -> Result<super::Identity, IngestError>,
) -> Result<super::Identity, IngestError> {
    match events {
        [event] => one(event),
        [] => Err(IngestError::Invalid(vec!["the batch holds no event".into()])),
        _ => Ok(super::Identity {
            event_id: body_digest_id(req.body),
            event_type: "batch".into(),
            event_timestamp_us: req.received_at_us,
        }),
    }
}

/// A sender's time for the event from `what`, through `to_us`, when it
/// gives one: one PostgreSQL cannot store is refused (400), never replaced.
pub(crate) fn given_time(
    value: Option<i64>,
    to_us: fn(i64) -> Option<i64>,
    what: &str,
    arrival_us: i64,
) -> Result<i64, IngestError> {
    match value {
        Some(v) => to_us(v)
            .ok_or_else(|| IngestError::Invalid(vec![format!("{what} must be a time PostgreSQL stores")])),
        None => Ok(arrival_us),
    }
}

/// An ISO 8601 instant as µs, when PostgreSQL can store it.
pub(crate) fn iso_to_us(text: &str) -> Option<i64> {
    crate::ingest::parse_iso8601_us(text).filter(|us| *us >= MIN_TIMESTAMP_US)
}

/// Whether the request is a form post (the handler lets forms through
/// only to kinds that take them).
pub(crate) fn is_form(req: &super::Request<'_>) -> bool {
    req.headers.text("Content-Type").is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    })
}

/// The fields of a form body, names and values decoded (`+` is a space,
/// `%XX` a byte). Bytes that are not UTF-8 are left as they are for the
/// JSON parser to refuse, never replaced.
pub(crate) fn form_fields(body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let decode = |v: &[u8]| -> Vec<u8> {
        let plus_as_space: Vec<u8> = v.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect();
        percent_encoding::percent_decode(&plus_as_space).collect()
    };
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (decode(&pair[..eq]), decode(&pair[eq + 1..])),
            None => (decode(pair), Vec::new()),
        })
        .collect()
}

/// The one `payload` field of a form body, decoded: the JSON that GitHub
/// and Slack's interactivity put there.
pub(crate) fn form_payload(body: &[u8]) -> Result<Vec<u8>, IngestError> {
    payload_field(form_fields(body))
}

/// The one `payload` field among a form's `fields`.
pub(crate) fn payload_field(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<u8>, IngestError> {
    let mut found = fields.into_iter().filter(|(name, _)| name == b"payload");
    match (found.next(), found.next()) {
        (Some((_, value)), None) => Ok(value),
        _ => Err(IngestError::Invalid(vec!["a form delivery must hold exactly one payload field".into()])),
    }
}

/// A form's `fields` as one JSON object of strings (what `jsonb` stores
/// of a form that carries no JSON, a Slack slash command).
pub(crate) fn fields_as_json(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<u8>, IngestError> {
    let mut object = serde_json::Map::new();
    for (name, value) in fields {
        let (Ok(name), Ok(value)) = (String::from_utf8(name), String::from_utf8(value)) else {
            return Err(IngestError::Invalid(vec!["a form field is not UTF-8".into()]));
        };
        object.insert(name, serde_json::Value::String(value));
    }
    Ok(serde_json::to_vec(&object).unwrap_or_default())
}

/// The sender's own time for the event, when it gives one: a value that
/// is there but is no instant PostgreSQL stores is refused (400), never
/// replaced by the arrival time.
pub(crate) fn sender_time(text: Option<&str>, what: &str) -> Result<Option<i64>, IngestError> {
    text.map(|t| {
        iso_to_us(t).ok_or_else(|| {
            IngestError::Invalid(vec![format!("{what} must be an ISO 8601 instant PostgreSQL stores")])
        })
    })
    .transpose()
}
