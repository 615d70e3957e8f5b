//! The queue's gauges, read from Redis at scrape time by the health
//! thread: totals, each partition's own, and the age of the oldest entry
//! not yet acknowledged.

use std::fmt::Write;

/// Queue gauges read from Redis at scrape time (absent if Redis did not
/// answer): the totals, and each partition's own when there are several.
#[derive(Debug, Clone, Default)]
pub struct QueueGauges {
    /// `XLEN` of the streams.
    pub length: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// `XLEN` of the dead-letter streams.
    pub dead_letters: u64,
    /// Entries not yet delivered to any worker (`XINFO GROUPS` lag).
    pub lag: u64,
    /// When the oldest entry not yet acknowledged was added (ms since the
    /// epoch, from its id), over every partition that answered; `None`
    /// when none waits.
    pub oldest_ms: Option<u64>,
    /// Per partition, in partition order (`None`: its master did not answer).
    pub partitions: Vec<Option<PartitionGauges>>,
}

/// One partition's gauges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionGauges {
    /// `XLEN` of its stream.
    pub length: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// `XLEN` of its dead-letter stream.
    pub dead_letters: u64,
    /// Entries not yet delivered (0 when Redis cannot say).
    pub lag: u64,
    /// When its oldest entry not yet acknowledged was added (ms since the
    /// epoch): the stream's first entry, since acknowledged entries are
    /// deleted. `None` when the stream is empty.
    pub oldest_ms: Option<u64>,
}

impl QueueGauges {
    /// Totals over `partitions`.
    pub fn from_partitions(partitions: Vec<Option<PartitionGauges>>) -> Self {
        let sum = |f: fn(&PartitionGauges) -> u64| partitions.iter().flatten().map(f).sum();
        Self {
            length: sum(|p| p.length),
            pending: sum(|p| p.pending),
            dead_letters: sum(|p| p.dead_letters),
            lag: sum(|p| p.lag),
            oldest_ms: partitions.iter().flatten().filter_map(|p| p.oldest_ms).min(),
            partitions,
        }
    }
}

/// Seconds since `ms` (ms since the epoch); 0 for `None`.
pub fn age_seconds(ms: Option<u64>) -> f64 {
    let now = crate::job::now_us() / 1000;
    ms.map_or(0.0, |ms| (now - ms as i64).max(0) as f64 / 1e3)
}

/// A per-partition series: name, help, and how to read it.
type Series = (&'static str, &'static str, fn(&PartitionGauges) -> u64);

/// Per-partition gauges, only when the queue has several partitions (one
/// partition's series would repeat the totals).
pub(super) fn render_partitions(out: &mut String, partitions: &[Option<PartitionGauges>]) {
    if partitions.len() < 2 {
        return;
    }
    let series: [Series; 4] = [
        ("webhook_partition_length", "Entries in the partition's stream.", |g| g.length),
        ("webhook_partition_pending", "Entries of the partition delivered and not acknowledged.", |g| {
            g.pending
        }),
        ("webhook_partition_lag", "Entries of the partition not yet delivered.", |g| g.lag),
        ("webhook_partition_dead_letters", "Entries in the partition's dead-letter stream.", |g| {
            g.dead_letters
        }),
    ];
    for (name, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (p, g) in partitions.iter().enumerate() {
            if let Some(g) = g {
                let _ = writeln!(out, "{name}{{partition=\"{p}\"}} {}", get(g));
            }
        }
    }
}
