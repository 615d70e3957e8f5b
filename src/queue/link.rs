//! One Redis master and the thread that talks to it: batches the jobs of
//! its partitions into one plain pipeline of `XADD`s, answers each job, and
//! reconnects on its own.
//!
//! On one node this is the pipeline thread itself, fed by the cores'
//! channel. On a cluster each master has its own link thread, which the
//! cores feed by partition through the routes ([`super::router`]): a master
//! that stops answering (crashed, partitioned, frozen by `SIGSTOP`, whose
//! kernel still accepts connections) blocks only its own thread, so it
//! costs only its own partitions, which get 503 at once while its link is
//! down.
//!
//! # Contract
//! A job's answer is its stream id only once this master acknowledged its
//! `XADD` (and the `WAIT` after it, with `REDIS_WAIT_REPLICAS`); a job
//! redirected by `MOVED` or `ASK` goes back to the router thread
//! unanswered, which sends it on, once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use redis::{ConnectionAddr, ConnectionInfo};
use tracing::{error, info, warn};

use super::admission::{Depth, Memory, MemoryBoard};
use super::batch::{Batch, Master, Round};
use super::group::prepare_stream;
use super::settings::PipelineSettings;
use super::{EnqueueError, Pending, Unavailable, RECONNECT};
use crate::backoff::Backoff;

/// What every link of one pipeline shares.
pub(super) struct Shared {
    pub(super) settings: PipelineSettings,
    /// `streams[p]`: partition `p`'s stream key, spelled once rather than
    /// per `XADD`.
    pub(super) streams: Vec<String>,
    pub(super) memory: MemoryBoard,
    /// Where redirected jobs and signs of a changed slot map go: the
    /// cluster's router. `None` on one node.
    pub(super) feedback: Option<Sender<Feedback>>,
}

impl Shared {
    /// For the links of `settings`' queue; `feedback`: the router's, on a cluster.
    pub(super) fn new(settings: PipelineSettings, feedback: Option<Sender<Feedback>>) -> Arc<Self> {
        let streams = settings.queue.streams();
        Arc::new(Self { streams, settings, memory: MemoryBoard::default(), feedback })
    }
}

/// What a link tells the cluster's router.
pub(super) enum Feedback {
    /// A job to send to the master at this address (`MOVED` or `ASK`; the
    /// job's [`Hop`] says which).
    Redirect(Box<(Pending, ConnectionAddr)>),
    /// The slot map may have changed: the link failed, or Redis answered
    /// `CLUSTERDOWN`, `TRYAGAIN` or a redirect while streams were prepared.
    Stale,
}

/// What a link and the router know of each other: whether the master
/// answers, and which partitions it holds.
pub(super) struct MasterState {
    up: AtomicBool,
    reason: Mutex<String>,
    partitions: Mutex<Vec<u16>>,
}

impl MasterState {
    /// A master not tried yet: taken to be up, so that the first jobs go to
    /// its link, which connects.
    pub(super) fn new(partitions: Vec<u16>) -> Self {
        Self {
            up: AtomicBool::new(true),
            reason: Mutex::new(String::new()),
            partitions: Mutex::new(partitions),
        }
    }

