//! Step 2: dedupe, then write to PostgreSQL, so that no single entry can
//! hold back the others.
//!
//! * Every entry is written: PostgreSQL's dedupe generations decide which
//!   are copies (Redis holds no idempotency state).
//! * An entry of a job format newer than this build (a rolling upgrade) is
//!   left pending for a worker that reads it, never dead-lettered; one
//!   that cannot be decoded otherwise is dead-lettered at once.
//! * Later copies of a key in the same batch (a sender's retry) wait for the
//!   first: they are acknowledged only once it is committed, and stay
//!   pending with it otherwise, so no copy is dropped while the kept one
//!   might still fail.
//! * A data error splits the batch by halves until the entry that causes it
//!   is alone; the rest is stored. So does a lock wait that ran out
//!   (`55P03`) on one key another session holds (the empty probe passes):
//!   that entry waits, never judged, while the others are stored; a lock
//!   on the table (the probe waits too) is an outage and the batch is retried.
//! * A systemic error keeps the batch and retries it with backoff. If it
//!   persists for [`SUSPECT_AFTER`] tries and its code could come from rows
//!   ([`StoreError::may_be_caused_by_rows`]) while [`store::probe`] (the same
//!   statements, no rows) passes, the batch is split as for a data error.
//!   A lone entry that still fails is judged only after a second probe
//!   passes, so an outage that begins mid-split is never blamed on rows.
//! * An entry refused alone is judged by [`super::judge`]: it is blamed
//!   only while other rows are stored (every row refused alike is the
//!   database's refusal: held, unjudged), an attempt is counted against it,
//!   and at `MAX_ATTEMPTS` it is dead-lettered with its error and SQLSTATE:
//!   into `webhook_dead_letters` in the same step, or, if PostgreSQL cannot
//!   take it then, the Redis fallback stream ([`super::dead_letter`]).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tracing::{info, warn};

use super::dead_letter::Dead;
use super::entry::{At, Entry};
use super::{Worker, WorkerError, MAX_BACKOFF, MIN_BACKOFF};
use crate::backoff::Backoff;
use crate::job::{JobDecodeError, WebhookJob};
use crate::store::{self, dead_letters, StoreError};

/// Failed tries of one batch, with a systemic-looking error, before the
/// worker asks whether its rows are the cause (≈ 0.7 s with the backoff).
pub const SUSPECT_AFTER: u32 = 3;

/// A batch after [`Worker::store`]: what to do with each entry in Redis.
#[derive(Debug, Default)]
pub struct Stored {
    /// Committed (new or duplicate rows): acknowledge.
    pub committed: Vec<At>,
    /// A copy of a key committed in this batch: acknowledge.
    pub skipped: Vec<At>,
    /// Dead-lettered in `webhook_dead_letters`: acknowledge.
    pub dead_in_table: Vec<At>,
    /// To dead-letter, not yet in the table: the Redis fallback stream.
    pub dead: Vec<Dead>,
    /// Left pending for a later attempt (a bad entry with attempts left, or
    /// a copy of one).
    pub retry_later: Vec<At>,
    /// Entries that may have an attempt count, deleted when they are
    /// acknowledged: those read again (not on their first delivery), and
    /// those [`super::judge`] counted and dead-lettered in this step.
    pub(super) counted: Vec<At>,
    /// Entries refused alone, for [`super::judge`] (empty after it).
    pub(super) refused: Vec<(Entry, StoreError)>,
    /// New rows inserted.
    pub inserted: u64,
    /// Deliveries of a stored id with another body, kept apart.
    pub conflicts: u64,
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
        // Each key's first entry, by its index in `to_write`.
        let mut firsts: HashMap<String, usize> = HashMap::with_capacity(entries.len());
        // Copies of a key with another body: written after the firsts, so
        // they meet them as conflicts (kept apart), never as duplicates.
        let mut other_bodies: Vec<Entry> = Vec::new();
        let mut unknown = 0u64;
        out.counted = entries.iter().filter(|e| !e.fresh).map(Entry::at).collect();
        for entry in entries {
            match (&entry.job, &entry.key) {
                // Written by a newer gateway (a rolling upgrade): not this
                // worker's to judge. It stays pending for one that reads it.
                (Err(undecodable), _) if matches!(undecodable.error, JobDecodeError::UnknownVersion(_)) => {
                    unknown += 1;
                    out.retry_later.push(entry.at());
                }
                (Err(undecodable), _) => {
                    let reason = format!("undecodable stream entry: {}", undecodable.error);
                    let attempts = entry.deliveries;
                    out.dead.push(Dead { entry, error: reason, sqlstate: None, attempts });
                }
                (Ok(job), Some(key)) => match firsts.get(key) {
                    Some(&i) if same_body(&to_write[i], job) => copies.push((entry.at(), key.clone())),
                    Some(_) => other_bodies.push(Entry { fresh: false, ..entry }),
                    None => {
                        firsts.insert(key.clone(), to_write.len());
                        to_write.push(entry);
                    }
                },
                (Ok(_), None) => to_write.push(entry),
            }
        }

