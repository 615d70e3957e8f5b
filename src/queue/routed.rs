//! The cluster connection the workers, the claim keeper, `/health` and the
//! commands use: one plain connection per master, each command sent to the
//! master of its key's slot, and no step without a time limit.
//!
//! Why not redis-rs's `ClusterConnection`: it reconnects to a node with a
//! `PING` that has no read timeout, and retries a timed-out command on the
//! same node up to its retry count. A master frozen by `SIGSTOP` (a paused
//! VM, a stalled disk: its kernel still accepts connections) therefore held
//! every worker thread of every process for as long as it stayed frozen,
//! whatever partitions the thread read. Here a master that does not answer
//! costs one read timeout, after which it is marked down for every
//! connection of the process ([`ClusterState`]): its commands fail at once
//! (its partitions rest, [`crate::worker`]), one probe (`PING`, with
//! [`PROBE_TIMEOUT`]) at a time asks whether it is back, and the slot map
//! is read again in case a replica took over.
//!
//! A redirect (`MOVED`, `ASK`) is not followed: it fails the command, the
//! slot map is read again before the next one, and callers retry as they
//! do after any Redis error. Each command, and each plain pipeline, must
//! stay within one slot (every key of a partition shares its hash tag,
//! [`super::keys`]); a command without a key goes to any master that answers.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult, Value};
use tracing::{info, warn};

use super::slots::{slot_of, slot_ranges};
use crate::backoff::Backoff;

/// How long a master just found not answering is left alone; doubles per
/// failed probe up to [`MAX_DOWN`].
const MIN_DOWN: Duration = Duration::from_millis(500);
const MAX_DOWN: Duration = Duration::from_secs(2);
/// A probe's patience: a master that cannot answer `PING` in this time is
/// no use to anyone yet.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Soonest a slot map is read again after the last read.
const SLOT_MAP_RETRY: Duration = Duration::from_millis(200);
/// Oldest a slot map may get before it is read again anyway.
const SLOT_MAP_AGE: Duration = Duration::from_secs(5);

/// What every cluster connection of one process knows: the slot map and
/// which masters are not answering. Shared through the [`super::Queue`],
/// so a master found frozen by one thread is skipped by all.
#[derive(Default)]
pub(super) struct ClusterState {
    slots: Mutex<SlotMap>,
    down: Mutex<Vec<(ConnectionAddr, Down)>>,
}

#[derive(Default)]
struct SlotMap {
    /// `(first slot, last slot, master)`.
    ranges: Vec<(u16, u16, ConnectionAddr)>,
    read_at: Option<Instant>,
    stale: bool,
}

struct Down {
    /// No command nor probe before this.
    until: Instant,
    backoff: Backoff,
    reason: String,
}

impl ClusterState {
    fn lock_slots(&self) -> std::sync::MutexGuard<'_, SlotMap> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_down(&self) -> std::sync::MutexGuard<'_, Vec<(ConnectionAddr, Down)>> {
        self.down.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_down(&self, addr: &ConnectionAddr) -> bool {
        self.lock_down().iter().any(|(a, _)| a == addr)
    }

    /// `addr` failed with `reason`: marked down, unless it already is.
    fn mark_down(&self, addr: &ConnectionAddr, reason: &str) {
        let mut down = self.lock_down();
        if !down.iter().any(|(a, _)| a == addr) {
            warn!(master = %addr, error = %reason,
                  "redis master not answering; its partitions wait, the others go on");
            // The wait is the backoff's current delay, and a probe in
            // flight holds the others off for as long; a failed probe
            // doubles it.
            let backoff = Backoff::new(MIN_DOWN, MAX_DOWN);
            let d = Down { until: Instant::now() + backoff.current(), backoff, reason: reason.to_string() };
            down.push((addr.clone(), d));
        }
        drop(down);
        self.lock_slots().stale = true;
    }

    /// Whether a command may go to `addr`: `Ok(false)` if it is up,
    /// `Ok(true)` if the caller is to probe it first (it was down, and its
    /// wait is over: the next caller waits again meanwhile), or the error
    /// to fail with.
    fn admit(&self, addr: &ConnectionAddr) -> RedisResult<bool> {
        let mut down = self.lock_down();
        let Some((_, d)) = down.iter_mut().find(|(a, _)| a == addr) else { return Ok(false) };
        let now = Instant::now();
        if now < d.until {
            let msg = format!("redis master {addr} not answering ({}); retried shortly", d.reason);
            return Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::NotConnected, msg)));
        }
        d.until = now + d.backoff.current();
        Ok(true)
    }

    /// The probe of `addr` answered, or failed with `reason`.
    fn probed(&self, addr: &ConnectionAddr, answered: Result<(), String>) {
        let mut down = self.lock_down();
        match answered {
            Ok(()) => {
                if let Some(i) = down.iter().position(|(a, _)| a == addr) {
                    down.swap_remove(i);
                    info!(master = %addr, "redis master answers again");
                }
            }
            Err(reason) => {
                if let Some((_, d)) = down.iter_mut().find(|(a, _)| a == addr) {
                    d.backoff.step();
                    d.until = Instant::now() + d.backoff.current();
                    d.reason = reason;
                }
            }
        }
    }
}

