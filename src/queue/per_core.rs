//! The per-core enqueue (`ENQUEUE_MODE=core`, one Redis node, over TCP or
//! a Unix socket): each core's
//! runtime pipelines its own jobs to Redis on its own connection, so a job
//! never leaves the thread that accepted it.
//!
//! The pipeline thread ([`super::pipeline`]) costs, at a light load, three
//! thread wake-ups per request (the thread for the job, the thread for
//! Redis's reply, the core for the answer); here the reply arrives on the
//! core's own io_uring and wakes nothing but the request's task. tuning.md
//! §23 has what that buys and costs.
//!
//! # Contract (the same as the thread's, [`crate::queue`])
//! A job's reply is `Ok(id)` only once Redis answered its `XADD` (and the
//! `WAIT`, with `REDIS_WAIT_REPLICAS`). One flusher task per core takes
//! every job queued on its core (up to `BATCH_MAX`), sends one pipeline and
//! reads its replies; the jobs that arrive meanwhile form the next batch,
//! the same natural batching as the thread. `BATCH_LINGER_US` > 0 makes the
//! flusher wait that long after the first job for more, rounded up to
//! monoio's timer, which counts in milliseconds. `MAX_QUEUE_DEPTH`
//! and `MAX_REDIS_MEMORY_PERCENT` are held by each core from its own
//! readings ([`super::admission`]); between two cores' readings the depth
//! can pass the limit by what the other cores enqueued since theirs, at
//! most a batch per core once within a tenth of the limit.
//!
//! # Failure
//! A connection error fails the batch in hand (jobs whose `XADD` was already
//! answered stay answered, unless a `WAIT` was still due), drops the
//! connection and reconnects with capped exponential backoff; while it is
//! down the core's jobs get 503 at once. A reply that does not come within
//! `ENQUEUE_TIMEOUT_MS` counts as a connection error.

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpStream, UnixStream};
use redis::{ConnectionAddr, ConnectionInfo, Value};
use tracing::{error, info, warn};

use super::admission::{Depth, Memory};
use super::batch::{Batch, Master, Round};
use super::resp::frame_len;
use super::settings::PipelineSettings;
use super::{EnqueueError, Pending, Target, Unavailable, RECONNECT};
use crate::backoff::Backoff;

/// Bytes asked of each read of replies.
const READ_CHUNK: usize = 16 * 1024;

/// What every core's flusher shares: the settings, read once.
pub(super) struct Shared {
    settings: PipelineSettings,
    info: ConnectionInfo,
    /// Where Redis listens. A TCP host is resolved once at start: a lookup
    /// would block the core's runtime, and a core never blocks.
    endpoint: Endpoint,
    /// `host:port`, as logged and as the memory gauge names the master.
    name: String,
    streams: Vec<String>,
    /// Each core's count of jobs waiting on its flusher, summed by
    /// [`backlog`] for `/metrics`. A core writes only its own counter (no
    /// shared cache line on the hot path); the lock is taken when a core
    /// first enqueues and at each scrape, never per job.
    waiting: Mutex<Vec<Arc<AtomicUsize>>>,
}

impl Shared {
    /// The shared part for `settings`.
    ///
    /// # Errors
    /// The queue is not one node reached over plain TCP or a Unix socket
    /// (configuration refuses that first, naming `ENQUEUE_MODE`), or its
    /// host does not resolve.
    pub(super) fn new(settings: PipelineSettings) -> Result<Self, PerCoreError> {
        let Target::Node(info) = settings.queue.target().clone() else {
            return Err(PerCoreError::Cluster);
        };
        let endpoint = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Endpoint::Tcp(
                (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| PerCoreError::Resolve { host: host.clone(), reason: e.to_string() })?
                    .next()
                    .ok_or_else(|| PerCoreError::Resolve {
                        host: host.clone(),
                        reason: "resolves to no address".into(),
                    })?,
            ),
            ConnectionAddr::Unix(path) => Endpoint::Unix(path.clone()),
            _ => return Err(PerCoreError::Transport),
        };
        let streams = settings.queue.streams();
        let name = info.addr().to_string();
        Ok(Self { settings, info, endpoint, name, streams, waiting: Mutex::default() })
    }
}

