//! One core: a pinned thread running a monoio runtime (io_uring, or epoll
//! where the kernel refuses io_uring) that accepts on its own listener and
//! serves each connection as a local task.
//!
//! Nothing here is shared between cores but the [`Enqueuer`] handle and the
//! shutdown token; the parser scratch space and connection count are local.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures_core::Stream;
use monoio::net::TcpListener;
use monoio::{FusionDriver, FusionRuntime, RuntimeBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::budget::{BufferBudget, ConnectionsPerClient};
use super::conn::{refuse, serve, CoreContext};
use super::cors::Cors;
use super::handler::Handler;
use super::proxy::TrustedProxies;
use super::ratelimit::RateLimiter;
use super::request::Limits;
use super::security::HELMET_HEADERS;
use crate::backoff::Backoff;
use crate::ingest::{Ingestor, JsonParser};
use crate::queue::{CoreAnswers, Enqueuer};

/// io_uring submission queue size per core.
const URING_ENTRIES: u32 = 4096;

/// Which I/O driver a core's runtime ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring, with the completion mode the kernel accepted.
    IoUring(TaskRun),
    /// The epoll fallback (io_uring refused: old kernel, seccomp, sysctl).
    Epoll,
}

impl Driver {
    /// `io_uring` or `epoll`, as logged.
    pub fn name(self) -> &'static str {
        match self {
            Driver::IoUring(_) => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

/// `URING_TASKRUN`: when the kernel runs a ring's completion work (the
/// step that turns a finished receive or send into a completion entry).
///
/// By default (`signal`) the kernel interrupts the core's thread for it
/// as soon as the data arrives, even mid-request: an interrupt and a return
/// to user mode per completion (perf: 7.5 % of the gateway's samples in
/// `irqentry_exit_to_user_mode` under `bench-http`). The other two let the
/// thread finish what it is doing and take the work in its next pass
/// through the kernel, which a runtime that submits every loop makes
/// anyway. tuning.md §23.9 has the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskRun {
    /// `IORING_SETUP_DEFER_TASKRUN` (Linux 6.1): the work waits until the
    /// thread asks for completions, so it runs in batches on that thread.
    Defer,
    /// `IORING_SETUP_COOP_TASKRUN` (Linux 5.19): no interrupt; the work runs
    /// at the thread's next entry to the kernel.
    Coop,
    /// The kernel's default: an interrupt per completion's work.
    Signal,
}

impl TaskRun {
    /// As `URING_TASKRUN` spells it.
    pub fn name(self) -> &'static str {
        match self {
            TaskRun::Defer => "defer",
            TaskRun::Coop => "coop",
            TaskRun::Signal => "signal",
        }
    }

    /// The mode to try when the kernel refuses this one (it predates it).
    fn older(self) -> Option<TaskRun> {
        match self {
            TaskRun::Defer => Some(TaskRun::Coop),
            TaskRun::Coop => Some(TaskRun::Signal),
            TaskRun::Signal => None,
        }
    }

    fn builder(self) -> io_uring::Builder {
        let mut b = io_uring::IoUring::builder();
        // Only the core's own thread submits to its ring: DEFER_TASKRUN
        // requires saying so, and either mode lets the kernel skip the ring's
        // submission lock for it.
        match self {
            TaskRun::Defer => b.setup_defer_taskrun().setup_single_issuer(),
            TaskRun::Coop => b.setup_coop_taskrun().setup_single_issuer(),
            TaskRun::Signal => &mut b,
        };
        b
    }
}

/// What one core runs with.
pub struct CoreSpec {
    /// Runtime index, 0-based.
    pub index: usize,
    /// The CPU to pin to, if pinning.
    pub cpu: Option<core_affinity::CoreId>,
    /// This core's listener (SO_REUSEPORT, already bound and listening).
    pub listener: std::net::TcpListener,
    /// Request limits and timeouts.
    pub settings: CoreSettings,
    /// The hand-off to the Redis pipeline thread.
    pub enqueuer: Enqueuer,
    /// Cancelled to stop accepting and drain.
    pub shutdown: CancellationToken,
    /// The readiness checker.
    pub health: crate::health::Health,
    /// The process's metrics (this core writes only `metrics.core(index)`).
    pub metrics: std::sync::Arc<crate::telemetry::metrics::Metrics>,
}

