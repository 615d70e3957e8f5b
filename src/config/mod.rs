//! One typed [`Config`], read once at start from the environment (and an
//! optional `.env`, and the `SOURCES_FILE`), validated before anything
//! starts.
//!
//! The configuration has one section per stage ([`HttpConfig`],
//! [`IngestConfig`], [`QueueConfig`], [`WorkerConfig`], [`StoreConfig`],
//! [`OpsConfig`]); each section's `Default` holds its defaults, once, and its
//! `read` takes its variables. No stage reads the environment itself. A bad
//! value stops the start with a [`ConfigError`] that names the variable, the
//! value (redacted where it may hold a password) and what was expected. The
//! README's configuration table lists the same variables with the same
//! defaults.

mod api;
mod vars;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

pub use crate::telemetry::redact::redact;
pub use api::ApiConfig;

use crate::http::cors::Cors;
use crate::http::proxy::TrustedProxies;
use crate::http::server::TaskRun;
use crate::ingest::sources::Sources;
use crate::ingest::JsonParser;
use crate::store::{Retention, Session, SynchronousCommit, Timeouts};
use vars::{parse_cores, Vars};

pub use crate::http::cores::CoreSelection;

/// The whole configuration, one section per stage.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Listeners, runtimes, limits, security: `http/`.
    pub http: HttpConfig,
    /// Body checks and the webhook sources: `ingest/`.
    pub ingest: IngestConfig,
    /// Redis and the enqueue pipeline: `queue/`.
    pub queue: QueueConfig,
    /// The consumers: `worker/`.
    pub worker: WorkerConfig,
    /// PostgreSQL: `store/`.
    pub store: StoreConfig,
    /// Logs, health, shutdown.
    pub ops: OpsConfig,
    /// The API for applications and operators: `api/`.
    pub api: ApiConfig,
}

/// `http/`: listeners, runtimes, request limits, security.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `HOST` (default `0.0.0.0`): the address to listen on.
    pub host: IpAddr,
    /// `PORT` (default 3000). `0` picks a free port (tests).
    pub port: u16,
    /// `CORES` (default `auto`: the CPU set, capped at the CPU quota's whole
    /// cores): `all`, a count (`2`) or a list (`0,2-3`).
    pub cores: CoreSelection,
    /// `PIN_CORES` (default true): pin each runtime thread to its core.
    pub pin_cores: bool,
    /// `URING_TASKRUN` (default `defer`): `defer`, `coop` or `signal`, when
    /// the kernel completes a ring's I/O; an older kernel gets the newest
    /// mode it has ([`TaskRun`]).
    pub uring_taskrun: TaskRun,
    /// `MAX_BODY_BYTES` (default 1 MiB): larger bodies get 413, unread.
    pub max_body_bytes: usize,
    /// `MAX_HEADER_BYTES` (default 16 KiB): a larger request head gets 431.
    pub max_header_bytes: usize,
    /// `REQUEST_TIMEOUT_MS` (default 10000): from a request's first byte to
    /// its last, and for writing its answer; slower clients are cut off.
    pub request_timeout: Duration,
    /// `KEEPALIVE_TIMEOUT_MS` (default 30000): an idle connection is closed after this.
    pub keepalive_timeout: Duration,
    /// `MAX_CONNECTIONS_PER_CORE` (default 20000): connections beyond it get
    /// 503 at accept and are closed.
    pub max_connections_per_core: usize,
    /// `MAX_CONNECTIONS_PER_IP` (default 4096, 0 = no cap): connections one
    /// client (an IPv4 address, an IPv6 /64) may hold on each core; beyond
    /// it, 503 at accept. Trusted proxies (`TRUST_PROXY`) are exempt.
    pub max_connections_per_ip: u32,
    /// `MAX_BUFFER_BYTES_PER_CORE` (default 256 MiB, at least
    /// `MAX_BODY_BYTES`): request bodies over 16 KiB in flight on one core;
    /// a body that would pass it gets 503 unread.
    pub max_buffer_bytes_per_core: usize,
    /// `RETRY_AFTER_SECS` (default 1): the `Retry-After` sent with 503.
    pub retry_after_secs: u32,
    /// `SECURITY_HEADERS` (default true): helmet's default headers on every response.
    pub security_headers: bool,
    /// `CORS_ORIGINS` (default empty = no cross-origin access): comma list of origins, or `*`.
    pub cors: Cors,
    /// `RATE_LIMIT_GLOBAL` (default 100000): requests/s for the process, 0 = off.
    pub rate_limit_global: u64,
    /// `RATE_LIMIT_PER_IP` (default 20000): requests/s per client IP, 0 = off.
    pub rate_limit_per_ip: u64,
    /// `TRUST_PROXY` (default `false`): the proxies' networks (a comma list
    /// of CIDRs and addresses). A request from one of them is counted as the
    /// rightmost `X-Forwarded-For` address that is not a trusted proxy.
    pub trusted_proxies: TrustedProxies,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            cores: CoreSelection::Auto,
            pin_cores: true,
            uring_taskrun: TaskRun::Defer,
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_millis(10_000),
            keepalive_timeout: Duration::from_millis(30_000),
            max_connections_per_core: 20_000,
            max_connections_per_ip: 4096,
            max_buffer_bytes_per_core: 256 << 20,
            retry_after_secs: 1,
            security_headers: true,
            cors: Cors::default(),
            rate_limit_global: 100_000,
            rate_limit_per_ip: 20_000,
            trusted_proxies: TrustedProxies::default(),
        }
    }
}

