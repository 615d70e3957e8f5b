//! The Redis pipeline thread: batches `XADD`s and answers each job.
//! See the module docs of [`crate::queue`] for the contract.
//!
//! Each job goes to its partition's stream, each partition lives on one
//! master ([`Topology`]; one node = one master). A batch is cut into one
//! plain pipeline per master, all sent before any reply is read, so a batch
//! over three masters costs one round trip, not three; and a master that
//! fails fails only its own jobs. A `MOVED` or `ASK` reply is followed once
//! within the batch (a resharding); a master that stops answering is marked
//! down, its jobs get 503, and the slot map is read again until its replica
//! has taken over (a failover).

use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use redis::{ConnectionAddr, ConnectionInfo, Value};
use tracing::{error, info, warn};

use super::admission::{share, Depth, Memory};
use super::batch::{xadd, Acks, Batch};
use super::topology::Topology;
use super::{EnqueueError, Enqueuer, Pending, Queue, GROUP};

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between reconnect attempts, so recovery after Redis returns
/// takes at most this long.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often a cluster's slot map is read again when nothing went wrong
/// (masters added by hand, a failover that this thread did not see fail).
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(5);
/// Soonest a failed or suspect slot map is read again.
const TOPOLOGY_RETRY: Duration = Duration::from_millis(100);

/// What the pipeline thread needs from the configuration.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// `REDIS_URL` or `REDIS_CLUSTER_NODES`, `QUEUE_NAME`, `PARTITIONS`.
    pub queue: Queue,
    /// `BATCH_MAX`.
    pub batch_max: usize,
    /// `BATCH_LINGER_US`.
    pub batch_linger: Duration,
    /// `ENQUEUE_TIMEOUT_MS`: the callers' patience, also the socket timeout.
    pub enqueue_timeout: Duration,
    /// `ENQUEUE_CHANNEL_CAPACITY`.
    pub channel_capacity: usize,
    /// Where the thread counts its batches and errors.
    pub metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
    /// `MAX_QUEUE_DEPTH`: entries in all partitions at which new jobs are
    /// refused (the workers are behind or PostgreSQL is down and Redis
    /// memory is finite).
    pub max_queue_depth: u64,
    /// `MAX_REDIS_MEMORY_PERCENT`: share of a master's `maxmemory` in use at
    /// which its new jobs are refused (0 = never), so Redis keeps room for
    /// the workers' writes and never reaches its own out-of-memory refusals.
    pub max_memory_percent: u8,
    /// `REDIS_WAIT_REPLICAS`: replicas that must have a job before its 202.
    pub wait_replicas: u16,
    /// `REDIS_WAIT_TIMEOUT_MS`.
    pub wait_timeout: Duration,
}

/// The running pipeline thread.
pub struct PipelineHandle {
    thread: thread::JoinHandle<()>,
    /// A second receiver, only for reading the backlog; receivers do not keep
    /// the channel open, so it does not delay the thread's exit.
    backlog: Receiver<Pending>,
}

impl PipelineHandle {
    /// Jobs waiting in the hand-off channel now.
    pub fn backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Waits for the thread. It exits once every [`Enqueuer`] is dropped and
    /// the jobs already queued have been answered.
    pub fn join(self) {
        if self.thread.join().is_err() {
            error!("redis pipeline thread panicked");
        }
    }
}

/// Starts the pipeline thread and returns the handle cores enqueue through.
///
/// # Errors
/// The thread cannot be spawned.
pub fn spawn_pipeline(settings: PipelineSettings) -> std::io::Result<(Enqueuer, PipelineHandle)> {
    let (enqueuer, rx) = Enqueuer::bounded(settings.channel_capacity, settings.enqueue_timeout);
    let backlog = rx.clone();
    let thread = thread::Builder::new()
        .name("redis-pipeline".into())
        .spawn(move || Pipeline::new(settings).run(rx))?;
    Ok((enqueuer, PipelineHandle { thread, backlog }))
}

/// Connection state, kept so each change is logged once.
enum Link {
    Up(redis::Connection),
    /// Down since the last failure; no attempt before `retry_at`.
    Down {
        retry_at: Instant,
        backoff: Duration,
        reason: String,
    },
}

/// One master and this thread's connection to it.
struct Master {
    info: ConnectionInfo,
    link: Link,
    memory: Memory,
}

impl Master {
    fn new(info: ConnectionInfo) -> Self {
        let link =
            Link::Down { retry_at: Instant::now(), backoff: MIN_BACKOFF, reason: "not yet connected".into() };
        Self { info, link, memory: Memory::default() }
    }

