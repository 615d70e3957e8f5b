//! The Redis pipeline thread: batches `XADD`s and answers each job.
//! See the module docs of [`crate::queue`] for the contract.

use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tracing::{error, info, warn};

use super::{EnqueueError, Enqueuer, Pending, StreamId, GROUP};

/// First reconnect delay; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between reconnect attempts, so recovery after Redis returns
/// takes at most this long.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often `INFO memory` rides along with a batch (never on its own: an
/// idle pipeline adds nothing to Redis's memory).
const MEMORY_REFRESH: Duration = Duration::from_millis(100);

/// What the pipeline thread needs from the configuration.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    /// `REDIS_URL`.
    pub redis_url: String,
    /// `QUEUE_NAME`.
    pub stream: String,
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
    /// `MAX_QUEUE_DEPTH`: stream length at which new jobs are refused (the
    /// workers are behind or PostgreSQL is down and Redis memory is finite).
    pub max_queue_depth: u64,
    /// `MAX_REDIS_MEMORY_PERCENT`: share of Redis's `maxmemory` in use at
    /// which new jobs are refused (0 = never), so Redis keeps room for the
    /// workers' writes and never reaches its own out-of-memory refusals.
    pub max_memory_percent: u8,
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
/// The `REDIS_URL` cannot be parsed, or the thread cannot be spawned.
pub fn spawn_pipeline(settings: PipelineSettings) -> std::io::Result<(Enqueuer, PipelineHandle)> {
    let client = redis::Client::open(settings.redis_url.as_str())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let (enqueuer, rx) = Enqueuer::bounded(settings.channel_capacity, settings.enqueue_timeout);
    let backlog = rx.clone();
    let thread = thread::Builder::new()
        .name("redis-pipeline".into())
        .spawn(move || Pipeline::new(client, settings).run(rx))?;
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

struct Pipeline {
    client: redis::Client,
    settings: PipelineSettings,
    link: Link,
    batch: Vec<Pending>,
    pipe: redis::Pipeline,
    /// Stream length after the last pipeline (`XLEN` rides along with each).
    depth: u64,
    /// When Redis's memory was last read.
    memory_read_at: Option<Instant>,
    /// Whether the last reading was over `MAX_REDIS_MEMORY_PERCENT`.
    memory_full: bool,
}

impl Pipeline {
    fn new(client: redis::Client, settings: PipelineSettings) -> Self {
        let batch = Vec::with_capacity(settings.batch_max);
        let link =
            Link::Down { retry_at: Instant::now(), backoff: MIN_BACKOFF, reason: "not yet connected".into() };
        // Per-command errors (say, OOM under `noeviction`) fail only their own
        // job; only a connection-level error fails the whole batch.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        Self { client, settings, link, batch, pipe, depth: 0, memory_read_at: None, memory_full: false }
    }

    fn run(mut self, rx: Receiver<Pending>) {
        info!(stream = %self.settings.stream, batch_max = self.settings.batch_max,
              linger_us = self.settings.batch_linger.as_micros() as u64, "redis pipeline thread started");
        // Connect eagerly so start-up logs say whether Redis is there.
        self.ensure_link();
        while self.fill_batch(&rx) {
            self.flush();
        }
        info!("redis pipeline thread stopped: every core has let go of the queue");
    }

    /// Blocks for the first job, then takes what else is queued. Returns false
    /// once the channel is closed and empty.
    fn fill_batch(&mut self, rx: &Receiver<Pending>) -> bool {
        match rx.recv() {
            Ok(p) => self.batch.push(p),
            Err(_) => return false,
        }
        let deadline = Instant::now() + self.settings.batch_linger;
        while self.batch.len() < self.settings.batch_max {
            let next = if self.settings.batch_linger.is_zero() {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_deadline(deadline)
            };
            match next {
                Ok(p) => self.batch.push(p),
                Err(_) => break,
            }
        }
        true
    }

    /// Sends the batch as one pipeline and answers every job in it.
    fn flush(&mut self) {
        // A caller that gave up has already answered 503; storing its job now
        // would only make a duplicate for the sender's retry to collide with.
        self.batch.retain(|p| !p.reply.is_canceled());
        if self.batch.is_empty() {
            return;
        }
        let refusal = if self.depth >= self.settings.max_queue_depth {
            Some(EnqueueError::QueueFull)
        } else if self.memory_full {
            Some(EnqueueError::MemoryFull)
        } else {
            None
        };
        let full = refusal.is_some();
        self.pipe.clear();
        if !full {
            for p in &self.batch {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(&self.settings.stream).arg("*");
                p.job.write_stream_fields(&mut cmd);
                self.pipe.add_command(cmd);
            }
        }
        self.pipe.cmd("XLEN").arg(&self.settings.stream);
        let read_memory = self.memory_read_at.is_none_or(|at| at.elapsed() >= MEMORY_REFRESH);
        if read_memory {
            self.pipe.cmd("INFO").arg("memory");
        }
        self.ensure_link();
        let sent_at = Instant::now();
        let outcome = match &mut self.link {
            Link::Up(con) => self.pipe.query::<Vec<redis::RedisResult<redis::Value>>>(con),
            Link::Down { .. } => Err(redis::RedisError::from((redis::ErrorKind::Io, "redis is down"))),
        };
        let metrics = self.settings.metrics.clone();
        let metrics = &metrics.pipeline;
        match outcome {
            Ok(mut replies) => {
                if read_memory {
                    let info = replies.pop().and_then(|r| r.ok());
                    self.note_memory(info.and_then(|v| redis::from_redis_value::<String>(v).ok()).as_deref());
                }
                let enqueued =
                    if full { 0 } else { replies.iter().filter(|r| r.is_ok()).count().saturating_sub(1) };
                metrics.record_batch(self.batch.len(), sent_at.elapsed(), enqueued);
                let depth =
                    replies.pop().and_then(|r| r.ok()).and_then(|v| redis::from_redis_value::<u64>(v).ok());
                if let Some(depth) = depth {
                    self.note_depth(depth);
                }
                if let Some(refusal) = refusal {
                    for p in self.batch.drain(..) {
                        let _ = p.reply.send(Err(refusal.clone()));
                    }
                } else {
                    for (p, reply) in self.batch.drain(..).zip(replies) {
                        let id = match reply {
                            Ok(v) => redis::from_redis_value::<StreamId>(v)
                                .map_err(|e| EnqueueError::Unavailable(e.to_string())),
                            Err(e) => Err(EnqueueError::Unavailable(e.to_string())),
                        };
                        let _ = p.reply.send(id);
                    }
                }
            }
            Err(e) => {
                metrics.record_redis_error();
                if matches!(self.link, Link::Up(_)) {
                    self.mark_down(e.to_string());
                }
                let reason = self.down_reason();
                for p in self.batch.drain(..) {
                    let _ = p.reply.send(Err(EnqueueError::Unavailable(reason.clone())));
                }
            }
        }
        // Any entry the pipeline did not answer (a short reply) must not
        // be left hanging: its reply sender drops here and the caller sees 503.
        self.batch.clear();
    }

    /// Records the stream length, logging when the depth limit is crossed.
    fn note_depth(&mut self, depth: u64) {
        self.settings.metrics.pipeline.set_stream_length(depth);
        let max = self.settings.max_queue_depth;
        if depth >= max && self.depth < max {
            warn!(
                depth,
                max_queue_depth = max,
                "queue is full: new requests get 503 until the workers catch up"
            );
        } else if depth < max && self.depth >= max {
            info!(depth, "queue below MAX_QUEUE_DEPTH again: accepting");
        }
        self.depth = depth;
    }

    /// Records Redis's memory from an `INFO memory` reply, logging when the
    /// `MAX_REDIS_MEMORY_PERCENT` line is crossed.
    fn note_memory(&mut self, info: Option<&str>) {
        self.memory_read_at = Some(Instant::now());
        let Some((used, max)) = info.and_then(parse_memory) else { return };
        self.settings.metrics.pipeline.set_redis_memory(used, max);
        let percent = u64::from(self.settings.max_memory_percent);
        let full = percent > 0 && max > 0 && used.saturating_mul(100) >= max.saturating_mul(percent);
        if full && !self.memory_full {
            warn!(
                used_memory = used,
                maxmemory = max,
                max_redis_memory_percent = percent,
                "redis memory is nearly full: new requests get 503 until the workers free some"
            );
        } else if !full && self.memory_full {
            info!(
                used_memory = used,
                maxmemory = max,
                "redis memory below MAX_REDIS_MEMORY_PERCENT again: accepting"
            );
        }
        self.memory_full = full;
    }

    /// Reconnects if the link is down and the backoff allows.
    fn ensure_link(&mut self) {
        let Link::Down { retry_at, backoff, .. } = &self.link else { return };
        if Instant::now() < *retry_at {
            return;
        }
        let backoff = *backoff;
        match self.connect() {
            Ok(con) => {
                info!(redis = %crate::config::redact(&self.settings.redis_url), "redis connected");
                self.link = Link::Up(con);
            }
            Err(e) => self.fail_connect(e.to_string(), backoff),
        }
    }

    fn connect(&self) -> redis::RedisResult<redis::Connection> {
        let timeout = self.settings.enqueue_timeout;
        let mut con = self.client.get_connection_with_timeout(timeout.min(Duration::from_secs(1)))?;
        con.set_read_timeout(Some(timeout))?;
        con.set_write_timeout(Some(timeout))?;
        prepare_stream(&mut con, &self.settings.stream)?;
        check_durability(&mut con);
        Ok(con)
    }

    fn fail_connect(&mut self, reason: String, backoff: Duration) {
        let first = match &self.link {
            Link::Down { reason: old, .. } => old != &reason,
            Link::Up(_) => true,
        };
        if first {
            warn!(error = %reason, redis = %crate::config::redact(&self.settings.redis_url),
                  "redis unreachable; requests get 503 until it is back");
        }
        let next = (backoff * 2).min(MAX_BACKOFF);
        self.link = Link::Down { retry_at: Instant::now() + backoff, backoff: next, reason };
    }

    fn mark_down(&mut self, reason: String) {
        error!(error = %reason, "redis connection lost; reconnecting with backoff");
        self.link = Link::Down { retry_at: Instant::now() + MIN_BACKOFF, backoff: MIN_BACKOFF * 2, reason };
    }

    fn down_reason(&self) -> String {
        match &self.link {
            Link::Down { reason, .. } => reason.clone(),
            Link::Up(_) => "redis error".into(),
        }
    }
}

/// Creates the stream and the consumer group if either is missing.
///
/// # Errors
/// Redis failed.
pub fn prepare_stream(con: &mut redis::Connection, stream: &str) -> redis::RedisResult<()> {
    let created: redis::RedisResult<()> =
        redis::cmd("XGROUP").arg("CREATE").arg(stream).arg(GROUP).arg("0").arg("MKSTREAM").query(con);
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// `(used_memory, maxmemory)` from an `INFO memory` reply.
fn parse_memory(info: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).and_then(|v| v.trim().parse().ok())
    };
    Some((field("used_memory")?, field("maxmemory")?))
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

#[cfg(test)]
mod tests {
    #[test]
    fn memory_is_read_from_info() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\nmaxmemory:2097152\r\nmaxmemory_human:2.00M\r\n";
        assert_eq!(super::parse_memory(info), Some((1_048_576, 2_097_152)));
        assert_eq!(super::parse_memory("used_memory:1\r\n"), None);
    }
}