impl HttpConfig {
    fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let c = Self {
            host: v.var("HOST").parse_or(d.host, "an IP address such as 0.0.0.0 or 127.0.0.1")?,
            port: v.var("PORT").parse_or(d.port, "a port number from 0 to 65535")?,
            cores: v.var("CORES").map_or(d.cores, parse_cores)?,
            pin_cores: v.var("PIN_CORES").bool_or(d.pin_cores)?,
            uring_taskrun: v.var("URING_TASKRUN").map_or(d.uring_taskrun, |t| {
                match t.to_ascii_lowercase().as_str() {
                    "defer" => Ok(TaskRun::Defer),
                    "coop" => Ok(TaskRun::Coop),
                    "signal" => Ok(TaskRun::Signal),
                    _ => Err("`defer`, `coop` or `signal`".into()),
                }
            })?,
            max_body_bytes: v.var("MAX_BODY_BYTES").in_range(d.max_body_bytes, 64, 1 << 30)?,
            max_header_bytes: v.var("MAX_HEADER_BYTES").in_range(d.max_header_bytes, 1024, 1 << 20)?,
            request_timeout: v.var("REQUEST_TIMEOUT_MS").millis(d.request_timeout, 10, 3_600_000)?,
            keepalive_timeout: v.var("KEEPALIVE_TIMEOUT_MS").millis(d.keepalive_timeout, 10, 3_600_000)?,
            max_connections_per_core: v.var("MAX_CONNECTIONS_PER_CORE").in_range(
                d.max_connections_per_core,
                1,
                10_000_000,
            )?,
            max_connections_per_ip: v.var("MAX_CONNECTIONS_PER_IP").in_range(
                d.max_connections_per_ip,
                0,
                10_000_000,
            )?,
            max_buffer_bytes_per_core: v.var("MAX_BUFFER_BYTES_PER_CORE").in_range(
                d.max_buffer_bytes_per_core,
                1 << 16,
                1 << 40,
            )?,
            retry_after_secs: v.var("RETRY_AFTER_SECS").in_range(d.retry_after_secs, 0, 86_400)?,
            security_headers: v.var("SECURITY_HEADERS").bool_or(d.security_headers)?,
            cors: v.var("CORS_ORIGINS").map_or(d.cors, Cors::parse)?,
            rate_limit_global: v.var("RATE_LIMIT_GLOBAL").in_range(d.rate_limit_global, 0, 100_000_000)?,
            rate_limit_per_ip: v.var("RATE_LIMIT_PER_IP").in_range(d.rate_limit_per_ip, 0, 100_000_000)?,
            trusted_proxies: v.var("TRUST_PROXY").map_or(d.trusted_proxies, TrustedProxies::parse)?,
        };
        if c.max_buffer_bytes_per_core < c.max_body_bytes {
            return Err(at_least_body(v, "MAX_BUFFER_BYTES_PER_CORE", c.max_body_bytes));
        }
        Ok(c)
    }
}

