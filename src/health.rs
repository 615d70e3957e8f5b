//! `GET /health`: readiness in NestJS Terminus's shape.
//!
//! ```json
//! {"status":"ok"|"error","info":{…up…},"error":{…down…},"details":{…all…}}
//! ```
//!
//! One entry per dependency: `redis` (`PING`), `database` (a real round trip,
//! when `DATABASE_URL` is set, reading `fsync` and `synchronous_commit`: a
//! `warning` when either is off, the check still up) and `memory_rss` (resident memory under
//! `MEMORY_LIMIT_BYTES`). 200 when all are up, 503 otherwise. A dependency
//! that is down shows `"message":"unreachable"`; its error text (which can
//! name hosts, users, databases) goes to the log, once per change, and into
//! the answer only with `HEALTH_SHOW_ERRORS=true`.
//!
//! The checks block, so they run on threads of their own, never on a core,
//! one for the report and one for the queue gauges of `/metrics`: a flood of
//! scrapes can slow only the gauges, never `/health`. Each thread caches
//! its answer for [`CACHE_FOR`] in a slot the cores read directly, so a
//! flood of probes costs one query a second and no cross-thread hop while
//! the answer is fresh. A core waits at most [`ANSWER_TIMEOUT`]; past it,
//! the core answers 503 itself, so `/health` never hangs even if a
//! dependency does.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use serde_json::{json, Map, Value};
use tracing::{error, info, warn};

use crate::telemetry::metrics::{PartitionGauges, QueueGauges};

/// How long a core waits for the health thread before answering 503.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(2500);
/// Timeout of each dependency check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one report answers every probe.
pub const CACHE_FOR: Duration = Duration::from_secs(1);
/// Requests that may wait for a thread. Every waiting core request is
/// answered from the one refresh in progress, so this only needs to hold
/// the requests one refresh can see arrive.
const WAITING: usize = 4096;

/// A finished health report.
#[derive(Debug, Clone)]
pub struct Report {
    /// Every check is up.
    pub healthy: bool,
    /// The Terminus-shaped JSON document.
    pub json: Vec<u8>,
}

/// What the health thread checks.
#[derive(Debug, Clone)]
pub struct HealthSettings {
    /// The queue's Redis (node or cluster) and its partitions.
    pub queue: crate::queue::Queue,
    /// `DATABASE_URL`, when this process uses PostgreSQL.
    pub database_url: Option<String>,
    /// `PG_*_TIMEOUT_MS`, `PG_SYNCHRONOUS_COMMIT` (the check's own connect
    /// timeout stays 1 s).
    pub pg_session: crate::store::Session,
    /// `MEMORY_LIMIT_BYTES`.
    pub memory_limit_bytes: u64,
    /// `HEALTH_SHOW_ERRORS`: put dependency error text in the answer.
    pub show_errors: bool,
}

/// One cached, thread-computed value that cores can read.
struct Probe<T> {
    tx: crossbeam_channel::Sender<oneshot::Sender<T>>,
    cache: Arc<Mutex<Option<(Instant, T)>>>,
}

impl<T> Clone for Probe<T> {
    fn clone(&self) -> Self {
        Self { tx: self.tx.clone(), cache: self.cache.clone() }
    }
}

impl<T: Clone + Send + 'static> Probe<T> {
    /// A thread named `name` answering with `compute`, cached for [`CACHE_FOR`].
    fn spawn(
        name: &str,
        mut compute: impl FnMut() -> T + Send + 'static,
    ) -> std::io::Result<(Self, thread::JoinHandle<()>)> {
        let (tx, rx) = crossbeam_channel::bounded::<oneshot::Sender<T>>(WAITING);
        let cache: Arc<Mutex<Option<(Instant, T)>>> = Arc::default();
        let slot = cache.clone();
        let thread = thread::Builder::new().name(name.into()).spawn(move || {
            while let Ok(reply) = rx.recv() {
                let value = fresh(&slot).unwrap_or_else(|| {
                    let v = compute();
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), v.clone()));
                    v
                });
                let _ = reply.send(value);
            }
        })?;
        Ok((Self { tx, cache }, thread))
    }

    /// The cached value if fresh, else the thread's, within [`ANSWER_TIMEOUT`].
    async fn get(&self) -> Option<T> {
        if let Some(v) = fresh(&self.cache) {
            return Some(v);
        }
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(tx).ok()?;
        monoio::time::timeout(ANSWER_TIMEOUT, rx).await.ok()?.ok()
    }
}

fn fresh<T: Clone>(slot: &Mutex<Option<(Instant, T)>>) -> Option<T> {
    match &*slot.lock().unwrap_or_else(|e| e.into_inner()) {
        Some((at, v)) if at.elapsed() < CACHE_FOR => Some(v.clone()),
        _ => None,
    }
}

/// The cores' handle to the health and gauge threads. Cloning is cheap.
#[derive(Clone)]
pub struct Health {
    reports: Probe<Report>,
    gauges: Probe<Option<QueueGauges>>,
}

