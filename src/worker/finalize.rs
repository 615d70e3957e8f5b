//! Step 3: tell Redis what became of the batch, in one pipelined round trip
//! that never lets the fallback part block the essential one:
//!
//! 1. dead letters PostgreSQL could not take (it went down, or the entry
//!    was dead-lettered without it): `MULTI`, their `XADD`s to
//!    `<QUEUE_NAME>:dead`, their `XACK` + `XDEL`, `EXEC`, so an entry is
//!    never acknowledged without its dead letter. Refused as a whole (Redis
//!    out of memory refuses `XADD`), they stay pending and are tried again
//!    after a reclaim;
//! 2. `XACK` + `XDEL` of everything committed, skipped or dead-lettered in
//!    PostgreSQL, and `HDEL` of their attempt counts (only for entries that
//!    may have one: read again, or counted in this step). Redis accepts these even at
//!    `maxmemory` under `noeviction`, and they free memory.
//!
//! A connection failure retries the whole round trip once Redis is back
//! (the batch stays in hand); dead letters are then re-sent only for
//! entries still pending, so a lost reply does not write them twice.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use tracing::warn;

use super::dead_letter::{dead_letter_stream, xadd, Dead};
use super::entry::At;
use super::write::Stored;
use super::{Worker, WorkerError, MAX_ACK_BACKOFF, MIN_BACKOFF};
use crate::backoff::Backoff;
use crate::queue::{keys, GROUP};

/// Tries of an acknowledgement before a worker with several partitions
/// moves on to the others.
const LANE_ACK_TRIES: u32 = 3;

/// What one partition is told, borrowed from the step's [`Stored`].
#[derive(Default)]
struct LaneOutcome<'a> {
    /// Committed, skipped, dead-lettered in PostgreSQL: acknowledged and deleted.
    acks: Vec<&'a str>,
    /// To the Redis dead-letter stream.
    dead: Vec<&'a Dead>,
    /// Acknowledged entries that may have an attempt count to delete
    /// ([`Stored::counted`]).
    forget: Vec<&'a str>,
}

impl Worker {
    /// Step 3: see the module docs. Retried until it passes or shutdown's
    /// deadline passes.
    ///
    /// # Errors
    /// Redis stayed down past the shutdown deadline; the entries stay pending.
    pub fn finalize(&mut self, stored: Stored) -> Result<(), WorkerError> {
        // Each partition on its own: its commands share its slot.
        let mut lanes: BTreeMap<usize, LaneOutcome<'_>> = BTreeMap::new();
        for at in stored.committed.iter().chain(&stored.skipped).chain(&stored.dead_in_table) {
            lanes.entry(at.lane).or_default().acks.push(&at.id);
        }
        for dead in &stored.dead {
            lanes.entry(dead.entry.lane).or_default().dead.push(dead);
        }
        if !stored.counted.is_empty() {
            let acked: HashSet<&At> =
                stored.committed.iter().chain(&stored.skipped).chain(&stored.dead_in_table).collect();
            for at in stored.counted.iter().filter(|at| acked.contains(at)) {
                lanes.entry(at.lane).or_default().forget.push(&at.id);
            }
        }
        let mut failure = None;
        for (lane, outcome) in lanes {
            self.lane = lane;
            if let Err(e) = self.finalize_lane(&outcome.acks, outcome.dead, &outcome.forget) {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// [`Self::finalize`] for the current lane.
    fn finalize_lane(
        &mut self,
        acks: &[&str],
        mut dead: Vec<&Dead>,
        forget: &[&str],
    ) -> Result<(), WorkerError> {
        if acks.is_empty() && dead.is_empty() {
            return Ok(());
        }
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_ACK_BACKOFF);
        let mut shutdown_seen: Option<Instant> = None;
        let mut first = true;
        let mut tries = 0;
        loop {
            let result = if first { Ok(()) } else { self.keep_still_pending(&mut dead) }
                .and_then(|()| self.keep_within_fallback_cap(&mut dead))
                .and_then(|()| self.acknowledge(acks, &dead, forget));
            first = false;
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.disconnect();
                    self.settings.metrics.workers.record_redis_error();
                    tries += 1;
                    // With several partitions, one whose master is gone must
                    // not hold up the others: the batch, committed, stays
                    // pending, and is taken back by id (a no-op redo) once
                    // its master answers again.
                    let give_up = self.lanes.len() > 1 && tries >= LANE_ACK_TRIES;
                    if give_up || self.past_shutdown_deadline(&mut shutdown_seen) {
                        return Err(e.into());
                    }
                    warn!(consumer = %self.name, error = %e, "cannot acknowledge a committed batch yet; retrying");
                    self.touch();
                    self.sleep(backoff.step_jittered());
                }
            }
        }
    }