/// `ingest/`: what bodies must be, and who may send them.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// `JSON_PARSER` (default `serde`): `serde` (serde_json into borrowed
    /// fields) or `simd` (simd-json). Measured in `benches/ingest.rs`.
    pub json_parser: JsonParser,
    /// `MAX_JSON_DEPTH` (default 1000, 0 = unchecked): bodies nesting arrays
    /// and objects deeper get 400 (PostgreSQL's jsonb parser stops at its
    /// stack limit, ~13,000 levels under the default `max_stack_depth`).
    pub max_json_depth: usize,
    /// `SOURCES_FILE` (default unset): the webhook sources, one per route,
    /// with their signature schemes and secrets. Unset: every
    /// `/webhooks/:provider` takes the seed's unsigned envelope.
    pub sources: Option<Arc<Sources>>,
    /// `REQUIRE_SIGNED` (default false): refuse to start with a route that
    /// takes unsigned requests (no `SOURCES_FILE`, or an `envelope` source)
    /// unless `ALLOW_UNSIGNED` names it. For production.
    pub require_signed: bool,
    /// `ALLOW_UNSIGNED` (default empty): the routes allowed to stay unsigned
    /// under `REQUIRE_SIGNED` (`*` = every route, as without a file).
    pub allow_unsigned: Vec<String>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            json_parser: crate::ingest::Ingestor::DEFAULT_PARSER,
            max_json_depth: crate::ingest::DEFAULT_MAX_DEPTH,
            sources: None,
            require_signed: false,
            allow_unsigned: Vec::new(),
        }
    }
}

impl IngestConfig {
    fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let file = v.var("SOURCES_FILE");
        // Set but blank (`SOURCES_FILE=$UNSET_VAR`) is a mistake, not a wish
        // for the unsigned envelope on every route: say so.
        if file.value.is_none() && v.lookup("SOURCES_FILE").is_some() {
            return Err(file.error("a file name; unset it to have the unsigned envelope on every route"));
        }
        let sources = match &file.value {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path.trim())
                    .map_err(|e| file.error(format!("a readable TOML file of sources ({e})")))?;
                let parsed =
                    Sources::parse(&text, &|name| v.lookup(name)).map_err(|e| file.error(e.to_string()))?;
                Some(Arc::new(parsed))
            }
        };
        Self {
            json_parser: v.var("JSON_PARSER").map_or(d.json_parser, |p| {
                match p.to_ascii_lowercase().as_str() {
                    "serde" => Ok(JsonParser::Serde),
                    "simd" => Ok(JsonParser::Simd),
                    _ => Err("`serde` or `simd`".into()),
                }
            })?,
            max_json_depth: v.var("MAX_JSON_DEPTH").in_range(d.max_json_depth, 0, 1_000_000)?,
            require_signed: v.var("REQUIRE_SIGNED").bool_or(d.require_signed)?,
            allow_unsigned: v.var("ALLOW_UNSIGNED").map_or(d.allow_unsigned, |list| {
                Ok(list.split(',').map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect())
            })?,
            sources,
        }
        .checked(v)
    }

    /// Under `REQUIRE_SIGNED`, every unsigned route must be named in `ALLOW_UNSIGNED`.
    fn checked(self, v: &Vars<'_>) -> Result<Self, ConfigError> {
        if !self.require_signed {
            return Ok(self);
        }
        let sources = self.sources.clone().unwrap_or_default();
        let unnamed: Vec<&str> = sources
            .unsigned_routes()
            .into_iter()
            .filter(|r| !self.allow_unsigned.iter().any(|a| a == r))
            .collect();
        if unnamed.is_empty() {
            return Ok(self);
        }
        let mut e = v.var("REQUIRE_SIGNED").error(if sources.from_file() {
            format!(
                "routes {unnamed:?} take unsigned requests (kind = \"envelope\"): give them a signing kind, \
                 or name them in ALLOW_UNSIGNED"
            )
        } else {
            "no SOURCES_FILE: every route would take unsigned requests; set SOURCES_FILE \
             (or ALLOW_UNSIGNED=* to accept that)"
                .into()
        });
        e.value = "true".into();
        Err(e)
    }
}

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
    fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
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
    fn read(v: &Vars<'_>, max_body_bytes: usize) -> Result<Self, ConfigError> {
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

/// `store/`: PostgreSQL.
#[derive(Clone)]
pub struct StoreConfig {
    /// `DATABASE_URL`: PostgreSQL, used by the workers. Redacted in logs.
    pub database_url: Option<String>,
    /// `PG_POOL_SIZE` (default WORKER_THREADS + 1): PostgreSQL connections.
    pub pool_size: u32,
    /// `PG_CONNECT_TIMEOUT_MS` (default 5000), `PG_SOCKET_TIMEOUT_MS` (default
    /// 30000: TCP keepalives and `TCP_USER_TIMEOUT`), `PG_STATEMENT_TIMEOUT_MS`
    /// (default 60000, 0 = none: the server's `statement_timeout`),
    /// `PG_LOCK_TIMEOUT_MS` (default 10000, 0 = none: its `lock_timeout`).
    pub timeouts: Timeouts,
    /// `MIGRATE_ON_START` (default true): apply `sql/` migrations when serving.
    pub migrate_on_start: bool,
    /// `PG_SYNCHRONOUS_COMMIT` (default `on`; `remote_apply`, `remote_write`,
    /// `local`; never `off`): set in every session of the gateway.
    pub synchronous_commit: SynchronousCommit,
    /// `PARTITION_INTERVAL` (default `1d`), `EVENT_RETENTION` (default
    /// `30d`, `0` = keep everything), `DEDUPE_WINDOW` (default `7d`):
    /// what PostgreSQL keeps and for how long ([`crate::store::partitions`]).
    pub retention: Retention,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            pool_size: WorkerConfig::default().threads as u32 + 1,
            timeouts: Timeouts::default(),
            migrate_on_start: true,
            synchronous_commit: SynchronousCommit::On,
            retention: Retention::default(),
        }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("database_url", &self.database_url.as_deref().map(redact))
            .field("pool_size", &self.pool_size)
            .field("timeouts", &self.timeouts)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("synchronous_commit", &self.synchronous_commit)
            .field("retention", &self.retention)
            .finish()
    }
}