    fn name(&self) -> String {
        self.info.addr().to_string()
    }

    fn mark_down(&mut self, reason: String) {
        error!(error = %reason, master = %self.name(), "redis connection lost; reconnecting with backoff");
        self.link = Link::Down { retry_at: Instant::now() + MIN_BACKOFF, backoff: MIN_BACKOFF * 2, reason };
    }

    fn down_reason(&self) -> String {
        match &self.link {
            Link::Down { reason, .. } => format!("{}: {reason}", self.name()),
            Link::Up(_) => "redis error".into(),
        }
    }
}

/// What one reply in a master's pipeline answers.
#[derive(Clone, Copy)]
enum Slot {
    /// The `OK` of an `ASKING`.
    Asking,
    /// The `XADD` of the batch's job `i`.
    Job(usize),
    /// The `WAIT` after the master's `XADD`s.
    Wait,
    /// The `XLEN` of partition `p`.
    Depth(u16),
    /// `INFO memory`.
    Memory,
}

/// Where a job goes in a round: its master, and whether by `ASK`.
#[derive(Clone, Copy)]
struct Send {
    job: usize,
    master: usize,
    asking: bool,
}

struct Pipeline {
    settings: PipelineSettings,
    /// Connection settings (credentials) for masters learned from a redirect.
    template: ConnectionInfo,
    masters: Vec<Master>,
    /// `route[p]`: partition `p`'s master in `masters`.
    route: Vec<Option<usize>>,
    /// When the slot map may be read next, and whether it must be.
    topology_at: Instant,
    topology_stale: bool,
    /// `streams[p]`: partition `p`'s stream key, spelled once rather than
    /// per `XADD`.
    streams: Vec<String>,
    batch: Batch,
    /// The queue's length, held against `MAX_QUEUE_DEPTH`.
    depth: Depth,
}

impl Pipeline {
    fn new(settings: PipelineSettings) -> Self {
        let batch = Batch::with_capacity(settings.batch_max);
        let template = match settings.queue.target() {
            super::Target::Node(i) => i.clone(),
            super::Target::Cluster(seeds) => seeds[0].clone(),
        };
        let (masters, route) = match Topology::fixed(&settings.queue) {
            Some(t) => (t.masters.into_iter().map(Master::new).collect(), t.route),
            None => (Vec::new(), vec![None; settings.queue.partitions() as usize]),
        };
        let depth = Depth::new(settings.queue.partitions(), settings.max_queue_depth);
        let streams = settings.queue.streams();
        Self {
            streams,
            settings,
            template,
            masters,
            route,
            topology_at: Instant::now(),
            topology_stale: true,
            batch,
            depth,
        }
    }

    fn run(mut self, rx: Receiver<Pending>) {
        let queue = &self.settings.queue;
        info!(queue = %queue.name(), partitions = queue.partitions(), cluster = queue.is_cluster(),
              wait_replicas = self.settings.wait_replicas, batch_max = self.settings.batch_max,
              linger_us = self.settings.batch_linger.as_micros() as u64, "redis pipeline thread started");
        // Connect eagerly so start-up logs say whether Redis is there.
        self.refresh_topology();
        for m in 0..self.masters.len() {
            self.ensure_link(m);
        }
        while self.fill_batch(&rx) {
            self.flush();
        }
        info!("redis pipeline thread stopped: every core has let go of the queue");
    }

    /// Blocks for the first job, then takes what else is queued. Returns false
    /// once the channel is closed and empty.
    fn fill_batch(&mut self, rx: &Receiver<Pending>) -> bool {
        match rx.recv() {
            Ok(p) => self.batch.jobs.push(p),
            Err(_) => return false,
        }
        let deadline = Instant::now() + self.settings.batch_linger;
        while self.batch.jobs.len() < self.settings.batch_max {
            let next = if self.settings.batch_linger.is_zero() {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_deadline(deadline)
            };
            match next {
                Ok(p) => self.batch.jobs.push(p),
                Err(_) => break,
            }
        }
        true
    }

