//! Stage 4: the Redis stream → PostgreSQL, exactly once in effect.
//!
//! `WORKER_THREADS` plain threads, each a consumer of group
//! [`crate::queue::GROUP`] named `<host>-<pid>-<n>` (unique per process and
//! thread). With `PARTITIONS` > 1 each thread reads its
//! [`assigned_partitions`] (its lanes), and a step gathers from all of them
//! into one batch. One step ([`Worker::run_once`]) is:
//!
//! 1. **read** ([`read`]), per lane: first what this consumer already holds
//!    after a reconnect, and (at start, on the first thread of each
//!    partition) what consumers of this host whose process is gone left
//!    pending; then entries other consumers left idle longer than
//!    `RECLAIM_IDLE_MS`, when a reclaim is due; else `XREADGROUP … >` new
//!    ones. Reads are sized so a batch holds at most `WORKER_BATCH_MAX`
//!    entries and `WORKER_BATCH_MAX_BYTES` bytes;
//! 2. **store** ([`write`]): drop later copies of a key inside the batch
//!    (a copy with another body waits for its first, then is kept apart as
//!    a conflict), then write the rest in ONE transaction
//!    ([`crate::store::write_batch`]), whatever partitions they came from:
//!    PostgreSQL's dedupe generations decide what is new; Redis keeps no
//!    idempotency state. Lone refusals are judged by [`judge`];
//! 3. **finalize** ([`finalize`]), per lane (one slot each): dead letters (each `XADD` atomic with its
//!    `XACK`), then `XACK` + `XDEL` of the rest (and their attempt counts).
//!
//! While a batch is in hand, [`claims`] keeps its entries' idle time fresh
//! (`XCLAIM … JUSTID`, not a delivery), even during one long `COPY`, so no
//! other worker reclaims and reloads it; it also keeps this process's
//! liveness mark, by which others take over a dead process's entries in
//! seconds.
//!
//! Entries are acknowledged only after the commit, so a crash anywhere
//! causes a redo, never a loss, and the dedupe generations make the redo a
//! no-op. Acked entries are deleted, so Redis memory stays flat.
//!
//! # Failures
//! * Systemic PostgreSQL failures (down, read-only, disk full, broken
//!   schema) retry the batch with capped exponential backoff and jitter,
//!   its claim kept fresh, so an outage is never counted as failed
//!   deliveries and never pushes good events to the dead-letter stream. A
//!   worker started while PostgreSQL is down reads nothing until it is back.
//! * A data error (an entry PostgreSQL rejects) splits the batch until the
//!   bad entry is alone; the others are stored. So does a systemic-looking
//!   error that persists ([`write::SUSPECT_AFTER`] tries) while the same
//!   statements with no rows ([`crate::store::probe`]) pass: the rows are
//!   the cause (`54001` from a deeply nested body is one). The bad entry
//!   stays pending and is retried on reclaim; after `MAX_ATTEMPTS` failed
//!   attempts ([`judge`]) it moves to `webhook_dead_letters` with its last
//!   error and count.
//! * An entry that cannot be decoded goes to the dead-letter stream at once.
//! * Redis failures: a batch in hand is kept (its write goes on; its
//!   acknowledgement is retried) and after a reconnect the worker first
//!   takes back its own pending entries by id, which is not a delivery. So a
//!   Redis blip neither delays an event by `RECLAIM_IDLE_MS` nor counts
//!   against it. Nothing is acknowledged that was not committed.

mod claims;
mod dead_letter;
mod entry;
mod finalize;
mod judge;
mod lanes;
mod pool;
mod read;
mod settings;
mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::job::now_us;
use crate::store::{self, Pool, StoreError};

use crate::backoff::Backoff;
pub use claims::Claims;
pub use dead_letter::{
    dead_letter_stream, fields as dead_letter_fields, move_fallback, replay, Dead, ReplayError, ReplayScope,
    Replayed,
};
use entry::by_lane;
pub use entry::{At, Entry};
pub use lanes::assigned_partitions;
use lanes::Lane;
pub use pool::{hostname, spawn_workers, WorkerPool};
pub use settings::{WorkerError, WorkerSettings};
use settings::{FALLBACK_MOVE_EVERY, MAX_ACK_BACKOFF, MAX_BACKOFF, MIN_BACKOFF};
pub use write::{Stored, SUSPECT_AFTER};

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
    /// Deliveries of a stored id with another body, kept apart.
    pub conflicts: u64,
}

