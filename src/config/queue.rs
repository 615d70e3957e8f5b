//! `queue/`'s section: where Redis is, the queue's name and partitions,
//! the enqueue's batches, timeouts and admission, and the
//! [`PipelineSettings`](crate::queue::PipelineSettings) it takes.

use std::fmt;
use std::time::Duration;

use super::vars::Vars;
use super::{plain_or_unix, redact, ConfigError};

/// `queue/`: Redis and the enqueue pipeline.
#[derive(Clone)]
pub struct QueueConfig {
    /// `REDIS_URL` (default `redis://127.0.0.1:6379/`). Redacted in logs.
    pub redis_url: String,
    /// `REDIS_CLUSTER_NODES` (default unset: one node at `REDIS_URL`): a
    /// comma-separated list of `host:port` (or `redis://` URLs) of a Redis
    /// Cluster; any one reachable is enough, the rest is discovered.
    /// Credentials come from an entry that carries them, else `REDIS_URL`.
    pub cluster_nodes: Option<String>,
    /// `QUEUE_NAME` (default `webhooks`): the Redis stream jobs are added to
    /// (with several partitions, the prefix of each partition's stream).
    pub queue_name: String,
    /// `PARTITIONS` (default 1 on one node, 16 on a cluster; 1 to 1024):
    /// streams the queue is cut into, each in its own cluster slot.
    pub partitions: u16,
    /// `REDIS_WAIT_REPLICAS` (default 0): replicas that must hold a job
    /// (`WAIT`) before its 202; 0 = the master's acknowledgement is enough.
    pub wait_replicas: u16,
    /// `REDIS_WAIT_TIMEOUT_MS` (default half of `ENQUEUE_TIMEOUT_MS`): how
    /// long `WAIT` waits for them; fewer by then means 503.
    pub wait_timeout: Duration,
    /// `BATCH_MAX` (default 256): most jobs sent in one Redis pipeline.
    pub batch_max: usize,
    /// `BATCH_LINGER_US` (default 0): how long the pipeline thread waits for
    /// more jobs after the first before sending. 0 = send what is queued now;
    /// jobs that arrive during a round trip form the next batch anyway.
    pub batch_linger: Duration,
    /// `ENQUEUE_TIMEOUT_MS` (default 2000): a request with no Redis reply by
    /// then gets 503. Also the Redis socket read/write timeout.
    pub enqueue_timeout: Duration,
    /// `ENQUEUE_CHANNEL_CAPACITY` (default 16384): jobs waiting for the
    /// pipeline thread; when full, new requests get 503 at once.
    pub channel_capacity: usize,
    /// `MAX_QUEUE_DEPTH` (default 1000000): stream length at which new
    /// requests get 503 (workers behind, or PostgreSQL down too long).
    pub max_queue_depth: u64,
    /// `MAX_REDIS_MEMORY_PERCENT` (default 90, 0 = off): share of Redis's
    /// `maxmemory` in use at which new requests get 503, before Redis itself
    /// refuses writes (the workers' acknowledgements still free memory).
    pub max_redis_memory_percent: u8,
    /// `ENQUEUE_MODE` (default `thread`): `thread` hands each job to the one
    /// Redis pipeline thread; `core` (one node over TCP or a Unix socket) has each core
    /// pipeline its own jobs on its own connection (tuning.md §23).
    pub enqueue_mode: crate::queue::EnqueueMode,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            redis_url: "redis://127.0.0.1:6379/".into(),
            cluster_nodes: None,
            queue_name: crate::queue::DEFAULT_STREAM.into(),
            partitions: 1,
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(1000),
            batch_max: 256,
            batch_linger: Duration::ZERO,
            enqueue_timeout: Duration::from_millis(2000),
            channel_capacity: 16384,
            max_queue_depth: 1_000_000,
            max_redis_memory_percent: 90,
            enqueue_mode: crate::queue::EnqueueMode::Thread,
        }
    }
}

impl fmt::Debug for QueueConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueConfig")
            .field("redis_url", &redact(&self.redis_url))
            .field("cluster_nodes", &self.cluster_nodes.as_deref().map(redact))
            .field("queue_name", &self.queue_name)
            .field("partitions", &self.partitions)
            .field("wait_replicas", &self.wait_replicas)
            .field("wait_timeout", &self.wait_timeout)
            .field("batch_max", &self.batch_max)
            .field("batch_linger", &self.batch_linger)
            .field("enqueue_timeout", &self.enqueue_timeout)
            .field("channel_capacity", &self.channel_capacity)
            .field("max_queue_depth", &self.max_queue_depth)
            .field("max_redis_memory_percent", &self.max_redis_memory_percent)
            .field("enqueue_mode", &self.enqueue_mode)
            .finish()
    }
}