    /// Sends the batch (one pipeline per master) and answers every job in it.
    fn flush(&mut self) {
        if !self.batch.open(&self.settings.queue) {
            return;
        }
        self.refresh_topology();
        let mut todo = Vec::with_capacity(self.batch.jobs.len());
        for job in 0..self.batch.jobs.len() {
            if self.depth.full() {
                self.batch.refuse(job, EnqueueError::QueueFull);
                continue;
            }
            match self.route[self.batch.partition[job] as usize] {
                Some(master) => todo.push(Send { job, master, asking: false }),
                None => {
                    self.topology_stale = true;
                    let e = EnqueueError::Unavailable("no redis master serves this partition now".into());
                    self.batch.refuse(job, e);
                }
            }
        }
        // While full, only the depths are read, from every master, so the
        // refusal ends as soon as the workers have caught up.
        let redirected = self.round(&todo, self.depth.full());
        if !redirected.is_empty() {
            let again = self.follow(redirected);
            for (s, _, _) in self.round(&again, false) {
                let e = EnqueueError::Unavailable("the partition's slot is moving; retry".into());
                self.batch.refuse(s.job, e);
            }
        }
        self.batch.close(&mut self.depth, &self.settings.metrics.pipeline);
    }

    /// Sends each master its part of `todo` (and, with `depths_only`, the
    /// `XLEN` of each of its partitions), then reads every reply. Answers
    /// the jobs it can and returns those redirected (`MOVED`/`ASK`).
    fn round(&mut self, todo: &[Send], depths_only: bool) -> Vec<(Send, ConnectionAddr, bool)> {
        let mut plans: Vec<(Vec<Slot>, redis::Pipeline)> = Vec::new();
        let mut order = Vec::new();
        for m in 0..self.masters.len() {
            let mine: Vec<Send> = todo.iter().copied().filter(|s| s.master == m).collect();
            if mine.is_empty() && !depths_only {
                continue;
            }
            self.ensure_link(m);
            if !matches!(self.masters[m].link, Link::Up(_)) {
                let reason = self.masters[m].down_reason();
                for s in &mine {
                    self.batch.refuse(s.job, EnqueueError::Unavailable(reason.clone()));
                }
                self.topology_stale = true;
                continue;
            }
            let refused = self.masters[m].memory.full();
            let (slots, pipe) = self.plan(m, &mine, depths_only, refused);
            if refused {
                for s in &mine {
                    self.batch.refuse(s.job, EnqueueError::MemoryFull);
                }
            }
            order.push(m);
            plans.push((slots, pipe));
        }
        // Everything is written before anything is read: the masters work
        // on their parts at the same time.
        let mut sent = Vec::with_capacity(order.len());
        for (&m, (_, pipe)) in order.iter().zip(&plans) {
            let Link::Up(con) = &mut self.masters[m].link else { unreachable!("checked above") };
            sent.push(con.send_packed_command(&pipe.get_packed_pipeline()));
        }
        let mut redirected = Vec::new();
        for ((&m, (slots, _)), sent) in order.iter().zip(plans).zip(sent) {
            if let Err(e) = sent {
                self.fail_master(m, &slots, &e.to_string());
                continue;
            }
            self.read_replies(m, &slots, todo, &mut redirected);
        }
        redirected
    }

    /// Master `m`'s pipeline for `mine`: the `XADD`s, the `WAIT`, the
    /// `XLEN`s of the partitions touched and, when due, `INFO memory`.
    fn plan(
        &mut self,
        m: usize,
        mine: &[Send],
        depths_only: bool,
        refused: bool,
    ) -> (Vec<Slot>, redis::Pipeline) {
        let mut pipe = redis::pipe();
        let mut slots = Vec::new();
        let mut touched: Vec<u16> = Vec::new();
        let queue = &self.settings.queue;
        if !refused {
            for s in mine {
                let p = self.batch.partition[s.job];
                if s.asking {
                    pipe.cmd("ASKING");
                    slots.push(Slot::Asking);
                }
                pipe.add_command(xadd(&self.streams[p as usize], &self.batch.jobs[s.job].job));
                slots.push(Slot::Job(s.job));
                if !s.asking && !touched.contains(&p) {
                    touched.push(p);
                }
            }
            if self.settings.wait_replicas > 0 && !mine.is_empty() {
                pipe.cmd("WAIT")
                    .arg(self.settings.wait_replicas)
                    .arg(self.settings.wait_timeout.as_millis() as u64);
                slots.push(Slot::Wait);
            }
        }
        if depths_only {
            touched = (0..queue.partitions()).filter(|&p| self.route[p as usize] == Some(m)).collect();
        }
        // One clock read for the batch, not one per partition.
        let now = Instant::now();
        for p in touched {
            if self.depth.due(p, now, depths_only) {
                pipe.cmd("XLEN").arg(&self.streams[p as usize]);
                slots.push(Slot::Depth(p));
            }
        }
        if self.masters[m].memory.due(now) {
            pipe.cmd("INFO").arg("memory");
            slots.push(Slot::Memory);
        }
        (slots, pipe)
    }

