//! Stage 3: jobs from every core → one Redis pipeline thread → the stream.
//!
//! # Structures
//! * [`Enqueuer`]: a cheap clone per core. It puts `(WebhookJob, reply)` on a
//!   bounded `crossbeam` channel (`ENQUEUE_CHANNEL_CAPACITY`) and awaits the
//!   reply, a `futures` oneshot completed on the core by the core's
//!   dispatcher ([`reply`]): a batch's answers wake each core once, not
//!   once per job.
//! * The pipeline thread ([`pipeline`]): a plain thread with one blocking
//!   Redis connection ([`link`]). It takes the first waiting job, then
//!   whatever else is queued (up to `BATCH_MAX`, waiting at most
//!   `BATCH_LINGER_US` for more), sends **one** pipeline of `XADD`s and
//!   answers every job with its stream id. What a batch's pipeline holds
//!   and what its replies mean is [`batch`], shared by every engine; the
//!   commands are written straight into the bytes sent ([`resp`]).
//! * On a Redis Cluster each master has a link thread of its own doing the
//!   above for its partitions, and a core hands each job straight to its
//!   master's link; the pipeline thread keeps those routes ([`router`]). A
//!   master that stops answering holds up only its own jobs.
//!
//! * Or, with `ENQUEUE_MODE=core` on one node, each core's own flusher
//!   ([`per_core`]): the same contract without leaving the core's thread.
//!
//! # Redis keys
//! * the stream `QUEUE_NAME` (default [`DEFAULT_STREAM`]), one entry per job,
//!   fields per [`crate::job::fields`]; never trimmed (`MAXLEN` would drop
//!   jobs not yet stored), entries are deleted by the workers after commit;
//! * the consumer group [`GROUP`], created with the stream (`MKSTREAM`, from
//!   id 0) on every (re)connect so a Redis restarted empty is repaired.
//!
//! # Guarantees
//! A job's reply is `Ok(id)` only after Redis answered its `XADD`, so a 202 is
//! never sent for a job Redis does not have. Everything else is an
//! [`EnqueueError`] (503): the channel full, Redis unreachable or erroring,
//! no reply within `ENQUEUE_TIMEOUT_MS`, or the gateway shutting down. A job
//! whose caller has already given up (timed out) is not sent, so a 503 is
//! rarely followed by a stored duplicate; when it is (the reply was lost in
//! flight), the sender's retry is deduplicated downstream by `(provider, eventId)`.
//!
//! # Failure
//! On a connection error the link fails the batch in hand, drops the
//! connection and reconnects with capped exponential backoff; while Redis is
//! down jobs fail at once (fast 503s) instead of piling up. Each state change
//! is logged once, never per request. Every other stage reaches a cluster
//! through [`routed`], where a master that stops answering is skipped by
//! every connection of the process until a probe finds it back.

mod admission;
mod batch;
mod group;
pub mod keys;
mod link;
mod per_core;
mod pipeline;
mod reply;
mod resp;
mod routed;
mod router;
mod settings;
mod slots;
mod target;
pub mod topology;

use std::time::Duration;

use futures_channel::oneshot;
use thiserror::Error;

use crate::backoff::Backoff;
use crate::job::WebhookJob;

/// Reconnecting to a Redis master (the pipeline's links, the per-core
/// enqueue): 50 ms, doubling to 1 s, so recovery after Redis returns takes
/// at most a second.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));

pub use group::prepare_stream;
pub use per_core::PerCoreError;
pub use pipeline::{spawn_pipeline, warn_about_durability, PipelineHandle};
pub use reply::{CoreAnswers, Outcome, Reply};
pub use resp::Commands;
pub use settings::PipelineSettings;
pub use target::{parse_cluster_nodes, Conn, Queue, Target, MAX_PARTITIONS};

/// Default stream name (`QUEUE_NAME`).
pub const DEFAULT_STREAM: &str = "webhooks";
/// The consumer group the workers read with.
pub const GROUP: &str = "ingest";

/// Why a job was not enqueued. Every variant maps to 503 + `Retry-After`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EnqueueError {
    /// The hand-off channel is full: the pipeline thread is behind.
    #[error("enqueue channel full")]
    Saturated,
    /// Redis could not be reached or failed the command.
    #[error("redis unavailable: {0}")]
    Unavailable(Unavailable),
    /// No reply within `ENQUEUE_TIMEOUT_MS`.
    #[error("no reply from redis in time")]
    TimedOut,
    /// The stream holds `MAX_QUEUE_DEPTH` entries: the workers are behind.
    #[error("queue is full")]
    QueueFull,
    /// Redis uses `MAX_REDIS_MEMORY_PERCENT` of its `maxmemory`.
    #[error("redis memory is nearly full")]
    MemoryFull,
    /// The pipeline thread has stopped (shutdown).
    #[error("enqueue pipeline stopped")]
    Closed,
}

