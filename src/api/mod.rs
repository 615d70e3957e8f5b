//! The second listener: the API applications and operators read the events
//! through (`API_ADDR`, started only when `API_TOKENS` or `API_TOKENS_FILE`
//! names a token).
//!
//! It runs beside the ingest cores, never on them: one acceptor thread and
//! a thread per connection (at most [`MAX_CONNECTIONS`]; more get 503),
//! blocking I/O, its own small PostgreSQL pool, and one connection that
//! listens for the workers' commits ([`notify`]). Nothing it does takes a
//! lock or a cycle of the cores' hot path.
//!
//! Every request carries `Authorization: Bearer <token>` ([`auth`]): none or
//! an unknown one is 401 with `WWW-Authenticate: Bearer`; a `read` token on
//! an admin route is 403. Errors use the gateway's JSON shape. The routes
//! and what they promise are in [`routes`].

pub mod auth;
mod common;
mod dead_letters;
mod events;
pub mod notify;
mod operate;
mod routes;
mod server;
mod windows;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use thiserror::Error;
use tokio_util::sync::CancellationToken;

use crate::store::Session;
pub use auth::{Scope, Tokens};

/// Most connections served at once; more get 503 and are closed.
pub const MAX_CONNECTIONS: usize = 128;
/// PostgreSQL connections of the API (long polls hold none while waiting).
const POOL_SIZE: u32 = 4;

/// What the API needs from the configuration.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// `API_ADDR`.
    pub addr: SocketAddr,
    /// `API_TOKENS` and `API_TOKENS_FILE`.
    pub tokens: Tokens,
    /// `DATABASE_URL`.
    pub database_url: String,
    /// The PostgreSQL session settings (timeouts).
    pub session: Session,
    /// `MIGRATE_ON_START`: the API applies the migrations itself if no
    /// worker has yet.
    pub migrate: bool,
    /// What the gateway beside it knows.
    pub gateway: Gateway,
}

/// What the API reads of the gateway it runs beside: the queue (replays,
/// stats), the sources, and the counters and rejections the cores keep.
#[derive(Clone)]
pub struct Gateway {
    /// The queue, to replay dead letters into and to read its gauges.
    pub queue: crate::queue::Queue,
    /// The process's metrics: per-source counters and kept rejections.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// The sources the cores serve (by index, as the metrics count them).
    pub sources: Arc<crate::ingest::sources::Sources>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("queue", &self.queue).field("sources", &self.sources).finish()
    }
}

/// Why the API did not start.
#[derive(Debug, Error)]
pub enum ApiError {
    /// `API_ADDR` cannot be bound.
    #[error("API_ADDR {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A thread could not start.
    #[error("api thread: {0}")]
    Spawn(std::io::Error),
    /// `DATABASE_URL` is unusable.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

/// The running API.
pub struct ApiHandle {
    addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl ApiHandle {
    /// The address it listens on (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits for the acceptor and the listener (call it once shutdown is
    /// cancelled); connections still open end with their current request.
    pub fn join(self) {
        // The acceptor blocks in accept: a connection wakes it to see the
        // shutdown.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = std::net::TcpStream::connect_timeout(&wake, std::time::Duration::from_secs(1));
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts the API; it stops with `shutdown`.
///
/// # Errors
/// [`ApiError`].
pub fn spawn(settings: ApiSettings, shutdown: CancellationToken) -> Result<ApiHandle, ApiError> {
    let listener = std::net::TcpListener::bind(settings.addr)
        .map_err(|source| ApiError::Bind { addr: settings.addr, source })?;
    let addr = listener.local_addr().map_err(ApiError::Spawn)?;
    let pool = crate::store::pool(&settings.database_url, POOL_SIZE, settings.session)?;
    let notifier = Arc::new(notify::Notifier::default());
    let listen =
        notify::spawn(settings.database_url.clone(), settings.session, notifier.clone(), shutdown.clone())
            .map_err(ApiError::Spawn)?;
    let tokens = settings.tokens.len();
    let windows = windows::Windows::spawn(settings.gateway.metrics.clone(), shutdown.clone())
        .map_err(ApiError::Spawn)?;
    let ctx = Arc::new(common::Context {
        tokens: settings.tokens,
        pool,
        migrate: settings.migrate,
        migrated: Default::default(),
        notifier,
        shutdown: shutdown.clone(),
        gateway: settings.gateway,
        windows: windows.0,
        stats_redis: Default::default(),
    });
    let accept = server::spawn(listener, ctx, shutdown).map_err(ApiError::Spawn)?;
    tracing::info!(addr = %addr, tokens, "api listening");
    Ok(ApiHandle { addr, threads: vec![accept, listen, windows.1] })
}
