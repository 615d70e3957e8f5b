//! Step 1: what a worker takes from Redis, in this order of precedence:
//!
//! 1. its **own** pending entries after a (re)connect, listed with
//!    `XPENDING … <me>` and fetched by id with `XRANGE`, which (unlike
//!    `XREADGROUP … 0`) is not a new delivery: a Redis blip costs neither an
//!    attempt nor a `RECLAIM_IDLE_MS` wait;
//! 2. entries of **orphans**, claimed at once (a crash is a delivery):
//!    consumers of this host whose process no longer exists (at start, on
//!    the first thread of each partition), and, every [`ADOPT_EVERY`],
//!    consumers of any host whose process has no liveness mark
//!    ([`super::claims`]) and which have been silent for [`silent_for`]: a
//!    worker killed on another machine costs seconds, not `RECLAIM_IDLE_MS`.
//!    Orphans with nothing pending are removed from the group;
//! 3. entries **abandoned** by any consumer for `RECLAIM_IDLE_MS`, when a
//!    reclaim is due (`XPENDING … IDLE`, then `XCLAIM`: a delivery);
//! 4. **new** entries, `XREADGROUP … >`, blocking `WORKER_BLOCK_MS` for the
//!    first, then reading on while full reads come back, with one
//!    `WORKER_LINGER_MS` pause after a short one.
//!
//! Every read is sized by [`Worker::read_count`]: at most `WORKER_BATCH_MAX`
//! entries, and never more than `WORKER_BATCH_MAX_BYTES` even if each entry
//! carried a `MAX_BODY_BYTES` body.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::streams::{
    StreamClaimReply, StreamId, StreamPendingCountReply, StreamReadOptions, StreamReadReply,
};
use tracing::info;

use super::claims::MARK_TTL;
use super::entry::{Entry, ENTRY_OVERHEAD};
use super::{Worker, WorkerError};
use crate::queue::{keys, Conn, GROUP};

/// How often a worker looks for consumers whose process is gone.
pub(super) const ADOPT_EVERY: Duration = Duration::from_secs(2);

/// How long a consumer without a liveness mark must have been silent
/// before it counts as gone: past the mark's expiry, and past a blocking
/// read, so a process just started (or one from before liveness marks,
/// which reads all the time) is never taken for dead.
fn silent_for(block: Duration) -> Duration {
    (MARK_TTL * 2).max(block * 2 + Duration::from_secs(1))
}

impl Worker {
    /// Step 1: see the module docs.
    ///
    /// # Errors
    /// Redis failed; the connection is dropped, so the next read reconnects
    /// and starts with this consumer's own pending entries.
    pub fn read(&mut self) -> Result<Vec<Entry>, WorkerError> {
        let mut read = self.read_in_order();
        match &mut read {
            Ok(entries) => {
                for e in entries {
                    e.lane = self.lane;
                }
            }
            Err(_) => self.disconnect(),
        }
        read
    }

    fn read_in_order(&mut self) -> Result<Vec<Entry>, WorkerError> {
        self.con()?;
        while self.current().own_cursor.is_some() {
            let own = self.own_pending()?;
            if !own.is_empty() {
                return Ok(own);
            }
        }
        if self.current().adopt_orphans || Instant::now() >= self.current().next_adopt {
            let adopted = self.adopt()?;
            if !adopted.is_empty() {
                return Ok(adopted);
            }
            self.current().adopt_orphans = false;
            self.current().next_adopt = Instant::now() + ADOPT_EVERY;
        }
        if std::time::Instant::now() >= self.current().next_reclaim {
            let (reclaimed, more) = self.reclaim()?;
            // A full page may have more behind it: reclaim again next step.
            self.current().next_reclaim = std::time::Instant::now()
                + if more { Duration::ZERO } else { self.settings.reclaim_idle / 2 };
            if !reclaimed.is_empty() {
                return Ok(reclaimed);
            }
        }
        self.read_new()
    }

    /// How many entries the next read may ask for, holding `held` entries of
    /// `bytes` bytes: 0 when the batch is full.
    pub(super) fn read_count(&self, held: usize, bytes: usize) -> usize {
        let (held, bytes) = (held + self.held.0, bytes + self.held.1);
        let s = &self.settings;
        let by_bytes = s.batch_max_bytes.saturating_sub(bytes) / (s.max_body_bytes + ENTRY_OVERHEAD);
        let n = s.batch_max.saturating_sub(held).min(by_bytes);
        if held == 0 {
            n.max(1)
        } else {
            n
        }
    }