/// Why Redis could not take a job: each way the enqueue learns it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// The connection to this master is down or broke mid-batch.
    #[error("{master}: {reason}")]
    Down {
        /// The master (`host:port`, or the node's name).
        master: String,
        /// What the connection met.
        reason: String,
    },
    /// Redis answered the `XADD` with an error.
    #[error("{code} {detail}")]
    Refused {
        /// Its code (`ERR`, `OOM`, `READONLY`…).
        code: String,
        /// The rest of its message.
        detail: String,
    },
    /// The reply was not a stream id.
    #[error("unexpected reply: {0}")]
    BadReply(String),
    /// The batch ended without an answer for this job.
    #[error("no reply from redis")]
    NoReply,
    /// Fewer replicas than `REDIS_WAIT_REPLICAS` acknowledged in time.
    #[error("{have} of {want} replicas acknowledged within REDIS_WAIT_TIMEOUT_MS")]
    ShortOfReplicas {
        /// Replicas that acknowledged.
        have: u64,
        /// Replicas asked for.
        want: u16,
    },
    /// The connection broke before the `WAIT` answered: no replica is known to hold it.
    #[error("redis failed before WAIT answered: {0}")]
    WaitUnanswered(String),
    /// The partition's slot is moving between masters.
    #[error("the partition's slot is moving; retry")]
    SlotMoving,
    /// No master serves the partition now.
    #[error("no redis master serves this partition now")]
    NoMaster,
    /// The partition's master changed while the job waited.
    #[error("the partition's master changed; retry")]
    MasterChanged,
    /// Redirected to another master a second time (`MOVED`/`ASK`).
    #[error("redirected to {0}")]
    Redirected(String),
}

/// The stream id Redis gave a job (`<ms>-<seq>`).
pub type StreamId = String;

/// A job on its way to the pipeline thread, with the way back.
pub struct Pending {
    /// The job.
    pub job: WebhookJob,
    /// Where the pipeline thread sends the outcome.
    pub reply: Reply,
    /// How it reached the master it is sent to (a cluster's redirects).
    hop: Hop,
}

impl Pending {
    /// `job`, answered through `reply`.
    pub fn new(job: WebhookJob, reply: Reply) -> Self {
        Self { job, reply, hop: Hop::Routed }
    }
}

/// How a job reached the master it goes to: a redirect is followed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// By the slot map.
    Routed,
    /// After a `MOVED`.
    Moved,
    /// After an `ASK`: its `XADD` is preceded by `ASKING`.
    Asked,
}

/// Which way jobs go to Redis (`ENQUEUE_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnqueueMode {
    /// Over a channel to the one pipeline thread (the default).
    #[default]
    Thread,
    /// Each core on its own connection (one Redis node only).
    Core,
}

/// The per-core handle for enqueuing jobs. Cloning is cheap.
#[derive(Clone)]
pub struct Enqueuer {
    via: Via,
    timeout: Duration,
    /// The mailbox of the core this handle serves ([`Enqueuer::answered_through`]).
    home: Option<std::sync::Arc<reply::Mailbox>>,
}

#[derive(Clone)]
enum Via {
    Thread(crossbeam_channel::Sender<Pending>),
    /// A cluster: straight to the link of the job's master. The sender is
    /// never used: the router stops once every clone of it is dropped.
    Routed {
        routes: std::sync::Arc<router::Routes>,
        _life: crossbeam_channel::Sender<()>,
    },
    Core(std::sync::Arc<per_core::Shared>),
}

impl Enqueuer {
    /// A handle and the receiving end of its channel. [`spawn_pipeline`]
    /// gives the receiver to the Redis thread; benchmarks and embedders can
    /// drain it themselves.
    pub fn bounded(capacity: usize, timeout: Duration) -> (Self, crossbeam_channel::Receiver<Pending>) {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        (Self { via: Via::Thread(tx), timeout, home: None }, rx)
    }

    /// A handle that routes each job to its master's link (a cluster).
    fn routed(
        routes: std::sync::Arc<router::Routes>,
        life: crossbeam_channel::Sender<()>,
        timeout: Duration,
    ) -> Self {
        Self { via: Via::Routed { routes, _life: life }, timeout, home: None }
    }

    /// A handle whose jobs each core sends itself (`ENQUEUE_MODE=core`).
    ///
    /// # Errors
    /// The queue is a cluster, or reached neither over TCP nor a Unix socket.
    pub fn per_core(settings: PipelineSettings) -> Result<Self, PerCoreError> {
        let timeout = settings.enqueue_timeout;
        let shared = std::sync::Arc::new(per_core::Shared::new(settings)?);
        Ok(Self { via: Via::Core(shared), timeout, home: None })
    }

    /// This handle for one core, whose jobs' answers come back through
    /// `answers`, one wake-up per batch ([`reply`]). The per-core enqueue
    /// answers on the core already and keeps doing so.
    pub fn answered_through(&self, answers: &CoreAnswers) -> Self {
        let home = match self.via {
            Via::Core(_) => None,
            _ => Some(answers.mailbox()),
        };
        Self { home, ..self.clone() }
    }

    /// Hands `job` to the pipeline thread and waits (asynchronously, inside a
    /// monoio runtime with timers enabled) for Redis's answer.
    ///
    /// # Errors
    /// [`EnqueueError`] whenever the job is not known to be in Redis.
    pub async fn enqueue(&self, job: WebhookJob) -> Result<StreamId, EnqueueError> {
        let (reply, rx) = Reply::new(self.home.clone());
        match &self.via {
            Via::Thread(tx) => tx.try_send(Pending::new(job, reply)).map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(_) => EnqueueError::Saturated,
                crossbeam_channel::TrySendError::Disconnected(_) => EnqueueError::Closed,
            })?,
            Via::Routed { routes, .. } => routes.submit(Pending::new(job, reply))?,
            Via::Core(shared) => per_core::submit(shared, Pending::new(job, reply))?,
        }
        match monoio::time::timeout(self.timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(oneshot::Canceled)) => Err(EnqueueError::Closed),
            Err(_elapsed) => Err(EnqueueError::TimedOut),
        }
    }

    /// Jobs waiting for Redis now, not counting batches in flight: in the
    /// channel to the thread, or on every core's flusher.
    pub fn backlog(&self) -> usize {
        match &self.via {
            Via::Thread(tx) => tx.len(),
            Via::Routed { routes, .. } => routes.backlog(),
            Via::Core(shared) => per_core::backlog(shared),
        }
    }
}