/// A connection to a cluster: see the module docs.
pub struct Routed {
    seeds: Vec<ConnectionInfo>,
    state: Arc<ClusterState>,
    connect_timeout: Duration,
    read_timeout: Duration,
    links: Vec<(ConnectionAddr, redis::Connection)>,
}

impl Routed {
    /// A connection to the cluster of `seeds`: nothing is opened until a
    /// command needs a master, but the slot map must be readable now.
    ///
    /// # Errors
    /// No seed (nor master known before) answered `CLUSTER SLOTS`.
    pub(super) fn new(
        seeds: Vec<ConnectionInfo>,
        state: Arc<ClusterState>,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> RedisResult<Self> {
        let mut routed = Self { seeds, state, connect_timeout, read_timeout, links: Vec::new() };
        if routed.state.lock_slots().ranges.is_empty() {
            routed.read_slot_map()?;
        }
        Ok(routed)
    }

    /// Reads `CLUSTER SLOTS` from the first node that answers: masters
    /// marked down last, since a frozen one would cost the timeout.
    fn read_slot_map(&mut self) -> RedisResult<()> {
        let known: Vec<ConnectionAddr> = self.state.lock_slots().ranges.iter().map(|r| r.2.clone()).collect();
        let mut nodes: Vec<ConnectionInfo> = self.seeds.clone();
        for addr in known {
            if !nodes.iter().any(|n| n.addr() == &addr) {
                nodes.push(self.info(&addr));
            }
        }
        nodes.sort_by_key(|n| self.state.is_down(n.addr()));
        let timeout = self.connect_timeout.min(Duration::from_secs(1));
        let mut last = None;
        for node in &nodes {
            match slot_ranges(node, timeout) {
                Ok(ranges) => {
                    let mut map = self.state.lock_slots();
                    map.ranges = ranges;
                    map.read_at = Some(Instant::now());
                    map.stale = false;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        self.state.lock_slots().read_at = Some(Instant::now());
        Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::Io, "no cluster node given"))))
    }

    /// Reads the slot map again if it is stale or old, at most every
    /// [`SLOT_MAP_RETRY`] (failures are the next command's to report).
    fn refresh_if_due(&mut self) {
        let due = {
            let map = self.state.lock_slots();
            map.read_at.is_none_or(|at| {
                let age = at.elapsed();
                (map.stale && age >= SLOT_MAP_RETRY) || age >= SLOT_MAP_AGE
            })
        };
        if due {
            // Marked as read first, so other threads do not all ask at once.
            self.state.lock_slots().read_at = Some(Instant::now());
            let _ = self.read_slot_map();
        }
    }

    /// The connection settings for `addr`: the seeds' credentials.
    fn info(&self, addr: &ConnectionAddr) -> ConnectionInfo {
        self.seeds[0].clone().set_addr(addr.clone())
    }