/// Why the per-core enqueue cannot serve the configured queue.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum PerCoreError {
    /// `REDIS_CLUSTER_NODES` is set.
    #[error("ENQUEUE_MODE=core needs one Redis node (REDIS_URL), not a cluster")]
    Cluster,
    /// `REDIS_URL` is neither TCP nor a Unix socket (`rediss://`).
    #[error("ENQUEUE_MODE=core needs a redis:// (TCP) or unix:// REDIS_URL")]
    Transport,
    /// `REDIS_URL`'s host does not resolve.
    #[error("REDIS_URL's host {host}: {reason}")]
    Resolve {
        /// The host.
        host: String,
        /// What the lookup said.
        reason: String,
    },
}

/// One core's queue of jobs and its flusher's waker.
struct Local {
    shared: Arc<Shared>,
    queue: RefCell<Vec<Pending>>,
    /// `queue.len()`, as the other threads may read it.
    waiting: Arc<AtomicUsize>,
    flusher: Cell<Option<Waker>>,
}

thread_local! {
    /// This core's [`Local`], made (and its flusher spawned) by the first
    /// job the core enqueues. A core is a thread running one runtime.
    static LOCAL: RefCell<Option<Rc<Local>>> = const { RefCell::new(None) };
}

fn local(shared: &Arc<Shared>) -> Rc<Local> {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        match &*l {
            Some(local) if Arc::ptr_eq(&local.shared, shared) => local.clone(),
            _ => {
                let waiting = Arc::new(AtomicUsize::new(0));
                shared.waiting.lock().unwrap_or_else(|e| e.into_inner()).push(waiting.clone());
                let local = Rc::new(Local {
                    shared: shared.clone(),
                    queue: RefCell::new(Vec::new()),
                    waiting,
                    flusher: Cell::new(None),
                });
                monoio::spawn(Flusher::new(local.clone()).run());
                *l = Some(local.clone());
                local
            }
        }
    })
}

/// Queues `p` on this core (inside its monoio runtime).
///
/// # Errors
/// `Saturated` when `ENQUEUE_CHANNEL_CAPACITY` jobs already wait on this core.
pub(super) fn submit(shared: &Arc<Shared>, p: Pending) -> Result<(), EnqueueError> {
    let local = local(shared);
    let mut queue = local.queue.borrow_mut();
    if queue.len() >= shared.settings.channel_capacity {
        return Err(EnqueueError::Saturated);
    }
    queue.push(p);
    local.waiting.store(queue.len(), Ordering::Relaxed);
    drop(queue);
    if let Some(w) = local.flusher.take() {
        w.wake();
    }
    Ok(())
}

/// Jobs waiting on every core's flusher (not those of batches in flight).
pub(super) fn backlog(shared: &Shared) -> usize {
    let waiting = shared.waiting.lock().unwrap_or_else(|e| e.into_inner());
    waiting.iter().map(|w| w.load(Ordering::Relaxed)).sum()
}

/// Where the node listens.
enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// A connection to the node, either way.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

enum Link {
    Up(Stream),
    Down { retry_at: Instant, backoff: Backoff, reason: String },
}

/// A failed exchange: the replies read before the failure, and why.
struct Broken {
    read: Vec<Value>,
    reason: String,
}

struct Flusher {
    local: Rc<Local>,
    link: Link,
    depth: Depth,
    memory: Memory,
    batch: Batch,
    round: Round,
    /// Replies read and not yet framed; kept from batch to batch.
    rbuf: Vec<u8>,
}

impl Flusher {
    fn new(local: Rc<Local>) -> Self {
        let s = &local.shared.settings;
        let depth = Depth::new(s.queue.partitions(), s.max_queue_depth);
        let batch = Batch::with_capacity(s.batch_max);
        let link =
            Link::Down { retry_at: Instant::now(), backoff: RECONNECT, reason: "not yet connected".into() };
        let rbuf = Vec::with_capacity(READ_CHUNK);
        Self { local, link, depth, memory: Memory::default(), batch, round: Round::default(), rbuf }
    }

    fn settings(&self) -> &PipelineSettings {
        &self.local.shared.settings
    }

