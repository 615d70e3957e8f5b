//! Stage 4: the Redis stream → PostgreSQL, exactly once in effect.
//!
//! `WORKER_THREADS` plain threads, each a consumer of group
//! [`crate::queue::GROUP`] named `<host>-<pid>-<n>` (unique per process and
//! thread). One step ([`Worker::run_once`]) is:
//!
//! 1. **read**: reclaim entries other consumers left idle longer than
//!    `RECLAIM_IDLE_MS` (a worker died), else `XREADGROUP … COUNT
//!    WORKER_BATCH_MAX BLOCK` new ones;
//! 2. **store**: drop entries whose idempotency key exists (one pipelined
//!    `EXISTS` round trip) and duplicates inside the batch, then write the rest
//!    in ONE transaction ([`crate::store::write_batch`]);
//! 3. **finalize**: one atomic Redis pipeline: `SET` each idempotency key
//!    with `EX IDEMPOTENCY_TTL_SECS`, `XADD` dead letters, `XACK`, `XDEL`.
//!
//! Keys are set only after the commit, so a crash anywhere causes a redo,
//! never a loss, and the unique `(provider, event_id)` makes the redo a
//! no-op. Acked entries are deleted, so Redis memory stays flat.
//!
//! # Failures
//! * Systemic PostgreSQL failures (down, read-only, disk full, broken
//!   schema) retry the batch with capped exponential backoff and jitter. The
//!   worker keeps refreshing its claim (`XCLAIM … JUSTID`, which does not
//!   count as a delivery) so an outage is never mistaken for a dead worker and
//!   never pushes good events to the dead-letter stream.
//! * A data error (an entry PostgreSQL rejects) splits the batch until the
//!   bad entry is alone; the others are stored. The bad entry stays pending
//!   and is retried on reclaim; once delivered `MAX_ATTEMPTS` times it moves to
//!   the dead-letter stream `<QUEUE_NAME>:dead` with its last error and count.
//! * An entry that cannot be decoded goes to the dead-letter stream at once.
//! * Redis failures back off and retry; nothing is acknowledged that was not
//!   committed.

mod dead_letter;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;
use redis::streams::{StreamId, StreamReadOptions, StreamReadReply};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::job::WebhookJob;
use crate::queue::GROUP;
use crate::store::{self, Pool, StoreError};

pub use dead_letter::{dead_letter_stream, fields as dead_letter_fields, replay, ReplayScope};

/// Longest wait between retries of a failing batch.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// What the workers need from the configuration.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `QUEUE_NAME`.
    pub stream: String,
    /// `WORKER_BATCH_MAX`: most entries read and written per transaction.
    pub batch_max: usize,
    /// `WORKER_BLOCK_MS`: how long `XREADGROUP` waits for new entries.
    pub block: Duration,
    /// `WORKER_LINGER_MS`: after a read that returned less than a full
    /// batch, wait this long and read again, so low traffic does not cost a
    /// transaction per handful of events. Delays storage, never the 202.
    pub linger: Duration,
    /// `IDEMPOTENCY_TTL_SECS`.
    pub idempotency_ttl_secs: u64,
    /// `MAX_ATTEMPTS`: deliveries before an entry is dead-lettered.
    pub max_attempts: u64,
    /// `RECLAIM_IDLE_MS`: pending this long without a heartbeat = abandoned.
    pub reclaim_idle: Duration,
    /// `SHUTDOWN_TIMEOUT_MS`: how long a batch in hand may keep retrying after shutdown.
    pub shutdown_timeout: Duration,
    /// `MIGRATE_ON_START`: apply migrations before the first write.
    pub migrate: bool,
    /// Where the workers count batches, rows and errors.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
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

/// One stream entry in hand.
#[derive(Debug)]
pub struct Entry {
    /// Stream id.
    pub id: String,
    /// The decoded job, or why it could not be decoded.
    pub job: Result<WebhookJob, String>,
    /// How many times the group has delivered it (1 on first read).
    pub deliveries: u64,
    /// The raw fields, kept for the dead-letter stream.
    fields: HashMap<String, redis::Value>,
    /// The idempotency key, computed once (none when the job did not decode).
    key: Option<String>,
}

impl Entry {
    fn new(e: StreamId, deliveries: u64, stream: &str) -> Self {
        let job = WebhookJob::from_stream_fields(&e.map).map_err(|err| err.to_string());
        let key = job.as_ref().ok().map(|j| idempotency_key(stream, &j.provider, &j.event_id));
        Self { id: e.id, job, deliveries, fields: e.map, key }
    }
}

