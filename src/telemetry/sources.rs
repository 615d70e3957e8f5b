//! Per-source counters: what each sender's requests became (202, a
//! challenge answered, or refused and why), and when the last 202 was.
//! Counted per core by the core that answered (a plain store, no lock),
//! summed when read: by a scrape (`webhook_source_*`) and by the API's
//! `GET /v1/sources`. Requests refused before a route was known (a
//! malformed head, an unknown path) count under [`UNROUTED`].

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// The `source` label of requests refused before a route was known.
pub const UNROUTED: &str = "_unrouted";

/// Every refusal counted, `(status, reason)`: the reasons a source's
/// checks give (`missing_signature`… for 401, `invalid_body` for 400), the
/// queue's for 503, and the status's own for the rest
/// ([`crate::http::response::Response::reason`]).
pub const REFUSALS: [(u16, &str); 26] = [
    (400, "bad_request"),
    (400, "invalid_body"),
    (401, "unauthorized"),
    (401, "missing_signature"),
    (401, "malformed_signature"),
    (401, "bad_signature"),
    (401, "stale_timestamp"),
    (401, "replayed_token"),
    (404, "not_found"),
    (405, "method_not_allowed"),
    (408, "request_timeout"),
    (413, "too_large"),
    (415, "unsupported_media_type"),
    (417, "expectation_failed"),
    (429, "rate_limited"),
    (431, "header_too_large"),
    (500, "internal_error"),
    (501, "not_implemented"),
    (503, "unavailable"),
    (503, "saturated"),
    (503, "queue_unavailable"),
    (503, "queue_timed_out"),
    (503, "queue_full"),
    (503, "memory_full"),
    (503, "shutting_down"),
    (503, "over_capacity"),
];

/// The position of `(status, reason)` in [`REFUSALS`]; an unknown reason
/// counts as its status's generic one (listed first), so nothing refused
/// goes uncounted.
pub fn refusal_index(status: u16, reason: &str) -> Option<usize> {
    REFUSALS
        .iter()
        .position(|&(s, r)| s == status && r == reason)
        .or_else(|| REFUSALS.iter().position(|&(s, _)| s == status))
}

/// What became of one request to a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceOutcome {
    /// A 202 at this time (µs since the epoch): the job is in Redis.
    Accepted(i64),
    /// A challenge answered and not stored (Slack's `url_verification`, GitHub's `ping`).
    Answered,
    /// Refused: the [`REFUSALS`] index.
    Refused(usize),
}

/// One source's counters on one core.
pub(super) struct SourceCounters {
    accepted: AtomicU64,
    answered: AtomicU64,
    /// µs since the epoch; 0 before the first.
    last_accepted_us: AtomicI64,
    refused: [AtomicU64; REFUSALS.len()],
}

impl SourceCounters {
    pub(super) fn new() -> Self {
        Self {
            accepted: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            last_accepted_us: AtomicI64::new(0),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Counts `outcome` (call only from the owning core: a load and a store).
    pub(super) fn record(&self, outcome: SourceOutcome) {
        let bump = |c: &AtomicU64| c.store(c.load(Relaxed) + 1, Relaxed);
        match outcome {
            SourceOutcome::Accepted(at_us) => {
                bump(&self.accepted);
                self.last_accepted_us.store(at_us, Relaxed);
            }
            SourceOutcome::Answered => bump(&self.answered),
            SourceOutcome::Refused(i) => {
                if let Some(c) = self.refused.get(i) {
                    bump(c);
                }
            }
        }
    }
}

/// One source's counts, summed over the cores.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceTotals {
    /// 202s.
    pub accepted: u64,
    /// Challenges answered.
    pub answered: u64,
    /// The last 202, µs since the epoch (`None`: none since the start).
    pub last_accepted_us: Option<i64>,
    /// Refusals, by [`REFUSALS`] index.
    pub refused: Vec<u64>,
}

impl SourceTotals {
    /// Sums `counters` (one per core).
    pub(super) fn sum<'a>(counters: impl Iterator<Item = &'a SourceCounters>) -> Self {
        let mut t = Self { refused: vec![0; REFUSALS.len()], ..Self::default() };
        for c in counters {
            t.accepted += c.accepted.load(Relaxed);
            t.answered += c.answered.load(Relaxed);
            let last = c.last_accepted_us.load(Relaxed);
            if last > 0 {
                t.last_accepted_us = Some(t.last_accepted_us.map_or(last, |l| l.max(last)));
            }
            for (sum, n) in t.refused.iter_mut().zip(&c.refused) {
                *sum += n.load(Relaxed);
            }
        }
        t
    }
}

/// A source as the metrics name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLabel {
    /// The `source` label: the route.
    pub name: String,
    /// `silent_after_secs`, exported for the alert on a silent sender.
    pub silent_after_secs: Option<u64>,
}

/// Renders the `webhook_source_*` families for `labels` (the last total
/// is [`UNROUTED`]'s, which has refusals only).
pub(super) fn render(out: &mut String, labels: &[SourceLabel], totals: &[SourceTotals]) {
    type Family = (&'static str, &'static str, fn(&SourceTotals) -> u64);
    let counters: [Family; 2] = [
        (
            "webhook_source_accepted_total",
            "Events a source's sender delivered that Redis acknowledged (202).",
            |t| t.accepted,
        ),
        (
            "webhook_source_challenges_total",
            "Challenges answered and not stored (Slack url_verification, GitHub ping).",
            |t| t.answered,
        ),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (label, t) in labels.iter().zip(totals) {
            let _ = writeln!(out, "{name}{{source=\"{}\"}} {}", label.name, get(t));
        }
    }
    let name = "webhook_source_last_accepted_timestamp_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} When the source's last 202 was answered (Unix seconds); absent before the first since the start.\n# TYPE {name} gauge"
    );
    for (label, t) in labels.iter().zip(totals) {
        if let Some(us) = t.last_accepted_us {
            let _ = writeln!(out, "{name}{{source=\"{}\"}} {:.6}", label.name, us as f64 / 1e6);
        }
    }
    let name = "webhook_source_silent_after_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} The longest quiet a source's sender normally has (silent_after_secs): the alert on a silent source fires past it.\n# TYPE {name} gauge"
    );
    for label in labels {
        if let Some(secs) = label.silent_after_secs {
            let _ = writeln!(out, "{name}{{source=\"{}\"}} {secs}", label.name);
        }
    }
    let name = "webhook_source_rejected_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests refused, by source, status and reason ({UNROUTED}: before a route was known).\n# TYPE {name} counter"
    );
    let names = labels.iter().map(|l| l.name.as_str()).chain([UNROUTED]);
    for (source, t) in names.zip(totals) {
        for (&(status, reason), n) in REFUSALS.iter().zip(&t.refused) {
            let _ =
                writeln!(out, "{name}{{source=\"{source}\",status=\"{status}\",reason=\"{reason}\"}} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_a_response_or_a_source_gives_is_counted() {
        for reason in crate::ingest::sources::REJECTION_REASONS {
            let status = if reason == "invalid_body" { 400 } else { 401 };
            assert_eq!(REFUSALS[refusal_index(status, reason).unwrap()], (status, reason));
        }
        assert_eq!(REFUSALS[refusal_index(503, "something new").unwrap()], (503, "unavailable"));
        assert_eq!(refusal_index(299, "x"), None);
        let mut seen = std::collections::HashSet::new();
        assert!(REFUSALS.iter().all(|r| seen.insert(*r)), "each once");
    }
}
