//! What the enqueue paths need from the configuration.

use std::time::Duration;

use super::Queue;

/// What the pipeline thread (and the per-core enqueue) needs from the configuration.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// `REDIS_URL` or `REDIS_CLUSTER_NODES`, `QUEUE_NAME`, `PARTITIONS`.
    pub queue: Queue,
    /// `BATCH_MAX`.
    pub batch_max: usize,
    /// `BATCH_LINGER_US`.
    pub batch_linger: Duration,
    /// `ENQUEUE_TIMEOUT_MS`: the callers' patience, also the socket timeout.
    pub enqueue_timeout: Duration,
    /// `ENQUEUE_CHANNEL_CAPACITY`.
    pub channel_capacity: usize,
    /// Where the thread counts its batches and errors.
    pub metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    /// `MAX_QUEUE_DEPTH`: entries in all partitions at which new jobs are
    /// refused (the workers are behind or PostgreSQL is down and Redis
    /// memory is finite).
    pub max_queue_depth: u64,
    /// `MAX_REDIS_MEMORY_PERCENT`: share of a master's `maxmemory` in use at
    /// which its new jobs are refused (0 = never), so Redis keeps room for
    /// the workers' writes and never reaches its own out-of-memory refusals.
    pub max_memory_percent: u8,
    /// `REDIS_WAIT_REPLICAS`: replicas that must have a job before its 202.
    pub wait_replicas: u16,
    /// `REDIS_WAIT_TIMEOUT_MS`.
    pub wait_timeout: Duration,
}
