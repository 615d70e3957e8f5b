//! What a worker is given: its settings (from the configuration), the
//! retry policy of its steps, and the error a step ends with.

use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::store::{StoreError, Timeouts};

/// Longest wait between retries of a failing batch.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Longest wait between retries of an acknowledgement: Redis is back, and
/// every moment the batch stays unacknowledged another worker could take it.
pub(super) const MAX_ACK_BACKOFF: Duration = Duration::from_secs(1);
pub(super) const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// How often a worker looks for dead letters in the Redis fallback streams.
pub(super) const FALLBACK_MOVE_EVERY: Duration = Duration::from_secs(5);

/// What the workers need from the configuration.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// `REDIS_URL` or `REDIS_CLUSTER_NODES`, `QUEUE_NAME`, `PARTITIONS`.
    pub queue: crate::queue::Queue,
    /// `WORKER_BATCH_MAX`: most entries read and written per transaction.
    pub batch_max: usize,
    /// `WORKER_BATCH_MAX_BYTES`: most entry bytes in hand.
    pub batch_max_bytes: usize,
    /// `MAX_BODY_BYTES`: the largest body an entry can carry, which sizes reads.
    pub max_body_bytes: usize,
    /// `WORKER_BLOCK_MS`: how long `XREADGROUP` waits for new entries.
    pub block: Duration,
    /// `WORKER_LINGER_MS`: after a read that returned less than a full
    /// batch, wait this long and read again, so low traffic does not cost a
    /// transaction per handful of events. Delays storage, never the 202.
    pub linger: Duration,
    /// `DEAD_LETTER_REDIS_MAX_BYTES`: the Redis dead-letter stream's cap.
    pub dead_letter_redis_max_bytes: u64,
    /// `PARTITION_INTERVAL`, `EVENT_RETENTION`, `DEDUPE_WINDOW`.
    pub retention: crate::store::Retention,
    /// `MAX_ATTEMPTS`: attempts that failed because of an entry before it is dead-lettered.
    pub max_attempts: u64,
    /// `RECLAIM_IDLE_MS`: pending this long without a heartbeat = abandoned.
    pub reclaim_idle: Duration,
    /// `CONSUMER_HOST`: the host part of this process's consumer names.
    pub host: String,
    /// `SHUTDOWN_TIMEOUT_MS`: how long a batch in hand may keep retrying after shutdown.
    pub shutdown_timeout: Duration,
    /// `MIGRATE_ON_START`: apply migrations before the first write.
    pub migrate: bool,
    /// `PG_*_TIMEOUT_MS`: bound how long one PostgreSQL step can block,
    /// hence how long a silent worker's claim is kept fresh.
    pub pg_timeouts: Timeouts,
    /// Where the workers count batches, rows and errors.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
}

impl WorkerSettings {
    /// How long a worker may block in one step before its claim is let go:
    /// every PostgreSQL statement of a transaction at its timeout, a
    /// connect, and a dead socket noticed, or `RECLAIM_IDLE_MS` if longer.
    /// Past it the worker is taken for hung and others may reclaim.
    pub(super) fn hang_limit(&self) -> Duration {
        let t = self.pg_timeouts;
        let statement = if t.statement.is_zero() { Duration::from_secs(3600) } else { t.statement };
        (statement * 4 + t.connect + t.socket).max(self.reclaim_idle)
    }
}

/// Why a worker step failed. The step is retried; nothing was acknowledged.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// PostgreSQL failed systemically and shutdown cut the retries short.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Shutdown was requested.
    #[error("shutting down")]
    ShuttingDown,
}