impl StoreConfig {
    /// How the gateway's PostgreSQL sessions are set up.
    pub fn session(&self) -> Session {
        Session { timeouts: self.timeouts, synchronous_commit: self.synchronous_commit }
    }

    fn read(v: &Vars<'_>, worker_threads: usize) -> Result<Self, ConfigError> {
        let d = Self::default();
        // The pool serves every worker thread and the migrations.
        let default_pool = u32::try_from(worker_threads + 1).unwrap_or(u32::MAX);
        let t = d.timeouts;
        Ok(Self {
            database_url: v.var("DATABASE_URL").map_or(None, |u| {
                if u.starts_with("postgres://") || u.starts_with("postgresql://") || u.contains('=') {
                    Ok(Some(u.to_string()))
                } else {
                    Err("a postgres:// URL or a key=value connection string".into())
                }
            })?,
            pool_size: v.var("PG_POOL_SIZE").in_range(default_pool, 1, 1000)?,
            timeouts: Timeouts {
                connect: v.var("PG_CONNECT_TIMEOUT_MS").millis(t.connect, 100, 600_000)?,
                socket: v.var("PG_SOCKET_TIMEOUT_MS").millis(t.socket, 1000, 3_600_000)?,
                statement: v.var("PG_STATEMENT_TIMEOUT_MS").millis(t.statement, 0, 86_400_000)?,
                lock: v.var("PG_LOCK_TIMEOUT_MS").millis(t.lock, 0, 86_400_000)?,
            },
            migrate_on_start: v.var("MIGRATE_ON_START").bool_or(d.migrate_on_start)?,
            synchronous_commit: v.var("PG_SYNCHRONOUS_COMMIT").map_or(d.synchronous_commit, |c| {
                SynchronousCommit::parse(c).ok_or_else(|| {
                    "`on`, `remote_apply`, `remote_write` or `local` (`off` would let a crash lose \
                     events whose stream entries are already deleted)"
                        .into()
                })
            })?,
            retention: Retention::read(v, d.retention)?,
        })
    }
}

impl Retention {
    fn read(v: &Vars<'_>, d: Retention) -> Result<Self, ConfigError> {
        const SECOND: Duration = Duration::from_secs(1);
        const TEN_YEARS: Duration = Duration::from_secs(3650 * 86_400);
        let interval =
            v.var("PARTITION_INTERVAL").duration(d.interval, SECOND, Duration::from_secs(366 * 86_400))?;
        let keep = d.events.unwrap_or(Duration::ZERO);
        let events = v.var("EVENT_RETENTION").duration(keep, Duration::ZERO, TEN_YEARS)?;
        let dedupe_window = v.var("DEDUPE_WINDOW").duration(d.dedupe_window, SECOND, TEN_YEARS)?;
        Ok(Self { interval, events: (!events.is_zero()).then_some(events), dedupe_window })
    }
}