    /// The master for a command: its key's slot's, or for a command without
    /// a key, the first master not marked down.
    fn master_for(&mut self, packed: &[u8]) -> RedisResult<ConnectionAddr> {
        self.refresh_if_due();
        let map = self.state.lock_slots();
        let found = match first_key(packed) {
            Some(key) => {
                let slot = slot_of(key);
                map.ranges.iter().find(|(a, b, _)| (*a..=*b).contains(&slot)).map(|r| r.2.clone())
            }
            None => {
                let mut masters: Vec<&ConnectionAddr> = map.ranges.iter().map(|r| &r.2).collect();
                masters.dedup();
                let up = masters.iter().find(|m| !self.state.is_down(m)).or(masters.first());
                up.map(|m| (*m).clone())
            }
        };
        drop(map);
        found.ok_or_else(|| {
            self.state.lock_slots().stale = true;
            RedisError::from((ErrorKind::Io, "no redis master serves this slot now"))
        })
    }

    /// The open connection to `addr`, opened (and probed, if it was down)
    /// as needed.
    fn link(&mut self, addr: &ConnectionAddr) -> RedisResult<&mut redis::Connection> {
        let probe = self.state.admit(addr)?;
        if probe {
            self.links.retain(|(a, _)| a != addr);
        } else if let Some(i) = self.links.iter().position(|(a, _)| a == addr) {
            return Ok(&mut self.links[i].1);
        }
        let opened = self.open(addr, probe);
        if probe {
            self.state.probed(addr, opened.as_ref().map(drop).map_err(ToString::to_string));
        }
        match opened {
            Ok(con) => {
                self.links.push((addr.clone(), con));
                Ok(&mut self.links.last_mut().expect("just pushed").1)
            }
            Err(e) => {
                if !probe {
                    self.failed(addr, &e);
                }
                Err(e)
            }
        }
    }

    /// A connection to `addr` with this connection's timeouts; a `probe`
    /// must first answer `PING` within [`PROBE_TIMEOUT`]. No step of the
    /// setup goes without a limit.
    fn open(&self, addr: &ConnectionAddr, probe: bool) -> RedisResult<redis::Connection> {
        let setup = if probe { PROBE_TIMEOUT } else { self.connect_timeout };
        let mut con = redis::Client::open(self.info(addr))?.get_connection_with_timeout(setup)?;
        con.set_read_timeout(Some(setup))?;
        con.set_write_timeout(Some(setup))?;
        if probe {
            redis::cmd("PING").query::<String>(&mut con)?;
        }
        con.set_read_timeout(Some(self.read_timeout))?;
        con.set_write_timeout(Some(self.connect_timeout.max(Duration::from_secs(1))))?;
        Ok(con)
    }

    /// A command to `addr` failed with `e`: a master that did not answer is
    /// marked down and its connection dropped (a late reply must never be
    /// read as the next command's); a redirect or a cluster without a
    /// majority makes the slot map stale.
    fn failed(&mut self, addr: &ConnectionAddr, e: &RedisError) {
        if e.kind() == ErrorKind::Io || e.is_timeout() || e.is_connection_dropped() {
            self.links.retain(|(a, _)| a != addr);
            let reason = if e.is_timeout() {
                format!("no reply within {} ms", self.read_timeout.as_millis())
            } else {
                e.to_string()
            };
            self.state.mark_down(addr, &reason);
        } else if is_redirect(e.code()) {
            self.state.lock_slots().stale = true;
        }
    }

    /// Notes redirects among the replies of a command that succeeded.
    fn note_replies<'v>(&self, replies: impl IntoIterator<Item = &'v Value>) {
        let redirected =
            replies.into_iter().any(|v| matches!(v, Value::ServerError(e) if is_redirect(Some(e.code()))));
        if redirected {
            self.state.lock_slots().stale = true;
        }
    }

    /// Sends `packed` to its master with `send`, noting what its failure says.
    fn with_master<T>(
        &mut self,
        packed: &[u8],
        send: impl FnOnce(&mut redis::Connection) -> RedisResult<T>,
    ) -> RedisResult<T> {
        let addr = self.master_for(packed)?;
        let con = self.link(&addr)?;
        let result = send(con);
        if let Err(e) = &result {
            self.failed(&addr, e);
        }
        result
    }
}