impl Health {
    /// Asks for a report, inside a monoio runtime with timers enabled.
    /// A late or missing answer is itself an unhealthy report.
    pub async fn check(&self) -> Report {
        self.reports.get().await.unwrap_or_else(|| timed_out("health checks did not finish in time"))
    }

    /// Stream length, pending entries and dead letters, for `/metrics`;
    /// `None` if Redis did not answer in time.
    pub async fn queue_gauges(&self) -> Option<QueueGauges> {
        self.gauges.get().await.flatten()
    }
}

fn timed_out(message: &str) -> Report {
    let doc = json!({
        "status": "error",
        "info": {},
        "error": {"health": {"status": "down", "message": message}},
        "details": {"health": {"status": "down", "message": message}},
    });
    Report { healthy: false, json: serde_json::to_vec(&doc).unwrap_or_default() }
}

/// Starts the health and gauge threads; they exit when every [`Health`]
/// handle is dropped.
///
/// # Errors
/// A thread cannot be spawned.
pub fn spawn_health(settings: HealthSettings) -> std::io::Result<(Health, Vec<thread::JoinHandle<()>>)> {
    let mut checker = Checker::new(settings.clone());
    let (reports, a) = Probe::spawn("health", move || checker.report())?;
    let mut gauger = Checker::new(settings);
    let (gauges, b) = Probe::spawn("metrics-gauges", move || gauger.queue())?;
    Ok((Health { reports, gauges }, vec![a, b]))
}

/// One check's outcome: extra fields when up, the reason when down.
type Check = Result<Map<String, Value>, String>;

struct Checker {
    settings: HealthSettings,
    redis: Option<crate::queue::Conn>,
    pg: Option<postgres::Client>,
    /// The last reason logged per check, so each change is logged once.
    logged: Vec<(&'static str, Option<String>)>,
}

impl Checker {
    fn new(settings: HealthSettings) -> Self {
        Self { settings, redis: None, pg: None, logged: Vec::new() }
    }

    fn report(&mut self) -> Report {
        let mut checks: Vec<(&'static str, Check)> = vec![("redis", self.redis())];
        if self.settings.database_url.is_some() {
            checks.push(("database", self.database()));
        }
        checks.push(("memory_rss", self.memory()));

        let (mut info, mut errors, mut details) = (Map::new(), Map::new(), Map::new());
        for (name, outcome) in checks {
            self.log_change(name, outcome.as_ref().err());
            let entry = match outcome {
                Ok(mut fields) => {
                    fields.insert("status".into(), "up".into());
                    info.insert(name.into(), Value::Object(fields.clone()));
                    fields
                }
                Err(message) => {
                    let shown = if self.settings.show_errors || name == "memory_rss" {
                        message
                    } else {
                        "unreachable".to_string()
                    };
                    let mut fields = Map::new();
                    fields.insert("status".into(), "down".into());
                    fields.insert("message".into(), shown.into());
                    errors.insert(name.into(), Value::Object(fields.clone()));
                    fields
                }
            };
            details.insert(name.into(), Value::Object(entry));
        }
        let healthy = errors.is_empty();
        let doc = json!({
            "status": if healthy { "ok" } else { "error" },
            "info": info,
            "error": errors,
            "details": details,
        });
        Report { healthy, json: serde_json::to_vec(&doc).unwrap_or_default() }
    }

    /// Logs a check going down, changing its reason, or coming back.
    fn log_change(&mut self, name: &'static str, error: Option<&String>) {
        let last = match self.logged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, last)) => last,
            None => {
                self.logged.push((name, None));
                &mut self.logged.last_mut().expect("just pushed").1
            }
        };
        if last.as_ref() == error {
            return;
        }
        match error {
            Some(e) => warn!(check = name, error = %e, "health check down"),
            None => info!(check = name, "health check up again"),
        }
        *last = error.cloned();
    }

    fn queue(&mut self) -> Option<QueueGauges> {
        self.redis().ok()?;
        let queue = self.settings.queue.clone();
        let gauges = read_queue_gauges(&queue, self.redis.as_mut()?);
        if gauges.is_none() {
            self.redis = None;
        }
        gauges
    }

    fn redis(&mut self) -> Check {
        if self.redis.is_none() {
            let con = self.settings.queue.connect(CHECK_TIMEOUT, CHECK_TIMEOUT).map_err(|e| e.to_string())?;
            self.redis = Some(con);
        }
        let con = self.redis.as_mut().expect("just set");
        match redis::cmd("PING").query::<String>(con) {
            Ok(_) => {
                // What the workers hold back and why: a warning, not a failure.
                let mut fields = Map::new();
                let held = read_held(&self.settings.queue, con);
                if !held.is_empty() {
                    fields.insert("warning".into(), "the workers hold entries back (see held)".into());
                    fields
                        .insert("held".into(), held.into_iter().map(|(k, v)| (k, Value::from(v))).collect());
                }
                Ok(fields)
            }
            Err(e) => {
                self.redis = None;
                Err(e.to_string())
            }
        }
    }

    /// A round trip that also reads what a commit is worth: a warning in
    /// the details (the check stays up) when `fsync` or the session's
    /// `synchronous_commit` is off.
    fn database(&mut self) -> Check {
        if self.pg.as_ref().is_none_or(postgres::Client::is_closed) {
            let url = self.settings.database_url.as_deref().unwrap_or_default();
            let mut session = self.settings.pg_session;
            session.timeouts.connect = CHECK_TIMEOUT;
            let config = crate::store::connect_config(url, session).map_err(|e| e.to_string())?;
            self.pg = Some(
                config.connect(postgres::NoTls).map_err(|e| crate::store::StoreError::from(e).to_string())?,
            );
        }
        let client = self.pg.as_mut().expect("just set");
        match crate::store::durability(client) {
            Ok((fsync, synchronous_commit)) => {
                let mut fields = Map::new();
                if let Some(warning) = crate::store::durability_warning(&fsync, &synchronous_commit) {
                    fields.insert("warning".into(), warning.into());
                }
                fields.insert("fsync".into(), fsync.into());
                fields.insert("synchronous_commit".into(), synchronous_commit.into());
                Ok(fields)
            }
            Err(e) => {
                self.pg = None;
                Err(e.to_string())
            }
        }
    }

    fn memory(&self) -> Check {
        let rss = crate::telemetry::process::resident_bytes().ok_or("cannot read /proc/self/status")?;
        let limit = self.settings.memory_limit_bytes;
        if rss > limit {
            return Err(format!("resident memory {rss} bytes is over the limit of {limit}"));
        }
        let mut fields = Map::new();
        fields.insert("rss_bytes".into(), rss.into());
        fields.insert("limit_bytes".into(), limit.into());
        Ok(fields)
    }
}

