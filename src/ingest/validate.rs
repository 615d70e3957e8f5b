//! The request contract (DESIGN §3), checked rule by rule with
//! class-validator's wording, so clients of the NestJS design see the same
//! messages. Every failed rule adds one message; all are reported together.

use time::format_description::well_known::Iso8601;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

use super::envelope::{Envelope, Field};

/// Longest accepted `eventId`, in bytes (the Postgres column and Redis key bound).
pub const MAX_EVENT_ID_BYTES: usize = 255;

/// The earliest instant PostgreSQL's `timestamptz` holds, 4714-11-24 BC
/// 00:00 UTC (ISO year -4713), in µs since the Unix epoch. Its latest,
/// 294276 AD, lies beyond what ISO 8601 parsing here accepts (year 9999 in
/// local time), so every parsed instant from this one on can be stored.
pub const MIN_TIMESTAMP_US: i64 = -210_866_803_200_000_000;

/// The message for an instant `timestamptz` cannot hold.
pub(crate) const TIMESTAMP_RANGE_MESSAGE: &str =
    "timestamp must not be before 4714-11-24T00:00:00Z BC (-004713-11-24), the earliest instant PostgreSQL stores";

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
    // Refused, never clamped: the stored instant is the one sent.
    let timestamp = match timestamp {
        None => {
            errors.push("timestamp must be a valid ISO 8601 date string".to_string());
            None
        }
        Some(us) if us < MIN_TIMESTAMP_US => {
            errors.push(TIMESTAMP_RANGE_MESSAGE.to_string());
            None
        }
        some => some,
    };

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
/// is taken as UTC; a date alone is its midnight UTC. Digits below the
/// microsecond round to the nearest one, half to even, as PostgreSQL's
/// input does (`rint`).
pub fn parse_iso8601_us(s: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(s, &Iso8601::PARSING)
        .or_else(|_| PrimitiveDateTime::parse(s, &Iso8601::PARSING).map(PrimitiveDateTime::assume_utc))
        .or_else(|_| Date::parse(s, &Iso8601::PARSING).map(|d| d.midnight().assume_utc()))
        .ok()?;
    let ns = at.unix_timestamp_nanos();
    let (us, rest) = (ns.div_euclid(1000), ns.rem_euclid(1000));
    let rounded = if rest > 500 || (rest == 500 && us % 2 != 0) { us + 1 } else { us };
    i64::try_from(rounded).ok()
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
