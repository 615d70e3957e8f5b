//! `GET /health`: readiness in NestJS Terminus's shape.
//!
//! ```json
//! {"status":"ok"|"error","info":{…up…},"error":{…down…},"details":{…all…}}
//! ```
//!
//! One entry per dependency: `redis` (`PING`), `database` (a real round trip,
//! when `DATABASE_URL` is set) and `memory_rss` (resident memory under
//! `MEMORY_LIMIT_BYTES`). 200 when all are up, 503 otherwise.
//!
//! The checks block, so they run on one `health` thread, never on a core.
//! A core asks over a channel and waits at most [`ANSWER_TIMEOUT`]; past it,
//! the core answers 503 itself, so `/health` never hangs even if a
//! dependency does. Each check has its own connect/read timeout, and a
//! report is reused for [`CACHE_FOR`] so a flood of probes cannot turn into a
//! flood of queries.

use std::thread;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use serde_json::{json, Map, Value};
use tracing::error;

use crate::telemetry::metrics::QueueGauges;

/// How long a core waits for the health thread before answering 503.
pub const ANSWER_TIMEOUT: Duration = Duration::from_millis(2500);
/// Timeout of each dependency check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one report answers every probe.
pub const CACHE_FOR: Duration = Duration::from_secs(1);

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
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `DATABASE_URL`, when this process uses PostgreSQL.
    pub database_url: Option<String>,
    /// `MEMORY_LIMIT_BYTES`.
    pub memory_limit_bytes: u64,
    /// `QUEUE_NAME`, for the queue gauges.
    pub stream: String,
}

/// What a core can ask the health thread.
enum Ask {
    Health(oneshot::Sender<Report>),
    Queue(oneshot::Sender<Option<QueueGauges>>),
}

/// The cores' handle to the health thread. Cloning is cheap.
#[derive(Clone)]
pub struct Health {
    tx: crossbeam_channel::Sender<Ask>,
}

impl Health {
    /// Asks for a report, inside a monoio runtime with timers enabled.
    /// A late or missing answer is itself an unhealthy report.
    pub async fn check(&self) -> Report {
        let (tx, rx) = oneshot::channel();
        if self.tx.try_send(Ask::Health(tx)).is_err() {
            return timed_out("health checks are saturated");
        }
        match monoio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(report)) => report,
            Ok(Err(_)) => timed_out("health thread stopped"),
            Err(_) => timed_out("health checks did not finish in time"),
        }
    }
}