/// One consumer.
pub struct Worker {
    name: String,
    settings: Arc<WorkerSettings>,
    con: Option<crate::queue::Conn>,
    /// The partitions it reads; a step gathers from every one of them.
    lanes: Vec<Lane>,
    /// The lane being read or acknowledged now.
    lane: usize,
    /// Entries and bytes a multi-partition step already holds, so each
    /// partition's read is sized to what is left of the batch.
    held: (usize, usize),
    pool: Pool,
    shutdown: CancellationToken,
    /// Shared by the workers of a process: set once migrations are applied.
    migrated: Arc<AtomicBool>,
    claims: Claims,
    /// When the Redis fallback dead letters are next looked for.
    next_fallback_move: Instant,
}

impl Worker {
    /// A worker named `name` (its consumer name in the group), with its own
    /// claim keeper. [`spawn_workers`] shares one keeper between its threads.
    ///
    /// # Errors
    /// `REDIS_URL` cannot be parsed, or the keeper thread cannot start.
    pub fn new(
        name: String,
        settings: Arc<WorkerSettings>,
        pool: Pool,
        shutdown: CancellationToken,
    ) -> Result<Self, WorkerError> {
        let claims = Claims::start(&settings)?;
        Self::with_claims(name, settings, pool, shutdown, claims)
    }

    fn with_claims(
        name: String,
        settings: Arc<WorkerSettings>,
        pool: Pool,
        shutdown: CancellationToken,
        claims: Claims,
    ) -> Result<Self, WorkerError> {
        let migrated = Arc::new(AtomicBool::new(!settings.migrate));
        let lanes = settings.queue.streams().into_iter().map(Lane::new).collect();
        Ok(Self {
            name,
            settings,
            con: None,
            lanes,
            lane: 0,
            held: (0, 0),
            pool,
            shutdown,
            migrated,
            claims,
            next_fallback_move: Instant::now(),
        })
    }

    /// Reads only these partitions (every one by default).
    ///
    /// # Panics
    /// `partitions` is empty or names a partition the queue does not have.
    pub fn reading(mut self, partitions: &[u16]) -> Self {
        assert!(!partitions.is_empty(), "a worker needs a partition");
        self.lanes = partitions.iter().map(|&p| Lane::new(self.settings.queue.stream(p))).collect();
        self
    }

    /// Also takes over, before anything else, the entries that consumers of
    /// this host whose process is gone left pending (a restart after a crash).
    pub fn adopting_orphans(mut self) -> Self {
        for lane in &mut self.lanes {
            lane.adopt_orphans = true;
        }
        self
    }

