//! Step 2: dedupe, then write to PostgreSQL, so that no single entry can
//! hold back the others.
//!
//! * Later copies of a key in the same batch (a sender's retry) wait for the
//!   first: they are acknowledged only once it is committed, and stay
//!   pending with it otherwise, so no copy is dropped while the kept one
//!   might still fail.
//! * A data error splits the batch by halves until the entry that causes it
//!   is alone; the rest is stored.
//! * A systemic error keeps the batch and retries it with backoff. If it
//!   persists for [`SUSPECT_AFTER`] tries and its code could come from rows
//!   ([`StoreError::may_be_caused_by_rows`]) while [`store::probe`] (the same
//!   statements, no rows) passes, the batch is split as for a data error.
//!   A lone entry that still fails is judged only after a second probe
//!   passes, so an outage that begins mid-split is never blamed on rows.
//! * An entry judged bad stays pending (another attempt after a reclaim)
//!   until it has been delivered `MAX_ATTEMPTS` times; then it is dead-lettered
//!   with its error.

use std::collections::HashSet;
use std::time::Instant;

use tracing::{error, info, warn};

use super::entry::{by_lane, At, Entry};
use super::{jitter, Worker, WorkerError, MAX_BACKOFF, MIN_BACKOFF};
use crate::job::WebhookJob;
use crate::store::{self, StoreError};

/// Failed tries of one batch, with a systemic-looking error, before the
/// worker asks whether its rows are the cause (≈ 0.7 s with the backoff).
pub const SUSPECT_AFTER: u32 = 3;

/// A batch after [`Worker::store`]: what to do with each entry in Redis.
#[derive(Debug, Default)]
pub struct Stored {
    /// Committed (new or duplicate rows): `(entry, key)`; ack, then set the key.
    pub committed: Vec<(At, String)>,
    /// Stored already (key present), or a copy of a key committed in this
    /// batch: ack only.
    pub skipped: Vec<At>,
    /// To the dead-letter stream, with the reason.
    pub dead: Vec<(Entry, String)>,
    /// Left pending for a later attempt (a bad entry with attempts left, or
    /// a copy of one).
    pub retry_later: Vec<At>,
    /// New rows inserted.
    pub inserted: u64,
    /// Rows that already existed.
    pub duplicates: u64,
}

/// Why [`Worker::write_split`] stopped with entries left.
struct Halt {
    error: StoreError,
    left: Vec<Entry>,
    /// A probe failed: the database itself is failing, whatever the code said.
    probe_failed: bool,
}

impl Worker {
    /// Step 2: see the module docs. Systemic failures are retried here (the
    /// claim kept fresh) until they pass or the shutdown deadline passes.
    ///
    /// # Errors
    /// Shutdown cut retries short, or migrations could not be applied.
    pub fn store(&mut self, entries: Vec<Entry>) -> Result<Stored, WorkerError> {
        self.ensure_migrated()?;
        let mut out = Stored::default();
        // Later copies of a key, resolved once the first copy's fate is known.
        let mut copies: Vec<(At, String)> = Vec::new();
        let mut to_write: Vec<Entry> = Vec::with_capacity(entries.len());
        let mut firsts: HashSet<String> = HashSet::with_capacity(entries.len());
        for entry in entries {
            match (&entry.job, &entry.key) {
                (Err(undecodable), _) => {
                    let reason = format!("undecodable stream entry: {}", undecodable.error);
                    out.dead.push((entry, reason));
                }
                (Ok(_), Some(key)) if !firsts.insert(key.clone()) => copies.push((entry.at(), key.clone())),
                (Ok(_), _) => to_write.push(entry),
            }
        }

        // Only redeliveries are looked up: a fresh entry's key can exist only
        // if a sender posted the event twice, which PostgreSQL's unique
        // constraint absorbs, so checking every entry would cost a command
        // per event to save work on a few (tuning.md §23).
        let mut known: HashSet<String> = HashSet::new();
        let (mut fresh, again): (Vec<Entry>, Vec<Entry>) = to_write.into_iter().partition(|e| e.fresh);
        fresh.extend(self.drop_known(again, &mut out, &mut known));
        self.write_all(fresh, &mut out)?;

        // A copy goes with its first: acknowledged if that is stored, pending if not.
        let done: HashSet<&str> =
            out.committed.iter().map(|(_, k)| k.as_str()).chain(known.iter().map(String::as_str)).collect();
        for (id, key) in copies {
            if done.contains(key.as_str()) {
                out.skipped.push(id);
            } else {
                out.retry_later.push(id);
            }
        }
        Ok(out)
    }

    /// One round trip: entries whose key says they are stored already are
    /// acknowledged without a write. The keys only save work, so when Redis
    /// does not answer, every entry is written (the unique constraint decides).
    fn drop_known(
        &mut self,
        entries: Vec<Entry>,
        out: &mut Stored,
        known: &mut HashSet<String>,
    ) -> Vec<Entry> {
        // One pipeline per partition: on a cluster each goes to its slot's master.
        let mut groups = by_lane(entries, |e| e.lane).into_iter();
        let Some((_, first)) = groups.next() else { return Vec::new() };
        let mut fresh = self.drop_known_in_lane(first, out, known);
        for (_, group) in groups {
            fresh.extend(self.drop_known_in_lane(group, out, known));
        }
        fresh
    }