/// The Redis key recording that `(provider, event_id)` is stored.
/// Providers never contain `:`, so the key is unambiguous.
pub fn idempotency_key(stream: &str, provider: &str, event_id: &str) -> String {
    format!("{stream}:seen:{provider}:{event_id}")
}

/// A batch after [`Worker::store`]: what to do with each entry in Redis.
#[derive(Debug, Default)]
pub struct Stored {
    /// Committed (new or duplicate rows): set the key, ack.
    pub committed: Vec<(String, String)>,
    /// Known already (key present) or repeated in the batch: ack only.
    pub skipped: Vec<String>,
    /// To the dead-letter stream, with the reason and delivery count.
    pub dead: Vec<(Entry, String)>,
    /// Left pending for a later attempt (data error, attempts remain).
    pub retry_later: Vec<String>,
    /// New rows inserted.
    pub inserted: u64,
    /// Rows that already existed.
    pub duplicates: u64,
}

/// What one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Entries taken from Redis.
    pub read: usize,
    /// New rows.
    pub inserted: u64,
    /// Entries whose row already existed or whose key was set.
    pub duplicates: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: usize,
    /// Entries left pending for another attempt.
    pub left_pending: usize,
}

/// One consumer.
pub struct Worker {
    name: String,
    settings: Arc<WorkerSettings>,
    redis: redis::Client,
    con: Option<redis::Connection>,
    pool: Pool,
    shutdown: CancellationToken,
    next_reclaim: Instant,
    /// Shared by the workers of a process: set once migrations are applied.
    migrated: Arc<AtomicBool>,
}

impl Worker {
    /// A worker named `name` (its consumer name in the group).
    ///
    /// # Errors
    /// `REDIS_URL` cannot be parsed.
    pub fn new(
        name: String,
        settings: Arc<WorkerSettings>,
        pool: Pool,
        shutdown: CancellationToken,
    ) -> Result<Self, WorkerError> {
        let redis = redis::Client::open(settings.redis_url.as_str())?;
        let migrated = Arc::new(AtomicBool::new(!settings.migrate));
        Ok(Self { name, settings, redis, con: None, pool, shutdown, next_reclaim: Instant::now(), migrated })
    }

