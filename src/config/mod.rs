//! One typed [`Config`], read once at start from the environment (and an
//! optional `.env`), validated before anything starts.
//!
//! Every stage receives the parts it needs from this struct; no stage reads
//! the environment itself. A bad value stops the start with a [`ConfigError`]
//! that names the variable, the value and what was expected. The README's
//! configuration table lists the same variables with the same defaults.

mod redact;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use thiserror::Error;

pub use redact::redact;

use crate::http::proxy::TrustedProxies;
use crate::store::Timeouts;

/// Variables whose values may hold a password: never printed as given.
const SECRET_VARS: &[&str] = &["REDIS_URL", "DATABASE_URL"];

/// Which cores the per-core HTTP runtimes run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreSelection {
    /// Every core this process may run on (its `sched_getaffinity` set, which
    /// honours a container's cpuset).
    All,
    /// The first N cores of that set.
    Count(usize),
    /// These core ids exactly; each must be in that set.
    List(Vec<usize>),
}

/// The whole configuration. Field docs give the variable, unit and default.
#[derive(Clone)]
pub struct Config {
    /// `HOST` (default `0.0.0.0`): the address to listen on.
    pub host: IpAddr,
    /// `PORT` (default 3000). `0` picks a free port (tests).
    pub port: u16,
    /// `CORES` (default: all allowed): a count (`2`) or a list (`0,2-3`).
    pub cores: CoreSelection,
    /// `PIN_CORES` (default true): pin each runtime thread to its core.
    pub pin_cores: bool,
    /// `REDIS_URL` (default `redis://127.0.0.1:6379/`). Redacted in logs.
    pub redis_url: String,
    /// `DATABASE_URL`: PostgreSQL, used by the workers. Redacted in logs.
    pub database_url: Option<String>,
    /// `QUEUE_NAME` (default `webhooks`): the Redis stream jobs are added to.
    pub queue_name: String,
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
    /// `SHUTDOWN_TIMEOUT_MS` (default 10000): how long in-flight requests may
    /// take to finish after SIGTERM before their connections are dropped.
    pub shutdown_timeout: Duration,
    /// `MAX_QUEUE_DEPTH` (default 1000000): stream length at which new
    /// requests get 503 (workers behind, or PostgreSQL down too long).
    pub max_queue_depth: u64,
    /// `MAX_REDIS_MEMORY_PERCENT` (default 90, 0 = off): share of Redis's
    /// `maxmemory` in use at which new requests get 503, before Redis itself
    /// refuses writes (the workers' acknowledgements still free memory).
    pub max_redis_memory_percent: u8,
    /// `MAX_JSON_DEPTH` (default 1000, 0 = unchecked): bodies nesting arrays
    /// and objects deeper get 400 (PostgreSQL's jsonb parser stops at its
    /// stack limit, ~13,000 levels under the default `max_stack_depth`).
    pub max_json_depth: usize,
    /// `WORKER_THREADS` (default 2): consumer threads writing to PostgreSQL.
    pub worker_threads: usize,
    /// `WORKER_BATCH_MAX` (default 5000): most entries per read and per transaction.
    pub worker_batch_max: usize,
    /// `WORKER_BATCH_MAX_BYTES` (default 64 MiB, at least `MAX_BODY_BYTES`):
    /// most entry bytes a worker thread holds; reads are sized so that a
    /// batch of `MAX_BODY_BYTES` entries stays within it.
    pub worker_batch_max_bytes: usize,
    /// `WORKER_BLOCK_MS` (default 1000): how long a worker's read waits for new entries.
    pub worker_block: Duration,
    /// `WORKER_LINGER_MS` (default 50): after a short read, wait this long
    /// for more entries before writing (storage latency, not 202 latency).
    pub worker_linger: Duration,
    /// `IDEMPOTENCY_TTL_SECS` (default 86400): lifetime of the "already stored" keys.
    pub idempotency_ttl_secs: u64,
    /// `MAX_ATTEMPTS` (default 5): deliveries before an entry PostgreSQL
    /// keeps rejecting goes to the dead-letter stream.
    pub max_attempts: u64,
    /// `RECLAIM_IDLE_MS` (default 30000): an entry pending this long without
    /// a heartbeat is taken over by another worker (its worker died).
    pub reclaim_idle: Duration,
    /// `PG_POOL_SIZE` (default WORKER_THREADS + 1): PostgreSQL connections.
    pub pg_pool_size: u32,
    /// `PG_CONNECT_TIMEOUT_MS` (default 5000), `PG_SOCKET_TIMEOUT_MS` (default
    /// 30000: TCP keepalives and `TCP_USER_TIMEOUT`), `PG_STATEMENT_TIMEOUT_MS`
    /// (default 60000, 0 = none: the server's `statement_timeout`).
    pub pg_timeouts: Timeouts,
    /// `MIGRATE_ON_START` (default true): apply `sql/` migrations when serving.
    pub migrate_on_start: bool,
    /// `MEMORY_LIMIT_BYTES` (default 1 GiB): `/health` reports down above this resident memory.
    pub memory_limit_bytes: u64,
    /// `HEALTH_SHOW_ERRORS` (default false): put the Redis and PostgreSQL
    /// error text in `/health` answers; otherwise it goes to the log only.
    pub health_show_errors: bool,
    /// `SECURITY_HEADERS` (default true): helmet's default headers on every response.
    pub security_headers: bool,
    /// `CORS_ORIGINS` (default empty = no cross-origin access): comma list of origins, or `*`.
    pub cors: crate::http::cors::Cors,
    /// `RATE_LIMIT_GLOBAL` (default 100000): requests/s for the process, 0 = off.
    pub rate_limit_global: u64,
    /// `RATE_LIMIT_PER_IP` (default 20000): requests/s per client IP, 0 = off.
    pub rate_limit_per_ip: u64,
    /// `TRUST_PROXY` (default `false`): the proxies' networks (a comma list
    /// of CIDRs and addresses). A request from one of them is counted as the
    /// rightmost `X-Forwarded-For` address that is not a trusted proxy.
    pub trusted_proxies: TrustedProxies,
    /// `JSON_PARSER` (default `serde`): `serde` (serde_json into borrowed
    /// fields) or `simd` (simd-json). Measured in `benches/ingest.rs`.
    pub json_parser: crate::ingest::JsonParser,
    /// `LOG_LEVEL` (default `info`): a `tracing` filter (`info`, `debug,redis=warn`, …).
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 3000,
            cores: CoreSelection::All,
            pin_cores: true,
            redis_url: "redis://127.0.0.1:6379/".into(),
            database_url: None,
            queue_name: crate::queue::DEFAULT_STREAM.into(),
            batch_max: 256,
            batch_linger: Duration::ZERO,
            enqueue_timeout: Duration::from_millis(2000),
            channel_capacity: 16384,
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            request_timeout: Duration::from_millis(10_000),
            keepalive_timeout: Duration::from_millis(30_000),
            max_connections_per_core: 20_000,
            max_connections_per_ip: 4096,
            max_buffer_bytes_per_core: 256 << 20,
            retry_after_secs: 1,
            shutdown_timeout: Duration::from_millis(10_000),
            max_queue_depth: 1_000_000,
            max_redis_memory_percent: 90,
            max_json_depth: crate::ingest::DEFAULT_MAX_DEPTH,
            worker_threads: 2,
            worker_batch_max: 5000,
            worker_batch_max_bytes: 64 << 20,
            worker_block: Duration::from_millis(1000),
            worker_linger: Duration::from_millis(50),
            idempotency_ttl_secs: 86_400,
            max_attempts: 5,
            reclaim_idle: Duration::from_millis(30_000),
            pg_pool_size: 3,
            pg_timeouts: Timeouts::default(),
            migrate_on_start: true,
            memory_limit_bytes: 1 << 30,
            health_show_errors: false,
            security_headers: true,
            cors: crate::http::cors::Cors::default(),
            rate_limit_global: 100_000,
            rate_limit_per_ip: 20_000,
            trusted_proxies: TrustedProxies::default(),
            json_parser: crate::ingest::Ingestor::DEFAULT_PARSER,
            log_level: "info".into(),
        }
    }
}