/// Per-core HTTP settings, taken from [`crate::config::Config`].
#[derive(Debug, Clone)]
pub struct CoreSettings {
    /// `URING_TASKRUN`.
    pub uring_taskrun: TaskRun,
    /// Header and body limits.
    pub limits: Limits,
    /// `REQUEST_TIMEOUT_MS`.
    pub request_timeout: Duration,
    /// `KEEPALIVE_TIMEOUT_MS`.
    pub keepalive_timeout: Duration,
    /// `RETRY_AFTER_SECS`.
    pub retry_after_secs: u32,
    /// `MAX_CONNECTIONS_PER_CORE`.
    pub max_connections: usize,
    /// `MAX_CONNECTIONS_PER_IP` (per core; 0 = no cap; trusted proxies are exempt).
    pub max_connections_per_ip: u32,
    /// `MAX_BUFFER_BYTES_PER_CORE`: request bodies in flight on one core.
    pub max_buffer_bytes: usize,
    /// `MAX_BODY_BYTES`: the body limit of routes without their own
    /// (`limits.max_body` is the largest of all routes').
    pub max_body: usize,
    /// `SHUTDOWN_TIMEOUT_MS`.
    pub shutdown_timeout: Duration,
    /// `JSON_PARSER`.
    pub json_parser: JsonParser,
    /// `MAX_JSON_DEPTH` (0 = unchecked).
    pub max_json_depth: usize,
    /// `SECURITY_HEADERS`.
    pub security_headers: bool,
    /// `CORS_ORIGINS`.
    pub cors: Cors,
    /// `RATE_LIMIT_GLOBAL`, requests/s for the whole process (0 = off).
    pub rate_limit_global: u64,
    /// `RATE_LIMIT_PER_IP`, requests/s per client (0 = off).
    pub rate_limit_per_ip: u64,
    /// How many runtimes share the global limit.
    pub cores: usize,
    /// `TRUST_PROXY`: the proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: TrustedProxies,
    /// `SOURCES_FILE`: who may post to which route (the envelope everywhere without it).
    pub sources: std::sync::Arc<crate::ingest::sources::Sources>,
}

/// Runs one core until shutdown has drained it. Reports the driver in use
/// through `started` once the runtime is up (before serving).
///
/// # Errors
/// The runtime could not be built or the listener not adopted.
pub fn run_core(mut spec: CoreSpec, started: impl FnOnce(Driver)) -> std::io::Result<()> {
    if let Some(cpu) = spec.cpu {
        if !core_affinity::set_for_current(cpu) {
            warn!(runtime = spec.index, cpu = cpu.id, "could not pin runtime thread to its core");
        }
    }
    let mut taskrun = spec.settings.uring_taskrun;
    let mut rt = loop {
        let built = RuntimeBuilder::<FusionDriver>::new()
            .uring_builder(taskrun.builder())
            .with_entries(URING_ENTRIES)
            .enable_timer()
            .build();
        match (built, taskrun.older()) {
            (Ok(rt), _) => break rt,
            (Err(e), Some(older)) => {
                warn!(runtime = spec.index, error = %e, refused = taskrun.name(), using = older.name(),
                      "the kernel refused URING_TASKRUN's mode; trying the older one");
                taskrun = older;
            }
            (Err(e), None) => return Err(e),
        }
    };
    let driver = match &rt {
        FusionRuntime::Uring(_) => Driver::IoUring(taskrun),
        FusionRuntime::Legacy(_) => Driver::Epoll,
    };
    started(driver);
    // The answers to this core's jobs come back through its own mailbox,
    // closed once the runtime has stopped (see queue::CoreAnswers).
    let answers = CoreAnswers::new();
    spec.enqueuer = spec.enqueuer.answered_through(&answers);
    let dispatch = answers.dispatch();
    let served = rt.block_on(async move {
        monoio::spawn(dispatch);
        accept_loop(spec).await
    });
    drop(rt);
    answers.close();
    served
}