    /// Runs steps until shutdown; failures are logged once per change and retried.
    pub fn run(mut self) {
        info!(consumer = %self.name, "worker started");
        // Migrate now if PostgreSQL is up; otherwise the first batch retries it.
        let _ = self.ensure_migrated();
        let mut backoff = MIN_BACKOFF;
        let mut last_error: Option<String> = None;
        while !self.shutdown.is_cancelled() {
            match self.run_once() {
                Ok(report) => {
                    if report.read > 0 {
                        self.settings.metrics.workers.record_batch(
                            report.read,
                            report.inserted,
                            report.duplicates,
                            report.dead_lettered,
                        );
                    }
                    if last_error.take().is_some() {
                        info!(consumer = %self.name, "worker recovered");
                    }
                    backoff = MIN_BACKOFF;
                }
                Err(WorkerError::ShuttingDown) => break,
                Err(e) => {
                    match &e {
                        WorkerError::Redis(_) => self.settings.metrics.workers.record_redis_error(),
                        WorkerError::Store(_) => self.settings.metrics.workers.record_postgres_error(),
                        WorkerError::ShuttingDown => {}
                    }
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(&msg) {
                        warn!(consumer = %self.name, error = %msg, "worker step failed; retrying with backoff");
                        last_error = Some(msg);
                    }
                    self.con = None;
                    self.sleep(jitter(backoff));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        info!(consumer = %self.name, "worker stopped");
    }

    /// One full step: read, store, finalize.
    ///
    /// # Errors
    /// [`WorkerError`]; whatever was read stays pending and will be redone.
    pub fn run_once(&mut self) -> Result<Report, WorkerError> {
        let entries = self.read()?;
        if entries.is_empty() {
            return Ok(Report::default());
        }
        let read = entries.len();
        let stored = self.store(entries)?;
        let report = Report {
            read,
            inserted: stored.inserted,
            duplicates: stored.duplicates + stored.skipped.len() as u64,
            dead_lettered: stored.dead.len(),
            left_pending: stored.retry_later.len(),
        };
        self.finalize(stored)?;
        Ok(report)
    }

    /// Applies migrations once per process, before anything is written: a
    /// gateway started while PostgreSQL was down still migrates when it returns.
    fn ensure_migrated(&mut self) -> Result<(), WorkerError> {
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut client = self.pool.get().map_err(StoreError::from)?;
        store::migrate(&mut client)?;
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    /// Step 1: entries abandoned by others (when a reclaim is due), else new ones.
    ///
    /// # Errors
    /// Redis failed.
    pub fn read(&mut self) -> Result<Vec<Entry>, WorkerError> {
        if Instant::now() >= self.next_reclaim {
            self.next_reclaim = Instant::now() + self.settings.reclaim_idle / 2;
            let reclaimed = self.reclaim()?;
            if !reclaimed.is_empty() {
                return Ok(reclaimed);
            }
        }
        let settings = self.settings.clone();
        let opts = StreamReadOptions::default()
            .group(GROUP, &self.name)
            .count(settings.batch_max)
            .block(settings.block.as_millis() as usize);
        let mut entries = self.read_new(&opts)?;
        if !entries.is_empty() && entries.len() < settings.batch_max && !settings.linger.is_zero() {
            self.sleep(settings.linger);
            let more = StreamReadOptions::default()
                .group(GROUP, &self.name)
                .count(settings.batch_max - entries.len());
            entries.extend(self.read_new(&more)?);
        }
        Ok(entries)
    }

    /// One `XREADGROUP … >` with `opts`.
    fn read_new(&mut self, opts: &StreamReadOptions) -> Result<Vec<Entry>, WorkerError> {
        let settings = self.settings.clone();
        let con = self.con()?;
        let reply: Result<Option<StreamReadReply>, _> =
            redis::Commands::xread_options(con, &[&settings.stream], &[">"], opts);
        let reply = match reply {
            Ok(r) => r,
            // The stream or group vanished (FLUSHALL, a Redis restarted empty):
            // recreate them and read again next step.
            Err(e) if e.code() == Some("NOGROUP") => {
                crate::queue::prepare_stream(con, &settings.stream)?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        Ok(reply
            .map(|r| {
                r.keys.into_iter().flat_map(|k| k.ids).map(|e| Entry::new(e, 1, &settings.stream)).collect()
            })
            .unwrap_or_default())
    }

    /// Claims entries pending longer than `RECLAIM_IDLE_MS` (their consumer
    /// died or stalled). Claiming counts as a delivery.
    fn reclaim(&mut self) -> Result<Vec<Entry>, WorkerError> {
        let settings = self.settings.clone();
        let idle_ms = settings.reclaim_idle.as_millis() as u64;
        let name = self.name.clone();
        let con = self.con()?;
        // XPENDING … IDLE gives the delivery counts XAUTOCLAIM does not.
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&settings.stream)
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle_ms)
            .arg("-")
            .arg("+")
            .arg(settings.batch_max)
            .query(con)
            .or_else(|e| if e.code() == Some("NOGROUP") { Ok(Vec::new()) } else { Err(e) })?;
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let deliveries: HashMap<&str, u64> =
            pending.iter().map(|(id, _, _, n)| (id.as_str(), *n + 1)).collect();
        let mut claim = redis::cmd("XCLAIM");
        claim.arg(&settings.stream).arg(GROUP).arg(&name).arg(idle_ms);
        for (id, ..) in &pending {
            claim.arg(id);
        }
        let claimed: redis::streams::StreamClaimReply = claim.query(con)?;
        let entries: Vec<Entry> = claimed
            .ids
            .into_iter()
            .map(|e| {
                let n = deliveries.get(e.id.as_str()).copied().unwrap_or(1);
                Entry::new(e, n, &settings.stream)
            })
            .collect();
        if !entries.is_empty() {
            info!(consumer = %name, reclaimed = entries.len(), "took over entries left pending by another consumer");
        }
        Ok(entries)
    }

    /// Step 2: dedupe and write to PostgreSQL. Systemic failures are retried
    /// here (with backoff, keeping the claim fresh) until they pass or the
    /// shutdown deadline passes.
    ///
    /// # Errors
    /// Redis failed during the idempotency check, or shutdown cut retries short.
    pub fn store(&mut self, entries: Vec<Entry>) -> Result<Stored, WorkerError> {
        self.ensure_migrated()?;
        let mut out = Stored::default();
        let mut to_write: Vec<Entry> = Vec::with_capacity(entries.len());
        // The first copy of each key stands for the others (a sender retry in
        // the same batch); decided on borrowed keys, so nothing is cloned.
        let first_copy: Vec<bool> = {
            let mut seen: HashSet<&str> = HashSet::with_capacity(entries.len());
            entries.iter().map(|e| e.key.as_deref().is_none_or(|k| seen.insert(k))).collect()
        };
        for (entry, first) in entries.into_iter().zip(first_copy) {
            match &entry.job {
                Err(reason) => {
                    let reason = format!("undecodable stream entry: {reason}");
                    out.dead.push((entry, reason));
                }
                Ok(_) if !first => out.skipped.push(entry.id),
                Ok(_) => to_write.push(entry),
            }
        }

        // One round trip: which events are already known?
        if !to_write.is_empty() {
            let mut pipe = redis::pipe();
            for e in &to_write {
                pipe.cmd("EXISTS").arg(&e.key);
            }
            let known: Vec<bool> = pipe.query(self.con()?)?;
            let mut fresh = Vec::with_capacity(to_write.len());
            for (e, known) in to_write.into_iter().zip(known) {
                if known {
                    out.skipped.push(e.id);
                } else {
                    fresh.push(e);
                }
            }
            to_write = fresh;
        }

        let deadline_after_shutdown = self.settings.shutdown_timeout;
        let mut backoff = MIN_BACKOFF;
        let mut shutdown_at: Option<Instant> = None;
        let mut remaining: Vec<Entry> = to_write;
        let mut warned = false;
        while !remaining.is_empty() {
            match self.write_split(remaining, &mut out) {
                Ok(()) => break,
                Err((e, left)) => {
                    self.settings.metrics.workers.record_postgres_error();
                    remaining = left;
                    if !warned {
                        warn!(consumer = %self.name, error = %e, pending = remaining.len(),
                              "postgres unavailable; batch kept pending and retried");
                        warned = true;
                    }
                    if self.shutdown.is_cancelled() {
                        let at = *shutdown_at.get_or_insert_with(Instant::now);
                        if at.elapsed() >= deadline_after_shutdown {
                            return Err(WorkerError::Store(e));
                        }
                    }
                    self.heartbeat(&remaining);
                    self.sleep(jitter(backoff));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        if warned {
            info!(consumer = %self.name, "postgres is back; batch written");
        }
        Ok(out)
    }

    /// Writes `items`, splitting on data errors. On a systemic error returns
    /// it with the entries not yet written.
    fn write_split(&mut self, items: Vec<Entry>, out: &mut Stored) -> Result<(), (StoreError, Vec<Entry>)> {
        let mut client = match self.pool.get() {
            Ok(c) => c,
            Err(e) => return Err((StoreError::Pool(e), items)),
        };
        let mut stack = vec![items];
        while let Some(batch) = stack.pop() {
            let jobs: Vec<&WebhookJob> = batch.iter().filter_map(|e| e.job.as_ref().ok()).collect();
            match store::write_batch(&mut client, &jobs) {
                Ok(written) => {
                    out.inserted += written.inserted;
                    out.duplicates += written.duplicates;
                    out.committed.extend(batch.into_iter().filter_map(|e| e.key.map(|k| (e.id, k))));
                }
                Err(e) if e.is_systemic() => {
                    let mut left: Vec<Entry> = batch;
                    left.extend(stack.into_iter().flatten());
                    return Err((e, left));
                }
                Err(e) if batch.len() == 1 => {
                    let entry = batch.into_iter().next().expect("one entry");
                    let reason = e.to_string();
                    if entry.deliveries >= self.settings.max_attempts {
                        error!(consumer = %self.name, id = %entry.id, deliveries = entry.deliveries, error = %reason,
                               "entry rejected by postgres on its last attempt; dead-lettered");
                        out.dead.push((entry, reason));
                    } else {
                        warn!(consumer = %self.name, id = %entry.id, deliveries = entry.deliveries, error = %reason,
                              "entry rejected by postgres; left pending for another attempt");
                        out.retry_later.push(entry.id);
                    }
                }
                Err(_) => {
                    // One entry spoils the batch: find it by halving.
                    let mut left = batch;
                    let right = left.split_off(left.len() / 2);
                    stack.push(right);
                    stack.push(left);
                }
            }
        }
        Ok(())
    }

    /// Step 3: one atomic Redis pipeline: keys (after the commit), dead
    /// letters, acks, deletes. Retried until it passes or shutdown's deadline.
    ///
    /// # Errors
    /// Redis stayed down past the shutdown deadline; the entries stay pending.
    pub fn finalize(&mut self, stored: Stored) -> Result<(), WorkerError> {
        let settings = self.settings.clone();
        let dead_stream = dead_letter_stream(&settings.stream);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut ids: Vec<&str> = Vec::new();
        for (id, key) in &stored.committed {
            pipe.cmd("SET").arg(key).arg(1).arg("EX").arg(settings.idempotency_ttl_secs).ignore();
            ids.push(id);
        }
        for (entry, reason) in &stored.dead {
            dead_letter::push(&mut pipe, &dead_stream, entry, reason);
            ids.push(&entry.id);
        }
        ids.extend(stored.skipped.iter().map(String::as_str));
        if ids.is_empty() {
            return Ok(());
        }
        pipe.cmd("XACK").arg(&settings.stream).arg(GROUP).arg(&ids).ignore();
        pipe.cmd("XDEL").arg(&settings.stream).arg(&ids).ignore();
        let mut backoff = MIN_BACKOFF;
        let mut shutdown_at: Option<Instant> = None;
        loop {
            let result: redis::RedisResult<()> = self.con().and_then(|con| pipe.query(con));
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.con = None;
                    if self.shutdown.is_cancelled()
                        && shutdown_at.get_or_insert_with(Instant::now).elapsed() >= settings.shutdown_timeout
                    {
                        return Err(e.into());
                    }
                    warn!(consumer = %self.name, error = %e, "cannot acknowledge a committed batch yet; retrying");
                    self.sleep(jitter(backoff));
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Resets the idle time of entries we are still working on, without
    /// counting a delivery, so no other consumer reclaims them meanwhile.
    fn heartbeat(&mut self, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        let settings = self.settings.clone();
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&settings.stream).arg(GROUP).arg(&self.name).arg(0);
        for e in entries {
            cmd.arg(&e.id);
        }
        cmd.arg("JUSTID");
        if let Ok(con) = self.con() {
            let _: redis::RedisResult<Vec<String>> = cmd.query(con);
        }
    }

    fn con(&mut self) -> redis::RedisResult<&mut redis::Connection> {
        if self.con.is_none() {
            let timeout = Duration::from_secs(2);
            let con = self.redis.get_connection_with_timeout(timeout)?;
            // Reads block up to WORKER_BLOCK_MS by design; allow that plus slack.
            con.set_read_timeout(Some(self.settings.block + Duration::from_secs(5)))?;
            con.set_write_timeout(Some(timeout))?;
            self.con = Some(con);
        }
        Ok(self.con.as_mut().expect("just set"))
    }

    /// Sleeps, waking early on shutdown.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.shutdown.is_cancelled() {
            thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
    }
}

/// ±25 % jitter, so workers retrying after one outage do not move in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.75..1.25))
}

/// Handles to the running worker threads.
pub struct WorkerPool {
    threads: Vec<thread::JoinHandle<()>>,
}

impl WorkerPool {
    /// Waits for every worker to finish its batch in hand and stop.
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                error!("a worker thread panicked");
            }
        }
    }
}

/// Starts `count` worker threads.
///
/// # Errors
/// A thread could not be spawned, or `REDIS_URL` is invalid.
pub fn spawn_workers(
    count: usize,
    settings: WorkerSettings,
    pool: Pool,
    shutdown: CancellationToken,
) -> Result<WorkerPool, WorkerError> {
    let settings = Arc::new(settings);
    let migrated = Arc::new(AtomicBool::new(!settings.migrate));
    let host = hostname();
    let pid = std::process::id();
    let mut threads = Vec::with_capacity(count);
    for n in 0..count {
        let mut worker =
            Worker::new(format!("{host}-{pid}-{n}"), settings.clone(), pool.clone(), shutdown.clone())?;
        worker.migrated = migrated.clone();
        let t = thread::Builder::new()
            .name(format!("worker-{n}"))
            .spawn(move || worker.run())
            .map_err(|e| WorkerError::Redis(redis::RedisError::from(e)))?;
        threads.push(t);
    }
    Ok(WorkerPool { threads })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}
