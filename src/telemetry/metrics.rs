//! Prometheus metrics, in one place (names, help texts, rendering).
//!
//! Three kinds of writers, none taking a lock:
//! * each core owns a [`CoreMetrics`] (cache-line aligned) and is its only
//!   writer, so a count is a plain load + store, not even a locked add;
//! * the Redis pipeline thread, or with `ENQUEUE_MODE=core` every core's
//!   flusher once per batch, writes [`PipelineMetrics`] (relaxed atomic adds);
//! * worker threads share [`WorkerMetrics`] (relaxed atomic adds, once per batch).
//!
//! A scrape sums the per-core values and renders the text format
//! (`text/plain; version=0.0.4`). Names follow Prometheus conventions:
//! `_total` counters, base units (`_seconds`, `_bytes`), `webhook_` prefix.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use super::exposition::{bump, render_counter, render_gauge, render_histogram, Histogram};
use super::gauges::render_partitions;
pub use super::gauges::{age_seconds, PartitionGauges, QueueGauges};
use super::rejections::{Bounds, Rejections};
use super::sources::{SourceCounters, SourceLabel, SourceOutcome, SourceTotals};

/// The status codes `webhook_http_requests_total` counts, in the order of
/// `http::response::Status::ALL` (a test there keeps the two equal): a
/// request is counted at its status's position, `Status::index`, with no
/// search on the way.
pub const STATUS_CODES: [u16; 18] =
    [200, 202, 204, 400, 401, 403, 404, 405, 408, 410, 413, 415, 417, 429, 431, 501, 500, 503];

/// The position of 429 in [`STATUS_CODES`]: `webhook_rate_limited_total`
/// is that column, summed.
const TOO_MANY_REQUESTS: usize = 13;
const _: () = assert!(STATUS_CODES[TOO_MANY_REQUESTS] == 429);

/// Route labels of `webhook_http_requests_total`.
pub const ROUTES: [&str; 4] = ["webhook", "health", "health_live", "unknown"];
/// Request latency buckets, seconds.
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
/// Batch size buckets (enqueue and worker batches).
pub const BATCH_BUCKETS: [f64; 12] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0, 16384.0];

/// A route label index into [`ROUTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteLabel {
    /// `/webhooks/:provider` (and its preflight).
    Webhook = 0,
    /// `/health`.
    Health = 1,
    /// `/health/live`.
    Live = 2,
    /// Anything else, and requests too broken to route.
    Unknown = 3,
}

/// One core's HTTP counters. Only that core writes them.
#[repr(align(128))]
pub struct CoreMetrics {
    requests: [[AtomicU64; STATUS_CODES.len()]; ROUTES.len()],
    latency: Histogram<{ LATENCY_BUCKETS.len() }>,
    sources: Vec<SourceCounters>,
}

impl CoreMetrics {
    fn new(sources: usize) -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: Histogram::new(),
            // One more: the unrouted.
            sources: (0..=sources).map(|_| SourceCounters::new()).collect(),
        }
    }

    /// Counts one request to source `index` (`None`: refused before a
    /// route was known). Call only from the owning core.
    pub fn record_source(&self, index: Option<usize>, outcome: SourceOutcome) {
        let unrouted = self.sources.len() - 1;
        let i = index.filter(|&i| i < unrouted).unwrap_or(unrouted);
        self.sources[i].record(outcome);
    }

    /// Counts one answered request whose status is at `status` in
    /// [`STATUS_CODES`] (call only from the owning core).
    pub fn record(&self, route: RouteLabel, status: usize, elapsed: Duration) {
        bump(&self.requests[route as usize][status.min(STATUS_CODES.len() - 1)], 1);
        self.latency.observe_local(&LATENCY_BUCKETS, elapsed.as_secs_f64());
    }
}

/// The enqueue's counters: the pipeline thread's, or every core flusher's.
pub struct PipelineMetrics {
    batch_size: Histogram<{ BATCH_BUCKETS.len() }>,
    batch_seconds: Histogram<{ LATENCY_BUCKETS.len() }>,
    enqueued: AtomicU64,
    redis_errors: AtomicU64,
    stream_length: AtomicU64,
    redis_used_memory: AtomicU64,
    redis_max_memory: AtomicU64,
}

