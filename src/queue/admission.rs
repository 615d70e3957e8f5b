//! What both enqueue paths (the pipeline thread, [`super::pipeline`], and
//! the per-core flushers, [`super::per_core`]) hold against Redis before
//! sending a job, read off the hot path: the queue's length against
//! `MAX_QUEUE_DEPTH` and a master's memory against `MAX_REDIS_MEMORY_PERCENT`.
//! Both ride along with a batch's `XADD`s, never on their own, so an idle
//! gateway sends Redis nothing; the readings' state changes are logged once.

use std::fmt::Display;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::telemetry::metrics::PipelineMetrics;

/// How often `INFO memory` rides along with a batch.
pub(super) const MEMORY_REFRESH: Duration = Duration::from_millis(100);
/// How stale a partition's length may get before `XLEN` rides along with
/// its next batch. Between readings the length is counted up by the jobs
/// Redis acknowledged (an upper bound: the workers' deletes are not seen),
/// and within a tenth of `MAX_QUEUE_DEPTH` it is read with every batch, so
/// most batches far from the limit save a command (tuning.md §23).
pub(super) const DEPTH_REFRESH: Duration = Duration::from_millis(20);

/// The queue's length per partition, as last read and counted since.
///
/// The lengths and the verdict are shared by every view made with
/// [`Depth::view`] (on a cluster, one per master's thread: each reads and
/// counts its own partitions, all hold the same total against the limit);
/// when each partition was last read is the view's own.
pub(super) struct Depth {
    shared: Arc<Lengths>,
    /// When each partition's `XLEN` was last read by this view.
    read_at: Vec<Option<Instant>>,
    /// Near the limit: every batch reads its partitions' lengths.
    exact: bool,
}

struct Lengths {
    /// Per partition: the last `XLEN` plus the jobs acknowledged since.
    len: Vec<AtomicU64>,
    full: AtomicBool,
    max: u64,
}

impl Depth {
    /// `partitions` streams held against `max` entries in all.
    pub(super) fn new(partitions: u16, max: u64) -> Self {
        let n = partitions as usize;
        let shared = Arc::new(Lengths {
            len: (0..n).map(|_| AtomicU64::new(0)).collect(),
            full: AtomicBool::new(false),
            max,
        });
        Self { shared, read_at: vec![None; n], exact: true }
    }

    /// Another view of the same lengths, with readings of its own.
    pub(super) fn view(&self) -> Self {
        Self { shared: self.shared.clone(), read_at: vec![None; self.read_at.len()], exact: true }
    }

    /// Whether new jobs are refused (`QueueFull`).
    pub(super) fn full(&self) -> bool {
        self.shared.full.load(Ordering::Relaxed)
    }

    /// Whether partition `p`'s `XLEN` goes with this batch; if so it counts
    /// as read now. `force`: read whatever the age (while full).
    pub(super) fn due(&mut self, p: u16, now: Instant, force: bool) -> bool {
        let exact = force || self.exact;
        let at = &mut self.read_at[p as usize];
        if !exact && at.is_some_and(|at| now.duration_since(at) < DEPTH_REFRESH) {
            return false;
        }
        *at = Some(now);
        true
    }

