//! Fault harness: the real binary as processes, a paced load of unique
//! events from keep-alive clients, and the ledger that checks the promise
//! "202 means stored, exactly once" after a fault.
//!
//! A scenario starts its servers and gateway processes, starts a [`Load`],
//! injects its fault, recovers, stops the load and calls [`settle`], which
//! waits for the queue to drain and compares the ledger with PostgreSQL:
//! every 202'd id is a row exactly once, and no row exists that was not sent.
//! The figures go to `target/tmp/reliability/<scenario>.json`, which
//! `scripts/reliability` turns into the README's table.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use webhook_ingestor::queue::{DEFAULT_STREAM, GROUP};

use crate::harness::{event, post_request, wait_until, Client, PostgresServer, RedisServer, DB};

/// What every chaos gateway gets unless a scenario overrides it: a quick
/// reclaim so a dead consumer's entries move on within a second, and a
/// 1 s enqueue timeout so a frozen Redis is felt quickly.
const BASE_ENV: &[(&str, &str)] = &[
    ("HOST", "127.0.0.1"),
    ("CORES", "2"),
    ("PIN_CORES", "false"),
    ("SHUTDOWN_TIMEOUT_MS", "5000"),
    ("ENQUEUE_TIMEOUT_MS", "1000"),
    ("RECLAIM_IDLE_MS", "1000"),
    ("WORKER_BLOCK_MS", "100"),
    ("LOG_LEVEL", "warn"),
];

/// The Redis a scenario runs on, as the ledger needs to see it: one
/// `redis-server`, or a cluster ([`crate::redis_cluster::RedisCluster`]).
pub trait QueueRedis {
    /// The settings that point a gateway at it.
    fn env(&self) -> Vec<(String, String)>;
    /// Entries not yet acknowledged: `(total, per consumer)`, all partitions.
    fn pending(&self) -> (u64, HashMap<String, u64>);
    /// Entries in the streams, all partitions.
    fn queue_length(&self) -> usize;
    /// Entries in the dead-letter streams, all partitions.
    fn dead_letters(&self) -> usize;
}

impl QueueRedis for RedisServer {
    fn env(&self) -> Vec<(String, String)> {
        vec![("REDIS_URL".into(), self.url())]
    }

    fn pending(&self) -> (u64, HashMap<String, u64>) {
        pending_in(&mut self.con(), DEFAULT_STREAM)
    }

    fn queue_length(&self) -> usize {
        redis::cmd("XLEN").arg(DEFAULT_STREAM).query(&mut self.con()).unwrap()
    }

    fn dead_letters(&self) -> usize {
        redis::cmd("XLEN").arg(format!("{DEFAULT_STREAM}:dead")).query(&mut self.con()).unwrap()
    }
}

/// `XPENDING` of `stream`: `(total, per consumer)`.
pub fn pending_in(con: &mut impl redis::ConnectionLike, stream: &str) -> (u64, HashMap<String, u64>) {
    let reply: redis::streams::StreamPendingReply =
        redis::cmd("XPENDING").arg(stream).arg(GROUP).query(con).unwrap();
    match reply {
        redis::streams::StreamPendingReply::Data(d) => {
            (d.count as u64, d.consumers.into_iter().map(|c| (c.name, c.pending as u64)).collect())
        }
        _ => (0, HashMap::new()),
    }
}

/// The `webhook-ingestor` binary serving one role, as a child process.
pub struct Gateway {
    pub port: u16,
    role: &'static str,
    env: Vec<(String, String)>,
    log: std::path::PathBuf,
    child: Option<Child>,
    /// Killed processes not reaped yet (see [`Gateway::kill9_unreaped`]).
    zombies: Vec<Child>,
}

impl Gateway {
    /// Starts `serve --role <role>` and, for roles that listen, waits until it accepts.
    pub fn spawn(
        port: u16,
        redis: &dyn QueueRedis,
        pg: Option<&PostgresServer>,
        role: &'static str,
        extra: &[(&str, &str)],
    ) -> Self {
        let mut env: Vec<(String, String)> =
            BASE_ENV.iter().chain(extra).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        env.push(("PORT".into(), port.to_string()));
        env.extend(redis.env());
        if let Some(pg) = pg {
            env.push(("DATABASE_URL".into(), pg.url(DB)));
        }
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("logs");
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join(format!("{role}-{port}.log"));
        let mut gateway = Self { port, role, env, log, child: None, zombies: Vec::new() };
        gateway.launch();
        gateway
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_webhook-ingestor"))
            .args(["serve", "--role", self.role])
            .env_remove("DATABASE_URL")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("the binary starts");
        self.child = Some(child);
        if self.role != "worker" {
            let addr = self.addr();
            wait_until(Duration::from_secs(10), "the gateway to listen", || {
                std::net::TcpStream::connect(addr).is_ok()
            });
        }
    }

    /// Its log file (stdout and stderr).
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// True until the process has exited.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Sends a signal (`-TERM`, `-KILL`, …) by pid.
    pub fn signal(&self, sig: &str) {
        assert!(Command::new("kill").args([sig, &self.pid().to_string()]).status().unwrap().success());
    }