impl PipelineMetrics {
    /// One pipeline sent: its size, its round trip, how many jobs Redis took.
    pub fn record_batch(&self, size: usize, took: Duration, enqueued: usize) {
        self.batch_size.observe_shared(&BATCH_BUCKETS, size as f64);
        self.batch_seconds.observe_shared(&LATENCY_BUCKETS, took.as_secs_f64());
        self.enqueued.fetch_add(enqueued as u64, Relaxed);
    }

    /// A Redis failure seen by the pipeline thread.
    pub fn record_redis_error(&self) {
        self.redis_errors.fetch_add(1, Relaxed);
    }

    /// The stream length Redis reported with the last batch.
    pub fn set_stream_length(&self, len: u64) {
        self.stream_length.store(len, Relaxed);
    }

    /// Redis's `used_memory` and `maxmemory` (0 = no limit), as last read.
    pub fn set_redis_memory(&self, used: u64, max: u64) {
        self.redis_used_memory.store(used, Relaxed);
        self.redis_max_memory.store(max, Relaxed);
    }
}

/// The workers' counters (shared by the worker threads).
pub struct WorkerMetrics {
    batch_size: Histogram<{ BATCH_BUCKETS.len() }>,
    inserted: AtomicU64,
    duplicates: AtomicU64,
    dead_lettered: AtomicU64,
    postgres_errors: AtomicU64,
    redis_errors: AtomicU64,
    dead_letter_fallbacks: AtomicU64,
    dead_letters_moved: AtomicU64,
    unknown_format: AtomicU64,
    held: AtomicU64,
    conflicts: AtomicU64,
}

impl WorkerMetrics {
    /// One finished step.
    pub fn record_batch(&self, read: usize, inserted: u64, duplicates: u64, dead: usize) {
        self.batch_size.observe_shared(&BATCH_BUCKETS, read as f64);
        self.inserted.fetch_add(inserted, Relaxed);
        self.duplicates.fetch_add(duplicates, Relaxed);
        self.dead_lettered.fetch_add(dead as u64, Relaxed);
    }

    /// A PostgreSQL failure (each retry counts).
    pub fn record_postgres_error(&self) {
        self.postgres_errors.fetch_add(1, Relaxed);
    }

    /// A Redis failure seen by a worker.
    pub fn record_redis_error(&self) {
        self.redis_errors.fetch_add(1, Relaxed);
    }

    /// Dead letters written to the Redis fallback stream (PostgreSQL unreachable).
    pub fn record_dead_letter_fallbacks(&self, n: u64) {
        self.dead_letter_fallbacks.fetch_add(n, Relaxed);
    }

    /// Entries of a job format newer than this build, left pending.
    pub fn record_unknown_format(&self, n: u64) {
        self.unknown_format.fetch_add(n, Relaxed);
    }

    /// Deliveries of a stored id with another body, kept apart.
    pub fn record_conflicts(&self, n: u64) {
        self.conflicts.fetch_add(n, Relaxed);
    }

    /// Entries left pending unjudged: PostgreSQL refused every row alike.
    pub fn record_held(&self, n: u64) {
        self.held.fetch_add(n, Relaxed);
    }

    /// Dead letters moved from the Redis fallback stream into PostgreSQL.
    pub fn record_dead_letters_moved(&self, n: u64) {
        self.dead_letters_moved.fetch_add(n, Relaxed);
    }
}

/// Every metric of the process.
pub struct Metrics {
    cores: Vec<Arc<CoreMetrics>>,
    /// Each source's labels, by index.
    sources: Vec<SourceLabel>,
    /// The requests refused lately (`GET /v1/rejections`).
    pub rejections: Rejections,
    /// The pipeline thread's.
    pub pipeline: PipelineMetrics,
    /// The workers'.
    pub workers: WorkerMetrics,
    /// What the workers last saw of PostgreSQL.
    pub store: super::store::StoreGauges,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("cores", &self.cores.len()).finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics for `cores` runtimes and no per-source counters.
    pub fn new(cores: usize) -> Arc<Self> {
        Self::with_sources(cores, Vec::new())
    }

    /// Metrics for `cores` runtimes and `sources`, rejections kept within
    /// the default bounds.
    pub fn with_sources(cores: usize, sources: Vec<SourceLabel>) -> Arc<Self> {
        Self::with_bounds(cores, sources, Bounds::default())
    }