    fn drop_known_in_lane(
        &mut self,
        entries: Vec<Entry>,
        out: &mut Stored,
        known: &mut HashSet<String>,
    ) -> Vec<Entry> {
        if entries.is_empty() {
            return entries;
        }
        let mut pipe = redis::pipe();
        for e in &entries {
            pipe.cmd("EXISTS").arg(&e.key);
        }
        let found: Vec<bool> = match self.con().and_then(|con| pipe.query(con)) {
            Ok(found) => found,
            Err(e) => {
                warn!(consumer = %self.name, error = %e, "redis did not answer the idempotency check; writing the batch anyway");
                self.disconnect();
                return entries;
            }
        };
        let mut fresh = Vec::with_capacity(entries.len());
        for (e, found) in entries.into_iter().zip(found) {
            match (found, &e.key) {
                (true, Some(key)) => {
                    known.insert(key.clone());
                    out.skipped.push(e.at());
                }
                _ => fresh.push(e),
            }
        }
        fresh
    }

    /// Writes every entry, retrying systemic failures (see the module docs).
    fn write_all(&mut self, entries: Vec<Entry>, out: &mut Stored) -> Result<(), WorkerError> {
        let mut backoff = MIN_BACKOFF;
        let mut shutdown_seen: Option<Instant> = None;
        let mut remaining = entries;
        let mut failures = 0u32;
        let mut suspect = false;
        let mut warned = false;
        while !remaining.is_empty() {
            let halt = match self.write_split(remaining, out, suspect) {
                Ok(()) => break,
                Err(halt) => halt,
            };
            self.settings.metrics.workers.record_postgres_error();
            remaining = halt.left;
            failures += 1;
            if halt.probe_failed {
                suspect = false;
                failures = 0;
            } else if !suspect
                && failures >= SUSPECT_AFTER
                && halt.error.may_be_caused_by_rows()
                && self.probe()
            {
                warn!(consumer = %self.name, error = %halt.error, entries = remaining.len(),
                      "a batch keeps failing while postgres takes an empty write: isolating the entries that cause it");
                suspect = true;
                continue;
            }
            if !warned {
                warn!(consumer = %self.name, error = %halt.error, pending = remaining.len(),
                      "postgres unavailable; batch kept pending and retried");
                warned = true;
            }
            if self.past_shutdown_deadline(&mut shutdown_seen) {
                return Err(WorkerError::Store(halt.error));
            }
            self.touch();
            self.sleep(jitter(backoff));
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if warned {
            info!(consumer = %self.name, "postgres is back; batch written");
        }
        Ok(())
    }

    /// Whether the database takes the batch's statements with no rows.
    fn probe(&mut self) -> bool {
        self.touch();
        self.pool.get().map_err(StoreError::from).and_then(|mut c| store::probe(&mut c)).is_ok()
    }

    /// Writes `items`, splitting on errors the rows may cause (every data
    /// error; with `suspect`, systemic-looking ones too). Stops at an error
    /// that is the database's, with the entries not yet written.
    fn write_split(&mut self, items: Vec<Entry>, out: &mut Stored, suspect: bool) -> Result<(), Halt> {
        let mut client = match self.pool.get() {
            Ok(c) => c,
            Err(e) => return Err(Halt { error: StoreError::Pool(e), left: items, probe_failed: false }),
        };
        let mut stack = vec![items];
        while let Some(batch) = stack.pop() {
            self.touch();
            let jobs: Vec<&WebhookJob> = batch.iter().filter_map(|e| e.job.as_ref().ok()).collect();
            let expect_new = batch.iter().all(|e| e.fresh);
            let e = match store::write_batch(&mut client, &jobs, expect_new) {
                Ok(written) => {
                    out.inserted += written.inserted;
                    out.duplicates += written.duplicates;
                    out.committed.extend(batch.into_iter().filter_map(|e| {
                        let at = e.at();
                        e.key.map(|k| (at, k))
                    }));
                    continue;
                }
                Err(e) => e,
            };
            let rows_may_cause = !e.is_systemic() || (suspect && e.may_be_caused_by_rows());
            let halt = |e, batch: Vec<Entry>, stack: Vec<Vec<Entry>>, probe_failed| {
                let mut left = batch;
                left.extend(stack.into_iter().flatten());
                Err(Halt { error: e, left, probe_failed })
            };
            if !rows_may_cause {
                return halt(e, batch, stack, false);
            }
            if batch.len() > 1 {
                // One entry spoils the batch: find it by halving.
                let mut left = batch;
                let right = left.split_off(left.len() / 2);
                stack.push(right);
                stack.push(left);
                continue;
            }
            if e.is_systemic() && store::probe(&mut client).is_err() {
                return halt(e, batch, stack, true);
            }
            let entry = batch.into_iter().next().expect("one entry");
            self.judge(entry, e.to_string(), out);
        }
        Ok(())
    }

    /// An entry PostgreSQL refused on its own: another attempt later, or,
    /// on its last, the dead-letter stream.
    fn judge(&self, entry: Entry, reason: String, out: &mut Stored) {
        if entry.deliveries >= self.settings.max_attempts {
            error!(consumer = %self.name, id = %entry.id, deliveries = entry.deliveries, error = %reason,
                   "entry rejected by postgres on its last attempt; dead-lettered");
            out.dead.push((entry, reason));
        } else {
            warn!(consumer = %self.name, id = %entry.id, deliveries = entry.deliveries, error = %reason,
                  "entry rejected by postgres; left pending for another attempt");
            out.retry_later.push(entry.at());
        }
    }
}
