//! The claim keeper: one thread per process that keeps the entries each
//! worker holds from looking abandoned.
//!
//! Another worker reclaims an entry once it has been idle for
//! `RECLAIM_IDLE_MS`. A worker blocked in a long `COPY`, or retrying through
//! a PostgreSQL outage, cannot say it is alive itself, so every
//! `RECLAIM_IDLE_MS / 3` the keeper sends `XCLAIM <stream> <group> <worker>
//! 0 <ids…> JUSTID` for each batch in hand: the idle time restarts, the
//! delivery count does not move. A worker that stops giving news for longer
//! than its hang limit (see [`super::WorkerSettings`]) is no longer covered,
//! so a hung worker's entries do move on.
//!
//! The keeper also marks the process alive: every [`MARK_EVERY`] it sets
//! [`crate::queue::keys::alive`] of every partition to expire after
//! [`MARK_TTL`], and deletes them when the process stops. A consumer whose process has no mark (killed,
//! or its host gone) has its entries taken over within seconds by the others
//! ([`super::read`]), without waiting `RECLAIM_IDLE_MS`; a live process
//! blocked in a long write keeps its mark, since this thread is not blocked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tracing::debug;

use super::{WorkerError, WorkerSettings};
use crate::queue::GROUP;

/// How often the liveness mark is set.
pub(super) const MARK_EVERY: Duration = Duration::from_secs(1);
/// How long a mark outlives its last refresh.
pub(super) const MARK_TTL: Duration = Duration::from_secs(3);

/// A batch in hand (one per partition the step read).
#[derive(Debug)]
struct Held {
    consumer: String,
    stream: String,
    ids: Vec<String>,
    live_until: Instant,
}

/// A worker's handle on the keeper. Cloning is cheap; the keeper stops when
/// the last handle is dropped.
#[derive(Clone)]
pub struct Claims {
    held: Arc<Mutex<HashMap<(String, String), Held>>>,
    /// Never sent on: its disconnection is the keeper's signal to stop.
    _alive: Sender<()>,
}

impl Claims {
    /// Starts the keeper thread.
    ///
    /// # Errors
    /// The thread cannot start.
    pub fn start(settings: &WorkerSettings) -> Result<Self, WorkerError> {
        let queue = settings.queue.clone();
        let held: Arc<Mutex<HashMap<(String, String), Held>>> = Arc::default();
        let (alive, stop) = crossbeam_channel::bounded(0);
        let period = (settings.reclaim_idle / 3).max(Duration::from_millis(10));
        let shared = held.clone();
        // Every partition: the process's threads read them all between them.
        let marks: Vec<String> = queue
            .streams()
            .iter()
            .map(|s| crate::queue::keys::alive(s, &settings.host, std::process::id()))
            .collect();
        thread::Builder::new()
            .name("claim-keeper".into())
            .spawn(move || keep(&queue, &marks, period, shared, stop))
            .map_err(|e| WorkerError::Redis(redis::RedisError::from(e)))?;
        Ok(Self { held, _alive: alive })
    }

    /// `consumer` now holds `ids` of `stream`, and is alive until `live_until`.
    pub(crate) fn hold(&self, consumer: &str, stream: String, ids: Vec<String>, live_until: Instant) {
        let key = (consumer.to_string(), stream.clone());
        self.lock().insert(key, Held { consumer: consumer.to_string(), stream, ids, live_until });
    }

    /// `consumer` is still working on its batch.
    pub(crate) fn touch(&self, consumer: &str, live_until: Instant) {
        for h in self.lock().values_mut().filter(|h| h.consumer == consumer) {
            h.live_until = live_until;
        }
    }

    /// `consumer` is done with its batch (acknowledged, or left pending).
    pub(crate) fn release(&self, consumer: &str) {
        self.lock().retain(|_, h| h.consumer != consumer);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Held>> {
        // A panic while holding this lock cannot leave the map half-written.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn keep(
    queue: &crate::queue::Queue,
    marks: &[String],
    period: Duration,
    held: Arc<Mutex<HashMap<(String, String), Held>>>,
    stop: Receiver<()>,
) {
    let mut con: Option<crate::queue::Conn> = None;
    let tick = period.min(MARK_EVERY);
    let mut next_claims = Instant::now() + period;
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(tick) {
        let now = Instant::now();
        let mut cmds = Vec::new();
        for mark in marks {
            let mut set = redis::cmd("SET");
            set.arg(mark).arg(1).arg("PX").arg(MARK_TTL.as_millis() as u64);
            cmds.push(set);
        }
        if now >= next_claims {
            next_claims = now + period;
            // One command per batch: batches of different partitions may
            // live on different cluster masters.
            let held = held.lock().unwrap_or_else(|e| e.into_inner());
            for h in held.values().filter(|h| h.live_until > now && !h.ids.is_empty()) {
                let mut cmd = redis::cmd("XCLAIM");
                cmd.arg(&h.stream).arg(GROUP).arg(&h.consumer).arg(0).arg(&h.ids).arg("JUSTID");
                cmds.push(cmd);
            }
        }
        if con.is_none() {
            let timeout = tick.min(Duration::from_secs(2));
            con = queue.connect(timeout, Duration::from_secs(2)).ok();
        }
        let Some(c) = con.as_mut() else { continue };
        let mut failed = false;
        for cmd in cmds {
            // A master that is away cannot have its entries reclaimed
            // meanwhile either; the others' claims and marks still go out.
            if let Err(e) = cmd.exec(c) {
                debug!(error = %e, "claim keeper could not refresh a claim or the liveness mark");
                failed = true;
            }
        }
        // A cluster connection already dropped the failed master's link.
        if failed && !c.is_cluster() {
            con = None;
        }
    }
    // Stopping: the process is going, so others need not wait for the mark
    // to expire to take over what it leaves pending.
    if let Some(c) = con.as_mut() {
        for mark in marks {
            let _ = redis::cmd("DEL").arg(mark).exec(c);
        }
    }
}
