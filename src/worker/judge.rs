//! Step 2's verdict: whose fault a refused row is.
//!
//! [`super::write`] splits a failing batch until each refused entry is
//! alone. Those lone refusals are judged here, together, once the batch is
//! written:
//!
//! * **Other rows were stored in the step, or a made-up ordinary row
//!   passes** ([`crate::store::canary`], written and rolled back): the
//!   database takes rows, so the entry is the cause. One attempt is counted
//!   against it in Redis ([`crate::queue::keys::attempts`], a hash beside
//!   its stream): deliveries are not attempts (an orphan takeover, a reclaim
//!   after a missed claim refresh, a lock wait add deliveries without a
//!   failure of the entry). At `MAX_ATTEMPTS` it is dead-lettered.
//! * **Nothing was stored and the made-up row is refused too** (a `CHECK`
//!   added, a trigger that raises, an encoding mismatch): the database
//!   refuses every row, not this one. The entries are held, pending and
//!   unjudged, and stored once the cause is gone; it is logged, counted
//!   (`webhook_entries_held_total`) and written to the queue's `held` hash
//!   for `/health` and `stats`.

use tracing::{error, warn};

use super::dead_letter::Dead;
use super::entry::Entry;
use super::write::Stored;
use super::Worker;
use crate::queue::keys;
use crate::store::{self, StoreError};

/// How long an attempt count outlives its last failure: far longer than
/// any entry stays pending, so it only bounds what a deleted entry leaves.
const ATTEMPTS_TTL_SECS: u64 = 7 * 24 * 3600;
/// How long a `held` condition stays visible after it was last seen.
const HELD_TTL_SECS: u64 = 300;

/// The SQLSTATE a refusal is known by (`""` without one).
fn code(e: &StoreError) -> &str {
    e.sqlstate().unwrap_or("")
}

impl Worker {
    /// Judges the step's lone refusals (see the module docs).
    pub(super) fn judge_refusals(&mut self, out: &mut Stored) {
        let refused = std::mem::take(&mut out.refused);
        if refused.is_empty() {
            return;
        }
        if !out.committed.is_empty() {
            self.count_attempts(refused, out);
            return;
        }
        self.touch();
        let canary = self
            .pool
            .get()
            .map_err(StoreError::from)
            .and_then(|mut c| store::canary(&mut c, &self.settings.retention));
        match canary {
            Ok(()) => self.count_attempts(refused, out),
            Err(e) => self.hold(refused, &e, out),
        }
    }

    /// Leaves entries the database refuses with every other row pending,
    /// unjudged, and says so.
    fn hold(&mut self, held: Vec<(Entry, StoreError)>, canary: &StoreError, out: &mut Stored) {
        let e = &held[0].1;
        let sqlstate = code(e).to_string();
        if code(canary) != sqlstate {
            // Refused for one reason, the made-up row for another (the
            // database going down now?): nobody is judged either way.
            warn!(consumer = %self.name, error = %e, canary = %canary,
                  "entries refused and a test row too, differently; they stay pending, unjudged");
            out.retry_later.extend(held.into_iter().map(|(entry, _)| entry.at()));
            return;
        }
        warn!(consumer = %self.name, sqlstate = %sqlstate, error = %e, entries = held.len(),
              "postgres refuses every row with the same error (a schema change, a trigger?); \
               the entries stay pending, unjudged, and are stored once it is fixed");
        self.settings.metrics.workers.record_held(held.len() as u64);
        let description = format!(
            "postgres refuses every row: SQLSTATE {sqlstate}: {e} ({} entries held at {})",
            held.len(),
            unix_now()
        );
        self.note_held(&format!("refused:{sqlstate}"), &description);
        out.retry_later.extend(held.into_iter().map(|(entry, _)| entry.at()));
    }

    /// Writes a condition to the queue's `held` hash (best effort: it only
    /// informs `/health` and `stats`).
    pub(super) fn note_held(&mut self, condition: &str, description: &str) {
        let key = keys::held(self.settings.queue.name());
        let Ok(con) = self.con() else { return };
        let result: redis::RedisResult<()> = redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg(condition)
            .arg(description)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(HELD_TTL_SECS)
            .ignore()
            .query(con);
        if result.is_err() {
            self.disconnect();
        }
    }

    /// One failed attempt against each entry; those at `MAX_ATTEMPTS` are
    /// dead-lettered, the rest wait for another. If Redis cannot count,
    /// nobody is judged: they all wait.
    fn count_attempts(&mut self, blamed: Vec<(Entry, StoreError)>, out: &mut Stored) {
        let mut pipe = redis::pipe();
        let mut lanes: Vec<usize> = Vec::new();
        for (entry, _) in &blamed {
            pipe.cmd("HINCRBY").arg(keys::attempts(&self.lanes[entry.lane].stream)).arg(&entry.id).arg(1);
            if !lanes.contains(&entry.lane) {
                lanes.push(entry.lane);
            }
        }
        for lane in lanes {
            pipe.cmd("EXPIRE").arg(keys::attempts(&self.lanes[lane].stream)).arg(ATTEMPTS_TTL_SECS).ignore();
        }
        let counts: Result<Vec<u64>, _> = self.con().and_then(|con| pipe.query(con));
        let counts = match counts {
            Ok(c) => c,
            Err(e) => {
                self.disconnect();
                warn!(consumer = %self.name, error = %e, entries = blamed.len(),
                      "cannot count the attempts of refused entries; they wait unjudged");
                out.retry_later.extend(blamed.into_iter().map(|(entry, _)| entry.at()));
                return;
            }
        };
        for ((entry, e), attempts) in blamed.into_iter().zip(counts) {
            let reason = e.to_string();
            if attempts >= self.settings.max_attempts {
                error!(consumer = %self.name, id = %entry.id, attempts, error = %reason,
                       "entry refused by postgres on its last attempt while other rows were stored; dead-lettered");
                let sqlstate = e.sqlstate().map(str::to_string);
                // Counted now, perhaps on its first delivery: its count goes with it.
                out.counted.push(entry.at());
                out.dead.push(Dead { entry, error: reason, sqlstate, attempts });
            } else {
                warn!(consumer = %self.name, id = %entry.id, attempts, error = %reason,
                      "entry refused by postgres; left pending for another attempt");
                out.retry_later.push(entry.at());
            }
        }
    }
}

fn unix_now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}