    /// Reads master `m`'s replies in the order of `slots`.
    fn read_replies(
        &mut self,
        m: usize,
        slots: &[Slot],
        todo: &[Send],
        redirected: &mut Vec<(Send, ConnectionAddr, bool)>,
    ) {
        let mut acks = Acks::default();
        for (k, slot) in slots.iter().enumerate() {
            let Link::Up(con) = &mut self.masters[m].link else { unreachable!("up while reading") };
            let reply = match con.recv_response() {
                Ok(v) => v,
                Err(e) => {
                    let why = e.to_string();
                    let wait_unread = slots[k..].iter().any(|s| matches!(s, Slot::Wait));
                    acks.finish(&mut self.batch, Some(&why), wait_unread);
                    self.fail_master(m, &slots[k..], &why);
                    return;
                }
            };
            match (*slot, reply) {
                (Slot::Asking, _) => {}
                (Slot::Job(job), Value::ServerError(e)) => {
                    let redirect = match e.code() {
                        "MOVED" => Some(false),
                        "ASK" => Some(true),
                        _ => None,
                    };
                    let target = e.details().and_then(|d| d.split_whitespace().nth(1)).and_then(parse_addr);
                    match (redirect, target) {
                        (Some(asking), Some(addr)) => {
                            let send = *todo.iter().find(|s| s.job == job).expect("a job of this round");
                            redirected.push((send, addr, asking));
                        }
                        _ => {
                            if e.code() == "CLUSTERDOWN" || e.code() == "TRYAGAIN" {
                                self.topology_stale = true;
                            }
                            acks.xadd(job, Value::ServerError(e), &mut self.depth, &mut self.batch);
                        }
                    }
                }
                (Slot::Job(job), v) => acks.xadd(job, v, &mut self.depth, &mut self.batch),
                (Slot::Wait, v) => {
                    let s = &self.settings;
                    acks.wait(v, s.wait_replicas, &s.metrics.pipeline, &mut self.batch);
                }
                (Slot::Depth(p), v) => self.depth.read(p, v),
                (Slot::Memory, v) => self.note_memory(m, v),
            }
        }
        acks.finish(&mut self.batch, None, false);
    }

    /// Master `m` failed mid-pipeline: every job still unanswered in
    /// `slots` gets 503, the link is dropped and the slot map re-read.
    fn fail_master(&mut self, m: usize, slots: &[Slot], error: &str) {
        self.settings.metrics.pipeline.record_redis_error();
        self.masters[m].mark_down(error.to_string());
        self.topology_stale = true;
        let reason = self.masters[m].down_reason();
        for slot in slots {
            if let Slot::Job(job) = slot {
                self.batch.answer[*job].get_or_insert_with(|| Err(EnqueueError::Unavailable(reason.clone())));
            }
        }
    }

    /// Turns redirects into the next round: `MOVED` changes the partition's
    /// master for good (and the slot map is read again soon), `ASK` only for
    /// this job, which is then preceded by `ASKING`.
    fn follow(&mut self, redirected: Vec<(Send, ConnectionAddr, bool)>) -> Vec<Send> {
        let mut again = Vec::with_capacity(redirected.len());
        for (send, addr, asking) in redirected {
            let master = match self.masters.iter().position(|m| m.info.addr() == &addr) {
                Some(i) => i,
                None => {
                    self.masters.push(Master::new(self.template.clone().set_addr(addr)));
                    self.masters.len() - 1
                }
            };
            if !asking {
                self.route[self.batch.partition[send.job] as usize] = Some(master);
                self.topology_stale = true;
            }
            again.push(Send { job: send.job, master, asking });
        }
        again
    }

    /// Reads the cluster's slot map when it is due: at start, soon after
    /// anything suggested it changed, and every [`TOPOLOGY_REFRESH`].
    fn refresh_topology(&mut self) {
        if !self.settings.queue.is_cluster() {
            return;
        }
        let now = Instant::now();
        let due = if self.topology_stale { self.topology_at } else { self.topology_at + TOPOLOGY_REFRESH };
        if now < due {
            return;
        }
        self.topology_at = now + TOPOLOGY_RETRY;
        let known: Vec<ConnectionInfo> = self.masters.iter().map(|m| m.info.clone()).collect();
        let timeout = self.settings.enqueue_timeout.min(Duration::from_secs(1));
        match Topology::discover(&self.settings.queue, &known, timeout) {
            Ok(t) => {
                let mut old = std::mem::take(&mut self.masters);
                self.masters = t
                    .masters
                    .into_iter()
                    .map(|info| match old.iter().position(|m| m.info.addr() == info.addr()) {
                        Some(i) => old.swap_remove(i),
                        None => Master::new(info),
                    })
                    .collect();
                if t.route != self.route {
                    info!(
                        masters = self.masters.len(),
                        unserved = t.route.iter().filter(|r| r.is_none()).count(),
                        "redis cluster slot map read"
                    );
                }
                self.route = t.route;
                self.topology_stale = self.route.iter().any(Option::is_none);
                self.topology_at = now;
            }
            Err(e) => {
                self.topology_stale = true;
                warn!(error = %e, "no redis cluster node answered CLUSTER SLOTS; retrying");
            }
        }
    }

