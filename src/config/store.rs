//! `store/`'s section: PostgreSQL's address, pool, session timeouts,
//! durability, migrations and retention.

use std::fmt;
use std::time::Duration;

use super::vars::Vars;
use super::{redact, ConfigError, WorkerConfig};
use crate::store::{Retention, Session, SynchronousCommit, Timeouts};

/// `store/`: PostgreSQL.
#[derive(Clone)]
pub struct StoreConfig {
    /// `DATABASE_URL`: PostgreSQL, used by the workers. Redacted in logs.
    pub database_url: Option<String>,
    /// `PG_POOL_SIZE` (default WORKER_THREADS + 1): PostgreSQL connections.
    pub pool_size: u32,
    /// `PG_CONNECT_TIMEOUT_MS` (default 5000), `PG_SOCKET_TIMEOUT_MS` (default
    /// 30000: TCP keepalives and `TCP_USER_TIMEOUT`), `PG_STATEMENT_TIMEOUT_MS`
    /// (default 60000, 0 = none: the server's `statement_timeout`),
    /// `PG_LOCK_TIMEOUT_MS` (default 10000, 0 = none: its `lock_timeout`).
    pub timeouts: Timeouts,
    /// `MIGRATE_ON_START` (default true): apply `sql/` migrations when serving.
    pub migrate_on_start: bool,
    /// `PG_SYNCHRONOUS_COMMIT` (default `on`; `remote_apply`, `remote_write`,
    /// `local`; never `off`): set in every session of the gateway.
    pub synchronous_commit: SynchronousCommit,
    /// `PARTITION_INTERVAL` (default `1d`), `EVENT_RETENTION` (default
    /// `30d`, `0` = keep everything), `DEDUPE_WINDOW` (default `7d`):
    /// what PostgreSQL keeps and for how long ([`crate::store::partitions`]).
    pub retention: Retention,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            pool_size: WorkerConfig::default().threads as u32 + 1,
            timeouts: Timeouts::default(),
            migrate_on_start: true,
            synchronous_commit: SynchronousCommit::On,
            retention: Retention::default(),
        }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("database_url", &self.database_url.as_deref().map(redact))
            .field("pool_size", &self.pool_size)
            .field("timeouts", &self.timeouts)
            .field("migrate_on_start", &self.migrate_on_start)
            .field("synchronous_commit", &self.synchronous_commit)
            .field("retention", &self.retention)
            .finish()
    }
}

impl StoreConfig {
    /// How the gateway's PostgreSQL sessions are set up.
    pub fn session(&self) -> Session {
        Session { timeouts: self.timeouts, synchronous_commit: self.synchronous_commit }
    }

    pub(super) fn read(v: &Vars<'_>, worker_threads: usize) -> Result<Self, ConfigError> {
        let d = Self::default();
        // The pool serves every worker thread and the migrations.
        let default_pool = u32::try_from(worker_threads + 1).unwrap_or(u32::MAX);
        let t = d.timeouts;
        Ok(Self {
            database_url: v.var("DATABASE_URL").map_or(None, |u| {
                if u.starts_with("postgres://") || u.starts_with("postgresql://") || u.contains('=') {
                    Ok(Some(u.to_string()))
                } else {
                    Err("a postgres:// URL or a key=value connection string".into())
                }
            })?,
            pool_size: v.var("PG_POOL_SIZE").in_range(default_pool, 1, 1000)?,
            timeouts: Timeouts {
                connect: v.var("PG_CONNECT_TIMEOUT_MS").millis(t.connect, 100, 600_000)?,
                socket: v.var("PG_SOCKET_TIMEOUT_MS").millis(t.socket, 1000, 3_600_000)?,
                statement: v.var("PG_STATEMENT_TIMEOUT_MS").millis(t.statement, 0, 86_400_000)?,
                lock: v.var("PG_LOCK_TIMEOUT_MS").millis(t.lock, 0, 86_400_000)?,
            },
            migrate_on_start: v.var("MIGRATE_ON_START").bool_or(d.migrate_on_start)?,
            synchronous_commit: v.var("PG_SYNCHRONOUS_COMMIT").map_or(d.synchronous_commit, |c| {
                SynchronousCommit::parse(c).ok_or_else(|| {
                    "`on`, `remote_apply`, `remote_write` or `local` (`off` would let a crash lose \
                     events whose stream entries are already deleted)"
                        .into()
                })
            })?,
            retention: Retention::read(v, d.retention)?,
        })
    }
}

impl Retention {
    pub(super) fn read(v: &Vars<'_>, d: Retention) -> Result<Self, ConfigError> {
        const SECOND: Duration = Duration::from_secs(1);
        const TEN_YEARS: Duration = Duration::from_secs(3650 * 86_400);
        let interval =
            v.var("PARTITION_INTERVAL").duration(d.interval, SECOND, Duration::from_secs(366 * 86_400))?;
        let keep = d.events.unwrap_or(Duration::ZERO);
        let events = v.var("EVENT_RETENTION").duration(keep, Duration::ZERO, TEN_YEARS)?;
        let dedupe_window = v.var("DEDUPE_WINDOW").duration(d.dedupe_window, SECOND, TEN_YEARS)?;
        Ok(Self { interval, events: (!events.is_zero()).then_some(events), dedupe_window })
    }
}