/// Logs, health and shutdown: the process as a whole.
#[derive(Debug, Clone)]
pub struct OpsConfig {
    /// `SHUTDOWN_TIMEOUT_MS` (default 10000): how long in-flight requests may
    /// take to finish after SIGTERM before their connections are dropped, and
    /// how long a worker may retry the batch in hand.
    pub shutdown_timeout: Duration,
    /// `MEMORY_LIMIT_BYTES` (default 1 GiB): `/health` reports down above this resident memory.
    pub memory_limit_bytes: u64,
    /// `HEALTH_SHOW_ERRORS` (default false): put the Redis and PostgreSQL
    /// error text in `/health` answers; otherwise it goes to the log only.
    pub health_show_errors: bool,
    /// `LOG_LEVEL` (default `info`): a `tracing` filter (`info`, `debug,redis=warn`, …).
    pub log_level: String,
    /// `REJECTIONS_PER_SOURCE` (default 1000) and `REJECTIONS_MAX_BYTES`
    /// (default 16 MiB): the refused requests kept for `GET /v1/rejections`.
    pub rejections: crate::telemetry::rejections::Bounds,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_millis(10_000),
            memory_limit_bytes: 1 << 30,
            health_show_errors: false,
            log_level: "info".into(),
            rejections: crate::telemetry::rejections::Bounds::default(),
        }
    }
}

impl OpsConfig {
    fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        Ok(Self {
            shutdown_timeout: v.var("SHUTDOWN_TIMEOUT_MS").millis(d.shutdown_timeout, 0, 3_600_000)?,
            memory_limit_bytes: v.var("MEMORY_LIMIT_BYTES").in_range(
                d.memory_limit_bytes,
                1 << 20,
                1 << 50,
            )?,
            health_show_errors: v.var("HEALTH_SHOW_ERRORS").bool_or(d.health_show_errors)?,
            log_level: v.var("LOG_LEVEL").map_or(d.log_level, |l| {
                tracing_subscriber::EnvFilter::try_new(l)
                    .map(|_| l.to_string())
                    .map_err(|e| format!("a tracing filter such as `info` or `debug,redis=warn` ({e})"))
            })?,
            rejections: crate::telemetry::rejections::Bounds {
                per_source: v.var("REJECTIONS_PER_SOURCE").in_range(d.rejections.per_source, 0, 1_000_000)?,
                bytes: v.var("REJECTIONS_MAX_BYTES").in_range(d.rejections.bytes, 0, 1 << 34)?,
            },
        })
    }
}

/// A variable that could not be used, and why.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{var}={value:?}: {expected}")]
pub struct ConfigError {
    /// The environment variable's name.
    pub var: &'static str,
    /// The value found (redacted where it may hold a password).
    pub value: String,
    /// What a valid value looks like.
    pub expected: String,
}

/// The error for a size that must hold one `MAX_BODY_BYTES` body.
fn at_least_body(v: &Vars<'_>, name: &'static str, max_body_bytes: usize) -> ConfigError {
    let var = v.var(name);
    let mut e =
        var.error(format!("at least MAX_BODY_BYTES ({max_body_bytes}), so one body of that size fits"));
    if e.value.is_empty() {
        e.value = "(default)".into();
    }
    e
}

impl Config {
    /// Reads `.env` (if present; real environment variables win) and then the
    /// environment.
    ///
    /// # Errors
    /// The first variable whose value is invalid.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is reported by the lookup
        // below only if it leaves a variable invalid, which is what matters.
        let _ = dotenvy::dotenv();
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the configuration from any variable source (tests pass a map).
    ///
    /// # Errors
    /// The first variable whose value is invalid.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars::new(&get);
        let http = HttpConfig::read(&vars)?;
        let worker = WorkerConfig::read(&vars, http.max_body_bytes)?;
        let config = Self {
            ingest: IngestConfig::read(&vars)?,
            queue: QueueConfig::read(&vars)?,
            store: StoreConfig::read(&vars, worker.threads)?,
            ops: OpsConfig::read(&vars)?,
            api: ApiConfig::read(&vars)?,
            worker,
            http,
        };
        // A route's own `max_body_bytes` may pass MAX_BODY_BYTES: the
        // buffers that hold one body must still fit the largest.
        let largest = config.largest_body();
        for (name, have) in [
            ("MAX_BUFFER_BYTES_PER_CORE", config.http.max_buffer_bytes_per_core),
            ("WORKER_BATCH_MAX_BYTES", config.worker.batch_max_bytes),
        ] {
            if have < largest {
                let mut e = vars.var(name).error(format!(
                    "at least {largest}, the largest body a route of SOURCES_FILE takes (max_body_bytes)"
                ));
                e.value = have.to_string();
                return Err(e);
            }
        }
        Ok(config)
    }

    /// The largest body any route takes: `MAX_BODY_BYTES`, or a source's
    /// own `max_body_bytes` (a `github` route: 25 MiB) when larger.
    pub fn largest_body(&self) -> usize {
        let global = self.http.max_body_bytes;
        self.ingest.sources.as_ref().map_or(global, |s| s.largest_body(global))
    }
}

