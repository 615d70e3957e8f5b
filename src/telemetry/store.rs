//! What the workers last saw of PostgreSQL: whether it takes writes, and
//! how old the oldest event partition is against the retention, for the
//! alerts on a database down and on a retention that stopped dropping.
//! Written by the workers (each batch's outcome, each maintenance run),
//! rendered by a scrape; absent until first known.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering::Relaxed};

/// The gauges.
#[derive(Debug, Default)]
pub struct StoreGauges {
    /// 0 unknown, 1 down, 2 up.
    up: AtomicU8,
    /// µs since the epoch; 0 unknown.
    oldest_partition_start_us: AtomicI64,
    retention_secs: AtomicU64,
    interval_secs: AtomicU64,
}

impl StoreGauges {
    /// Whether PostgreSQL took the last write or maintenance run.
    pub fn set_up(&self, up: bool) {
        self.up.store(if up { 2 } else { 1 }, Relaxed);
    }

    /// The lower bound of the oldest event partition, µs since the epoch.
    pub fn set_oldest_partition(&self, start_us: i64) {
        self.oldest_partition_start_us.store(start_us, Relaxed);
    }

    /// `EVENT_RETENTION` (0: keep everything) and `PARTITION_INTERVAL`.
    pub fn set_retention(&self, retention_secs: u64, interval_secs: u64) {
        self.retention_secs.store(retention_secs, Relaxed);
        self.interval_secs.store(interval_secs, Relaxed);
    }

    /// Appends the known gauges.
    pub(super) fn render(&self, out: &mut String) {
        let mut gauge = |name: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        match self.up.load(Relaxed) {
            0 => {}
            up => gauge(
                "webhook_postgres_up",
                "1 when PostgreSQL took this process's workers' last write or maintenance run, 0 when it failed.",
                (up - 1).to_string(),
            ),
        }
        let start = self.oldest_partition_start_us.load(Relaxed);
        if start != 0 {
            gauge(
                "webhook_store_oldest_partition_start_seconds",
                "Lower bound of the oldest event partition (Unix seconds): past EVENT_RETENTION, the retention is not dropping.",
                format!("{:.0}", start as f64 / 1e6),
            );
        }
        let interval = self.interval_secs.load(Relaxed);
        if interval != 0 {
            gauge(
                "webhook_store_retention_seconds",
                "EVENT_RETENTION (0: every event is kept).",
                self.retention_secs.load(Relaxed).to_string(),
            );
            gauge("webhook_store_partition_interval_seconds", "PARTITION_INTERVAL.", interval.to_string());
        }
    }
}
