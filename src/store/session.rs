//! Connecting to PostgreSQL: the session settings every connection carries
//! (timeouts, keepalives, `synchronous_commit`), the pool, and what the
//! server's durability settings mean for a 202.

use std::time::Duration;

use postgres::NoTls;

use r2d2_postgres::PostgresConnectionManager;

use super::{Pool, StoreError};

/// How long PostgreSQL work may take before it is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// `PG_CONNECT_TIMEOUT_MS`: a TCP connect, and waiting for a pooled connection.
    pub connect: Duration,
    /// `PG_SOCKET_TIMEOUT_MS`: unacknowledged data or unanswered keepalives
    /// for this long end the connection (`TCP_USER_TIMEOUT`, keepalives).
    pub socket: Duration,
    /// `PG_STATEMENT_TIMEOUT_MS`: the server cancels a statement running longer
    /// (`Duration::ZERO` = never).
    pub statement: Duration,
    /// `PG_LOCK_TIMEOUT_MS`: the server ends a wait for a lock this long with
    /// `55P03` (`Duration::ZERO` = never), so a lock another session holds
    /// is told apart from a slow statement and never blamed on a row.
    pub lock: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            socket: Duration::from_secs(30),
            statement: Duration::from_secs(60),
            lock: Duration::from_secs(10),
        }
    }
}

/// `PG_SYNCHRONOUS_COMMIT`: when the server reports a commit, so when a
/// stream entry may be deleted after it. `off` is refused: it acknowledges
/// commits a crash can still lose, and the entry would already be gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynchronousCommit {
    /// Flushed to this server's disk (the default).
    #[default]
    On,
    /// Also applied on the synchronous standbys.
    RemoteApply,
    /// Also written (not flushed) by the synchronous standbys.
    RemoteWrite,
    /// Flushed locally, whatever the standbys.
    Local,
}

impl SynchronousCommit {
    /// The setting's value, as PostgreSQL spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::RemoteApply => "remote_apply",
            Self::RemoteWrite => "remote_write",
            Self::Local => "local",
        }
    }

    /// Parses a value; `off` is not one.
    pub fn parse(v: &str) -> Option<Self> {
        match v.to_ascii_lowercase().as_str() {
            "on" => Some(Self::On),
            "remote_apply" => Some(Self::RemoteApply),
            "remote_write" => Some(Self::RemoteWrite),
            "local" => Some(Self::Local),
            _ => None,
        }
    }
}

/// How the gateway's PostgreSQL sessions are set up: their timeouts and
/// their commit durability. A bare [`Timeouts`] converts, with the default
/// durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Session {
    /// `PG_*_TIMEOUT_MS`.
    pub timeouts: Timeouts,
    /// `PG_SYNCHRONOUS_COMMIT`.
    pub synchronous_commit: SynchronousCommit,
}

impl From<Timeouts> for Session {
    fn from(timeouts: Timeouts) -> Self {
        Self { timeouts, synchronous_commit: SynchronousCommit::default() }
    }
}

/// What can make a 202'd event be lost after its commit, read from the
/// server's settings as this session sees them: `None` when nothing.
pub fn durability_warning(fsync: &str, synchronous_commit: &str) -> Option<String> {
    let mut risks = Vec::new();
    if fsync.eq_ignore_ascii_case("off") {
        risks.push("the server runs with fsync=off: a crash of its machine can lose committed events");
    }
    if synchronous_commit.eq_ignore_ascii_case("off") {
        risks.push(
            "synchronous_commit=off in the gateway's sessions (a pooler that drops startup options?): \
             a server crash can lose the last commits, whose stream entries are already deleted",
        );
    }
    (!risks.is_empty()).then(|| risks.join("; "))
}

/// `(fsync, synchronous_commit)` as this session sees them.
///
/// # Errors
/// [`StoreError`].
pub fn durability(client: &mut postgres::Client) -> Result<(String, String), StoreError> {
    let messages =
        client.simple_query("SELECT current_setting('fsync'), current_setting('synchronous_commit')")?;
    let row = last_row(&messages);
    let value = |i| row.and_then(|r| r.get(i)).unwrap_or_default().to_string();
    Ok((value(0), value(1)))
}

/// The connection settings for `database_url` with `session` applied.
///
/// # Errors
/// [`StoreError::Config`] when the URL cannot be parsed (the message never
/// repeats the URL, which may hold a password).
pub fn connect_config(
    database_url: &str,
    session: impl Into<Session>,
) -> Result<postgres::Config, StoreError> {
    let session = session.into();
    let timeouts = session.timeouts;
    let mut config: postgres::Config =
        database_url.parse().map_err(|e: postgres::Error| StoreError::Config(e.to_string()))?;
    config.connect_timeout(timeouts.connect);
    let socket = timeouts.socket;
    // Keepalives: the first probe after a third of the budget, then probes
    // every sixth, so four unanswered ones end it in about the budget.
    config
        .keepalives(true)
        .keepalives_idle((socket / 3).max(Duration::from_secs(1)))
        .keepalives_interval((socket / 6).max(Duration::from_secs(1)))
        .keepalives_retries(4)
        .tcp_user_timeout(socket);
    // Server-side settings of the session, through the startup options:
    // the statement and lock timeouts; an idle transaction (a client gone
    // between statements) ended after the socket budget; and the server's
    // own keepalives with that budget, so a session abandoned mid-COPY (its
    // client's network dropped) releases its row locks in about that time
    // instead of the kernel's two hours.
    let secs = |d: Duration| d.as_secs().max(1);
    let mut options = vec![
        format!("-c idle_in_transaction_session_timeout={}", socket.as_millis()),
        format!("-c tcp_keepalives_idle={}", secs(socket / 3)),
        format!("-c tcp_keepalives_interval={}", secs(socket / 6)),
        "-c tcp_keepalives_count=4".to_string(),
        format!("-c tcp_user_timeout={}", socket.as_millis()),
    ];
    if !timeouts.statement.is_zero() {
        options.push(format!("-c statement_timeout={}", timeouts.statement.as_millis()));
    }
    if !timeouts.lock.is_zero() {
        options.push(format!("-c lock_timeout={}", timeouts.lock.as_millis()));
    }
    // A stream entry is deleted once COMMIT returns: the commit must be durable by then.
    options.push(format!("-c synchronous_commit={}", session.synchronous_commit.as_str()));
    let options = match config.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} {}", options.join(" ")),
        _ => options.join(" "),
    };
    config.options(&options);
    Ok(config)
}

/// Builds the connection pool (connections are opened lazily).
///
/// # Errors
/// [`StoreError::Config`] when the URL cannot be parsed.
pub fn pool(database_url: &str, size: u32, session: impl Into<Session>) -> Result<Pool, StoreError> {
    let session = session.into();
    let manager = PostgresConnectionManager::new(connect_config(database_url, session)?, NoTls);
    let timeouts = session.timeouts;
    Ok(r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(timeouts.connect)
        .build_unchecked(manager))
}

/// The last row a `simple_query` returned (of its last statement that
/// returned one).
pub(super) fn last_row(messages: &[postgres::SimpleQueryMessage]) -> Option<&postgres::SimpleQueryRow> {
    messages.iter().rev().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    })
}
