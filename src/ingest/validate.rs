//! The request contract (DESIGN §3), checked rule by rule with
//! class-validator's wording, so clients of the NestJS design see the same
//! messages. Every failed rule adds one message; all are reported together.

use time::format_description::well_known::Iso8601;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use super::envelope::{Envelope, Field};

/// Longest accepted `eventId`, in bytes (the Postgres column and Redis key bound).
pub const MAX_EVENT_ID_BYTES: usize = 255;

/// What validation extracts from a valid envelope.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Valid<'e> {
    pub(crate) event_id: &'e str,
    pub(crate) event_timestamp_us: i64,
}

/// Checks an envelope against the contract for the path's `provider`.
pub(crate) fn validate<'e>(path_provider: &str, env: &'e Envelope<'_>) -> Result<Valid<'e>, Vec<String>> {
    let mut errors = Vec::new();
    if !env.is_object {
        errors.push("body must be a JSON object".to_string());
        return Err(errors);
    }

    if let Some(p) = string_rules("provider", &env.provider, &mut errors) {
        if p != path_provider {
            errors.push(format!("provider must be equal to the path parameter ({path_provider})"));
        }
    }

    let event_id = string_rules("eventId", &env.event_id, &mut errors);
    if let Some(id) = event_id {
        if id.len() > MAX_EVENT_ID_BYTES {
            errors.push(format!("eventId must be shorter than or equal to {MAX_EVENT_ID_BYTES} bytes"));
        }
    }

    let timestamp = match &env.timestamp {
        Field::Str(s) if !s.is_empty() => parse_iso8601_us(s),
        f => {
            if is_empty(f) {
                errors.push("timestamp should not be empty".to_string());
            }
            None
        }
    };
    if timestamp.is_none() {
        errors.push("timestamp must be a valid ISO 8601 date string".to_string());
    }

    if env.data != Field::Object {
        if is_empty(&env.data) {
            errors.push("data should not be empty".to_string());
        }
        errors.push("data must be an object".to_string());
    }

    match (errors.is_empty(), event_id, timestamp) {
        (true, Some(event_id), Some(event_timestamp_us)) => Ok(Valid { event_id, event_timestamp_us }),
        _ => Err(errors),
    }
}

/// `@IsNotEmpty() @IsString()`: returns the string when both hold.
fn string_rules<'e>(name: &str, field: &'e Field<'_>, errors: &mut Vec<String>) -> Option<&'e str> {
    if is_empty(field) {
        errors.push(format!("{name} should not be empty"));
    }
    match field {
        Field::Str(s) if !s.is_empty() => Some(s),
        Field::Str(_) => None,
        _ => {
            errors.push(format!("{name} must be a string"));
            None
        }
    }
}

/// class-validator's `isNotEmpty`: fails on `''`, `null` and `undefined`.
fn is_empty(field: &Field<'_>) -> bool {
    match field {
        Field::Missing | Field::Null => true,
        Field::Str(s) => s.is_empty(),
        _ => false,
    }
}

/// Parses an ISO 8601 date or date-time (calendar, ordinal or week form,
/// basic or extended) into µs since the Unix epoch. Without an offset the time
/// is taken as UTC; a date alone is its midnight UTC.
pub fn parse_iso8601_us(s: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(s, &Iso8601::PARSING)
        .or_else(|_| PrimitiveDateTime::parse(s, &Iso8601::PARSING).map(PrimitiveDateTime::assume_utc))
        .or_else(|_| Date::parse(s, &Iso8601::PARSING).map(|d| d.midnight().assume_utc()))
        .ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_iso8601_forms_parse_to_the_same_instant() {
        let utc = parse_iso8601_us("2026-11-22T21:35:25.123Z").unwrap();
        assert_eq!(utc, 1_795_383_325_123_000);
        assert_eq!(parse_iso8601_us("2026-11-22T22:35:25.123+01:00"), Some(utc));
        assert_eq!(parse_iso8601_us("2026-11-22T21:35:25.123"), Some(utc));
        assert_eq!(parse_iso8601_us("20261122T213525.123Z"), Some(utc));
        assert_eq!(parse_iso8601_us("2026-11-22"), Some(1_795_305_600_000_000));
    }

    #[test]
    fn non_dates_are_refused() {
        for s in ["", "yesterday", "2026-13-01T00:00:00Z", "2026-02-30", "2026-11-22T25:00:00Z", "1700000000"]
        {
            assert_eq!(parse_iso8601_us(s), None, "{s}");
        }
    }
}
