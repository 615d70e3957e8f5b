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
mod http;
mod ingest;
mod ops;
mod queue;
mod store;
mod vars;
mod worker;

use thiserror::Error;

pub use crate::telemetry::redact::redact;
pub use api::ApiConfig;

pub use http::HttpConfig;
pub use ingest::IngestConfig;
pub use ops::OpsConfig;
pub use queue::QueueConfig;
pub use store::StoreConfig;
use vars::Vars;
pub use worker::WorkerConfig;

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
    use std::time::Duration;

    use crate::http::server::TaskRun;
    use crate::store::{Retention, SynchronousCommit};

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
