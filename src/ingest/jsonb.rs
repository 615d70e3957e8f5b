//! What is valid JSON but that PostgreSQL's `jsonb` cannot store. Such a
//! body would get a 202 and then only ever reach the dead-letter stream (or,
//! for nesting, stall the batch it is in), so the gateway refuses it with
//! 400 instead. Three kinds, all checked on the whole body (serde_json does
//! not look inside the values it skips):
//!
//! * nesting: PostgreSQL parses JSON recursively and stops at its stack
//!   limit with `54001 stack depth limit exceeded`. Under the default
//!   `max_stack_depth` (2 MB) PostgreSQL 15 here stores 14,543 nested arrays
//!   and 13,089 nested objects and refuses one more; `MAX_JSON_DEPTH`
//!   (default [`DEFAULT_MAX_DEPTH`]) stays far below both. Checked before the
//!   parse. Every body pays one count of its `[` and `{` bytes; only a body
//!   with more of them than the limit is walked.
//! * `\u` escapes: `\u0000`, and a surrogate escape that is not a high one
//!   followed by a low one (found by the `ingest` fuzz target). Checked
//!   before the parse, so such an escape in a contract field gets this
//!   message rather than the parser's.
//! * numbers: `jsonb` keeps them as `numeric`, whose input (PostgreSQL's
//!   `set_var_from_str` and `make_result`) refuses, with "value overflows
//!   numeric format", a value of 10^131072 or more, more than 16,383 digits
//!   after the decimal point *as written* (`1.000e-16381` counts 16,384),
//!   and an exponent of ±1,073,741,823 (`INT_MAX / 2`) or beyond, even on
//!   zero. Checked after the parse, which the token walk relies on. The
//!   boundaries were checked against PostgreSQL 15 (`'1e131071'::jsonb`
//!   stores, `'1e131072'::jsonb` and `'1e-16384'::jsonb` do not). Every body
//!   pays one branch-free pass over its bytes (0.7 µs for the 3.9 KiB Stripe
//!   event, tuning.md §2) and a look at the first bytes of each 4 KiB block;
//!   only a body they flag (an `e` followed by three digits or by a sign and
//!   two, or an aligned 4 KiB block of nothing but digits) is walked token by
//!   token.

/// Default `MAX_JSON_DEPTH`: 13× below the shallowest depth PostgreSQL 15
/// refused here, and below simd-json's own limit of 1,024, so both parsers
/// agree. Real webhooks nest a dozen levels.
pub const DEFAULT_MAX_DEPTH: usize = 1000;

