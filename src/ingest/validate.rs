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
///
/// A second of `60` is the next minute's first, as PostgreSQL takes it, as
/// long as the time of day stays within `24:00:00` (`23:59:60.5` is refused
/// there too). Nothing is ever read as a nearby value: a string that is a
/// date followed by a time that does not parse is refused, not taken as
/// its date's midnight.
pub fn parse_iso8601_us(s: &str) -> Option<i64> {
    // Before the `time` crate sees it: that crate reads `23:59:60` UTC
    // as `23:59:59.999999999`, a nearby value.
    let ns = match leap_second(s) {
        Some(at) => {
            let (at, last_minute_of_day) = parse_leap_second(s, at)?;
            if last_minute_of_day && at.nanosecond() != 0 {
                return None;
            }
            at.unix_timestamp_nanos() + 1_000_000_000
        }
        None => parse_instant(s)?.unix_timestamp_nanos(),
    };
    let (us, rest) = (ns.div_euclid(1000), ns.rem_euclid(1000));
    let rounded = if rest > 500 || (rest == 500 && us % 2 != 0) { us + 1 } else { us };
    i64::try_from(rounded).ok()
}

fn parse_instant(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Iso8601::PARSING)
        .or_else(|_| PrimitiveDateTime::parse(s, &Iso8601::PARSING).map(PrimitiveDateTime::assume_utc))
        .ok()
        .or_else(|| {
            // A date alone: a time part that failed above must not fall back here.
            (!s.contains(['T', 't']))
                .then(|| Date::parse(s, &Iso8601::PARSING).ok().map(|d| d.midnight().assume_utc()))
                .flatten()
        })
}

/// Where the seconds of `s` start, when they are `60`: `(T, minute, second)`
/// byte offsets, for the extended `hh:mm:ss` or basic `hhmmss` form.
fn leap_second(s: &str) -> Option<(usize, usize, usize)> {
    let t = s.find(['T', 't'])?;
    let extended = s.as_bytes().get(t + 3) == Some(&b':');
    let (minute, at) = if extended { (t + 4, t + 7) } else { (t + 3, t + 5) };
    let digits = s.as_bytes().get(at..)?.iter().take_while(|b| b.is_ascii_digit()).count();
    (s.get(at..at + 2)? == "60" && digits == 2).then_some((t, minute, at))
}

/// `s` with its second `60` read as `59` (the caller adds the second back),
/// and whether that was in the day's last minute (`23:59`, local time).
fn parse_leap_second(s: &str, (t, minute, at): (usize, usize, usize)) -> Option<(OffsetDateTime, bool)> {
    let last_minute = s.get(t + 1..t + 3)? == "23" && s.get(minute..minute + 2)? == "59";
    let mut fixed = String::with_capacity(s.len());
    fixed.push_str(&s[..at]);
    fixed.push_str("59");
    fixed.push_str(&s[at + 2..]);
    Some((parse_instant(&fixed)?, last_minute))
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
    fn a_second_60_is_the_next_minutes_first_within_the_day_as_postgresql_takes_it() {
        // Each expectation is what PostgreSQL 15 gave for `'…'::timestamptz`.
        let at = |s| parse_iso8601_us(s);
        assert_eq!(at("2026-12-03T10:00:60Z"), at("2026-12-03T10:01:00Z"));
        assert_eq!(at("2026-12-03T10:00:60.5Z"), at("2026-12-03T10:01:00.5Z"));
        assert_eq!(at("20261203T100060Z"), at("2026-12-03T10:01:00Z"));
        assert_eq!(at("2026-12-03T10:00:60+02:00"), at("2026-12-03T08:01:00Z"));
        assert_eq!(at("2026-12-31T23:59:60Z"), at("2027-01-01T00:00:00Z"));
        assert_eq!(at("2026-12-31T23:59:60.5Z"), None);
        assert_eq!(at("2026-12-03T10:00:61Z"), None);
        assert_eq!(at("2026-12-03T10:00:600Z"), None);
    }

    #[test]
    fn a_date_with_a_time_that_does_not_parse_is_refused_not_read_as_its_midnight() {
        for s in
            ["2026-12-03T25:00:00Z", "2026-12-03T10:61:00Z", "2026-12-03T10:00:00+99:00", "2026-12-03Tnoon"]
        {
            assert_eq!(parse_iso8601_us(s), None, "{s}");
        }
    }

    #[test]
    fn non_dates_are_refused() {
        for s in ["", "yesterday", "2026-13-01T00:00:00Z", "2026-02-30", "2026-11-22T25:00:00Z", "1700000000"]
        {
            assert_eq!(parse_iso8601_us(s), None, "{s}");
        }
    }
}