    /// Records master `m`'s memory from an `INFO memory` reply; the gauge
    /// shows the fullest master, the one that refuses first.
    fn note_memory(&mut self, m: usize, reply: Value) {
        let master = &mut self.masters[m];
        master.memory.note_reply(reply, self.settings.max_memory_percent, master.info.addr());
        let fullest =
            self.masters.iter().map(|m| m.memory.reading()).max_by(|a, b| share(*a).total_cmp(&share(*b)));
        if let Some((used, max)) = fullest {
            self.settings.metrics.pipeline.set_redis_memory(used, max);
        }
    }

    /// Reconnects master `m` if its link is down and the backoff allows.
    fn ensure_link(&mut self, m: usize) {
        let Link::Down { retry_at, backoff, .. } = &self.masters[m].link else { return };
        if Instant::now() < *retry_at {
            return;
        }
        let backoff = *backoff;
        match self.connect(m) {
            Ok(con) => {
                info!(redis = %self.masters[m].name(), "redis connected");
                self.masters[m].link = Link::Up(con);
            }
            Err(e) => self.fail_connect(m, e.to_string(), backoff),
        }
    }

    fn connect(&mut self, m: usize) -> redis::RedisResult<redis::Connection> {
        let timeout = self.settings.enqueue_timeout;
        let client = redis::Client::open(self.masters[m].info.clone())?;
        let mut con = client.get_connection_with_timeout(timeout.min(Duration::from_secs(1)))?;
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        for p in (0..self.settings.queue.partitions()).filter(|&p| self.route[p as usize] == Some(m)) {
            match prepare_stream(&mut con, &self.streams[p as usize]) {
                // The slot map was already stale: it is read again, and the
                // stream is prepared by whoever holds it now.
                Err(e) if e.code() == Some("MOVED") || e.code() == Some("ASK") => self.topology_stale = true,
                other => other?,
            }
        }
        check_durability(&mut con);
        Ok(con)
    }

    fn fail_connect(&mut self, m: usize, reason: String, backoff: Duration) {
        let master = &mut self.masters[m];
        let first = match &master.link {
            Link::Down { reason: old, .. } => old != &reason,
            Link::Up(_) => true,
        };
        if first {
            warn!(error = %reason, redis = %master.name(),
                  "redis unreachable; its requests get 503 until it is back");
        }
        let next = (backoff * 2).min(MAX_BACKOFF);
        master.link = Link::Down { retry_at: Instant::now() + backoff, backoff: next, reason };
    }
}

/// `host:port` of a redirect.
fn parse_addr(s: &str) -> Option<ConnectionAddr> {
    let (host, port) = s.rsplit_once(':')?;
    Some(ConnectionAddr::Tcp(host.to_string(), port.parse().ok()?))
}

/// Creates the stream and the consumer group if either is missing.
///
/// # Errors
/// Redis failed.
pub fn prepare_stream(con: &mut impl redis::ConnectionLike, stream: &str) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> =
        redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(GROUP).arg("0").arg("MKSTREAM").query(con);
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Reads Redis's durability settings once and warns about any that could
/// lose an acknowledged job (the per-core enqueue's check at start; the
/// pipeline thread checks on every connect). Redis unreachable: nothing.
pub fn warn_about_durability(settings: &PipelineSettings) {
    if let super::Target::Node(info) = settings.queue.target() {
        let timeout = settings.enqueue_timeout.min(Duration::from_secs(1));
        if let Ok(mut con) =
            redis::Client::open(info.clone()).and_then(|c| c.get_connection_with_timeout(timeout))
        {
            check_durability(&mut con);
        }
    }
}

/// Warns when Redis is set up so that an acknowledged job could be lost.
fn check_durability(con: &mut redis::Connection) {
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