        if unknown > 0 {
            self.settings.metrics.workers.record_unknown_format(unknown);
            warn!(consumer = %self.name, entries = unknown,
                  "entries of a newer job format than this build reads; left pending for a newer worker");
            self.note_held(
                "unknown_format",
                &format!("{unknown} entries of a job format newer than this worker reads, left pending for a newer one"),
            );
        }
        // Every entry goes to PostgreSQL, whose dedupe generations decide:
        // Redis keeps no idempotency state (tuning.md §24: it cost memory
        // that grew with the rate and only ever saved the write of a
        // redelivery, which the gated insert makes a no-op anyway).
        let mut committed_keys: HashSet<String> = HashSet::new();
        self.write_all(to_write, &mut out, &mut committed_keys)?;
        // A copy with another body goes once its first is stored (it is then
        // a conflict, kept apart); while the first is not, it waits with it,
        // as a copy does, and may become the row if the first is dead.
        let (after_first, waiting): (Vec<Entry>, Vec<Entry>) = other_bodies
            .into_iter()
            .partition(|e| e.key.as_ref().is_some_and(|k| committed_keys.contains(k)));
        out.retry_later.extend(waiting.iter().map(Entry::at));
        if !after_first.is_empty() {
            self.write_all(after_first, &mut out, &mut committed_keys)?;
        }
        self.judge_refusals(&mut out);

        // A copy goes with its first: acknowledged if that is stored, pending if not.
        for (id, key) in copies {
            if committed_keys.contains(&key) {
                out.skipped.push(id);
            } else {
                out.retry_later.push(id);
            }
        }
        self.dead_letter_in_table(&mut out);
        Ok(out)
    }

    /// Stores the step's dead letters in `webhook_dead_letters`; those the
    /// table took are acknowledged, the rest go to the Redis fallback.
    fn dead_letter_in_table(&mut self, out: &mut Stored) {
        if out.dead.is_empty() {
            return;
        }
        let letters: Vec<_> = out
            .dead
            .iter()
            .map(|d| super::dead_letter::letter(&self.lanes[d.entry.lane].stream, d))
            .collect();
        let stored = self
            .pool
            .get()
            .map_err(StoreError::from)
            .and_then(|mut c| dead_letters::insert(&mut c, &letters));
        match stored {
            Ok(_) => out.dead_in_table.extend(out.dead.drain(..).map(|d| d.entry.at())),
            Err(e) => {
                warn!(consumer = %self.name, error = %e, entries = out.dead.len(),
                      "postgres cannot take the dead letters; they wait in the redis fallback stream");
            }
        }
    }

    /// Writes every entry, retrying systemic failures (see the module docs).
    fn write_all(
        &mut self,
        entries: Vec<Entry>,
        out: &mut Stored,
        committed_keys: &mut HashSet<String>,
    ) -> Result<(), WorkerError> {
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        let mut shutdown_seen: Option<Instant> = None;
        let mut remaining = entries;
        let mut failures = 0u32;
        let mut suspect = false;
        let mut warned = false;
        while !remaining.is_empty() {
            let halt = match self.write_split(remaining, out, committed_keys, suspect) {
                Ok(()) => break,
                Err(halt) => halt,
            };
            self.settings.metrics.workers.record_postgres_error();
            if halt.probe_failed || matches!(halt.error, StoreError::Pool(_)) {
                self.settings.metrics.store.set_up(false);
            }
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
            self.sleep(backoff.step_jittered());
        }
        self.settings.metrics.store.set_up(true);
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
    fn write_split(
        &mut self,
        items: Vec<Entry>,
        out: &mut Stored,
        committed_keys: &mut HashSet<String>,
        suspect: bool,
    ) -> Result<(), Halt> {
        let mut client = match self.pool.get() {
            Ok(c) => c,
            Err(e) => return Err(Halt { error: StoreError::Pool(e), left: items, probe_failed: false }),
        };
        let mut stack = vec![items];
        while let Some(batch) = stack.pop() {
            self.touch();
            let jobs: Vec<&WebhookJob> = batch.iter().filter_map(|e| e.job.as_ref().ok()).collect();
            let expect_new = batch.iter().all(|e| e.fresh);
            let e = match store::write_batch(&mut client, &jobs, expect_new, &self.settings.retention) {
                Ok(written) => {
                    out.inserted += written.inserted;
                    out.duplicates += written.duplicates;
                    out.conflicts += written.conflicts;
                    for e in batch {
                        out.committed.push(e.at());
                        committed_keys.extend(e.key);
                    }
                    continue;
                }
                Err(e) => e,
            };
            let halt = |e, batch: Vec<Entry>, stack: Vec<Vec<Entry>>, probe_failed| {
                let mut left = batch;
                left.extend(stack.into_iter().flatten());
                Err(Halt { error: e, left, probe_failed })
            };
            // A lock wait ran out: on the table (the probe, which takes the
            // table's locks, waits too: an outage, the batch is retried) or
            // on one key another session holds (an abandoned transaction,
            // a hand-run one): that key's entry is split out and waits,
            // unjudged, while the others are stored.
            let key_locked = e.is_lock_wait();
            if key_locked && store::probe(&mut client).is_err() {
                return halt(e, batch, stack, true);
            }
            let rows_may_cause = key_locked || !e.is_systemic() || (suspect && e.may_be_caused_by_rows());
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
            let entry = batch.into_iter().next().expect("one entry");
            if key_locked {
                warn!(consumer = %self.name, id = %entry.id, error = %e,
                      "another session holds this entry's key; it waits (not an attempt against it)");
                out.retry_later.push(entry.at());
                continue;
            }
            if e.is_systemic() && store::probe(&mut client).is_err() {
                return halt(e, vec![entry], stack, true);
            }
            out.refused.push((entry, e));
        }
        Ok(())
    }
}

/// Whether `job` carries the same body as the entry `first` (a copy, not a conflict).
fn same_body(first: &Entry, job: &WebhookJob) -> bool {
    first.job.as_ref().is_ok_and(|f| f.body_as_received() == job.body_as_received())
}