/// The message for a body nested deeper than `max_depth`, if it is. Arrays
/// and objects count; the body's own top-level object is level 1.
pub(crate) fn too_deep(body: &[u8], max_depth: usize) -> Option<String> {
    if max_depth == 0 {
        return None;
    }
    // A body cannot nest deeper than it has openers: count them first,
    // branch-free in byte lanes (a chunk of 255 cannot overflow a u8), which
    // the compiler vectorises; a plain per-byte `usize` sum was 4× slower.
    let openers: usize = body
        .chunks(255)
        .map(|chunk| usize::from(chunk.iter().fold(0u8, |n, &b| n + u8::from((b == b'[') | (b == b'{')))))
        .sum();
    if openers <= max_depth {
        return None;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                i = after_string(body, i);
                continue;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Some(format!(
                        "body must not nest arrays and objects deeper than {max_depth} levels \
                         (MAX_JSON_DEPTH; PostgreSQL jsonb refuses deep nesting)"
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The message for a `\u0000` escape.
pub(crate) const NUL_MESSAGE: &str =
    "body must not contain the escape \\u0000 (PostgreSQL jsonb cannot store it)";

/// The message for a lone UTF-16 surrogate escape, which `jsonb` also refuses.
pub(crate) const SURROGATE_MESSAGE: &str =
    "body must not contain an unpaired UTF-16 surrogate escape such as \\ud800 (PostgreSQL jsonb cannot store it)";

/// The message for the first `\u` escape in `body` that `jsonb` refuses.
pub(crate) fn unstorable_escape(body: &[u8]) -> Option<&'static str> {
    let mut i = 0;
    // `i` passes the end when the body ends in a backslash (found by the
    // `ingest` fuzz target), hence `get`.
    while let Some(found) = body.get(i..).and_then(|rest| memchr::memchr(b'\\', rest)) {
        let at = i + found;
        // Every backslash opens a two-byte escape; skipping both is what
        // keeps `\\u0000` (an escaped backslash, then text) from matching.
        i = at + 2;
        if body.get(at + 1) != Some(&b'u') {
            continue;
        }
        match hex4(&body[at + 2..]) {
            Some(0) => return Some(NUL_MESSAGE),
            Some(0xD800..=0xDBFF) => {
                match body.get(at + 6..at + 8).and_then(|p| hex4(&body[at + 8..]).filter(|_| p == br"\u")) {
                    Some(0xDC00..=0xDFFF) => i = at + 12,
                    _ => return Some(SURROGATE_MESSAGE),
                }
            }
            Some(0xDC00..=0xDFFF) => return Some(SURROGATE_MESSAGE),
            _ => {}
        }
    }
    None
}

/// The value of four hex digits at the start of `s`, if they are there.
fn hex4(s: &[u8]) -> Option<u16> {
    s.get(..4)?.iter().try_fold(0u16, |acc, &b| Some(acc << 4 | (b as char).to_digit(16)? as u16))
}

/// Largest decimal exponent of a value's leading digit (value < 10^131072).
const MAX_LEADING_EXPONENT: i64 = 131_071;
/// Most digits after the decimal point.
const MAX_SCALE: i64 = 16_383;
/// PostgreSQL refuses exponents from `INT_MAX / 2` on, before any other check.
const MAX_EXPONENT: i64 = (i32::MAX / 2) as i64;
/// The block of the digit-run filter. A run of 2 × 4096 − 1 digits or more
/// always covers one aligned block; the shortest run that can break a limit
/// without a long exponent has 15,385 digits (see [`unstorable_number`]).
const DIGIT_BLOCK: usize = 4096;

/// The message for a number `numeric` cannot hold.
pub(crate) const NUMBER_MESSAGE: &str = "body must not contain a number beyond PostgreSQL numeric's range \
     (10^131072, 16383 decimal places, exponent 1073741823)";

/// [`NUMBER_MESSAGE`] when some number in the (already well-formed) JSON
/// `body` is beyond what `numeric` stores.
///
/// Without an exponent of 1,000 or more (four digits), a number breaks a
/// limit only through its own digits: 16,383 − 999 fraction digits, or
/// 131,071 − 999 integer digits, a run far longer than one block. Every
/// exponent of four digits or more starts with `e`, a digit or sign, and two
/// more digits, which the first filter looks for (strings may match too: the
/// walk that follows skips them).
pub(crate) fn unstorable_number(body: &[u8]) -> Option<&'static str> {
    let flagged = may_have_long_exponent(body)
        || body.chunks_exact(DIGIT_BLOCK).any(|b| b.iter().all(u8::is_ascii_digit));
    (flagged && scan(body)).then_some(NUMBER_MESSAGE)
}

/// `e` or `E`, a digit or sign, then two digits, anywhere. No early exit and
/// no branches in the loop: `memchr` on `e` was 5× slower, because ordinary
/// text is full of them and each hit restarts the search (tuning.md §2).
fn may_have_long_exponent(body: &[u8]) -> bool {
    let mut found = false;
    for w in body.windows(4) {
        let sign_or_digit = w[1].is_ascii_digit() | (w[1] == b'-') | (w[1] == b'+');
        found |= ((w[0] | 0x20) == b'e') & sign_or_digit & w[2].is_ascii_digit() & w[3].is_ascii_digit();
    }
    found
}

/// Walks the JSON text, skipping strings, and checks every number token.
fn scan(body: &[u8]) -> bool {
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => i = after_string(body, i),
            b'-' | b'0'..=b'9' => {
                let (end, storable) = number(body, i);
                if !storable {
                    return true;
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    false
}

/// Where the string opened by the quote at `open` ends (past its closing
/// quote, or the end of `body`), stepping over escapes. Robust to any bytes.
fn after_string(body: &[u8], open: usize) -> usize {
    let mut i = open + 1;
    while let Some(at) = body.get(i..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
        i += at;
        if body[i] == b'\\' {
            i += 2;
        } else {
            return i + 1;
        }
    }
    body.len()
}

/// Reads the number token at `start`: where it ends, and whether `numeric` holds it.
fn number(body: &[u8], start: usize) -> (usize, bool) {
    let digits = |from: usize| from + body[from..].iter().take_while(|b| b.is_ascii_digit()).count();
    let mut i = start + usize::from(body[start] == b'-');
    let int_end = digits(i);
    let int = &body[i..int_end];
    i = int_end;
    let mut frac: &[u8] = &[];
    if body.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        frac = &body[i + 1..end];
        i = end;
    }
    let mut exponent: i64 = 0;
    if matches!(body.get(i), Some(b'e' | b'E')) {
        i += 1;
        let negative = body.get(i) == Some(&b'-');
        if matches!(body.get(i), Some(b'-' | b'+')) {
            i += 1;
        }
        let end = digits(i);
        // Saturates far beyond MAX_EXPONENT, so no overflow and the same verdict.
        let magnitude = body[i..end]
            .iter()
            .fold(0i64, |acc, d| acc.saturating_mul(10).saturating_add(i64::from(d - b'0')).min(1 << 40));
        exponent = if negative { -magnitude } else { magnitude };
        i = end;
    }
    if exponent.abs() >= MAX_EXPONENT {
        return (i, false);
    }
    let scale = (frac.len() as i64 - exponent).max(0);
    if scale > MAX_SCALE {
        return (i, false);
    }
    let leading = if int.iter().any(|&d| d != b'0') {
        Some(int.len() as i64 - 1)
    } else {
        frac.iter().position(|&d| d != b'0').map(|zeros| -(zeros as i64) - 1)
    };
    let fits = leading.is_none_or(|lead| lead + exponent <= MAX_LEADING_EXPONENT);
    (i, fits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_arrays_and_objects_but_not_brackets_in_strings() {
        let nest = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(too_deep(nest(5).as_bytes(), 5), None);
        assert!(too_deep(nest(6).as_bytes(), 5).unwrap().contains("deeper than 5 levels"));
        assert!(too_deep(br#"{"a":{"b":[{"c":1}]}}"#, 3).is_some());
        assert_eq!(too_deep(br#"{"a":{"b":[{"c":1}]}}"#, 4), None);
        // Many containers side by side are not depth.
        assert_eq!(too_deep(format!("[{}1]", "[],".repeat(5000)).as_bytes(), 2), None);
        assert_eq!(too_deep(br#"{"s":"[[[[[[{{{{\"[[[[","t":"\\"}"#, 1), None);
        assert_eq!(too_deep(nest(100_000).as_bytes(), 0), None, "0 turns the check off");
        let whole = br#"{"s":"[[\"[[","a":[[[{"b":"\\"}]]]}"#;
        for end in 0..=whole.len() {
            for tail in [&b""[..], b"\\", b"\""] {
                let _ = too_deep(&[&whole[..end], tail].concat(), 2);
            }
        }
        assert!(too_deep(whole, 4).is_some() && too_deep(whole, 5).is_none());
    }

    fn in_body(n: &str) -> bool {
        unstorable_number(format!(r#"{{"a":[1,{n},"x"],"s":"1e99999999"}}"#).as_bytes()).is_some()
    }

    #[test]
    fn the_boundaries_match_postgresql_15() {
        // Each checked with `SELECT '<n>'::jsonb` on PostgreSQL 15.
        for ok in ["1e131071", "1e-16383", "0.1e131072", "0e999999999", "-4.2", "0", "1E+5", "1e400"] {
            assert!(!in_body(ok), "{ok} is storable");
        }
        for bad in [
            "1e131072",
            "1e200000",
            "1e-16384",
            "1e-20000",
            "0e-20000",
            "12345e131068",
            "1e-999999999",
            "1.000e-16381",
        ] {
            assert!(in_body(bad), "{bad} overflows numeric");
        }
        assert!(
            in_body("0e1073741823") && !in_body("0e1073741822"),
            "PostgreSQL's INT_MAX / 2 exponent limit"
        );
    }

    #[test]
    fn numbers_inside_strings_do_not_count() {
        assert!(unstorable_number(br#"{"a":"1e200000","b":"\"1e200000","c":1}"#).is_none());
        assert!(unstorable_number(br#"{"a":"\\","b":1e200000}"#).is_some());
    }

    #[test]
    fn any_prefix_of_a_flagged_body_is_read_without_panic() {
        let whole = br#"{"a":"x\"\\","b":[-1.5e-99999,0e1234,"\u00e9"],"c":12e+3456}"#;
        for end in 0..=whole.len() {
            for tail in [&b""[..], b"\\", b"-", b"e", b"."] {
                let body = [&whole[..end], tail].concat();
                let _ = (unstorable_number(&body), scan(&body));
            }
        }
        assert!(unstorable_number(whole).is_some());
    }

    #[test]
    fn long_digit_runs_in_large_bodies_are_measured() {
        // 131,072 nines store; 10^131072 (a one and 131,072 zeros) does not.
        let ok_int = format!(r#"{{"a":{}}}"#, "9".repeat(131_072));
        assert!(unstorable_number(ok_int.as_bytes()).is_none());
        let big_int = format!(r#"{{"a":1{}}}"#, "0".repeat(131_072));
        assert!(unstorable_number(big_int.as_bytes()).is_some());
        let long_fraction = format!(r#"{{"a":0.{}}}"#, "1".repeat(16_384));
        assert!(unstorable_number(long_fraction.as_bytes()).is_some());
    }
}