/// A variable that could not be used, and why.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{var}={value:?}: {expected}")]
pub struct ConfigError {
    /// The environment variable's name.
    pub var: &'static str,
    /// The value found.
    pub value: String,
    /// What a valid value looks like.
    pub expected: String,
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
        let d = Self::default();
        let var = |name: &'static str| Var { name, value: get(name).filter(|v| !v.trim().is_empty()) };
        // Read first: the pool size defaults to it.
        let worker_threads = var("WORKER_THREADS").in_range(d.worker_threads, 0, 256)?;
        let default_pool = u32::try_from(worker_threads + 1).unwrap_or(u32::MAX);
        let config = Self {
            host: var("HOST").parse_or(d.host, "an IP address such as 0.0.0.0 or 127.0.0.1")?,
            port: var("PORT").parse_or(d.port, "a port number from 0 to 65535")?,
            cores: var("CORES").map_or(d.cores, parse_cores)?,
            pin_cores: var("PIN_CORES").map_or(d.pin_cores, parse_bool)?,
            redis_url: var("REDIS_URL").map_or(d.redis_url, |v| {
                redis::Client::open(v).map(|_| v.to_string()).map_err(|e| format!("a redis:// URL ({e})"))
            })?,
            database_url: var("DATABASE_URL").map_or(None, |v| {
                if v.starts_with("postgres://") || v.starts_with("postgresql://") || v.contains('=') {
                    Ok(Some(v.to_string()))
                } else {
                    Err("a postgres:// URL or a key=value connection string".into())
                }
            })?,
            queue_name: var("QUEUE_NAME").map_or(d.queue_name, |v| {
                if v.len() <= 200 && !v.contains(char::is_whitespace) {
                    Ok(v.to_string())
                } else {
                    Err("a stream name without spaces, at most 200 bytes".into())
                }
            })?,
            batch_max: var("BATCH_MAX").in_range(d.batch_max, 1, 100_000)?,
            batch_linger: Duration::from_micros(var("BATCH_LINGER_US").in_range(0, 0, 1_000_000)?),
            enqueue_timeout: millis(var("ENQUEUE_TIMEOUT_MS").in_range(2000, 10, 600_000)?),
            channel_capacity: var("ENQUEUE_CHANNEL_CAPACITY").in_range(d.channel_capacity, 1, 10_000_000)?,
            max_body_bytes: var("MAX_BODY_BYTES").in_range(d.max_body_bytes, 64, 1 << 30)?,
            max_header_bytes: var("MAX_HEADER_BYTES").in_range(d.max_header_bytes, 1024, 1 << 20)?,
            request_timeout: millis(var("REQUEST_TIMEOUT_MS").in_range(10_000, 10, 3_600_000)?),
            keepalive_timeout: millis(var("KEEPALIVE_TIMEOUT_MS").in_range(30_000, 10, 3_600_000)?),
            max_connections_per_core: var("MAX_CONNECTIONS_PER_CORE").in_range(
                d.max_connections_per_core,
                1,
                10_000_000,
            )?,
            max_connections_per_ip: var("MAX_CONNECTIONS_PER_IP").in_range(
                d.max_connections_per_ip,
                0,
                10_000_000,
            )?,
            max_buffer_bytes_per_core: var("MAX_BUFFER_BYTES_PER_CORE").in_range(
                d.max_buffer_bytes_per_core,
                1 << 16,
                1 << 40,
            )?,
            retry_after_secs: var("RETRY_AFTER_SECS").in_range(d.retry_after_secs, 0, 86_400)?,
            shutdown_timeout: millis(var("SHUTDOWN_TIMEOUT_MS").in_range(10_000, 0, 3_600_000)?),
            max_queue_depth: var("MAX_QUEUE_DEPTH").in_range(d.max_queue_depth, 1, 1_000_000_000)?,
            max_redis_memory_percent: var("MAX_REDIS_MEMORY_PERCENT").in_range(
                d.max_redis_memory_percent,
                0,
                100,
            )?,
            max_json_depth: var("MAX_JSON_DEPTH").in_range(d.max_json_depth, 0, 1_000_000)?,
            worker_threads,
            worker_batch_max: var("WORKER_BATCH_MAX").in_range(d.worker_batch_max, 1, 50_000)?,
            worker_batch_max_bytes: var("WORKER_BATCH_MAX_BYTES").in_range(
                d.worker_batch_max_bytes,
                1 << 16,
                1 << 40,
            )?,
            worker_block: millis(var("WORKER_BLOCK_MS").in_range(1000, 1, 60_000)?),
            worker_linger: millis(var("WORKER_LINGER_MS").in_range(50, 0, 10_000)?),
            idempotency_ttl_secs: var("IDEMPOTENCY_TTL_SECS").in_range(
                d.idempotency_ttl_secs,
                1,
                365 * 86_400,
            )?,
            max_attempts: var("MAX_ATTEMPTS").in_range(d.max_attempts, 1, 1000)?,
            reclaim_idle: millis(var("RECLAIM_IDLE_MS").in_range(30_000, 50, 86_400_000)?),
            pg_pool_size: var("PG_POOL_SIZE").in_range(default_pool, 1, 1000)?,
            pg_timeouts: Timeouts {
                connect: millis(var("PG_CONNECT_TIMEOUT_MS").in_range(5000, 100, 600_000)?),
                socket: millis(var("PG_SOCKET_TIMEOUT_MS").in_range(30_000, 1000, 3_600_000)?),
                statement: millis(var("PG_STATEMENT_TIMEOUT_MS").in_range(60_000, 0, 86_400_000)?),
            },
            migrate_on_start: var("MIGRATE_ON_START").map_or(d.migrate_on_start, parse_bool)?,
            memory_limit_bytes: var("MEMORY_LIMIT_BYTES").in_range(d.memory_limit_bytes, 1 << 20, 1 << 50)?,
            health_show_errors: var("HEALTH_SHOW_ERRORS").map_or(d.health_show_errors, parse_bool)?,
            security_headers: var("SECURITY_HEADERS").map_or(d.security_headers, parse_bool)?,
            cors: var("CORS_ORIGINS").map_or(d.cors, crate::http::cors::Cors::parse)?,
            rate_limit_global: var("RATE_LIMIT_GLOBAL").in_range(d.rate_limit_global, 0, 100_000_000)?,
            rate_limit_per_ip: var("RATE_LIMIT_PER_IP").in_range(d.rate_limit_per_ip, 0, 100_000_000)?,
            trusted_proxies: var("TRUST_PROXY").map_or(d.trusted_proxies, TrustedProxies::parse)?,
            json_parser: var("JSON_PARSER").map_or(d.json_parser, |v| {
                match v.to_ascii_lowercase().as_str() {
                    "serde" => Ok(crate::ingest::JsonParser::Serde),
                    "simd" => Ok(crate::ingest::JsonParser::Simd),
                    _ => Err("`serde` or `simd`".into()),
                }
            })?,
            log_level: var("LOG_LEVEL").map_or(d.log_level, |v| {
                tracing_subscriber::EnvFilter::try_new(v)
                    .map(|_| v.to_string())
                    .map_err(|e| format!("a tracing filter such as `info` or `debug,redis=warn` ({e})"))
            })?,
        };
        config.check_together(&var)?;
        Ok(config)
    }

    /// Settings that must fit each other (each message names the variable).
    fn check_together(&self, var: &impl Fn(&'static str) -> Var) -> Result<(), ConfigError> {
        let at_least_body = |name: &'static str, value: usize| {
            if value >= self.max_body_bytes {
                return Ok(());
            }
            Err(ConfigError {
                var: name,
                value: var(name).value.unwrap_or_else(|| value.to_string()),
                expected: format!(
                    "at least MAX_BODY_BYTES ({}), so one body of that size fits",
                    self.max_body_bytes
                ),
            })
        };
        at_least_body("WORKER_BATCH_MAX_BYTES", self.worker_batch_max_bytes)?;
        at_least_body("MAX_BUFFER_BYTES_PER_CORE", self.max_buffer_bytes_per_core)
    }

    /// `REDIS_URL` with any password replaced by `***`, for logs.
    pub fn redis_url_redacted(&self) -> String {
        redact(&self.redis_url)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("cores", &self.cores)
            .field("pin_cores", &self.pin_cores)
            .field("redis_url", &self.redis_url_redacted())
            .field("database_url", &self.database_url.as_deref().map(redact))
            .field("queue_name", &self.queue_name)
            .field("batch_max", &self.batch_max)
            .field("batch_linger", &self.batch_linger)
            .field("enqueue_timeout", &self.enqueue_timeout)
            .field("channel_capacity", &self.channel_capacity)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("max_connections_per_core", &self.max_connections_per_core)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_buffer_bytes_per_core", &self.max_buffer_bytes_per_core)
            .field("retry_after_secs", &self.retry_after_secs)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("max_queue_depth", &self.max_queue_depth)
            .field("max_redis_memory_percent", &self.max_redis_memory_percent)
            .field("max_json_depth", &self.max_json_depth)
            .field("worker_threads", &self.worker_threads)
            .field("worker_batch_max", &self.worker_batch_max)
            .field("worker_batch_max_bytes", &self.worker_batch_max_bytes)
            .field("worker_block", &self.worker_block)
            .field("worker_linger", &self.worker_linger)
            .field("idempotency_ttl_secs", &self.idempotency_ttl_secs)
            .field("max_attempts", &self.max_attempts)
            .field("reclaim_idle", &self.reclaim_idle)
            .field("pg_pool_size", &self.pg_pool_size)
            .field("pg_timeouts", &self.pg_timeouts)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("memory_limit_bytes", &self.memory_limit_bytes)
            .field("health_show_errors", &self.health_show_errors)
            .field("security_headers", &self.security_headers)
            .field("cors", &self.cors)
            .field("rate_limit_global", &self.rate_limit_global)
            .field("rate_limit_per_ip", &self.rate_limit_per_ip)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("json_parser", &self.json_parser)
            .field("log_level", &self.log_level)
            .finish()
    }
}