    /// Metrics for `cores` runtimes and `sources`, rejections kept within `bounds`.
    pub fn with_bounds(cores: usize, sources: Vec<SourceLabel>, bounds: Bounds) -> Arc<Self> {
        let n = sources.len();
        Arc::new(Self {
            cores: (0..cores).map(|_| Arc::new(CoreMetrics::new(n))).collect(),
            rejections: Rejections::new(cores, n, bounds),
            store: Default::default(),
            sources,
            pipeline: PipelineMetrics {
                batch_size: Histogram::new(),
                batch_seconds: Histogram::new(),
                enqueued: AtomicU64::new(0),
                redis_errors: AtomicU64::new(0),
                stream_length: AtomicU64::new(0),
                redis_used_memory: AtomicU64::new(0),
                redis_max_memory: AtomicU64::new(0),
            },
            workers: WorkerMetrics {
                batch_size: Histogram::new(),
                inserted: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
                dead_lettered: AtomicU64::new(0),
                postgres_errors: AtomicU64::new(0),
                redis_errors: AtomicU64::new(0),
                dead_letter_fallbacks: AtomicU64::new(0),
                dead_letters_moved: AtomicU64::new(0),
                unknown_format: AtomicU64::new(0),
                held: AtomicU64::new(0),
                conflicts: AtomicU64::new(0),
            },
        })
    }

    /// Each source's counts summed over the cores, by index, and last the
    /// unrouted refusals.
    pub fn source_totals(&self) -> Vec<SourceTotals> {
        (0..=self.sources.len())
            .map(|i| SourceTotals::sum(self.cores.iter().map(|c| &c.sources[i])))
            .collect()
    }

    /// Core `index`'s counters (each core must use only its own).
    pub fn core(&self, index: usize) -> Arc<CoreMetrics> {
        self.cores[index].clone()
    }

