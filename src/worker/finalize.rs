//! Step 3: tell Redis what became of the batch, in one pipelined round trip
//! (three on a cluster) that never lets the optional part block the essential one:
//!
//! 1. dead letters: `MULTI`, their `XADD`s to `<QUEUE_NAME>:dead`, their
//!    `XACK` + `XDEL`, `EXEC`, so an entry is never acknowledged without its
//!    dead letter. Refused as a whole (Redis out of memory refuses `XADD`),
//!    they stay pending and are tried again after a reclaim;
//! 2. `XACK` + `XDEL` of everything committed or skipped. Redis accepts
//!    these even at `maxmemory` under `noeviction`, and they free memory;
//! 3. the idempotency keys, `SET … EX`. Refusals (out of memory) are counted
//!    and logged, never retried: the keys only save database work.
//!
//! A connection failure retries the whole round trip once Redis is back
//! (the batch stays in hand); dead letters are then re-sent only for
//! entries still pending, so a lost reply does not write them twice.

use std::collections::BTreeMap;
use std::time::Instant;

use tracing::warn;

use super::dead_letter::{dead_letter_stream, xadd};
use super::write::Stored;
use super::{jitter, Entry, Worker, WorkerError, MAX_ACK_BACKOFF, MIN_BACKOFF};
use crate::queue::GROUP;

/// Tries of an acknowledgement before a worker with several partitions
/// moves on to the others.
const LANE_ACK_TRIES: u32 = 3;