    /// SIGKILL, like a crash or the OOM killer, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL without reaping until the end of the test: the process stays
    /// a zombie with its `/proc` entry, as under an init that reaps late
    /// (`nohup … &` from a script that has exited).
    pub fn kill9_unreaped(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            self.zombies.push(child);
        }
    }

    /// Starts the same role again with the same port and settings.
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Waits for the process to exit on its own; kills it and fails after `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!("the {} process did not exit within {within:?}", self.role);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        for mut zombie in self.zombies.drain(..) {
            let _ = zombie.wait();
        }
    }
}

/// What the clients saw, request by request.
#[derive(Default, Debug)]
pub struct Ledger {
    /// Every event id a request was started for.
    pub sent: Vec<String>,
    /// Ids answered `202 Accepted`.
    pub accepted: Vec<String>,
    /// `503` answers (each must carry `Retry-After`).
    pub unavailable: usize,
    pub unavailable_without_retry_after: usize,
    /// Any other answer, or none (connection refused mid-request, reset, EOF):
    /// the event may or may not be stored, and the sender would retry.
    pub other: usize,
    /// The slowest request, send to answer (or to the error).
    pub max_latency: Duration,
    /// Every request: its id, status (0: no answer), when it was sent and
    /// how long its answer took, for figures per partition and per window.
    pub timed: Vec<Timed>,
}

/// One request of a [`Ledger`].
#[derive(Debug, Clone)]
pub struct Timed {
    pub id: String,
    pub status: u16,
    pub at: Instant,
    pub latency: Duration,
}

impl Ledger {
    /// Adds what another load's clients saw.
    pub fn merge(&mut self, other: Ledger) {
        self.sent.extend(other.sent);
        self.accepted.extend(other.accepted);
        self.unavailable += other.unavailable;
        self.unavailable_without_retry_after += other.unavailable_without_retry_after;
        self.other += other.other;
        self.max_latency = self.max_latency.max(other.max_latency);
        self.timed.extend(other.timed);
    }
}

/// Keep-alive clients posting unique events at a steady pace until stopped.
/// They reconnect after any error, so they ride through restarts.
pub struct Load {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Ledger>>,
}

impl Load {
    /// `clients` threads, each pausing `pace` between requests; ids are `<tag>_<client>_<n>`.
    pub fn start(addr: SocketAddr, clients: usize, pace: Duration, tag: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|c| {
                let (stop, accepted, tag) = (stop.clone(), accepted.clone(), tag.to_string());
                std::thread::spawn(move || client_loop(addr, &format!("{tag}_{c}"), pace, &stop, &accepted))
            })
            .collect();
        Self { stop, accepted, threads }
    }

    /// 202s so far, all clients together.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` more 202s arrived (the load is really flowing).
    pub fn wait_for_more(&self, n: u64, within: Duration) {
        let target = self.accepted() + n;
        wait_until(within, "the load to get 202s", || self.accepted() >= target);
    }

    pub fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        let mut ledger = Ledger::default();
        for t in self.threads {
            ledger.merge(t.join().expect("a load client panicked"));
        }
        ledger
    }
}

fn client_loop(
    addr: SocketAddr,
    tag: &str,
    pace: Duration,
    stop: &AtomicBool,
    accepted: &AtomicU64,
) -> Ledger {
    let mut ledger = Ledger::default();
    let mut conn: Option<Client> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let client = match &mut conn {
            Some(c) => c,
            None => match Client::try_connect(addr) {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    // Nothing sent: the server is down. Try again shortly.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            },
        };
        let id = format!("{tag}_{n}");
        n += 1;
        ledger.sent.push(id.clone());
        let started = Instant::now();
        let answer = match client.try_send(&post_request("stripe", &event("stripe", &id))) {
            Ok(()) => client.try_read_response().ok().flatten(),
            Err(_) => None,
        };
        let latency = started.elapsed();
        ledger.max_latency = ledger.max_latency.max(latency);
        let status = answer.as_ref().map_or(0, |r| r.status);
        ledger.timed.push(Timed { id: id.clone(), status, at: started, latency });
        match answer {
            Some(resp) => {
                match resp.status {
                    202 => {
                        ledger.accepted.push(id);
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    503 => {
                        ledger.unavailable += 1;
                        if resp.header("retry-after").is_none() {
                            ledger.unavailable_without_retry_after += 1;
                        }
                    }
                    _ => ledger.other += 1,
                }
                if resp.header("connection") == Some("close") {
                    conn = None;
                }
            }
            None => {
                ledger.other += 1;
                conn = None;
            }
        }
        std::thread::sleep(pace);
    }
    ledger
}

/// One scenario's outcome, as the README's reliability table shows it.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub sent: usize,
    pub accepted: usize,
    pub unavailable: usize,
    pub other: usize,
    pub rows: usize,
    /// 202'd ids with no row.
    pub lost: usize,
    /// Rows whose provider, payload or event timestamp differ from what was
    /// sent for their id (a value replaced or damaged on the way). A check
    /// that can fail, unlike "rows beyond one per id", which
    /// `UNIQUE (provider, event_id)` makes impossible.
    pub corrupt: usize,
    /// Rows for ids never sent.
    pub unexpected: usize,
    pub dead_lettered: usize,
    pub max_latency_ms: u128,
}