    /// Runs steps until shutdown; failures are logged once per change and retried.
    pub fn run(mut self) {
        info!(consumer = %self.name, "worker started");
        if !self.wait_for_database() {
            info!(consumer = %self.name, "worker stopped");
            return;
        }
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
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
                        self.settings.metrics.workers.record_conflicts(report.conflicts);
                    }
                    if last_error.take().is_some() {
                        info!(consumer = %self.name, "worker recovered");
                    }
                    backoff.reset();
                    self.move_fallback_dead_letters();
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
                    self.disconnect();
                    self.sleep(backoff.step_jittered());
                }
            }
        }
        info!(consumer = %self.name, "worker stopped");
    }

    /// Takes nothing from Redis until PostgreSQL answers and is migrated: a
    /// worker started during an outage would otherwise read batches it cannot
    /// write. False if shutdown came first.
    fn wait_for_database(&mut self) -> bool {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        let mut warned = false;
        loop {
            match self.ensure_migrated() {
                Ok(()) => {
                    if warned {
                        info!(consumer = %self.name, "postgres is reachable; reading");
                    }
                    return true;
                }
                Err(e) => {
                    if !warned {
                        warn!(consumer = %self.name, error = %e,
                              "postgres unavailable at start; reading nothing until it is back");
                        warned = true;
                    }
                }
            }
            if self.shutdown.is_cancelled() {
                return false;
            }
            self.sleep(backoff.step_jittered());
        }
    }

    /// One full step: read, store, finalize. The entries read are kept fresh
    /// against reclaim until the step ends.
    ///
    /// # Errors
    /// [`WorkerError`]; whatever was read stays pending and will be redone.
    pub fn run_once(&mut self) -> Result<Report, WorkerError> {
        let entries = self.gather()?;
        if entries.is_empty() {
            return Ok(Report::default());
        }
        let read = entries.len();
        let live_until = self.live_until();
        for (lane, held) in by_lane(entries.iter().map(|e| (e.lane, e.id.clone())), |(lane, _)| *lane) {
            let ids = held.into_iter().map(|(_, id)| id).collect();
            self.claims.hold(&self.name, self.lanes[lane].stream.clone(), ids, live_until);
        }
        let result = self.store(entries).and_then(|stored| {
            let report = Report {
                read,
                inserted: stored.inserted,
                duplicates: stored.duplicates + stored.skipped.len() as u64,
                dead_lettered: stored.dead.len() + stored.dead_in_table.len(),
                left_pending: stored.retry_later.len(),
                conflicts: stored.conflicts,
            };
            self.finalize(stored).map(|()| report)
        });
        self.claims.release(&self.name);
        result
    }

    /// A step's entries. One partition: [`Self::read`]. Several: each in
    /// turn (each read within its own slot), into one batch, so the step
    /// still costs one PostgreSQL transaction; after a short sweep, one
    /// `WORKER_LINGER_MS` pause and one more sweep, as a single partition
    /// lingers. A partition whose master fails rests (with backoff) while
    /// the others go on: one dead master must not stop the rest.
    fn gather(&mut self) -> Result<Vec<Entry>, WorkerError> {
        let lanes = self.lanes.len();
        if lanes == 1 {
            self.lane = 0;
            return self.read();
        }
        let mut batch: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        let mut tried = false;
        let mut failure = None;
        let mut lingered = false;
        loop {
            for _ in 0..lanes {
                if self.read_count(batch.len(), bytes) == 0 {
                    break;
                }
                self.lane = (self.lane + 1) % lanes;
                if self.lanes[self.lane].resting() {
                    continue;
                }
                tried = true;
                self.held = (batch.len(), bytes);
                let read = self.read();
                self.held = (0, 0);
                match read {
                    Ok(entries) => {
                        self.lane_ok();
                        bytes += entries.iter().map(|e| e.bytes).sum::<usize>();
                        batch.extend(entries);
                    }
                    Err(WorkerError::Redis(e)) => {
                        self.lane_failed(&e);
                        failure = Some(WorkerError::Redis(e));
                    }
                    Err(e) => return Err(e),
                }
            }
            let full = self.read_count(batch.len(), bytes) == 0;
            if batch.is_empty() || full || lingered || self.settings.linger.is_zero() {
                break;
            }
            self.sleep(self.settings.linger);
            lingered = true;
        }
        if !tried {
            let wake = self.lanes.iter().map(|l| l.retry_at).min().unwrap_or_else(Instant::now);
            self.sleep(wake.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)));
        }
        match failure {
            Some(e) if batch.is_empty() && self.lanes.iter().all(Lane::resting) => Err(e),
            _ => Ok(batch),
        }
    }

    /// Every [`FALLBACK_MOVE_EVERY`]: dead letters that waited in a Redis
    /// fallback stream while PostgreSQL was unreachable move into the table.
    fn move_fallback_dead_letters(&mut self) {
        if Instant::now() < self.next_fallback_move {
            return;
        }
        self.next_fallback_move = Instant::now() + FALLBACK_MOVE_EVERY;
        for lane in 0..self.lanes.len() {
            let stream = self.lanes[lane].stream.clone();
            let Ok(mut client) = self.pool.get() else { return };
            let moved = match self.con() {
                Ok(con) => move_fallback(con, &mut client, &stream, 1000),
                Err(_) => return,
            };
            match moved {
                Ok((_, 0)) => {}
                Ok((_, n)) => {
                    self.settings.metrics.workers.record_dead_letters_moved(n);
                    info!(consumer = %self.name, stream = %stream, moved = n,
                          "dead letters moved from the redis fallback stream into webhook_dead_letters");
                    self.next_fallback_move = Instant::now();
                }
                // A partition whose master is away waits; the others still move.
                Err(ReplayError::Redis(e)) => {
                    warn!(consumer = %self.name, stream = %stream, error = %e,
                          "cannot move the fallback dead letters yet");
                    self.disconnect();
                }
                Err(e) => {
                    warn!(consumer = %self.name, error = %e, "cannot move the fallback dead letters yet");
                    return;
                }
            }
        }
    }

    /// Until when the keeper may refresh this worker's claim without news.
    fn live_until(&self) -> Instant {
        Instant::now() + self.settings.hang_limit()
    }

    /// Tells the keeper this worker is alive and still working on its batch.
    fn touch(&self) {
        self.claims.touch(&self.name, self.live_until());
    }

    /// Applies migrations once per process, before anything is written: a
    /// gateway started while PostgreSQL was down still migrates when it returns.
    fn ensure_migrated(&mut self) -> Result<(), WorkerError> {
        if self.migrated.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut client = self.pool.get().map_err(StoreError::from)?;
        store::migrate(&mut client)?;
        if let Some(warning) = store::durability(&mut client)
            .ok()
            .and_then(|(fsync, commit)| store::durability_warning(&fsync, &commit))
        {
            warn!(consumer = %self.name, warning = %warning, "202'd events are not safe from a PostgreSQL crash");
        }
        // The partitions the first rows need, before they are written (a
        // process that finds another maintaining leaves it to that one).
        // Best effort: a write makes a missing partition itself, and the
        // maintenance thread tries again; neither waits on this.
        if let Err(e) = store::partitions::maintain(&mut client, &self.settings.retention, now_us()) {
            warn!(consumer = %self.name, error = %e, "partition maintenance at start failed; tried again later");
        }
        let _ = pool::record_partitions(&self.settings.metrics, &mut client);
        self.migrated.store(true, Ordering::Release);
        Ok(())
    }

    fn con(&mut self) -> redis::RedisResult<&mut crate::queue::Conn> {
        if self.con.is_none() {
            // Reads block up to WORKER_BLOCK_MS by design; allow that plus
            // slack. On a cluster the slack is short: a master that stops
            // answering is found by this timeout, and until then the
            // thread's other partitions wait.
            let queue = &self.settings.queue;
            let slack = Duration::from_secs(if queue.is_cluster() { 1 } else { 5 });
            let con = queue.connect(Duration::from_secs(2), self.settings.block + slack)?;
            self.con = Some(con);
            self.rescan_own();
        }
        Ok(self.con.as_mut().expect("just set"))
    }

    /// Whatever this consumer held when a link broke (a read whose reply was
    /// lost, entries left for another attempt) is taken back first, by id:
    /// no new delivery, no waiting for a reclaim.
    fn rescan_own(&mut self) {
        for lane in &mut self.lanes {
            lane.own_cursor = Some("-".into());
        }
    }

    /// After a Redis error: the connection is reopened (a cluster's is
    /// kept: it dropped the failed master's link itself, and the others'
    /// are fine), and what this consumer holds is scanned again first.
    fn disconnect(&mut self) {
        if self.con.as_ref().is_some_and(crate::queue::Conn::is_cluster) {
            self.rescan_own();
        } else {
            self.con = None;
        }
    }

    /// Sleeps, waking early on shutdown.
    fn sleep(&self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until && !self.shutdown.is_cancelled() {
            thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
    }

    /// Whether shutdown has been asked for longer than `SHUTDOWN_TIMEOUT_MS`
    /// (`since` remembers when it was first seen).
    fn past_shutdown_deadline(&self, since: &mut Option<Instant>) -> bool {
        self.shutdown.is_cancelled()
            && since.get_or_insert_with(Instant::now).elapsed() >= self.settings.shutdown_timeout
    }
}
