//! The operations section: shutdown, the memory limit of `/health`, logs,
//! and the refused requests kept for `GET /v1/rejections`.

use std::time::Duration;

use super::vars::Vars;
use super::ConfigError;

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
    pub(super) fn read(v: &Vars<'_>) -> Result<Self, ConfigError> {
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

impl super::Config {
    /// What the health thread takes: the queue, PostgreSQL and this section's limits.
    pub fn health_settings(&self) -> crate::health::HealthSettings {
        crate::health::HealthSettings {
            queue: self.queue.queue(),
            database_url: self.store.database_url.clone(),
            pg_session: self.store.session(),
            memory_limit_bytes: self.ops.memory_limit_bytes,
            show_errors: self.ops.health_show_errors,
        }
    }
}