/// Entries not yet acknowledged by a worker: `(total, per consumer)`.
pub fn pending(redis: &dyn QueueRedis) -> (u64, HashMap<String, u64>) {
    redis.pending()
}

/// Rows of `webhook_dead_letters` (0 before the migrations ran).
fn dead_letter_rows(pg: &PostgresServer) -> usize {
    pg.client(DB)
        .query_one("SELECT count(*) FROM webhook_dead_letters", &[])
        .map(|r| r.get::<_, i64>(0) as usize)
        .unwrap_or(0)
}

/// Rows per event id.
pub fn stored(pg: &PostgresServer) -> HashMap<String, i64> {
    pg.client(DB)
        .query("SELECT event_id, count(*) FROM webhook_events GROUP BY event_id", &[])
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default()
}

/// Ids of rows that are not exactly what the load sent for them: the body
/// `event("stripe", id)` (as JSON in `payload`, jsonb normalises spacing;
/// byte for byte in `raw_body`), its provider and its timestamp
/// (2026-11-22T21:35:25.123Z).
fn corrupt_rows(pg: &PostgresServer) -> Vec<String> {
    let rows = pg
        .client(DB)
        .query(
            "SELECT event_id, provider, payload::text, extract(epoch FROM event_timestamp)::float8, raw_body
               FROM webhook_events",
            &[],
        )
        .unwrap();
    rows.iter()
        .filter(|r| {
            let id: String = r.get(0);
            let sent: serde_json::Value = serde_json::from_str(&event("stripe", &id)).unwrap();
            let payload: serde_json::Value = serde_json::from_str(&r.get::<_, String>(2)).unwrap_or_default();
            r.get::<_, String>(1) != "stripe"
                || payload != sent
                || r.get::<_, f64>(3) != 1_795_383_325.123
                || r.get::<_, Vec<u8>>(4) != event("stripe", &id).as_bytes()
        })
        .map(|r| r.get(0))
        .collect()
}

/// Waits until the workers have drained the stream, compares the ledger with
/// PostgreSQL, records the report, and fails on any loss or duplicate.
pub fn settle(scenario: &str, ledger: &Ledger, redis: &dyn QueueRedis, pg: &PostgresServer) -> Report {
    settle_within(scenario, ledger, redis, pg, Duration::from_secs(120))
}

/// [`settle`], with the drain allowed at most `within`.
pub fn settle_within(
    scenario: &str,
    ledger: &Ledger,
    redis: &dyn QueueRedis,
    pg: &PostgresServer,
    within: Duration,
) -> Report {
    let report = measure(scenario, ledger, redis, pg, within);
    assert_eq!(report.lost, 0, "202'd events missing from PostgreSQL: {report:?}");
    report
}

/// Waits for the drain, compares the ledger with PostgreSQL, records the
/// report and fails on everything [`settle`] fails on except losses, which
/// it counts: for the one scenario whose losses are the figure to report
/// (a failover without `WAIT`).
pub fn measure(
    scenario: &str,
    ledger: &Ledger,
    redis: &dyn QueueRedis,
    pg: &PostgresServer,
    within: Duration,
) -> Report {
    wait_until(within, "the workers to drain the stream", || {
        redis.queue_length() == 0 && redis.pending().0 == 0
    });
    let rows = stored(pg);
    let accepted: HashSet<&String> = ledger.accepted.iter().collect();
    let sent: HashSet<&String> = ledger.sent.iter().collect();
    let report = Report {
        scenario: scenario.to_string(),
        sent: ledger.sent.len(),
        accepted: ledger.accepted.len(),
        unavailable: ledger.unavailable,
        other: ledger.other,
        rows: rows.values().sum::<i64>() as usize,
        lost: accepted.iter().filter(|id| !rows.contains_key(id.as_str())).count(),
        corrupt: corrupt_rows(pg).len(),
        unexpected: rows.keys().filter(|id| !sent.contains(id)).count(),
        dead_lettered: redis.dead_letters() + dead_letter_rows(pg),
        max_latency_ms: ledger.max_latency.as_millis(),
    };
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("{scenario}.json")), serde_json::to_vec_pretty(&report).unwrap())
        .unwrap();
    eprintln!("{report:?}");
    assert!(report.accepted > 0, "the load got no 202 at all: {report:?}");
    assert_eq!(report.corrupt, 0, "rows that are not what was sent: {report:?}");
    assert_eq!(report.unexpected, 0, "rows for events never sent: {report:?}");
    assert_eq!(report.dead_lettered, 0, "a fault is not a poison message: {report:?}");
    assert_eq!(ledger.unavailable_without_retry_after, 0, "every 503 carries Retry-After");
    report
}

/// A private Redis and a PostgreSQL with the gateway's database.
pub fn servers() -> (RedisServer, PostgresServer) {
    let pg = PostgresServer::start();
    pg.create_database(DB);
    (RedisServer::start(), pg)
}