/// One variable as found in the environment (blank counts as unset).
struct Var {
    name: &'static str,
    value: Option<String>,
}

impl Var {
    fn map_or<T>(self, default: T, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        match self.value {
            None => Ok(default),
            Some(v) => parse(v.trim()).map_err(|expected| {
                let value = if SECRET_VARS.contains(&self.name) { redact(&v) } else { v.clone() };
                ConfigError { var: self.name, value, expected }
            }),
        }
    }

    fn parse_or<T: std::str::FromStr>(self, default: T, expected: &str) -> Result<T, ConfigError> {
        self.map_or(default, |v| v.parse().map_err(|_| expected.to_string()))
    }

    fn in_range<T>(self, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        self.map_or(default, |v| match v.parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(format!("a whole number from {min} to {max}")),
        })
    }
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("true or false".into()),
    }
}

/// `CORES`: `all`, a count (`2`), or a list of ids and ranges (`0,2-3`).
fn parse_cores(v: &str) -> Result<CoreSelection, String> {
    const EXPECTED: &str = "`all`, a count such as 2, or a core list such as 0,2-3";
    if v.eq_ignore_ascii_case("all") {
        return Ok(CoreSelection::All);
    }
    if let Ok(n) = v.parse::<usize>() {
        return if n == 0 { Err(EXPECTED.into()) } else { Ok(CoreSelection::Count(n)) };
    }
    let mut ids = Vec::new();
    for part in v.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi) = match (lo.trim().parse::<usize>(), hi.trim().parse::<usize>()) {
            (Ok(lo), Ok(hi)) if lo <= hi && hi < 4096 => (lo, hi),
            _ => return Err(EXPECTED.into()),
        };
        ids.extend(lo..=hi);
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(CoreSelection::List(ids))
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
        assert_eq!(c.port, 3000);
        assert_eq!(c.queue_name, "webhooks");
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.cores, CoreSelection::All);
        assert_eq!(c.pg_pool_size, 3, "WORKER_THREADS (2) + 1");
        assert_eq!(load(&[("WORKER_THREADS", "6")]).unwrap().pg_pool_size, 7);
        assert_eq!(load(&[("WORKER_THREADS", "6"), ("PG_POOL_SIZE", "2")]).unwrap().pg_pool_size, 2);
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
        assert_eq!(load(&[("CORS_ORIGINS", "example.com")]).unwrap_err().var, "CORS_ORIGINS");
    }

    #[test]
    fn cores_take_a_count_or_a_list() {
        assert_eq!(load(&[("CORES", "2")]).unwrap().cores, CoreSelection::Count(2));
        assert_eq!(load(&[("CORES", "3,0-1")]).unwrap().cores, CoreSelection::List(vec![0, 1, 3]));
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
    fn settings_that_must_fit_each_other_are_checked_by_name() {
        let e = load(&[("MAX_BODY_BYTES", "2000000"), ("WORKER_BATCH_MAX_BYTES", "1000000")]).unwrap_err();
        assert_eq!(e.var, "WORKER_BATCH_MAX_BYTES");
        assert!(e.expected.contains("MAX_BODY_BYTES"), "{e}");
        let e = load(&[("MAX_BODY_BYTES", "300000000")]).unwrap_err();
        assert_eq!(e.var, "WORKER_BATCH_MAX_BYTES", "the default is below such a body");
        assert_eq!(load(&[("TRUST_PROXY", "true")]).unwrap_err().var, "TRUST_PROXY");
        let c = load(&[("TRUST_PROXY", "10.0.0.0/8")]).unwrap();
        assert!(c.trusted_proxies.contains("10.1.1.1".parse().unwrap()));
    }
}