impl Health {
    /// Stream length, pending entries and dead letters, for `/metrics`;
    /// `None` if Redis did not answer in time.
    pub async fn queue_gauges(&self) -> Option<QueueGauges> {
        let (tx, rx) = oneshot::channel();
        self.tx.try_send(Ask::Queue(tx)).ok()?;
        monoio::time::timeout(ANSWER_TIMEOUT, rx).await.ok()?.ok()?
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

/// Starts the health thread; it exits when every [`Health`] handle is dropped.
///
/// # Errors
/// The thread cannot be spawned.
pub fn spawn_health(settings: HealthSettings) -> std::io::Result<(Health, thread::JoinHandle<()>)> {
    // Small: probes are rare, and a backlog only means the thread is stuck.
    let (tx, rx) = crossbeam_channel::bounded::<Ask>(64);
    let thread = thread::Builder::new().name("health".into()).spawn(move || {
        let mut checker = Checker { settings, redis: None, pg: None, cached: None };
        while let Ok(ask) = rx.recv() {
            match ask {
                Ask::Health(reply) => {
                    let _ = reply.send(checker.report());
                }
                Ask::Queue(reply) => {
                    let _ = reply.send(checker.queue());
                }
            }
        }
    })?;
    Ok((Health { tx }, thread))
}

/// One check's outcome: extra fields when up, the reason when down.
type Check = Result<Map<String, Value>, String>;

struct Checker {
    settings: HealthSettings,
    redis: Option<redis::Connection>,
    pg: Option<postgres::Client>,
    cached: Option<(Instant, Report)>,
}

impl Checker {
    fn report(&mut self) -> Report {
        if let Some((at, report)) = &self.cached {
            if at.elapsed() < CACHE_FOR {
                return report.clone();
            }
        }
        let mut checks: Vec<(&str, Check)> = vec![("redis", self.redis())];
        if self.settings.database_url.is_some() {
            checks.push(("database", self.database()));
        }
        checks.push(("memory_rss", self.memory()));

        let (mut info, mut errors, mut details) = (Map::new(), Map::new(), Map::new());
        for (name, outcome) in checks {
            let entry = match outcome {
                Ok(mut fields) => {
                    fields.insert("status".into(), "up".into());
                    info.insert(name.into(), Value::Object(fields.clone()));
                    fields
                }
                Err(message) => {
                    let mut fields = Map::new();
                    fields.insert("status".into(), "down".into());
                    fields.insert("message".into(), message.into());
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
        let report = Report { healthy, json: serde_json::to_vec(&doc).unwrap_or_default() };
        self.cached = Some((Instant::now(), report.clone()));
        report
    }

    fn queue(&mut self) -> Option<QueueGauges> {
        self.redis().ok()?;
        let stream = self.settings.stream.clone();
        let con = self.redis.as_mut()?;
        let mut pipe = redis::pipe();
        pipe.cmd("XLEN").arg(&stream);
        pipe.cmd("XLEN").arg(crate::worker::dead_letter_stream(&stream));
        let (length, dead_letters): (u64, u64) = pipe.query(con).ok()?;
        let pending = redis::cmd("XPENDING")
            .arg(&stream)
            .arg(crate::queue::GROUP)
            .query::<(u64, redis::Value, redis::Value, redis::Value)>(con)
            .map(|r| r.0)
            .unwrap_or(0);
        Some(QueueGauges { length, pending, dead_letters })
    }

    fn redis(&mut self) -> Check {
        if self.redis.is_none() {
            let client = redis::Client::open(self.settings.redis_url.as_str()).map_err(|e| e.to_string())?;
            let con = client.get_connection_with_timeout(CHECK_TIMEOUT).map_err(|e| e.to_string())?;
            con.set_read_timeout(Some(CHECK_TIMEOUT)).map_err(|e| e.to_string())?;
            con.set_write_timeout(Some(CHECK_TIMEOUT)).map_err(|e| e.to_string())?;
            self.redis = Some(con);
        }
        let con = self.redis.as_mut().expect("just set");
        match redis::cmd("PING").query::<String>(con) {
            Ok(_) => Ok(Map::new()),
            Err(e) => {
                self.redis = None;
                Err(e.to_string())
            }
        }
    }

    fn database(&mut self) -> Check {
        if self.pg.as_ref().is_none_or(postgres::Client::is_closed) {
            let url = self.settings.database_url.as_deref().unwrap_or_default();
            let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| e.to_string())?;
            config.connect_timeout(CHECK_TIMEOUT);
            self.pg = Some(
                config.connect(postgres::NoTls).map_err(|e| crate::store::StoreError::from(e).to_string())?,
            );
        }
        let client = self.pg.as_mut().expect("just set");
        match client.simple_query("SELECT 1") {
            Ok(_) => Ok(Map::new()),
            Err(e) => {
                self.pg = None;
                Err(crate::store::StoreError::from(e).to_string())
            }
        }
    }

    fn memory(&self) -> Check {
        let rss = resident_bytes().ok_or("cannot read /proc/self/status")?;
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

/// This process's resident memory (`VmRSS`), in bytes.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
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
        let rss = super::resident_bytes().unwrap();
        assert!(rss > 1024 * 1024 && rss < 64 * 1024 * 1024 * 1024, "{rss}");
    }
}
