//! Wiring: the [`Config`] in, a [`RunningApp`] out.
//!
//! [`start`] is what the binary's `serve` runs and what the integration tests
//! run (with port 0): it refuses a port that is already served, binds one
//! `SO_REUSEPORT` listener per core, starts the Redis pipeline thread and the
//! per-core runtimes, and returns once every core reports its I/O driver.

use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::health::spawn_health;
use crate::http::cores::{self, CoresError};
use crate::http::server::{run_core, CoreSpec, Driver};
use crate::queue::{spawn_pipeline, warn_about_durability, EnqueueMode, Enqueuer, PipelineHandle};
use crate::store;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::sources::SourceLabel;
use crate::worker::{spawn_workers, WorkerPool};

/// Listen backlog per core.
const BACKLOG: i32 = 4096;

/// Which parts this process runs (`serve --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Gateway and workers.
    #[default]
    All,
    /// Only the HTTP gateway (enqueue to Redis).
    Api,
    /// Only the workers (Redis → PostgreSQL).
    Worker,
}

impl Role {
    fn gateway(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }
    fn workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

/// Why the gateway could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Another process (perhaps a stale copy of this one) serves the port.
    /// With `SO_REUSEPORT` we would otherwise silently share it.
    #[error("{0} is already in use by another process; refusing to share it")]
    PortInUse(SocketAddr),
    /// Binding or listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `CORES` names cores this process may not run on, or more than it has.
    #[error("CORES: {0}")]
    Cores(#[from] CoresError),
    /// The role needs PostgreSQL and `DATABASE_URL` is unset or invalid.
    #[error("DATABASE_URL: {0}")]
    Database(String),
    /// A thread or runtime could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// Which part.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The gateway, running.
pub struct RunningApp {
    local_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    cores: Vec<thread::JoinHandle<()>>,
    pipeline: Option<PipelineHandle>,
    health: Vec<thread::JoinHandle<()>>,
    workers: Option<WorkerPool>,
    /// The API listener (`API_ADDR`), when `API_TOKENS` names a token.
    api: Option<crate::api::ApiHandle>,
    /// Each core's I/O driver, in core order.
    drivers: Vec<Driver>,
    /// `SHUTDOWN_TIMEOUT_MS`: how long the workers may take once shutdown is asked.
    shutdown_timeout: Duration,
}

impl RunningApp {
    /// The address every core listens on (the real port when 0 was asked);
    /// `None` for `--role worker`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Where the API listens (`API_ADDR`, the real port when 0 was asked);
    /// `None` when it is off.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().map(crate::api::ApiHandle::local_addr)
    }

    /// The I/O driver each core's runtime got (the `URING_TASKRUN` mode
    /// the kernel accepted, or the epoll fallback), in core order.
    pub fn drivers(&self) -> &[Driver] {
        &self.drivers
    }

    /// Jobs handed off by the cores and not yet taken by the Redis pipeline thread.
    pub fn queue_backlog(&self) -> usize {
        self.pipeline.as_ref().map_or(0, PipelineHandle::backlog)
    }

    /// The token that, cancelled, shuts everything down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until shutdown has completed: cores drained, queued jobs answered.
    ///
    /// Bounded: once shutdown is asked, the workers get `SHUTDOWN_TIMEOUT_MS`
    /// (and a second of slack) to finish the batch in hand, whatever the
    /// network does; a worker still blocked then (a `COPY` to a frozen
    /// server, a black-holed Redis) is left behind with its entries pending
    /// (nothing is acknowledged before its commit), and the process ends.
    pub fn wait(self) {
        while !self.shutdown.is_cancelled() && !self.cores.iter().any(thread::JoinHandle::is_finished) {
            thread::sleep(Duration::from_millis(50));
        }
        let deadline = Instant::now() + self.shutdown_timeout + Duration::from_secs(1);
        for core in self.cores {
            if core.join().is_err() {
                error!("a core runtime panicked");
            }
        }
        if let Some(pipeline) = self.pipeline {
            pipeline.join();
        }
        if let Some(api) = self.api {
            api.join();
        }
        for thread in self.health {
            let _ = thread.join();
        }
        if let Some(workers) = self.workers {
            workers.join_until(deadline);
        }
        info!("stopped");
    }

    /// Requests shutdown and waits for it.
    pub fn stop(self) {
        self.shutdown.cancel();
        self.wait();
    }
}

/// Every route with its scheme; a warning when any takes unsigned requests,
/// so an unsigned gateway is never a silent accident.
fn log_routes(sources: &crate::ingest::sources::Sources) {
    if sources.unsigned_routes().is_empty() {
        info!(routes = %sources.describe_routes(), "webhook routes");
    } else if sources.from_file() {
        warn!(routes = %sources.describe_routes(), "webhook routes; some take unsigned requests");
    } else {
        warn!(routes = %sources.describe_routes(),
              "no SOURCES_FILE: every /webhooks/:provider takes the unsigned envelope (REQUIRE_SIGNED=true refuses this)");
    }
}

/// Starts the parts of `role`.
///
/// # Errors
/// [`StartError`] when the port is taken, the cores are wrong, PostgreSQL is
/// not configured for a role that needs it, or a thread cannot start.
pub fn start(config: &Config, role: Role) -> Result<RunningApp, StartError> {
    let shutdown = CancellationToken::new();
    let cpus = if role.gateway() { choose_cores(config)? } else { Vec::new() };
    let sources = config.ingest.sources.clone().unwrap_or_default();
    if role.gateway() {
        log_routes(&sources);
    }
    let labels = sources
        .iter()
        .map(|s| SourceLabel {
            name: s.route.clone(),
            silent_after_secs: s.silent_after.map(|d| d.as_secs()),
        })
        .collect();
    let metrics = Metrics::with_bounds(cpus.len(), labels, config.ops.rejections);
    let workers =
        if role.workers() { Some(start_workers(config, &shutdown, metrics.clone())?) } else { None };
    let mut app = RunningApp {
        local_addr: None,
        shutdown,
        cores: Vec::new(),
        pipeline: None,
        health: Vec::new(),
        workers,
        api: None,
        drivers: Vec::new(),
        shutdown_timeout: config.ops.shutdown_timeout,
    };
    if role.gateway() {
        let gateway = crate::api::Gateway {
            queue: config.queue.queue(),
            metrics: metrics.clone(),
            sources: sources.clone(),
        };
        let started = start_gateway(config, &mut app, cpus, metrics, sources)
            .and_then(|()| start_api(config, &app.shutdown, gateway).map(|api| app.api = api));
        if let Err(e) = started {
            app.stop();
            return Err(e);
        }
    }
    Ok(app)
}

/// The API for applications and operators, when `API_TOKENS` names a
/// token; it needs PostgreSQL.
fn start_api(
    config: &Config,
    shutdown: &CancellationToken,
    gateway: crate::api::Gateway,
) -> Result<Option<crate::api::ApiHandle>, StartError> {
    if config.api.tokens.is_empty() {
        return Ok(None);
    }
    let url = config.store.database_url.clone().ok_or_else(|| {
        StartError::Database(
            "not set; API_TOKENS turns the API on, and it reads the events from PostgreSQL".into(),
        )
    })?;
    let settings = crate::api::ApiSettings {
        addr: config.api.addr,
        tokens: config.api.tokens.clone(),
        database_url: url,
        session: config.store.session(),
        migrate: config.store.migrate_on_start,
        gateway,
    };
    crate::api::spawn(settings, shutdown.clone())
        .map(Some)
        .map_err(|e| StartError::Spawn { what: "api", source: std::io::Error::other(e) })
}

fn start_workers(
    config: &Config,
    shutdown: &CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<WorkerPool, StartError> {
    let url = config.store.database_url.as_deref().ok_or_else(|| {
        StartError::Database("not set; the worker and all roles need PostgreSQL (or use --role api)".into())
    })?;
    let pool = store::pool(url, config.store.pool_size, config.store.session())
        .map_err(|e| StartError::Database(e.to_string()))?;
    let retention = config.store.retention;
    metrics.store.set_retention(retention.events.map_or(0, |d| d.as_secs()), retention.interval.as_secs());
    let settings = config.worker_settings(metrics);
    let workers = spawn_workers(config.worker.threads, settings, pool, shutdown.clone())
        .map_err(|e| StartError::Spawn { what: "worker threads", source: std::io::Error::other(e) })?;
    info!(
        workers = config.worker.threads,
        database = %config.store.database_url.as_deref().map(crate::config::redact).unwrap_or_default(),
        batch_max = config.worker.batch_max,
        max_attempts = config.worker.max_attempts,
        reclaim_idle_ms = config.worker.reclaim_idle.as_millis() as u64,
        "workers started"
    );
    Ok(workers)
}

fn start_gateway(
    config: &Config,
    app: &mut RunningApp,
    cpus: Vec<Option<core_affinity::CoreId>>,
    metrics: Arc<Metrics>,
    sources: Arc<crate::ingest::sources::Sources>,
) -> Result<(), StartError> {
    raise_open_file_limit(config.http.max_connections_per_core.saturating_mul(cpus.len()));
    let requested = SocketAddr::new(config.http.host, config.http.port);
    let listeners = bind_listeners(requested, cpus.len())?;
    let local_addr =
        listeners[0].local_addr().map_err(|source| StartError::Listen { addr: requested, source })?;

    let pipeline_settings = config.queue.pipeline_settings(metrics.clone());
    let enqueuer = match config.queue.enqueue_mode {
        EnqueueMode::Thread => {
            let (enqueuer, pipeline) = spawn_pipeline(pipeline_settings)
                .map_err(|source| StartError::Spawn { what: "redis pipeline thread", source })?;
            app.pipeline = Some(pipeline);
            enqueuer
        }
        EnqueueMode::Core => {
            warn_about_durability(&pipeline_settings);
            info!(batch_max = config.queue.batch_max, "per-core enqueue: each core pipelines its own jobs");
            Enqueuer::per_core(pipeline_settings).map_err(|e| StartError::Spawn {
                what: "per-core enqueue",
                source: std::io::Error::other(e),
            })?
        }
    };
    let (health, health_thread) = spawn_health(config.health_settings())
        .map_err(|source| StartError::Spawn { what: "health thread", source })?;
    app.health = health_thread;

    let settings = config.core_settings(cpus.len(), sources.clone());
    let (started_tx, started_rx) = mpsc::channel::<(usize, Option<usize>, Driver)>();
    for (index, (cpu, listener)) in cpus.into_iter().zip(listeners).enumerate() {
        let spec = CoreSpec {
            index,
            cpu,
            listener,
            settings: settings.clone(),
            enqueuer: enqueuer.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
            // A child per core: waiting on it registers in that core's own
            // list, so idle connections on different cores share no lock.
            shutdown: app.shutdown.child_token(),
        };
        let started_tx = started_tx.clone();
        let token = app.shutdown.clone();
        let handle = thread::Builder::new()
            .name(format!("core-{index}"))
            .spawn(move || {
                let cpu_id = cpu.map(|c| c.id);
                if let Err(e) = run_core(spec, move |driver| {
                    let _ = started_tx.send((index, cpu_id, driver));
                }) {
                    error!(runtime = index, error = %e, "core runtime failed; shutting down");
                    token.cancel();
                }
            })
            .map_err(|source| StartError::Spawn { what: "core runtime thread", source })?;
        app.cores.push(handle);
    }
    // The pipeline thread exits when the cores drop their handles.
    drop(enqueuer);
    drop(health);
    drop(started_tx);

    let mut drivers = Vec::with_capacity(app.cores.len());
    while let Ok(report) = started_rx.recv() {
        drivers.push(report);
    }
    drivers.sort_by_key(|(index, ..)| *index);
    log_started(config, local_addr, &drivers);
    app.drivers = drivers.into_iter().map(|(.., d)| d).collect();
    app.local_addr = Some(local_addr);
    Ok(())
}

fn log_started(config: &Config, addr: SocketAddr, drivers: &[(usize, Option<usize>, Driver)]) {
    let mapping: Vec<String> = drivers
        .iter()
        .map(|(i, cpu, d)| match cpu {
            Some(c) => format!("core-{i}→cpu{c}:{}", d.name()),
            None => format!("core-{i}→unpinned:{}", d.name()),
        })
        .collect();
    let driver =
        if drivers.iter().all(|(.., d)| matches!(d, Driver::IoUring(_))) { "io_uring" } else { "epoll" };
    let taskrun = match drivers.first() {
        Some((.., Driver::IoUring(t))) => t.name(),
        _ => "-",
    };
    if driver == "epoll" {
        warn!("io_uring unavailable (kernel, seccomp or io_uring_disabled): using the epoll fallback");
    }
    info!(
        version = env!("CARGO_PKG_VERSION"),
        driver,
        uring_taskrun = taskrun,
        runtimes = drivers.len(),
        pinning = %mapping.join(" "),
        listen = %addr,
        redis = %config.queue.redis_url_redacted(),
        stream = %config.queue.queue_name,
        batch_max = config.queue.batch_max,
        batch_linger_us = config.queue.batch_linger.as_micros() as u64,
        enqueue_mode = ?config.queue.enqueue_mode,
        enqueue_timeout_ms = config.queue.enqueue_timeout.as_millis() as u64,
        max_body_bytes = config.http.max_body_bytes,
        json_parser = ?config.ingest.json_parser,
        "webhook-ingestor serving"
    );
}

/// The runtimes' cores, with the reason logged: an operator reading the
/// start-up log sees why there are as many as there are.
fn choose_cores(config: &Config) -> Result<Vec<Option<core_affinity::CoreId>>, StartError> {
    let chosen = cores::for_this_process(&config.http.cores, config.http.pin_cores)?;
    info!(runtimes = chosen.cpus.len(), reason = %chosen.reason, "cores chosen");
    if let Some(warning) = &chosen.over_quota {
        warn!("{warning}");
    }
    Ok(chosen.cpus)
}

/// Binds `n` listeners on one port with `SO_REUSEPORT`, after checking with
/// a plain bind that nobody else serves it.
fn bind_listeners(addr: SocketAddr, n: usize) -> Result<Vec<TcpListener>, StartError> {
    let listen_err = |source| StartError::Listen { addr, source };
    // A socket without SO_REUSEPORT cannot bind a port someone listens on,
    // even one who set SO_REUSEPORT: that is exactly the check we want.
    let probe = TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => StartError::PortInUse(addr),
        _ => listen_err(e),
    })?;
    let addr = probe.local_addr().map_err(listen_err)?;
    drop(probe);
    (0..n)
        .map(|_| {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(BACKLOG)?;
            Ok(socket.into())
        })
        .collect::<std::io::Result<Vec<TcpListener>>>()
        .map_err(listen_err)
}

/// Raises the soft open-file limit to the hard one, as nginx's
/// `worker_rlimit_nofile` or Go's runtime do: the default soft limit (often
/// 1024) would refuse connections far below `MAX_CONNECTIONS_PER_CORE`.
/// Warns when even the hard limit cannot hold `connections` sockets.
fn raise_open_file_limit(connections: usize) {
    // Listeners, Redis, PostgreSQL, logs and the process's own files.
    let wanted = connections as u64 + 256;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => tracing::warn!(
            open_files = got,
            wanted,
            "the open-file limit (ulimit -n) holds fewer connections than MAX_CONNECTIONS_PER_CORE allows; \
             raise it (docker: --ulimit nofile=N) or lower MAX_CONNECTIONS_PER_CORE"
        ),
        Ok(got) => tracing::debug!(open_files = got, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open-file limit"),
    }
}