/// What the workers of `queue` hold back and why (condition, description):
/// entries of a newer job format, rows PostgreSQL refuses alike. Empty when
/// nothing is held or Redis does not answer.
pub fn read_held(queue: &crate::queue::Queue, con: &mut crate::queue::Conn) -> Vec<(String, String)> {
    let held: std::collections::BTreeMap<String, String> =
        redis::cmd("HGETALL").arg(crate::queue::keys::held(queue.name())).query(con).unwrap_or_default();
    held.into_iter().collect()
}

/// Every partition's gauges and their totals; `None` when no partition's
/// master answered (Redis is down, not the queue empty).
pub fn read_queue_gauges(queue: &crate::queue::Queue, con: &mut crate::queue::Conn) -> Option<QueueGauges> {
    let partitions: Vec<Option<PartitionGauges>> =
        queue.streams().iter().map(|stream| partition_gauges(con, stream)).collect();
    if partitions.iter().all(Option::is_none) {
        return None;
    }
    Some(QueueGauges::from_partitions(partitions))
}

/// One partition's gauges, in one round trip to its master (every key
/// carries the partition's hash tag).
fn partition_gauges(con: &mut crate::queue::Conn, stream: &str) -> Option<PartitionGauges> {
    let mut pipe = redis::pipe();
    pipe.cmd("XLEN").arg(stream);
    pipe.cmd("XLEN").arg(crate::queue::keys::dead_letters(stream));
    pipe.cmd("XPENDING").arg(stream).arg(crate::queue::GROUP);
    pipe.cmd("XINFO").arg("GROUPS").arg(stream);
    // Acknowledged entries are deleted, so the first is the oldest waiting.
    pipe.cmd("XRANGE").arg(stream).arg("-").arg("+").arg("COUNT").arg(1);
    // XPENDING's summary: the count, then the lowest and highest ids and
    // the per-consumer counts, which are not needed here.
    type Summary = (u64, redis::Value, redis::Value, redis::Value);
    type Gauges = (u64, u64, Summary, redis::Value, Vec<(String, redis::Value)>);
    let (length, dead_letters, (pending, ..), groups, first): Gauges = pipe.query(con).ok()?;
    let oldest_ms = first.first().and_then(|(id, _)| id.split_once('-')).and_then(|(ms, _)| ms.parse().ok());
    Some(PartitionGauges { length, pending, dead_letters, lag: group_lag(groups).unwrap_or(0), oldest_ms })
}

/// The `lag` of the workers' group in an `XINFO GROUPS` reply (Redis 7+;
/// nil while Redis cannot tell, e.g. after entries were deleted mid-stream).
fn group_lag(groups: redis::Value) -> Option<u64> {
    let redis::Value::Array(groups) = groups else { return None };
    groups.into_iter().find_map(|g| {
        let fields: std::collections::HashMap<String, redis::Value> = redis::from_redis_value(g).ok()?;
        let name: String = redis::from_redis_value(fields.get("name")?.clone()).ok()?;
        if name != crate::queue::GROUP {
            return None;
        }
        redis::from_redis_value(fields.get("lag")?.clone()).ok()
    })
}

impl Drop for Checker {
    fn drop(&mut self) {
        if let Some(pg) = self.pg.take() {
            if let Err(e) = pg.close() {
                error!(error = %e, "closing the health check's postgres connection");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_memory_is_readable_and_plausible() {
        let rss = crate::telemetry::process::resident_bytes().unwrap();
        assert!(rss > 1024 * 1024 && rss < 64 * 1024 * 1024 * 1024, "{rss}");
    }
}