/// What one partition is told, borrowed from the step's [`Stored`].
#[derive(Default)]
struct LaneOutcome<'a> {
    /// Committed, then skipped: acknowledged and deleted.
    acks: Vec<&'a str>,
    /// The idempotency keys of the committed.
    keys: Vec<&'a str>,
    dead: Vec<&'a (Entry, String)>,
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
        for (at, key) in &stored.committed {
            let lane = lanes.entry(at.lane).or_default();
            lane.acks.push(&at.id);
            lane.keys.push(key);
        }
        for at in &stored.skipped {
            lanes.entry(at.lane).or_default().acks.push(&at.id);
        }
        for dead in &stored.dead {
            lanes.entry(dead.0.lane).or_default().dead.push(dead);
        }
        let mut failure = None;
        for (lane, outcome) in lanes {
            self.lane = lane;
            if let Err(e) = self.finalize_lane(&outcome.acks, outcome.dead, &outcome.keys) {
                failure.get_or_insert(e);
            }
        }
        failure.map_or(Ok(()), Err)
    }

    /// [`Self::finalize`] for the current lane.
    fn finalize_lane(
        &mut self,
        acks: &[&str],
        mut dead: Vec<&(Entry, String)>,
        keys: &[&str],
    ) -> Result<(), WorkerError> {
        if acks.is_empty() && dead.is_empty() {
            return Ok(());
        }
        let mut backoff = MIN_BACKOFF;
        let mut shutdown_seen: Option<Instant> = None;
        let mut first = true;
        let mut tries = 0;
        loop {
            let result = if first { Ok(()) } else { self.keep_still_pending(&mut dead) }
                .and_then(|()| self.acknowledge(acks, &dead, keys));
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
                    self.sleep(jitter(backoff));
                    backoff = (backoff * 2).min(MAX_ACK_BACKOFF);
                }
            }
        }
    }

    /// The round trip itself. On one node it is one pipeline whose parts
    /// fail alone (`ignore_errors`); on a cluster redis-rs fails a whole
    /// pipeline on any error reply, so the three parts go as three, and the
    /// optional one still cannot hold back the others.
    fn acknowledge(
        &mut self,
        acks: &[&str],
        dead: &[&(Entry, String)],
        keys: &[&str],
    ) -> redis::RedisResult<()> {
        let stream = self.stream();
        let ttl = self.settings.idempotency_ttl_secs;
        let (mut dead_part, mut ack_part, mut key_part) = (redis::pipe(), redis::pipe(), redis::pipe());
        if !dead.is_empty() {
            let dead_stream = dead_letter_stream(&stream);
            let ids: Vec<&str> = dead.iter().map(|(e, _)| e.id.as_str()).collect();
            dead_part.cmd("MULTI");
            for (entry, reason) in dead {
                dead_part.add_command(xadd(&dead_stream, entry, reason));
            }
            dead_part.cmd("XACK").arg(&stream).arg(GROUP).arg(&ids);
            dead_part.cmd("XDEL").arg(&stream).arg(&ids);
            dead_part.cmd("EXEC");
        }
        if !acks.is_empty() {
            ack_part.cmd("XACK").arg(&stream).arg(GROUP).arg(acks);
            ack_part.cmd("XDEL").arg(&stream).arg(acks);
        }
        for key in keys {
            key_part.cmd("SET").arg(key).arg(1).arg("EX").arg(ttl);
        }
        let con = self.con()?;
        let (dead_reply, ack_reply, refused) = if con.pipelines_span_partitions() {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for part in [&dead_part, &ack_part, &key_part] {
                for cmd in part.cmd_iter() {
                    pipe.add_command(cmd.clone());
                }
            }
            let replies: Vec<redis::RedisResult<redis::Value>> = pipe.query(con)?;
            let mut replies = replies.into_iter();
            // MULTI, each command's QUEUED, then EXEC's verdict.
            let dead_reply = replies.by_ref().take(dead_part.len()).last().unwrap_or(Ok(redis::Value::Nil));
            let ack_replies: Vec<_> = replies.by_ref().take(ack_part.len()).collect();
            let ack_reply = ack_replies.into_iter().find(Result::is_err).unwrap_or(Ok(redis::Value::Nil));
            let refused = replies.filter(Result::is_err).count();
            (dead_reply.map(drop), ack_reply.map(drop), refused)
        } else {
            let mut send = |part: &redis::Pipeline| -> redis::RedisResult<()> {
                if part.is_empty() {
                    Ok(())
                } else {
                    part.query::<redis::Value>(con).map(drop)
                }
            };
            let dead_reply = send(&dead_part);
            let ack_reply = send(&ack_part);
            let refused = match send(&key_part) {
                Ok(()) => 0,
                Err(_) => key_part.len(),
            };
            (dead_reply, ack_reply, refused)
        };
        if let Err(e) = dead_reply {
            if e.is_io_error() {
                return Err(e);
            }
            warn!(consumer = %self.name, error = %e, entries = dead.len(),
                  "redis refused the dead letters; they stay pending and are tried again");
        }
        // XACK and XDEL are refused only when something is badly wrong (the
        // group deleted, the node gone): retry rather than forget.
        ack_reply?;
        if refused > 0 {
            self.settings.metrics.workers.record_keys_not_set(refused as u64);
            warn!(consumer = %self.name, keys = refused,
                  "redis refused idempotency keys (out of memory?); PostgreSQL's unique constraint still dedupes");
        }
        Ok(())
    }

    /// Before a retry: keeps only the dead letters whose entry is still
    /// pending (the previous try may have gone through, its reply lost).
    fn keep_still_pending(&mut self, dead: &mut Vec<&(Entry, String)>) -> redis::RedisResult<()> {
        if dead.is_empty() {
            return Ok(());
        }
        let stream = self.stream();
        let mut pipe = redis::pipe();
        for (entry, _) in dead.iter() {
            pipe.cmd("XPENDING").arg(&stream).arg(GROUP).arg(&entry.id).arg(&entry.id).arg(1);
        }
        let still: Vec<redis::streams::StreamPendingCountReply> = pipe.query(self.con()?)?;
        let mut still = still.into_iter();
        dead.retain(|_| still.next().is_some_and(|r| !r.ids.is_empty()));
        Ok(())
    }
}