    /// Renders everything. `channel_backlog` is the hand-off channel's
    /// length; `queue`, what Redis said at scrape time.
    pub fn render(&self, channel_backlog: u64, queue: Option<QueueGauges>) -> String {
        let mut out = String::with_capacity(8192);
        let name = "webhook_http_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} HTTP requests answered, by route and status.\n# TYPE {name} counter"
        );
        for (r, route) in ROUTES.iter().enumerate() {
            for (s, code) in STATUS_CODES.iter().enumerate() {
                let n: u64 = self.cores.iter().map(|c| c.requests[r][s].load(Relaxed)).sum();
                if n > 0 {
                    let _ = writeln!(out, "{name}{{route=\"{route}\",status=\"{code}\"}} {n}");
                }
            }
        }
        let latency: Vec<&Histogram<{ LATENCY_BUCKETS.len() }>> =
            self.cores.iter().map(|c| &c.latency).collect();
        render_histogram(
            &mut out,
            "webhook_http_request_duration_seconds",
            "Time from a complete request head to its answer.",
            &LATENCY_BUCKETS,
            &latency,
        );
        let limited = self
            .cores
            .iter()
            .flat_map(|c| c.requests.iter().map(|route| route[TOO_MANY_REQUESTS].load(Relaxed)))
            .sum();
        render_counter(&mut out, "webhook_rate_limited_total", "Requests refused with 429.", limited);
        super::sources::render(&mut out, &self.sources, &self.source_totals());
        let p = &self.pipeline;
        render_histogram(
            &mut out,
            "webhook_enqueue_batch_size",
            "Jobs per Redis XADD pipeline.",
            &BATCH_BUCKETS,
            &[&p.batch_size],
        );
        render_histogram(
            &mut out,
            "webhook_enqueue_batch_duration_seconds",
            "Round trip of one XADD pipeline.",
            &LATENCY_BUCKETS,
            &[&p.batch_seconds],
        );
        render_counter(
            &mut out,
            "webhook_enqueued_total",
            "Jobs Redis acknowledged (each got a 202).",
            p.enqueued.load(Relaxed),
        );
        render_gauge(
            &mut out,
            "webhook_enqueue_channel_depth",
            "Jobs waiting to be sent to Redis (the pipeline thread's channel, or every core's queue in ENQUEUE_MODE=core).",
            channel_backlog,
        );
        let w = &self.workers;
        render_histogram(
            &mut out,
            "webhook_worker_batch_size",
            "Entries per worker step.",
            &BATCH_BUCKETS,
            &[&w.batch_size],
        );
        let redis_errors = p.redis_errors.load(Relaxed) + w.redis_errors.load(Relaxed);
        let counters: [(&str, &str, u64); 10] = [
            ("webhook_rows_inserted_total", "New rows written to PostgreSQL.", w.inserted.load(Relaxed)),
            (
                "webhook_duplicates_dropped_total",
                "Entries whose event was already stored.",
                w.duplicates.load(Relaxed),
            ),
            (
                "webhook_dead_lettered_total",
                "Entries dead-lettered (webhook_dead_letters, or the Redis fallback stream).",
                w.dead_lettered.load(Relaxed),
            ),
            (
                "webhook_postgres_errors_total",
                "PostgreSQL failures seen by workers.",
                w.postgres_errors.load(Relaxed),
            ),
            ("webhook_redis_errors_total", "Redis failures (pipeline thread and workers).", redis_errors),
            (
                "webhook_dead_letter_fallbacks_total",
                "Dead letters kept in the Redis fallback stream because PostgreSQL was unreachable.",
                w.dead_letter_fallbacks.load(Relaxed),
            ),
            (
                "webhook_entries_unknown_format_total",
                "Entries of a job format newer than this build, left pending for a newer worker (each reading counts).",
                w.unknown_format.load(Relaxed),
            ),
            (
                "webhook_entries_held_total",
                "Entries left pending unjudged because PostgreSQL refused every row alike (each time counts).",
                w.held.load(Relaxed),
            ),
            (
                "webhook_event_conflicts_total",
                "Deliveries of an already stored (provider, event id) with a different body, kept apart in \
                 webhook_event_conflicts and never merged.",
                w.conflicts.load(Relaxed),
            ),
            (
                "webhook_dead_letters_moved_total",
                "Dead letters moved from the Redis fallback stream into webhook_dead_letters.",
                w.dead_letters_moved.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            render_counter(&mut out, name, help, value);
        }
        render_gauge(
            &mut out,
            "webhook_redis_used_memory_bytes",
            "Redis used_memory, as last read by the pipeline thread.",
            p.redis_used_memory.load(Relaxed),
        );
        render_gauge(
            &mut out,
            "webhook_redis_maxmemory_bytes",
            "Redis maxmemory (0 = no limit), as last read by the pipeline thread.",
            p.redis_max_memory.load(Relaxed),
        );
        let length = queue.as_ref().map_or(p.stream_length.load(Relaxed), |q| q.length);
        render_gauge(&mut out, "webhook_queue_length", "Entries in the Redis streams.", length);
        if let Some(q) = queue {
            render_gauge(&mut out, "webhook_queue_lag", "Entries not yet delivered to a worker.", q.lag);
            let name = "webhook_queue_oldest_unacked_age_seconds";
            let _ = writeln!(
                out,
                "# HELP {name} Age of the oldest entry no worker has acknowledged yet (0 when none waits).\n# TYPE {name} gauge\n{name} {:.3}",
                age_seconds(q.oldest_ms)
            );
            render_partitions(&mut out, &q.partitions);
            render_gauge(
                &mut out,
                "webhook_queue_pending",
                "Entries delivered to a worker and not acknowledged.",
                q.pending,
            );
            render_gauge(
                &mut out,
                "webhook_dead_letter_length",
                "Entries in the dead-letter stream.",
                q.dead_letters,
            );
        }
        self.store.render(&mut out);
        if let Some(rss) = super::process::resident_bytes() {
            render_gauge(&mut out, "webhook_resident_memory_bytes", "Resident memory of this process.", rss);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_core_counts_are_summed_and_histograms_are_cumulative() {
        let m = Metrics::new(2);
        m.core(0).record(RouteLabel::Webhook, 1, Duration::from_micros(300));
        m.core(1).record(RouteLabel::Webhook, 1, Duration::from_millis(3));
        m.core(1).record(RouteLabel::Webhook, TOO_MANY_REQUESTS, Duration::from_micros(10));
        let text = m.render(7, None);
        assert!(text.contains("webhook_http_requests_total{route=\"webhook\",status=\"202\"} 2\n"), "{text}");
        assert!(text.contains("webhook_http_requests_total{route=\"webhook\",status=\"429\"} 1\n"));
        assert!(text.contains("webhook_http_request_duration_seconds_bucket{le=\"0.0005\"} 2\n"));
        assert!(text.contains("webhook_http_request_duration_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(text.contains("webhook_http_request_duration_seconds_count 3\n"));
        assert!(text.contains("webhook_rate_limited_total 1\n"));
        assert!(text.contains("webhook_enqueue_channel_depth 7\n"));
    }
}
