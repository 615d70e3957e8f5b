//! `worker/`'s section: threads, batches, attempts and reclaiming, and the
//! [`WorkerSettings`](crate::worker::WorkerSettings) the workers take.

use std::time::Duration;

use super::vars::Vars;
use super::{at_least_body, ConfigError};

/// `worker/`: the consumers that move jobs into PostgreSQL.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `WORKER_THREADS` (default 2): consumer threads writing to PostgreSQL.
    pub threads: usize,
    /// `WORKER_BATCH_MAX` (default 5000): most entries per read and per transaction.
    pub batch_max: usize,
    /// `WORKER_BATCH_MAX_BYTES` (default 64 MiB, at least `MAX_BODY_BYTES`):
    /// most entry bytes a worker thread holds; reads are sized so that a
    /// batch of `MAX_BODY_BYTES` entries stays within it.
    pub batch_max_bytes: usize,
    /// `WORKER_BLOCK_MS` (default 1000): how long a worker's read waits for new entries.
    pub block: Duration,
    /// `WORKER_LINGER_MS` (default 50): after a short read, wait this long
    /// for more entries before writing (storage latency, not 202 latency).
    pub linger: Duration,
    /// `DEAD_LETTER_REDIS_MAX_BYTES` (default 64 MiB): how much the Redis
    /// dead-letter stream may hold while PostgreSQL is unreachable; past
    /// it, entries to dead-letter stay pending in their stream instead.
    pub dead_letter_redis_max_bytes: u64,
    /// `MAX_ATTEMPTS` (default 5): attempts that failed because of an entry
    /// (PostgreSQL refused it while taking other rows) before it is dead-lettered.
    pub max_attempts: u64,
    /// `RECLAIM_IDLE_MS` (default 30000): an entry pending this long without
    /// a heartbeat is taken over by another worker (its worker died).
    pub reclaim_idle: Duration,
    /// `CONSUMER_HOST` (default: the kernel's host name): the host part of
    /// this process's consumer names (`<host>-<pid>-<n>`). Set it where
    /// host names repeat across machines (containers given the same
    /// `hostname:`), or two processes could take each other for gone.
    pub host: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            threads: 2,
            batch_max: 5000,
            batch_max_bytes: 64 << 20,
            block: Duration::from_millis(1000),
            linger: Duration::from_millis(50),
            dead_letter_redis_max_bytes: 64 << 20,
            max_attempts: 5,
            reclaim_idle: Duration::from_millis(30_000),
            host: crate::worker::hostname(),
        }
    }
}

impl WorkerConfig {
    pub(super) fn read(v: &Vars<'_>, max_body_bytes: usize) -> Result<Self, ConfigError> {
        let d = Self::default();
        let c = Self {
            threads: v.var("WORKER_THREADS").in_range(d.threads, 0, 256)?,
            batch_max: v.var("WORKER_BATCH_MAX").in_range(d.batch_max, 1, 50_000)?,
            batch_max_bytes: v.var("WORKER_BATCH_MAX_BYTES").in_range(d.batch_max_bytes, 1 << 16, 1 << 40)?,
            block: v.var("WORKER_BLOCK_MS").millis(d.block, 1, 60_000)?,
            linger: v.var("WORKER_LINGER_MS").millis(d.linger, 0, 10_000)?,
            dead_letter_redis_max_bytes: v.var("DEAD_LETTER_REDIS_MAX_BYTES").in_range(
                d.dead_letter_redis_max_bytes,
                0,
                1 << 40,
            )?,
            max_attempts: v.var("MAX_ATTEMPTS").in_range(d.max_attempts, 1, 1000)?,
            reclaim_idle: v.var("RECLAIM_IDLE_MS").millis(d.reclaim_idle, 50, 86_400_000)?,
            host: match v.var("CONSUMER_HOST").value {
                None => d.host,
                Some(h)
                    if !h.is_empty()
                        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
                {
                    h
                }
                Some(_) => return Err(v.var("CONSUMER_HOST").error("letters, digits, `-`, `_` or `.`")),
            },
        };
        if c.batch_max_bytes < max_body_bytes {
            return Err(at_least_body(v, "WORKER_BATCH_MAX_BYTES", max_body_bytes));
        }
        Ok(c)
    }
}

impl super::Config {
    /// What the worker threads take: this section, the store's timeouts
    /// and retention, the queue, the largest body and the shutdown timeout.
    pub fn worker_settings(
        &self,
        metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    ) -> crate::worker::WorkerSettings {
        let w = &self.worker;
        crate::worker::WorkerSettings {
            queue: self.queue.queue(),
            batch_max: w.batch_max,
            batch_max_bytes: w.batch_max_bytes,
            max_body_bytes: self.largest_body(),
            pg_timeouts: self.store.timeouts,
            block: w.block,
            linger: w.linger,
            dead_letter_redis_max_bytes: w.dead_letter_redis_max_bytes,
            retention: self.store.retention,
            max_attempts: w.max_attempts,
            reclaim_idle: w.reclaim_idle,
            host: w.host.clone(),
            shutdown_timeout: self.ops.shutdown_timeout,
            migrate: self.store.migrate_on_start,
            metrics,
        }
    }
}