    /// Whether its link is up (or not tried yet).
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Why its link is down.
    pub(super) fn reason(&self) -> String {
        self.reason.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The partitions the slot map gives it.
    pub(super) fn set_partitions(&self, partitions: Vec<u16>) {
        *self.partitions.lock().unwrap_or_else(PoisonError::into_inner) = partitions;
    }

    fn partitions(&self) -> Vec<u16> {
        self.partitions.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set(&self, up: bool, reason: &str) {
        if !up {
            *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = reason.to_string();
        }
        self.up.store(up, Ordering::Relaxed);
    }
}

/// Connection state, kept so each change is logged once.
enum Conn {
    Up(redis::Connection),
    /// Down since the last failure; no attempt before `retry_at`.
    Down {
        retry_at: Instant,
        backoff: Backoff,
        reason: String,
    },
}

/// One master's link.
pub(super) struct Link {
    shared: Arc<Shared>,
    state: Arc<MasterState>,
    info: ConnectionInfo,
    name: String,
    conn: Conn,
    memory: Memory,
    depth: Depth,
    batch: Batch,
    /// The pipeline of the batch in flight.
    round: Round,
}

impl Link {
    pub(super) fn new(
        shared: Arc<Shared>,
        state: Arc<MasterState>,
        info: ConnectionInfo,
        depth: Depth,
    ) -> Self {
        let conn =
            Conn::Down { retry_at: Instant::now(), backoff: RECONNECT, reason: "not yet connected".into() };
        let batch = Batch::with_capacity(shared.settings.batch_max);
        let name = info.addr().to_string();
        let round = Round::default();
        Self { shared, state, info, name, conn, memory: Memory::default(), depth, batch, round }
    }

    /// Serves `rx` until it is closed and empty. While the master is down
    /// it also wakes up to reconnect, so that jobs are sent its way again
    /// as soon as it is back, not only once one arrives to find out.
    pub(super) fn run(mut self, rx: Receiver<Pending>) {
        // Connect eagerly so start-up logs say whether Redis is there.
        self.ensure_conn();
        loop {
            let first = match &self.conn {
                Conn::Down { retry_at, .. } => match rx.recv_deadline(*retry_at) {
                    Ok(p) => p,
                    Err(RecvTimeoutError::Timeout) => {
                        self.ensure_conn();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                Conn::Up(_) => match rx.recv() {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            self.batch.jobs.push(first);
            self.fill_batch(&rx);
            self.flush();
        }
        // Retired (its master left the slot map) or stopping: its last
        // memory reading must not stay the gauge's.
        self.shared.memory.forget(&self.name);
    }

    /// Takes what else is queued after the first job: up to `BATCH_MAX`,
    /// waiting at most `BATCH_LINGER_US` for more.
    fn fill_batch(&mut self, rx: &Receiver<Pending>) {
        let settings = &self.shared.settings;
        let deadline = Instant::now() + settings.batch_linger;
        while self.batch.jobs.len() < settings.batch_max {
            let next = if settings.batch_linger.is_zero() {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_deadline(deadline)
            };
            match next {
                Ok(p) => self.batch.jobs.push(p),
                Err(_) => break,
            }
        }
    }

    /// Sends the batch as one pipeline and answers every job in it.
    fn flush(&mut self) {
        if !self.batch.open(&self.shared.settings.queue) {
            return;
        }
        self.ensure_conn();
        match &self.conn {
            Conn::Down { reason, .. } => {
                let e = EnqueueError::Unavailable(Unavailable::Down {
                    master: self.name.clone(),
                    reason: reason.clone(),
                });
                self.batch.refuse_the_rest(&e);
                self.tell(Feedback::Stale);
            }
            Conn::Up(_) => self.round(),
        }
        let s = &self.shared.settings;
        self.batch.close(&mut self.depth, &s.metrics.pipeline);
        match &self.shared.feedback {
            Some(router) => {
                for (p, addr) in self.batch.redirected.drain(..) {
                    if let Err(e) = router.send(Feedback::Redirect(Box::new((p, addr)))) {
                        if let Feedback::Redirect(lost) = e.into_inner() {
                            lost.0.reply.send(Err(EnqueueError::Closed));
                        }
                    }
                }
            }
            // One node never redirects; if it did, nobody could follow.
            None => self.batch.refuse_redirected(),
        }
    }

    /// Writes the batch's pipeline, reads its replies and answers its jobs.
    fn round(&mut self) {
        let master =
            Master { settings: &self.shared.settings, streams: &self.shared.streams, name: &self.name };
        let state = &self.state;
        self.batch.plan(&mut self.round, &master, &mut self.depth, &self.memory, || state.partitions());
        let Conn::Up(con) = &mut self.conn else { unreachable!("checked by flush") };
        let count = self.round.slots.len();
        let mut replies = Vec::with_capacity(count);
        let mut broken = None;
        if count > 0 {
            if let Err(e) = con.send_packed_command(self.round.commands.bytes()) {
                broken = Some(e.to_string());
            }
        }
        while broken.is_none() && replies.len() < count {
            match con.recv_response() {
                Ok(v) => replies.push(v),
                Err(e) if e.is_timeout() => {
                    let t = self.shared.settings.enqueue_timeout;
                    broken = Some(format!("no reply within ENQUEUE_TIMEOUT_MS ({} ms)", t.as_millis()));
                }
                Err(e) => broken = Some(e.to_string()),
            }
        }
        let heard = self.batch.answer(
            &self.round.slots,
            replies,
            broken.as_deref(),
            &master,
            &mut self.depth,
            &mut self.memory,
        );
        if heard.stale {
            self.tell(Feedback::Stale);
        }
        if heard.memory {
            let s = &self.shared.settings;
            self.shared.memory.post(&self.name, self.memory.reading(), &s.metrics.pipeline);
        }
        if let Some(why) = broken {
            self.fail(&why);
        }
    }

    /// The master failed: the connection is dropped and the slot map re-read.
    fn fail(&mut self, error: &str) {
        self.shared.settings.metrics.pipeline.record_redis_error();
        error!(error = %error, master = %self.name, "redis connection lost; reconnecting with backoff");
        let mut backoff = RECONNECT;
        self.conn = Conn::Down { retry_at: Instant::now() + backoff.step(), backoff, reason: error.into() };
        self.state.set(false, error);
        self.tell(Feedback::Stale);
    }

    fn tell(&self, what: Feedback) {
        if let Some(router) = &self.shared.feedback {
            let _ = router.send(what);
        }
    }

    /// Reconnects if the link is down and the backoff allows.
    fn ensure_conn(&mut self) {
        let Conn::Down { retry_at, backoff, reason } = &self.conn else { return };
        if Instant::now() < *retry_at {
            return;
        }
        let (mut backoff, old) = (*backoff, reason.clone());
        match self.connect() {
            Ok(con) => {
                info!(redis = %self.name, "redis connected");
                self.conn = Conn::Up(con);
                self.state.set(true, "");
            }
            Err(e) => {
                let reason = e.to_string();
                if old != reason {
                    warn!(error = %reason, redis = %self.name,
                          "redis unreachable; its requests get 503 until it is back");
                }
                self.state.set(false, &reason);
                self.conn = Conn::Down { retry_at: Instant::now() + backoff.step(), backoff, reason };
            }
        }
    }

    fn connect(&mut self) -> redis::RedisResult<redis::Connection> {
        let timeout = self.shared.settings.enqueue_timeout;
        let client = redis::Client::open(self.info.clone())?;
        let mut con = client.get_connection_with_timeout(timeout.min(Duration::from_secs(1)))?;
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        for p in self.state.partitions() {
            match prepare_stream(&mut con, &self.shared.streams[p as usize]) {
                // The slot map was already stale: it is read again, and the
                // stream is prepared by whoever holds it now.
                Err(e) if e.code() == Some("MOVED") || e.code() == Some("ASK") => self.tell(Feedback::Stale),
                other => other?,
            }
        }
        check_durability(&mut con);
        Ok(con)
    }
}

/// Warns when Redis is set up so that an acknowledged job could be lost
/// (every link on every connect; the per-core enqueue once at start).
pub(super) fn check_durability(con: &mut redis::Connection) {
    let get = |con: &mut redis::Connection, key: &str| -> Option<String> {
        let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(key).query(con).ok()?;
        pair.get(1).cloned()
    };
    match (get(con, "appendonly"), get(con, "maxmemory-policy")) {
        (Some(aof), Some(policy)) => {
            if get(con, "maxmemory").as_deref() == Some("0") {
                warn!(
                    "redis has no maxmemory: the gateway cannot refuse new jobs (503) before the host runs \
                       out of memory; set maxmemory and keep MAX_REDIS_MEMORY_PERCENT below 100"
                );
            }
            if aof != "yes" {
                warn!(appendonly = %aof, "redis has no AOF: accepted jobs are lost if Redis restarts");
            }
            if policy != "noeviction" {
                warn!(maxmemory_policy = %policy,
                      "redis may evict keys under memory pressure: set maxmemory-policy noeviction");
            }
        }
        _ => warn!(
            "could not read redis CONFIG (disabled?): check appendonly=yes and maxmemory-policy=noeviction"
        ),
    }
}