impl redis::ConnectionLike for Routed {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        let reply = self.with_master(cmd, |con| con.req_packed_command(cmd))?;
        self.note_replies(std::iter::once(&reply));
        Ok(reply)
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        let replies = self.with_master(cmd, |con| con.req_packed_commands(cmd, offset, count))?;
        self.note_replies(&replies);
        Ok(replies)
    }

    fn get_db(&self) -> i64 {
        0
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        true
    }
}

fn is_redirect(code: Option<&str>) -> bool {
    matches!(code, Some("MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN"))
}

/// The key that routes `packed` (one command or a pipeline of them, as
/// redis-rs packs them): the first key of the first command that has one.
fn first_key(packed: &[u8]) -> Option<&[u8]> {
    let mut rest = packed;
    while !rest.is_empty() {
        let (args, after) = command(rest)?;
        if let Some(key) = key_of(&args) {
            return Some(key);
        }
        rest = after;
    }
    None
}

/// Where a command keeps its key, for the commands this system sends.
fn key_of<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
    let name = args.first()?.to_ascii_uppercase();
    match name.as_slice() {
        b"XREAD" | b"XREADGROUP" => {
            let at = args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS"))?;
            args.get(at + 1).copied()
        }
        b"XGROUP" | b"XINFO" | b"MEMORY" | b"OBJECT" => args.get(2).copied(),
        b"MULTI" | b"EXEC" | b"DISCARD" | b"PING" | b"INFO" | b"CONFIG" | b"CLUSTER" | b"WAIT"
        | b"ASKING" | b"AUTH" | b"SELECT" | b"HELLO" | b"CLIENT" | b"TIME" | b"DBSIZE" | b"ECHO" => None,
        _ => args.get(1).copied(),
    }
}

/// One RESP command (an array of bulk strings) from the front of `bytes`,
/// and what follows it.
fn command(bytes: &[u8]) -> Option<(Vec<&[u8]>, &[u8])> {
    let (count, mut rest) = header(bytes, b'*')?;
    let mut args = Vec::with_capacity(count.min(16));
    for _ in 0..count {
        let (len, after) = header(rest, b'$')?;
        let arg = after.get(..len)?;
        rest = after.get(len + 2..)?;
        args.push(arg);
    }
    Some((args, rest))
}

/// `<kind><n>\r\n` at the front of `bytes`: `n` and what follows.
fn header(bytes: &[u8], kind: u8) -> Option<(usize, &[u8])> {
    let rest = bytes.strip_prefix(&[kind])?;
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    let n = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    Some((n, &rest[end + 2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_key_is_found_in_commands_and_pipelines() {
        let packed = |c: &redis::Cmd| c.get_packed_command();
        let mut xread = redis::cmd("XREADGROUP");
        xread.arg("GROUP").arg("g").arg("c").arg("COUNT").arg(10).arg("STREAMS").arg("q:{7}").arg(">");
        assert_eq!(first_key(&packed(&xread)), Some(&b"q:{7}"[..]));
        let mut info = redis::cmd("XINFO");
        info.arg("CONSUMERS").arg("q:{2}").arg("g");
        assert_eq!(first_key(&packed(&info)), Some(&b"q:{2}"[..]));
        assert_eq!(first_key(&packed(&redis::cmd("PING"))), None);
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI").cmd("XADD").arg("q:{5}:dead").arg("*").arg("f").arg("v").cmd("EXEC");
        assert_eq!(first_key(&pipe.get_packed_pipeline()), Some(&b"q:{5}:dead"[..]));
        assert_eq!(first_key(b"*2\r\n$3\r\nGET\r\n$10\r\nshort"), None, "truncated: no key, no panic");
    }
}