impl QueueConfig {
    pub(super) fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let redis_url = v.var("REDIS_URL").map_or(d.redis_url.clone(), |u| {
            redis::Client::open(u).map(|_| u.to_string()).map_err(|e| format!("a redis:// URL ({e})"))
        })?;
        let nodes = v.var("REDIS_CLUSTER_NODES");
        let cluster_nodes = match nodes.value.clone() {
            None => None,
            Some(list) => {
                crate::queue::parse_cluster_nodes(&list, Some(&redis_url)).map_err(|e| nodes.error(e))?;
                Some(list.trim().to_string())
            }
        };
        let mode = v.var("ENQUEUE_MODE");
        let enqueue_mode = mode.map_or(d.enqueue_mode, |m| match m.to_ascii_lowercase().as_str() {
            "thread" => Ok(crate::queue::EnqueueMode::Thread),
            "core" if cluster_nodes.is_some() => {
                Err("`thread` with REDIS_CLUSTER_NODES (`core` is for one node)".into())
            }
            "core" if !plain_or_unix(&redis_url) => {
                Err("`thread` with this REDIS_URL (`core` needs a redis:// or unix:// URL)".into())
            }
            "core" => Ok(crate::queue::EnqueueMode::Core),
            _ => Err("`thread` or `core`".into()),
        })?;
        let partitions_default = if cluster_nodes.is_some() { 16 } else { d.partitions };
        let enqueue_timeout = v.var("ENQUEUE_TIMEOUT_MS").millis(d.enqueue_timeout, 10, 600_000)?;
        let wait_replicas = v.var("REDIS_WAIT_REPLICAS").in_range(d.wait_replicas, 0, 64)?;
        // Below the callers' patience, so a WAIT that times out is still
        // answered (503) before the caller gives up on its own.
        let patience = enqueue_timeout.as_millis() as u64;
        let wait_timeout = v.var("REDIS_WAIT_TIMEOUT_MS").millis(
            enqueue_timeout / 2,
            1,
            patience.saturating_sub(1).max(1),
        )?;
        Ok(Self {
            redis_url,
            cluster_nodes,
            partitions: v.var("PARTITIONS").in_range(partitions_default, 1, crate::queue::MAX_PARTITIONS)?,
            wait_replicas,
            wait_timeout,
            queue_name: v.var("QUEUE_NAME").map_or(d.queue_name, |q| {
                if q.len() <= 200 && !q.contains(char::is_whitespace) {
                    Ok(q.to_string())
                } else {
                    Err("a stream name without spaces, at most 200 bytes".into())
                }
            })?,
            batch_max: v.var("BATCH_MAX").in_range(d.batch_max, 1, 100_000)?,
            batch_linger: Duration::from_micros(v.var("BATCH_LINGER_US").in_range(
                d.batch_linger.as_micros() as u64,
                0,
                1_000_000,
            )?),
            enqueue_timeout,
            channel_capacity: v.var("ENQUEUE_CHANNEL_CAPACITY").in_range(
                d.channel_capacity,
                1,
                10_000_000,
            )?,
            max_queue_depth: v.var("MAX_QUEUE_DEPTH").in_range(d.max_queue_depth, 1, 1_000_000_000)?,
            max_redis_memory_percent: v.var("MAX_REDIS_MEMORY_PERCENT").in_range(
                d.max_redis_memory_percent,
                0,
                100,
            )?,
            enqueue_mode,
        })
    }

    /// `REDIS_URL` (or, on a cluster, `REDIS_CLUSTER_NODES`) with any
    /// password replaced by `***`, for logs.
    pub fn redis_url_redacted(&self) -> String {
        match &self.cluster_nodes {
            Some(nodes) => format!("cluster {}", redact(nodes)),
            None => redact(&self.redis_url),
        }
    }

    /// The queue these settings describe: where it lives and its partitions.
    pub fn queue(&self) -> crate::queue::Queue {
        let target = match &self.cluster_nodes {
            Some(list) => crate::queue::Target::Cluster(
                crate::queue::parse_cluster_nodes(list, Some(&self.redis_url)).expect("checked when read"),
            ),
            None => crate::queue::Target::Node(
                redis::IntoConnectionInfo::into_connection_info(self.redis_url.as_str())
                    .expect("checked when read"),
            ),
        };
        crate::queue::Queue::new(target, self.queue_name.clone(), self.partitions)
    }
}

impl QueueConfig {
    /// What the enqueue (the pipeline thread, or the per-core engine) takes.
    pub fn pipeline_settings(
        &self,
        metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    ) -> crate::queue::PipelineSettings {
        crate::queue::PipelineSettings {
            queue: self.queue(),
            wait_replicas: self.wait_replicas,
            wait_timeout: self.wait_timeout,
            batch_max: self.batch_max,
            batch_linger: self.batch_linger,
            enqueue_timeout: self.enqueue_timeout,
            channel_capacity: self.channel_capacity,
            max_queue_depth: self.max_queue_depth,
            max_memory_percent: self.max_redis_memory_percent,
            metrics,
        }
    }
}
