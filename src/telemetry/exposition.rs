//! The pieces of Prometheus's text format the metrics are written with:
//! single-writer counters, histograms (per-bucket counts made cumulative
//! when rendered), and one-line counters and gauges.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Adds `n` to a counter that only the calling thread writes.
pub(super) fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Relaxed) + n, Relaxed);
}

/// A histogram whose buckets count observations at or below their bound
/// (non-cumulative here; made cumulative when rendered).
pub(super) struct Histogram<const N: usize> {
    buckets: [AtomicU64; N],
    count: AtomicU64,
    /// Sum of observations, in millionths of the unit.
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    pub(super) fn new() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records `value` (single writer: plain stores).
    pub(super) fn observe_local(&self, bounds: &[f64; N], value: f64) {
        if let Some(i) = bounds.iter().position(|b| value <= *b) {
            bump(&self.buckets[i], 1);
        }
        bump(&self.count, 1);
        bump(&self.sum_micros, (value * 1e6) as u64);
    }

    /// Records `value` (several writers: atomic adds).
    pub(super) fn observe_shared(&self, bounds: &[f64; N], value: f64) {
        if let Some(i) = bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
    }
}

/// Sums histograms and renders them.
pub(super) fn render_histogram<const N: usize>(
    out: &mut String,
    name: &str,
    help: &str,
    bounds: &[f64; N],
    parts: &[&Histogram<N>],
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, bound) in bounds.iter().enumerate() {
        cumulative += parts.iter().map(|h| h.buckets[i].load(Relaxed)).sum::<u64>();
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    let count: u64 = parts.iter().map(|h| h.count.load(Relaxed)).sum();
    let sum: u64 = parts.iter().map(|h| h.sum_micros.load(Relaxed)).sum();
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {}\n{name}_count {count}",
        sum as f64 / 1e6
    );
}

pub(super) fn render_counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}

pub(super) fn render_gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}