/// Whether `REDIS_URL` reaches its node over plain TCP or a Unix socket,
/// the two transports the per-core enqueue speaks.
fn plain_or_unix(redis_url: &str) -> bool {
    redis::Client::open(redis_url).is_ok_and(|c| {
        matches!(
            c.get_connection_info().addr(),
            redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::Unix(_)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = load(&[]).unwrap();
        assert_eq!(c.http.port, 3000);
        assert_eq!(c.queue.queue_name, "webhooks");
        assert_eq!(c.http.max_body_bytes, 1 << 20);
        assert_eq!(c.http.cores, CoreSelection::Auto);
        assert_eq!(c.store.pool_size, 3, "WORKER_THREADS (2) + 1");
        assert_eq!(c.store.pool_size, StoreConfig::default().pool_size, "one default");
        assert_eq!(load(&[("WORKER_THREADS", "6")]).unwrap().store.pool_size, 7);
        assert_eq!(load(&[("WORKER_THREADS", "6"), ("PG_POOL_SIZE", "2")]).unwrap().store.pool_size, 2);
        assert!(c.ingest.sources.is_none(), "no SOURCES_FILE: the seed's envelope everywhere");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let e = load(&[("PORT", "70000")]).unwrap_err();
        assert_eq!(e.var, "PORT");
        assert!(e.to_string().starts_with("PORT=\"70000\""), "{e}");
        assert_eq!(load(&[("BATCH_MAX", "0")]).unwrap_err().var, "BATCH_MAX");
        assert_eq!(load(&[("REDIS_URL", "http://x")]).unwrap_err().var, "REDIS_URL");
        assert_eq!(load(&[("PIN_CORES", "maybe")]).unwrap_err().var, "PIN_CORES");
        assert_eq!(load(&[("CORES", "1-x")]).unwrap_err().var, "CORES");
        assert_eq!(load(&[("LOG_LEVEL", "info,=[")]).unwrap_err().var, "LOG_LEVEL");
        assert_eq!(load(&[("JSON_PARSER", "fast")]).unwrap_err().var, "JSON_PARSER");
        assert_eq!(load(&[("URING_TASKRUN", "poll")]).unwrap_err().var, "URING_TASKRUN");
        assert_eq!(load(&[("URING_TASKRUN", "Coop")]).unwrap().http.uring_taskrun, TaskRun::Coop);
        assert_eq!(load(&[]).unwrap().http.uring_taskrun, TaskRun::Defer);
        assert_eq!(load(&[("CORS_ORIGINS", "example.com")]).unwrap_err().var, "CORS_ORIGINS");
        assert_eq!(load(&[("PARTITIONS", "0")]).unwrap_err().var, "PARTITIONS");
        assert_eq!(load(&[("REDIS_CLUSTER_NODES", "h:x")]).unwrap_err().var, "REDIS_CLUSTER_NODES");
        let e = load(&[("ENQUEUE_TIMEOUT_MS", "500"), ("REDIS_WAIT_TIMEOUT_MS", "500")]).unwrap_err();
        assert_eq!(e.var, "REDIS_WAIT_TIMEOUT_MS");
    }

    #[test]
    fn the_per_core_enqueue_is_for_one_node_over_tcp_or_a_unix_socket() {
        use crate::queue::EnqueueMode;
        assert_eq!(load(&[]).unwrap().queue.enqueue_mode, EnqueueMode::Thread);
        assert_eq!(load(&[("ENQUEUE_MODE", "core")]).unwrap().queue.enqueue_mode, EnqueueMode::Core);
        assert_eq!(load(&[("ENQUEUE_MODE", "Thread")]).unwrap().queue.enqueue_mode, EnqueueMode::Thread);
        assert_eq!(load(&[("ENQUEUE_MODE", "both")]).unwrap_err().var, "ENQUEUE_MODE");
        let cluster = [("ENQUEUE_MODE", "core"), ("REDIS_CLUSTER_NODES", "127.0.0.1:7000")];
        let e = load(&cluster).unwrap_err();
        assert_eq!(e.var, "ENQUEUE_MODE");
        assert!(e.to_string().contains("REDIS_CLUSTER_NODES"), "{e}");
        let unix = [("ENQUEUE_MODE", "core"), ("REDIS_URL", "unix:///tmp/redis.sock")];
        assert_eq!(load(&unix).unwrap().queue.enqueue_mode, EnqueueMode::Core);
        let plus = [("ENQUEUE_MODE", "core"), ("REDIS_URL", "redis+unix:///tmp/redis.sock")];
        assert_eq!(load(&plus).unwrap().queue.enqueue_mode, EnqueueMode::Core);
    }

    #[test]
    fn a_cluster_defaults_to_sixteen_partitions() {
        let c = load(&[("REDIS_CLUSTER_NODES", "127.0.0.1:7000,127.0.0.1:7001")]).unwrap();
        assert_eq!(c.queue.partitions, 16);
        assert!(c.queue.queue().is_cluster());
        assert_eq!(c.queue.queue().stream(3), "webhooks:{3}");
        let one = load(&[]).unwrap().queue.queue();
        assert!(!one.is_cluster());
        assert_eq!(one.streams(), vec!["webhooks".to_string()], "one node: the stream of old");
        // One partition on a cluster still carries its tag: its dead letters
        // (`webhooks:{0}:dead`) must share its slot for the MULTI that moves them.
        let single = load(&[("REDIS_CLUSTER_NODES", "127.0.0.1:7000"), ("PARTITIONS", "1")]).unwrap();
        assert_eq!(single.queue.queue().streams(), vec!["webhooks:{0}".to_string()]);
        assert_eq!(load(&[]).unwrap().queue.wait_timeout, Duration::from_millis(1000));
    }

    #[test]
    fn cores_take_a_count_or_a_list() {
        assert_eq!(load(&[]).unwrap().http.cores, CoreSelection::Auto);
        assert_eq!(load(&[("CORES", "AUTO")]).unwrap().http.cores, CoreSelection::Auto);
        assert_eq!(load(&[("CORES", "all")]).unwrap().http.cores, CoreSelection::All);
        assert_eq!(load(&[("CORES", "2")]).unwrap().http.cores, CoreSelection::Count(2));
        assert_eq!(load(&[("CORES", "3,0-1")]).unwrap().http.cores, CoreSelection::List(vec![0, 1, 3]));
        assert!(load(&[("CORES", "0")]).is_err());
    }

    #[test]
    fn passwords_never_reach_the_logs_nor_an_error() {
        let c = load(&[
            ("REDIS_URL", "redis://:s3cret@127.0.0.1:1/"),
            ("DATABASE_URL", "host=db user=u password='pa ss/w@rd' dbname=x"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("pa ss"), "{shown}");
        let e = load(&[("DATABASE_URL", "mysql://u:s3cret@h/db")]).unwrap_err();
        assert_eq!(e.var, "DATABASE_URL");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = load(&[("REDIS_URL", "redis://:s3cret@h:port/")]).unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn retention_takes_durations_with_their_unit() {
        let r = load(&[]).unwrap().store.retention;
        assert_eq!(r, Retention::default());
        assert_eq!(r.interval, Duration::from_secs(86_400));
        assert_eq!(r.events, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(r.dedupe_window, Duration::from_secs(7 * 86_400));
        let r = load(&[("PARTITION_INTERVAL", "2s"), ("EVENT_RETENTION", "6s"), ("DEDUPE_WINDOW", "90m")])
            .unwrap()
            .store
            .retention;
        assert_eq!((r.interval, r.events), (Duration::from_secs(2), Some(Duration::from_secs(6))));
        assert_eq!(r.dedupe_window, Duration::from_secs(5400));
        assert_eq!(load(&[("EVENT_RETENTION", "0")]).unwrap().store.retention.events, None, "0 keeps all");
        for bad in ["30", "1w", "-1d", "d", "0s5"] {
            let e = load(&[("PARTITION_INTERVAL", bad)]).unwrap_err();
            assert_eq!(e.var, "PARTITION_INTERVAL", "{bad}");
            assert!(e.expected.contains("from 1s to 366d"), "{e}");
        }
        assert_eq!(load(&[("PARTITION_INTERVAL", "0")]).unwrap_err().var, "PARTITION_INTERVAL");
        assert_eq!(load(&[("DEDUPE_WINDOW", "0")]).unwrap_err().var, "DEDUPE_WINDOW");
    }

    #[test]
    fn commits_are_durable_unless_told_which_standby_durability_to_use() {
        assert_eq!(load(&[]).unwrap().store.synchronous_commit, SynchronousCommit::On);
        let c = load(&[("PG_SYNCHRONOUS_COMMIT", "remote_apply")]).unwrap();
        assert_eq!(c.store.session().synchronous_commit, SynchronousCommit::RemoteApply);
        let e = load(&[("PG_SYNCHRONOUS_COMMIT", "off")]).unwrap_err();
        assert_eq!(e.var, "PG_SYNCHRONOUS_COMMIT");
        assert!(e.expected.contains("`off` would"), "{e}");
        assert_eq!(crate::store::durability_warning("on", "on"), None);
        assert!(crate::store::durability_warning("off", "on").unwrap().contains("fsync=off"));
        assert!(crate::store::durability_warning("on", "off").unwrap().contains("synchronous_commit=off"));
    }

    #[test]
    fn unsigned_routes_are_a_stated_choice() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sources.toml");
        std::fs::write(
            &file,
            "[[source]]\nroute = \"stripe\"\nkind = \"stripe\"\nsecrets = [\"whsec_x\"]\n\
             [[source]]\nroute = \"open\"\nkind = \"envelope\"\n",
        )
        .unwrap();
        let path = file.display().to_string();
        // Without the flag, as before: the envelope, on every route or on the named ones.
        assert!(load(&[]).unwrap().ingest.sources.is_none());
        assert!(load(&[("SOURCES_FILE", &path)]).is_ok());
        // Blank is a mistake, not a choice.
        assert_eq!(load(&[("SOURCES_FILE", " ")]).unwrap_err().var, "SOURCES_FILE");
        // With it: no file, or an unnamed envelope route, stops the start.
        let e = load(&[("REQUIRE_SIGNED", "true")]).unwrap_err();
        assert_eq!(e.var, "REQUIRE_SIGNED");
        assert!(e.expected.contains("no SOURCES_FILE"), "{e}");
        let e = load(&[("REQUIRE_SIGNED", "true"), ("SOURCES_FILE", &path)]).unwrap_err();
        assert!(e.expected.contains("[\"open\"]") && e.expected.contains("ALLOW_UNSIGNED"), "{e}");
        assert!(
            load(&[("REQUIRE_SIGNED", "true"), ("SOURCES_FILE", &path), ("ALLOW_UNSIGNED", "open")]).is_ok()
        );
        assert!(load(&[("REQUIRE_SIGNED", "true"), ("ALLOW_UNSIGNED", "*")]).is_ok());
        let c = load(&[("SOURCES_FILE", &path)]).unwrap();
        assert_eq!(c.ingest.sources.unwrap().describe_routes(), "stripe=stripe, open=unsigned");
    }

    #[test]
    fn settings_that_must_fit_each_other_are_checked_by_name() {
        let e = load(&[("MAX_BODY_BYTES", "2000000"), ("WORKER_BATCH_MAX_BYTES", "1000000")]).unwrap_err();
        assert_eq!(e.var, "WORKER_BATCH_MAX_BYTES");
        assert!(e.expected.contains("MAX_BODY_BYTES"), "{e}");
        let e = load(&[("MAX_BODY_BYTES", "300000000")]).unwrap_err();
        assert_eq!(e.var, "MAX_BUFFER_BYTES_PER_CORE", "the default is below such a body");
        assert_eq!(e.value, "(default)");
        assert_eq!(load(&[("TRUST_PROXY", "true")]).unwrap_err().var, "TRUST_PROXY");
        let c = load(&[("TRUST_PROXY", "10.0.0.0/8")]).unwrap();
        assert!(c.http.trusted_proxies.contains("10.1.1.1".parse().unwrap()));
    }
}