    /// Runs until the core's runtime is dropped; every job it took is
    /// answered before it takes the next ones.
    async fn run(mut self) {
        loop {
            std::future::poll_fn(|cx| {
                if self.local.queue.borrow().is_empty() {
                    self.local.flusher.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            let linger = self.settings().batch_linger;
            if !linger.is_zero() && self.local.queue.borrow().len() < self.settings().batch_max {
                monoio::time::sleep(linger).await;
            }
            {
                let mut queue = self.local.queue.borrow_mut();
                let n = queue.len().min(self.settings().batch_max);
                self.batch.jobs.extend(queue.drain(..n));
                self.local.waiting.store(queue.len(), Ordering::Relaxed);
            }
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        if !self.batch.open(&self.local.shared.settings.queue) {
            return;
        }
        self.ensure_link().await;
        if let Link::Down { reason, .. } = &self.link {
            let e = Unavailable::Down { master: self.local.shared.name.clone(), reason: reason.clone() };
            self.batch.refuse_the_rest(&EnqueueError::Unavailable(e));
        } else {
            let shared = self.local.shared.clone();
            let master = Master { settings: &shared.settings, streams: &shared.streams, name: &shared.name };
            let every = || (0..shared.settings.queue.partitions()).collect();
            self.batch.plan(&mut self.round, &master, &mut self.depth, &self.memory, every);
            let count = self.round.slots.len();
            if count > 0 {
                let (replies, broken) = match self.exchange(count).await {
                    Ok(replies) => (replies, None),
                    Err(Broken { read, reason }) => (read, Some(reason)),
                };
                let slots = &self.round.slots;
                let heard = self.batch.answer(
                    slots,
                    replies,
                    broken.as_deref(),
                    &master,
                    &mut self.depth,
                    &mut self.memory,
                );
                if heard.memory {
                    let (used, max) = self.memory.reading();
                    shared.settings.metrics.pipeline.set_redis_memory(used, max);
                }
                if let Some(reason) = broken {
                    shared.settings.metrics.pipeline.record_redis_error();
                    self.mark_down(reason);
                }
            }
        }
        self.batch.close(&mut self.depth, &self.local.shared.settings.metrics.pipeline);
        // One node never redirects; if it did, nobody could follow.
        self.batch.refuse_redirected();
    }

    /// Writes the round's commands and reads `count` replies, each within
    /// `ENQUEUE_TIMEOUT_MS`.
    async fn exchange(&mut self, count: usize) -> Result<Vec<Value>, Broken> {
        let timeout = self.settings().enqueue_timeout;
        let packed = self.round.commands.bytes_mut();
        let Link::Up(stream) = &mut self.link else { unreachable!("exchange on a live link") };
        match stream {
            Stream::Tcp(s) => exchange(s, &mut self.rbuf, packed, count, timeout).await,
            Stream::Unix(s) => exchange(s, &mut self.rbuf, packed, count, timeout).await,
        }
    }

    fn mark_down(&mut self, reason: String) {
        error!(error = %reason, redis = %self.local.shared.name, "redis connection lost; reconnecting with backoff");
        self.rbuf.clear();
        let mut backoff = RECONNECT;
        self.link = Link::Down { retry_at: Instant::now() + backoff.step(), backoff, reason };
    }

    /// Reconnects if the link is down and the backoff allows.
    async fn ensure_link(&mut self) {
        let Link::Down { retry_at, backoff, reason } = &self.link else { return };
        if Instant::now() < *retry_at {
            return;
        }
        let (mut backoff, old) = (*backoff, reason.clone());
        self.rbuf.clear();
        match connect(&self.local.shared, &mut self.rbuf).await {
            Ok(stream) => {
                info!(redis = %self.local.shared.name, "redis connected (per-core enqueue)");
                self.link = Link::Up(stream);
            }
            Err(reason) => {
                if reason != old {
                    warn!(error = %reason, redis = %self.local.shared.name,
                          "redis unreachable; this core's requests get 503 until it is back");
                }
                self.link = Link::Down { retry_at: Instant::now() + backoff.step(), backoff, reason };
            }
        }
    }
}

/// A connection, authenticated, on the right database, every partition's
/// stream and the group prepared (a Redis restarted empty is repaired).
async fn connect(shared: &Shared, rbuf: &mut Vec<u8>) -> Result<Stream, String> {
    let patience = shared.settings.enqueue_timeout.min(Duration::from_secs(1));
    let timed_out = |_| "connect timed out".to_string();
    match &shared.endpoint {
        Endpoint::Tcp(addr) => {
            let mut stream = monoio::time::timeout(patience, TcpStream::connect(*addr))
                .await
                .map_err(timed_out)?
                .map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            prepare(shared, &mut stream, rbuf).await?;
            Ok(Stream::Tcp(stream))
        }
        Endpoint::Unix(path) => {
            let mut stream = monoio::time::timeout(patience, UnixStream::connect(path))
                .await
                .map_err(timed_out)?
                .map_err(|e| format!("{}: {e}", path.display()))?;
            prepare(shared, &mut stream, rbuf).await?;
            Ok(Stream::Unix(stream))
        }
    }
}

/// Authenticates `stream`, selects the database and prepares every
/// partition's stream and the group.
async fn prepare(
    shared: &Shared,
    stream: &mut (impl AsyncReadRent + AsyncWriteRent),
    rbuf: &mut Vec<u8>,
) -> Result<(), String> {
    let s = &shared.settings;
    let r = shared.info.redis_settings();
    let mut pipe = redis::pipe();
    if let Some(password) = r.password() {
        match r.username() {
            Some(user) => pipe.cmd("AUTH").arg(user).arg(password),
            None => pipe.cmd("AUTH").arg(password),
        };
    }
    if r.db() != 0 {
        pipe.cmd("SELECT").arg(r.db());
    }
    for key in &shared.streams {
        pipe.add_command(super::group::create(key));
    }
    let count = pipe.len();
    let replies = exchange(stream, rbuf, &mut pipe.get_packed_pipeline(), count, s.enqueue_timeout)
        .await
        .map_err(|b| b.reason)?;
    for reply in replies {
        if let Value::ServerError(e) = reply {
            if !super::group::exists_already(e.code()) {
                // Never the password: Redis's errors do not echo arguments.
                return Err(format!("{} {}", e.code(), e.details().unwrap_or_default()));
            }
        }
    }
    Ok(())
}

/// Writes `packed` on `stream` and reads `count` replies into values.
/// `packed` keeps its allocation, unless the write timed out.
async fn exchange(
    stream: &mut (impl AsyncReadRent + AsyncWriteRent),
    rbuf: &mut Vec<u8>,
    packed: &mut Vec<u8>,
    count: usize,
    timeout: Duration,
) -> Result<Vec<Value>, Broken> {
    let mut read = Vec::with_capacity(count);
    let broken = |read, reason: String| Err(Broken { read, reason });
    match monoio::time::timeout(timeout, stream.write_all(std::mem::take(packed))).await {
        Ok((Ok(_), buf)) => *packed = buf,
        Ok((Err(e), _)) => return broken(read, e.to_string()),
        Err(_) => return broken(read, "redis write timed out".into()),
    }
    let deadline = Instant::now() + timeout;
    let mut start = 0;
    loop {
        while read.len() < count {
            match frame_len(&rbuf[start..]) {
                Ok(Some(len)) => {
                    match redis::parse_redis_value(&rbuf[start..start + len]) {
                        Ok(v) => read.push(v),
                        Err(e) => return broken(read, e.to_string()),
                    }
                    start += len;
                }
                Ok(None) => break,
                Err(e) => return broken(read, format!("unreadable redis reply: {}", e.0)),
            }
        }
        if read.len() == count {
            rbuf.drain(..start);
            return Ok(read);
        }
        rbuf.drain(..start);
        start = 0;
        if rbuf.capacity() - rbuf.len() < READ_CHUNK {
            rbuf.reserve(READ_CHUNK);
        }
        let len = rbuf.len();
        let buf = std::mem::take(rbuf);
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, stream.read(buf.slice_mut(len..))).await {
            Ok((res, slice)) => {
                *rbuf = slice.into_inner();
                match res {
                    Ok(0) => return broken(read, "redis closed the connection".into()),
                    Ok(_) => {}
                    Err(e) => return broken(read, e.to_string()),
                }
            }
            // The buffer went with the cancelled read; the link is dropped anyway.
            Err(_) => return broken(read, "no reply from redis within ENQUEUE_TIMEOUT_MS".into()),
        }
    }
}