async fn accept_loop(spec: CoreSpec) -> std::io::Result<()> {
    // Adopted inside the runtime: monoio registers sockets with the current driver.
    let listener = TcpListener::from_std(spec.listener)?;
    let settings = spec.settings;
    let metrics = spec.metrics.core(spec.index);
    let handler = Handler {
        retry_after_secs: settings.retry_after_secs,
        enqueuer: spec.enqueuer,
        ingestor: RefCell::new(Ingestor::new(settings.json_parser).with_max_depth(settings.max_json_depth)),
        sources: settings.sources.clone(),
        max_body: settings.max_body,
        fixed_headers: if settings.security_headers { HELMET_HEADERS } else { b"" },
        cors: settings.cors.clone(),
        limiter: RefCell::new(RateLimiter::new(
            settings.rate_limit_global,
            settings.rate_limit_per_ip,
            settings.cores,
        )),
        proxies: settings.trusted_proxies.clone(),
        health: spec.health,
        metrics: metrics.clone(),
        all_metrics: spec.metrics.clone(),
        core: spec.index,
    };
    let ctx = Rc::new(CoreContext {
        limits: settings.limits,
        request_timeout: settings.request_timeout,
        keepalive_timeout: settings.keepalive_timeout,
        shutdown: spec.shutdown.clone(),
        buffers: BufferBudget::new(settings.max_buffer_bytes, settings.limits.max_body),
        handler,
        metrics,
    });
    let open = Rc::new(Cell::new(0usize));
    let per_client = Rc::new(ConnectionsPerClient::new(settings.max_connections_per_ip));
    // Each connection task holds a sender; when the last is dropped the
    // receiver ends, which is how draining knows all connections are done.
    let (done_tx, mut done_rx) = futures_channel::mpsc::channel::<()>(0);
    let mut accept_backoff = Backoff::new(Duration::from_millis(5), Duration::from_secs(1));
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = spec.shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                accept_backoff.reset();
                let peer = peer.ip();
                // A trusted proxy carries many clients: it is not one of them.
                let counted = !ctx.handler.proxies.contains(peer);
                // Over a bound: refuse rather than let one core, or one client, drown.
                let refusal = if open.get() >= settings.max_connections {
                    Some("too many connections, retry later")
                } else if counted && !per_client.admit(peer) {
                    Some("too many connections from this client, retry later")
                } else {
                    None
                };
                if let Some(why) = refusal {
                    monoio::spawn(refuse(stream, peer, ctx.clone(), why));
                    continue;
                }
                let _ = stream.set_nodelay(true);
                open.set(open.get() + 1);
                let (ctx, open, per_client, guard) =
                    (ctx.clone(), open.clone(), per_client.clone(), done_tx.clone());
                monoio::spawn(async move {
                    serve(stream, peer, ctx).await;
                    if counted {
                        per_client.release(peer);
                    }
                    open.set(open.get() - 1);
                    drop(guard);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on accept.
                warn!(runtime = spec.index, error = %e, "accept failed; backing off");
                monoio::time::sleep(accept_backoff.step()).await;
            }
        }
    }
    drop(listener);
    drop(done_tx);
    let in_flight = open.get();
    let drained = std::future::poll_fn(|cx| Pin::new(&mut done_rx).poll_next(cx));
    if monoio::time::timeout(settings.shutdown_timeout, drained).await.is_err() {
        warn!(runtime = spec.index, connections = open.get(), "shutdown timeout: dropping connections");
    } else {
        info!(runtime = spec.index, drained_connections = in_flight, "runtime drained");
    }
    Ok(())
}