    /// The round trip itself: one pipeline whose two parts fail alone
    /// (`ignore_errors`), so the fallback part cannot hold back the other.
    /// Every key shares the partition's slot, so on a cluster too it goes
    /// whole to one master ([`crate::queue`]'s cluster connection sends a
    /// plain pipeline as it is).
    fn acknowledge(&mut self, acks: &[&str], dead: &[&Dead], forget: &[&str]) -> redis::RedisResult<()> {
        let stream = self.stream();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        if !dead.is_empty() {
            let dead_stream = dead_letter_stream(&stream);
            let ids: Vec<&str> = dead.iter().map(|d| d.entry.id.as_str()).collect();
            pipe.cmd("MULTI");
            for d in dead {
                pipe.add_command(xadd(&dead_stream, d));
            }
            pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(&ids);
            pipe.cmd("XDEL").arg(&stream).arg(&ids);
            pipe.cmd("HDEL").arg(keys::attempts(&stream)).arg(&ids);
            pipe.cmd("EXEC");
        }
        let dead_len = pipe.len();
        if !acks.is_empty() {
            pipe.cmd("XACK").arg(&stream).arg(GROUP).arg(acks);
            pipe.cmd("XDEL").arg(&stream).arg(acks);
        }
        if !forget.is_empty() {
            pipe.cmd("HDEL").arg(keys::attempts(&stream)).arg(forget);
        }
        let replies: Vec<redis::RedisResult<redis::Value>> = pipe.query(self.con()?)?;
        let mut replies = replies.into_iter();
        // MULTI, each command's QUEUED, then EXEC's verdict.
        let dead_reply = replies.by_ref().take(dead_len).last().unwrap_or(Ok(redis::Value::Nil)).map(drop);
        let ack_reply = replies.find(Result::is_err).unwrap_or(Ok(redis::Value::Nil)).map(drop);
        if let Err(e) = dead_reply {
            if e.is_io_error() {
                return Err(e);
            }
            warn!(consumer = %self.name, error = %e, entries = dead.len(),
                  "redis refused the dead letters; they stay pending and are tried again");
        }
        // XACK and XDEL are refused only when something is badly wrong (the
        // group deleted, the node gone): retry rather than forget.
        ack_reply
    }

    /// The Redis fallback stream holds at most `DEAD_LETTER_REDIS_MAX_BYTES`:
    /// dead letters that would pass it stay pending in their own stream
    /// (tried again after a reclaim, by then perhaps into PostgreSQL).
    fn keep_within_fallback_cap(&mut self, dead: &mut Vec<&Dead>) -> redis::RedisResult<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let dead_stream = dead_letter_stream(&self.stream());
        let used: Option<u64> = redis::cmd("MEMORY").arg("USAGE").arg(&dead_stream).query(self.con()?)?;
        let cap = self.settings.dead_letter_redis_max_bytes;
        let mut total = used.unwrap_or(0);
        let before = dead.len();
        dead.retain(|d| {
            total += d.entry.bytes as u64;
            total <= cap
        });
        if dead.len() < before {
            warn!(consumer = %self.name, stream = %dead_stream, cap, kept_pending = before - dead.len(),
                  "the redis dead-letter fallback is full; entries stay pending until postgres is back");
        }
        self.settings.metrics.workers.record_dead_letter_fallbacks(dead.len() as u64);
        Ok(())
    }

    /// Before a retry: keeps only the dead letters whose entry is still
    /// pending (the previous try may have gone through, its reply lost).
    fn keep_still_pending(&mut self, dead: &mut Vec<&Dead>) -> redis::RedisResult<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let stream = self.stream();
        let mut pipe = redis::pipe();
        for d in dead.iter() {
            pipe.cmd("XPENDING").arg(&stream).arg(GROUP).arg(&d.entry.id).arg(&d.entry.id).arg(1);
        }
        let still: Vec<redis::streams::StreamPendingCountReply> = pipe.query(self.con()?)?;
        let mut still = still.into_iter();
        dead.retain(|_| still.next().is_some_and(|r| !r.ids.is_empty()));
        Ok(())
    }
}