    /// New entries (see the module docs, 4).
    fn read_new(&mut self) -> Result<Vec<Entry>, WorkerError> {
        let block = self.lane_block();
        // With several partitions the step lingers once over all of them.
        let linger = if self.lanes.len() == 1 { self.settings.linger } else { Duration::ZERO };
        let step_holds = self.held.0 > 0;
        let mut entries: Vec<Entry> = Vec::new();
        let mut bytes = 0;
        let mut lingered = false;
        loop {
            let count = self.read_count(entries.len(), bytes);
            if count == 0 {
                break;
            }
            let mut opts = StreamReadOptions::default().group(GROUP, &self.name).count(count);
            if entries.is_empty() && !lingered && !step_holds {
                opts = opts.block(block.as_millis() as usize);
            }
            let got = self.xreadgroup(&opts)?;
            let full = got.len() == count;
            bytes += got.iter().map(|e| e.bytes).sum::<usize>();
            entries.extend(got);
            if entries.is_empty() {
                break; // the blocking read timed out
            }
            if full {
                continue; // more may be waiting
            }
            if lingered || linger.is_zero() {
                break;
            }
            self.sleep(linger);
            lingered = true;
        }
        Ok(entries)
    }

    /// One `XREADGROUP … >` with `opts`.
    fn xreadgroup(&mut self, opts: &StreamReadOptions) -> Result<Vec<Entry>, WorkerError> {
        let stream = self.stream();
        let con = self.con()?;
        let reply: Result<Option<StreamReadReply>, _> =
            redis::Commands::xread_options(con, &[&stream], &[">"], opts);
        let reply = match reply {
            Ok(r) => r,
            // The stream or group vanished (FLUSHALL, a Redis restarted empty):
            // recreate them and read again next step.
            Err(e) if e.code() == Some("NOGROUP") => {
                crate::queue::prepare_stream(con, &stream)?;
                return Ok(Vec::new());
            }
            Err(e) => return Err(e.into()),
        };
        Ok(reply
            .map(|r| {
                r.keys
                    .into_iter()
                    .flat_map(|k| k.ids)
                    .map(|e| Entry { fresh: true, ..Entry::new(e, 1) })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The next page of this consumer's own pending entries (see the module
    /// docs, 1), fetched by id; entries deleted meanwhile are acknowledged.
    fn own_pending(&mut self) -> Result<Vec<Entry>, WorkerError> {
        let Some(from) = self.current().own_cursor.clone() else { return Ok(Vec::new()) };
        let count = self.read_count(0, 0);
        let (stream, name) = (self.stream(), self.name.clone());
        let con = self.con()?;
        let pending = pending_of(con, &stream, &from, count, Some(&name))?;
        self.current().own_cursor = match pending.last() {
            Some((id, _)) if pending.len() == count => Some(format!("({id}")),
            _ => None,
        };
        let con = self.con()?;
        let entries = fetch_by_id(con, &stream, pending)?;
        if !entries.is_empty() {
            info!(consumer = %self.name, entries = entries.len(), "took back this consumer's own pending entries");
        }
        Ok(entries)
    }

    /// Entries of consumers whose process is gone (see the module docs, 2).
    fn adopt(&mut self) -> Result<Vec<Entry>, WorkerError> {
        let stream = self.stream();
        let me = self.name.clone();
        let host = self.settings.host.clone();
        let silent_ms = silent_for(self.settings.block).as_millis() as usize;
        let count = self.read_count(0, 0);
        let con = self.con()?;
        let consumers: redis::streams::StreamInfoConsumersReply =
            match redis::cmd("XINFO").arg("CONSUMERS").arg(&stream).arg(GROUP).query(con) {
                Ok(c) => c,
                Err(e) if e.code() == Some("NOGROUP") => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
        let mut marked: HashMap<(String, u32), bool> = HashMap::new();
        for orphan in consumers.consumers.iter().filter(|c| c.name != me) {
            let gone = match keys::consumer_origin(&orphan.name) {
                Some((h, _)) if h == host => is_orphan(&orphan.name, &host),
                Some((h, pid)) if orphan.idle > silent_ms => {
                    let alive = match marked.get(&(h.to_string(), pid)) {
                        Some(&a) => a,
                        None => {
                            let a: bool =
                                redis::cmd("EXISTS").arg(keys::alive(&stream, h, pid)).query(con)?;
                            marked.insert((h.to_string(), pid), a);
                            a
                        }
                    };
                    !alive
                }
                _ => false,
            };
            if !gone {
                continue;
            }
            if orphan.pending == 0 {
                let _: redis::RedisResult<u64> = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&orphan.name)
                    .query(con);
                continue;
            }
            let pending = pending_of(con, &stream, "-", count, Some(&orphan.name))?;
            let entries = claim(con, &stream, &me, 0, &pending)?;
            info!(consumer = %me, from = %orphan.name, entries = entries.len(),
                  "took over the entries of a consumer whose process is gone");
            if !entries.is_empty() {
                return Ok(entries);
            }
        }
        Ok(Vec::new())
    }

    /// Claims entries pending longer than `RECLAIM_IDLE_MS` (their consumer
    /// died or stalled). Claiming counts as a delivery.
    /// Also says whether the page was full (more may be waiting).
    fn reclaim(&mut self) -> Result<(Vec<Entry>, bool), WorkerError> {
        let stream = self.stream();
        let idle_ms = self.settings.reclaim_idle.as_millis() as u64;
        let (name, count) = (self.name.clone(), self.read_count(0, 0));
        let con = self.con()?;
        let pending: Vec<(String, u64)> = match redis::cmd("XPENDING")
            .arg(&stream)
            .arg(GROUP)
            .arg("IDLE")
            .arg(idle_ms)
            .arg("-")
            .arg("+")
            .arg(count)
            .query::<StreamPendingCountReply>(con)
        {
            Ok(r) => r.ids.into_iter().map(|p| (p.id, p.times_delivered as u64)).collect(),
            Err(e) if e.code() == Some("NOGROUP") => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let more = pending.len() == count;
        let entries = claim(con, &stream, &name, idle_ms, &pending)?;
        if !entries.is_empty() {
            info!(consumer = %name, reclaimed = entries.len(), "took over entries left pending by another consumer");
        }
        Ok((entries, more))
    }
}

/// `(id, deliveries)` of up to `count` pending entries from `from` on, of
/// `consumer` or of everyone.
fn pending_of(
    con: &mut Conn,
    stream: &str,
    from: &str,
    count: usize,
    consumer: Option<&str>,
) -> Result<Vec<(String, u64)>, WorkerError> {
    let mut cmd = redis::cmd("XPENDING");
    cmd.arg(stream).arg(GROUP).arg(from).arg("+").arg(count);
    if let Some(c) = consumer {
        cmd.arg(c);
    }
    match cmd.query::<StreamPendingCountReply>(con) {
        Ok(r) => Ok(r.ids.into_iter().map(|p| (p.id, p.times_delivered as u64)).collect()),
        Err(e) if e.code() == Some("NOGROUP") => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Reads `pending` entries by id (one pipelined `XRANGE id id` each), with
/// their delivery counts as they are. Ids no longer in the stream (deleted
/// after a commit whose acknowledgement was lost) are acknowledged.
fn fetch_by_id(con: &mut Conn, stream: &str, pending: Vec<(String, u64)>) -> Result<Vec<Entry>, WorkerError> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (id, _) in &pending {
        pipe.cmd("XRANGE").arg(stream).arg(id).arg(id);
    }
    let found: Vec<redis::streams::StreamRangeReply> = pipe.query(con)?;
    let mut gone = Vec::new();
    let mut entries = Vec::with_capacity(pending.len());
    for ((id, deliveries), reply) in pending.into_iter().zip(found) {
        match reply.ids.into_iter().next() {
            Some(e) => entries.push(Entry::new(e, deliveries)),
            None => gone.push(id),
        }
    }
    if !gone.is_empty() {
        redis::cmd("XACK").arg(stream).arg(GROUP).arg(&gone).exec(con)?;
    }
    Ok(entries)
}

/// `XCLAIM`s the `pending` entries idle at least `min_idle_ms` for `me`.
/// `XCLAIM` does not return delivery counts: each is the count `XPENDING`
/// gave, plus the one this claim adds.
fn claim(
    con: &mut Conn,
    stream: &str,
    me: &str,
    min_idle_ms: u64,
    pending: &[(String, u64)],
) -> Result<Vec<Entry>, WorkerError> {
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    let mut cmd = redis::cmd("XCLAIM");
    cmd.arg(stream).arg(GROUP).arg(me).arg(min_idle_ms);
    for (id, _) in pending {
        cmd.arg(id);
    }
    let claimed: StreamClaimReply = cmd.query(con)?;
    let counts: HashMap<&str, u64> = pending.iter().map(|(id, n)| (id.as_str(), *n + 1)).collect();
    Ok(claimed
        .ids
        .into_iter()
        .map(|e: StreamId| {
            let n = counts.get(e.id.as_str()).copied().unwrap_or(1);
            Entry::new(e, n)
        })
        .collect())
}

/// Whether `name` is a consumer of this `host` whose process is gone. A
/// live process with that pid (perhaps another program since) is left
/// alone: its entries move on by idle time like anyone's.
fn is_orphan(name: &str, host: &str) -> bool {
    match keys::consumer_origin(name) {
        Some((h, pid)) => h == host && pid != std::process::id() && !process_runs(pid),
        None => false,
    }
}

/// Whether `pid` is a process that still runs. A killed process whose
/// parent has not reaped it yet (a zombie: `nohup … &` from a script that
/// exited leaves it to an init that reaps late) keeps its `/proc` entry but
/// will never acknowledge anything, so it counts as gone.
fn process_runs(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_state(&stat), Some('Z' | 'X')),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// The state letter of a `/proc/<pid>/stat` line: the field after the
/// command name, which is in parentheses and may itself hold `)` or spaces.
fn stat_state(stat: &str) -> Option<char> {
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::{process_runs, stat_state};

    #[test]
    fn the_state_is_read_past_a_command_name_holding_parentheses_and_spaces() {
        assert_eq!(stat_state("42 (webhook-ingesto) S 1 42 42 0"), Some('S'));
        assert_eq!(stat_state("42 (a) b) (c) Z 1 42"), Some('Z'));
        assert_eq!(stat_state("42 (x)"), None);
        assert_eq!(stat_state("garbled"), None);
    }

    #[test]
    fn this_process_runs_and_a_pid_beyond_the_maximum_does_not() {
        assert!(process_runs(std::process::id()));
        assert!(!process_runs(u32::MAX));
    }
}