    /// Redis acknowledged one job into partition `p`.
    pub(super) fn acked(&mut self, p: u16) {
        self.shared.len[p as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Partition `p`'s `XLEN` answered `reply` (anything but a count is ignored).
    pub(super) fn read(&mut self, p: u16, reply: redis::Value) {
        if let Ok(n) = redis::from_redis_value::<u64>(reply) {
            self.shared.len[p as usize].store(n, Ordering::Relaxed);
        }
    }

    /// After a batch: publishes the total, decides `full` and `exact` for the
    /// next one, and logs a crossing of the limit (once, by the view that
    /// saw it).
    pub(super) fn settle(&mut self, metrics: &PipelineMetrics) {
        let depth: u64 = self.shared.len.iter().map(|l| l.load(Ordering::Relaxed)).sum();
        metrics.set_stream_length(depth);
        let max = self.shared.max;
        self.exact = depth >= max - max / 10;
        let full = depth >= max;
        let was = self.shared.full.swap(full, Ordering::Relaxed);
        if full && !was {
            warn!(
                depth,
                max_queue_depth = max,
                "queue is full: new requests get 503 until the workers catch up"
            );
        } else if !full && was {
            info!(depth, "queue below MAX_QUEUE_DEPTH again: accepting");
        }
    }
}

/// One master's memory, as last read from `INFO memory`.
#[derive(Default)]
pub(super) struct Memory {
    read_at: Option<Instant>,
    full: bool,
    /// `(used_memory, maxmemory)`.
    reading: (u64, u64),
}

impl Memory {
    /// Whether new jobs for this master are refused (`MemoryFull`).
    pub(super) fn full(&self) -> bool {
        self.full
    }

    /// Whether `INFO memory` goes with this batch.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.read_at.is_none_or(|at| now.duration_since(at) >= MEMORY_REFRESH)
    }

    /// The last `(used_memory, maxmemory)`.
    pub(super) fn reading(&self) -> (u64, u64) {
        self.reading
    }

    /// Records the `INFO memory` reply of `master` (see [`Memory::note`]).
    pub(super) fn note_reply(&mut self, reply: redis::Value, percent: u8, master: &dyn Display) {
        let info = redis::from_redis_value::<String>(reply).ok();
        self.note(info.as_deref(), percent, master);
    }

    /// Records an `INFO memory` reply of `master`, logging when the
    /// `MAX_REDIS_MEMORY_PERCENT` line (`percent`, 0 = off) is crossed.
    pub(super) fn note(&mut self, info: Option<&str>, percent: u8, master: &dyn Display) {
        self.read_at = Some(Instant::now());
        let Some((used, max)) = info.and_then(parse_memory) else { return };
        self.reading = (used, max);
        let percent = u64::from(percent);
        let full = percent > 0 && max > 0 && used.saturating_mul(100) >= max.saturating_mul(percent);
        if full && !self.full {
            warn!(
                used_memory = used,
                maxmemory = max,
                max_redis_memory_percent = percent,
                master = %master,
                "redis memory is nearly full: new requests get 503 until the workers free some"
            );
        } else if !full && self.full {
            info!(
                used_memory = used,
                maxmemory = max,
                master = %master,
                "redis memory below MAX_REDIS_MEMORY_PERCENT again: accepting"
            );
        }
        self.full = full;
    }
}

/// Every master's last memory reading, so that the gauge shows the
/// fullest master (the one that refuses first) whichever thread read it.
#[derive(Default)]
pub(super) struct MemoryBoard(Mutex<Vec<(String, (u64, u64))>>);

impl MemoryBoard {
    /// `master` read `reading`; publishes the fullest master's.
    pub(super) fn post(&self, master: &str, reading: (u64, u64), metrics: &PipelineMetrics) {
        let mut board = self.lock();
        match board.iter_mut().find(|(m, _)| m == master) {
            Some((_, r)) => *r = reading,
            None => board.push((master.to_string(), reading)),
        }
        if let Some((_, (used, max))) = board.iter().max_by(|a, b| share(a.1).total_cmp(&share(b.1))) {
            metrics.set_redis_memory(*used, *max);
        }
    }

    /// `master`'s link has stopped: its reading leaves the board (the gauge
    /// follows at the next reading of another master).
    pub(super) fn forget(&self, master: &str) {
        self.lock().retain(|(m, _)| m != master);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, (u64, u64))>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// `used / max` as a fraction (0 without a limit).
pub(super) fn share((used, max): (u64, u64)) -> f64 {
    if max == 0 {
        0.0
    } else {
        used as f64 / max as f64
    }
}

/// `(used_memory, maxmemory)` from an `INFO memory` reply.
fn parse_memory(info: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).and_then(|v| v.trim().parse().ok())
    };
    Some((field("used_memory")?, field("maxmemory")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_info() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:2097152\r\nmaxmemory_human:2.00M\r\n";
        assert_eq!(parse_memory(info), Some((1_048_576, 2_097_152)));
        assert_eq!(parse_memory("used_memory:1\r\n"), None);
    }

    #[test]
    fn memory_over_the_percent_refuses_and_below_accepts_again() {
        let mut m = Memory::default();
        m.note(Some("used_memory:95\r\nmaxmemory:100\r\n"), 90, &"m");
        assert!(m.full());
        m.note(Some("used_memory:50\r\nmaxmemory:100\r\n"), 90, &"m");
        assert!(!m.full());
        m.note(Some("used_memory:95\r\nmaxmemory:100\r\n"), 0, &"m");
        assert!(!m.full(), "0 turns the check off");
    }

    #[test]
    fn depth_is_read_every_batch_near_the_limit_and_refuses_at_it() {
        let metrics = crate::telemetry::metrics::Metrics::with_sources(1, Vec::new());
        let mut d = Depth::new(1, 100);
        let now = Instant::now();
        assert!(d.due(0, now, false), "first reading");
        d.read(0, redis::Value::Int(10));
        d.settle(&metrics.pipeline);
        assert!(!d.due(0, now, false), "far from the limit: not again within DEPTH_REFRESH");
        for _ in 0..85 {
            d.acked(0);
        }
        d.settle(&metrics.pipeline);
        assert!(!d.full());
        assert!(d.due(0, now, false), "within a tenth of the limit: every batch");
        for _ in 0..5 {
            d.acked(0);
        }
        d.settle(&metrics.pipeline);
        assert!(d.full());
    }
}
