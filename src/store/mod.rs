//! Stage 5: PostgreSQL. Batches of jobs in, rows out, exactly once per
//! `(provider, event_id)` within `DEDUPE_WINDOW`.
//!
//! [`write_batch`] runs ONE transaction whose rows are gated on their keys
//! ([`partitions`] has the tables and why): each row is stored only if its
//! key goes into the current dedupe generation and is in none of the older
//! generations still inside the window, decided in the same statement as
//! the insert. A batch of first deliveries (which can only meet a stored
//! key if a sender posted an event twice) inserts its keys from two arrays
//! and, when every key was new, copies the rows straight into the table
//! with a binary `COPY`. Any other batch, or one whose keys were not all
//! new, is copied into a per-session temporary staging table and goes
//! through the gated `INSERT … SELECT` (tuning.md §24). The payload is sent
//! as the raw body bytes (`jsonb` binary format: a version byte, then the
//! text), never re-serialised, and `raw_body` as the bytes received.
//!
//! A row whose partition does not exist yet (a backlog older than the
//! partitions made ahead) makes the writer create it ([`partitions::cover`])
//! and try the batch once more: a missing partition is never a row's fault.
//!
//! Connections come from an `r2d2` pool of sync `postgres` clients, used only
//! from worker threads (the sync client runs its own small tokio runtime and
//! must never run on a monoio core).
//!
//! Errors are classified for the worker ([`StoreError::is_systemic`]):
//! connection loss, disk full, shutdown, read-only, schema errors affect every
//! batch alike and are retried; data errors belong to one entry and are
//! isolated by splitting the batch. A code can look systemic and still be one
//! entry's doing (`54001 stack depth limit exceeded` from a deeply nested
//! body): [`StoreError::may_be_caused_by_rows`] says which ones the worker may
//! test with [`probe`], the same statements with no rows.
//!
//! Every connection carries `PG_CONNECT_TIMEOUT_MS`, TCP keepalives and
//! `TCP_USER_TIMEOUT` from `PG_SOCKET_TIMEOUT_MS` (a dead peer or a
//! black-holed network is noticed in that time, not the kernel's ~15
//! minutes), `statement_timeout` from `PG_STATEMENT_TIMEOUT_MS` (a
//! statement stuck on a slow server ends with `57014`), `lock_timeout` from
//! `PG_LOCK_TIMEOUT_MS` (a wait for another session's lock ends with
//! `55P03`), and server-side keepalives and `idle_in_transaction_session_timeout`
//! so the server drops a session whose client is gone.

pub mod dead_letters;
pub mod events;
mod migrate;
pub mod partitions;

use std::time::Duration;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;
use thiserror::Error;

use crate::job::WebhookJob;

pub use migrate::{migrate, MIGRATIONS};
pub use partitions::Retention;

/// The columns every statement of a batch names, in the binary COPY's
/// order ([`copy_rows`] encodes them so): one spelling for all of them.
macro_rules! columns {
    () => {
        "provider, event_id, event_type, verified_by, event_timestamp, received_at, payload, raw_body, body_sha256, \
         unsigned_fields"
    };
}

/// The wake-up of the consumer API's long polls ([`crate::api::notify`]):
/// one `NOTIFY` per storing transaction, sent with a statement the
/// transaction runs anyway (no round trip of its own) and delivered at its
/// commit. Never one per row: every notifying commit takes a global lock.
macro_rules! notify {
    () => {
        "NOTIFY webhook_events"
    };
}

/// The channel [`notify!`] notifies, for listeners.
pub const EVENTS_CHANNEL: &str = "webhook_events";

/// The pool's connection manager.
pub type Manager = PostgresConnectionManager<NoTls>;
/// The pool type.
pub type Pool = r2d2::Pool<Manager>;

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

/// A PostgreSQL failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// An error from the server or the connection.
    #[error("postgres: {}", describe(.0))]
    Postgres(#[from] postgres::Error),
    /// No connection could be taken from the pool in time.
    #[error("postgres pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// `DATABASE_URL` cannot be parsed.
    #[error("DATABASE_URL: {0}")]
    Config(String),
    /// The tables are not what this build expects.
    #[error("postgres schema: {0}")]
    Schema(&'static str),
}

impl StoreError {
    /// The server's SQLSTATE, when it gave one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            StoreError::Postgres(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// A row's `received_at` has no partition of `webhook_events` to go to.
    pub fn is_missing_partition(&self) -> bool {
        let StoreError::Postgres(e) = self else { return false };
        e.as_db_error().is_some_and(|db| {
            *db.code() == postgres::error::SqlState::CHECK_VIOLATION
                && db.message().starts_with("no partition of relation")
        })
    }

    /// True when the failure is not caused by the rows themselves, so the
    /// same batch will succeed once the database recovers: no connection,
    /// server shutting down or out of resources, read-only, broken schema,
    /// serialization conflicts. False for data errors (class 22, 23 other
    /// than the handled unique conflict, …), which one entry causes.
    pub fn is_systemic(&self) -> bool {
        let StoreError::Postgres(e) = self else { return true };
        if row_error(e).is_some() {
            return false; // a value this build refused to encode
        }
        let Some(code) = e.code() else { return true }; // I/O, closed connection
        let code = code.code();
        matches!(
            &code[..2],
            "08" | "53" | "54" | "55" | "57" | "58" | "40" | "42" | "XX" | "3D" | "3F" | "28"
        ) || code == "25006"
    }

    /// A lock wait that ran out (`55P03`): another session holds what the
    /// statement needs, a key's row or the whole table. Never the row's
    /// fault; [`probe`] (which takes the table's locks, not a key's) says which.
    pub fn is_lock_wait(&self) -> bool {
        self.sqlstate() == Some("55P03")
    }

    /// True when a systemic-looking failure could still come from the rows
    /// of the batch, so that a [`probe`] that passes points at them: the
    /// server answered with a code, and the code is not one that by nature
    /// concerns the server alone (the connection, a shutdown, a full disk,
    /// too many connections, a cancelled connect). Read-only and schema
    /// errors are included: the probe fails for those, which settles it.
    pub fn may_be_caused_by_rows(&self) -> bool {
        let StoreError::Postgres(e) = self else { return false };
        let Some(code) = e.code() else { return false };
        let code = code.code();
        !(code.starts_with("08") || code.starts_with("57P") || matches!(code, "53100" | "53300"))
    }
}

/// A value [`CopyRow`] cannot encode (found inside a `postgres::Error`).
#[derive(Debug, Error)]
#[error("{0}")]
pub struct RowError(&'static str);

fn row_error(e: &postgres::Error) -> Option<&RowError> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<RowError>())
}

/// The server's own words (`postgres::Error`'s Display is just "db error").
fn describe(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                s.push_str(&format!(" ({detail})"));
            }
            s
        }
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// What one committed batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// New rows.
    pub inserted: u64,
    /// Jobs whose `(provider, event_id)` was already stored with the same body.
    pub duplicates: u64,
    /// Jobs whose `(provider, event_id)` was already stored with another
    /// body: kept in `webhook_event_conflicts` (new ones counted here).
    pub conflicts: u64,
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

/// Runs the statements of [`write_batch`] with no rows and commits nothing
/// new: whether the database can take a write at all right now.
///
/// # Errors
/// [`StoreError`]: what a batch of good rows would meet too.
pub fn probe(client: &mut postgres::Client) -> Result<(), StoreError> {
    write_once(client, &[], false, Finish::Commit).map(|_| ())
}

/// Deliveries kept in `webhook_event_conflicts`: an id stored with one
/// body and delivered again with another.
///
/// # Errors
/// [`StoreError`].
pub fn count_conflicts(client: &mut postgres::Client) -> Result<i64, StoreError> {
    Ok(client.query_one("SELECT count(*) FROM webhook_event_conflicts", &[])?.get(0))
}

/// Columns of the staging table, in COPY order.
pub const STAGING_TYPES: [Type; 10] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::JSONB,
    Type::BYTEA,
    Type::BYTEA,
    Type::TEXT,
];

/// Writes `jobs` in one transaction (see the module docs). With
/// `expect_new` (every job on its first delivery), the keys are inserted
/// first and, if all were new, the rows copied straight into the table;
/// otherwise the batch goes the staging way. A row with no partition to go
/// to has its partition created (`retention` says the interval), and the
/// batch is written again.
///
/// # Errors
/// [`StoreError`]; nothing is committed then.
pub fn write_batch(
    client: &mut postgres::Client,
    jobs: &[&WebhookJob],
    expect_new: bool,
    retention: &Retention,
) -> Result<Written, StoreError> {
    write_covered(client, jobs, expect_new, retention, Finish::Commit)
}

/// Writes one made-up, ordinary event the way [`write_batch`] writes a
/// batch, then rolls it back: whether the database takes a row at all right
/// now. When it does, rows PostgreSQL refuses are refused for what they
/// hold; when it refuses this one too, the database refuses every row (a
/// schema change, a trigger), and no entry is to blame.
///
/// # Errors
/// [`StoreError`]: what the made-up row met.
pub fn canary(client: &mut postgres::Client, retention: &Retention) -> Result<(), StoreError> {
    let now = crate::job::now_us();
    let job = WebhookJob {
        provider: "canary".into(),
        event_id: format!("canary-{now}"),
        event_type: "canary".into(),
        event_timestamp_us: now,
        received_at_us: now,
        verified_by: None,
        payload: br#"{"canary":true}"#.to_vec(),
        raw_body: None,
        unsigned_fields: String::new(),
        replay_of: None,
    };
    write_covered(client, &[&job], false, retention, Finish::Rollback).map(drop)
}

/// How a write's transaction ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    Commit,
    Rollback,
}

fn write_covered(
    client: &mut postgres::Client,
    jobs: &[&WebhookJob],
    expect_new: bool,
    retention: &Retention,
    finish: Finish,
) -> Result<Written, StoreError> {
    match write_once(client, jobs, expect_new, finish) {
        Err(e) if e.is_missing_partition() => {
            // The intervals the rows fall in, each once: a replayed event
            // from weeks ago needs its own interval, not every one between.
            let step = retention.interval.as_micros().max(1) as i64;
            let mut slots: Vec<i64> = jobs.iter().map(|j| j.received_at_us.div_euclid(step)).collect();
            slots.sort_unstable();
            slots.dedup();
            for slot in slots {
                partitions::cover(client, retention, slot * step, slot * step)?;
            }
            write_once(client, jobs, expect_new, finish)
        }
        written => written,
    }
}

fn write_once(
    client: &mut postgres::Client,
    jobs: &[&WebhookJob],
    expect_new: bool,
    finish: Finish,
) -> Result<Written, StoreError> {
    // Each body hashed once, for its key and its row, whichever way they go.
    let digests: Vec<[u8; 32]> = jobs.iter().map(|j| j.body_sha256()).collect();
    let replayed: Vec<i64> = jobs.iter().filter_map(|j| j.replay_of).collect();
    if expect_new && !jobs.is_empty() {
        let mut tx = client.transaction()?;
        let generations = lock_generations(&mut tx)?;
        // A COPY the server refuses before it enters copy mode (a lock
        // wait past statement_timeout, a read-only server, a missing
        // table) leaves the postgres crate's connection broken
        // (rust-postgres#789: two ReadyForQuery for one COPY). A zero-row
        // INSERT takes the same lock and meets the same refusals as an
        // ordinary statement first, so the connection survives them.
        tx.batch_execute(concat!(
            "INSERT INTO webhook_events (",
            columns!(),
            ") SELECT ",
            columns!(),
            " FROM webhook_events WHERE false; ",
            notify!()
        ))?;
        let (providers, ids): (Vec<&str>, Vec<&str>) =
            jobs.iter().map(|j| (j.provider.as_str(), j.event_id.as_str())).unzip();
        let digest_refs: Vec<&[u8]> = digests.iter().map(|d| &d[..]).collect();
        let older = generations.older();
        match tx.execute(INSERT_KEYS, &[&generations.current, &providers, &ids, &older, &digest_refs]) {
            Ok(n) if n == jobs.len() as u64 => {
                let inserted = copy_rows(&mut tx, DIRECT_COPY, jobs, &digests)?;
                dead_letters::forget_stored(&mut tx, &replayed)?;
                if finish == Finish::Commit {
                    tx.commit()?;
                }
                return Ok(Written { inserted, duplicates: 0, conflicts: 0 });
            }
            // A key an older generation holds, or (below) the current one
            // holds: some rows are copies. Dropping the transaction rolls
            // it back, and the batch takes the staging way.
            Ok(_) => {}
            Err(e) if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut tx = client.transaction()?;
    // Per session; ON COMMIT DELETE ROWS empties it at every commit. The
    // "already exists" NOTICE would be a log line per batch: silence it.
    // Named for its columns: a session never meets an older layout.
    tx.batch_execute(concat!(
        "SET LOCAL client_min_messages = warning;
         CREATE TEMP TABLE IF NOT EXISTS webhook_staging_v5 (
             provider text, event_id text, event_type text, verified_by text,
             event_timestamp timestamptz, received_at timestamptz, payload jsonb, raw_body bytea,
             body_sha256 bytea, unsigned_fields text
         ) ON COMMIT DELETE ROWS; ",
        notify!()
    ))?;
    copy_rows(&mut tx, STAGING_COPY, jobs, &digests)?;
    let generations = lock_generations(&mut tx)?;
    let inserted = tx.execute(GATED_INSERT, &[&generations.current, &generations.older()])?;
    // A statement of its own, so it sees the keys of writers this one's
    // insert waited for (a new snapshot): two deliveries of one id with
    // different bodies at once still meet here.
    let conflicts = tx.execute(CONFLICTS, &[&generations.all()])?;
    // Stored, a duplicate or kept apart as a conflict: in each case the
    // event is in, and its dead letter goes with the same commit.
    dead_letters::forget_stored(&mut tx, &replayed)?;
    if finish == Finish::Commit {
        tx.commit()?;
    }
    Ok(Written { inserted, duplicates: jobs.len() as u64 - inserted - conflicts, conflicts })
}

/// The dedupe generations a writer checks: the current one, which takes
/// its keys, and the oldest still inside `DEDUPE_WINDOW`.
struct Generations {
    current: i32,
    oldest: i32,
}

impl Generations {
    /// The older generations inside the window, as the array the probes
    /// take. Each probe is `gen = ANY(…)` on the leading column of the
    /// keys' primary key, one index descent per generation; a range
    /// (`gen >= oldest AND gen < current`) cannot narrow a descent on the
    /// columns after it, so PostgreSQL read a whole older generation per
    /// row instead (the soak of tuning.md §24.4 stalled on it).
    fn older(&self) -> Vec<i32> {
        (self.oldest..self.current).collect()
    }

    /// Every generation inside the window, the current one too.
    fn all(&self) -> Vec<i32> {
        (self.oldest..=self.current).collect()
    }
}

/// The last row a `simple_query` returned (of its last statement that
/// returned one).
fn last_row(messages: &[postgres::SimpleQueryMessage]) -> Option<&postgres::SimpleQueryRow> {
    messages.iter().rev().find_map(|m| match m {
        postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    })
}

/// Takes [`partitions::GENERATION_LOCK`] shared (held to the commit), then
/// reads the generations, in one round trip: a switch of generation either
/// waited for this transaction or committed before it read.
fn lock_generations(tx: &mut postgres::Transaction<'_>) -> Result<Generations, StoreError> {
    let messages = tx.simple_query(&format!(
        "SELECT pg_advisory_xact_lock_shared({});
         SELECT max(gen), min(gen) FROM webhook_dedupe_generations",
        partitions::GENERATION_LOCK
    ))?;
    let row = last_row(&messages);
    let number = |i| row.and_then(|r| r.get(i)).and_then(|v: &str| v.parse::<i32>().ok());
    match (number(0), number(1)) {
        (Some(current), Some(oldest)) => Ok(Generations { current, oldest }),
        _ => Err(StoreError::Schema("webhook_dedupe_generations holds no generation")),
    }
}

/// The keys of a batch of first deliveries, from two arrays, into the
/// current generation ($1) with their bodies' digests ($5) unless one of
/// the older generations ($4) holds them; a key the current generation
/// holds fails the statement (23505).
pub const INSERT_KEYS: &str = "INSERT INTO webhook_event_keys (gen, provider, event_id, body_sha256)
     SELECT $1, u.p, u.e, u.d FROM unnest($2::text[], $3::text[], $5::bytea[]) AS u(p, e, d)
      WHERE (SELECT true FROM webhook_event_keys k
              WHERE k.gen = ANY($4::int4[]) AND k.provider = u.p AND k.event_id = u.e
              LIMIT 1) IS NULL";

/// The staged rows whose key goes into the current generation ($1) and is
/// in none of the older generations ($2). The older generations are probed per row
/// (a scalar subquery, never a hash of a whole generation); a key two
/// workers insert at once waits on the index for the first to commit.
const GATED_INSERT: &str = concat!(
    "WITH fresh AS (
        INSERT INTO webhook_event_keys (gen, provider, event_id, body_sha256)
        SELECT $1, s.provider, s.event_id, s.body_sha256 FROM webhook_staging_v5 s
         WHERE (SELECT true FROM webhook_event_keys k
                 WHERE k.gen = ANY($2::int4[]) AND k.provider = s.provider AND k.event_id = s.event_id
                 LIMIT 1) IS NULL
        ON CONFLICT DO NOTHING
        RETURNING provider, event_id)
     INSERT INTO webhook_events (",
    columns!(),
    ") SELECT DISTINCT ON (s.provider, s.event_id) ",
    "s.provider, s.event_id, s.event_type, s.verified_by, s.event_timestamp, s.received_at, s.payload, s.raw_body, \
     s.body_sha256, s.unsigned_fields",
    " FROM webhook_staging_v5 s JOIN fresh f ON f.provider = s.provider AND f.event_id = s.event_id"
);

/// The staged rows whose key a generation inside the window ($1) holds with
/// another body's digest: into `webhook_event_conflicts`, once per body.
/// Keys from before digests (NULL) never conflict.
const CONFLICTS: &str = "INSERT INTO webhook_event_conflicts (provider, event_id, event_type, verified_by,
         event_timestamp, received_at, payload, raw_body, body_sha256, stored_sha256)
     SELECT s.provider, s.event_id, s.event_type, s.verified_by, s.event_timestamp, s.received_at,
            s.payload, s.raw_body, s.body_sha256, k.body_sha256
       FROM webhook_staging_v5 s
       JOIN LATERAL (SELECT k.body_sha256 FROM webhook_event_keys k
                      WHERE k.gen = ANY($1::int4[]) AND k.provider = s.provider AND k.event_id = s.event_id
                      LIMIT 1) k ON k.body_sha256 <> s.body_sha256
     ON CONFLICT (provider, event_id, body_sha256) DO NOTHING";

const DIRECT_COPY: &str = concat!("COPY webhook_events (", columns!(), ") FROM STDIN (FORMAT binary)");
const STAGING_COPY: &str = concat!("COPY webhook_staging_v5 (", columns!(), ") FROM STDIN (FORMAT binary)");

/// A binary `COPY` of `jobs` (with their bodies' `digests`) by
/// `statement`; the rows copied.
fn copy_rows(
    tx: &mut postgres::Transaction<'_>,
    statement: &str,
    jobs: &[&WebhookJob],
    digests: &[[u8; 32]],
) -> Result<u64, StoreError> {
    let mut writer = BinaryCopyInWriter::new(tx.copy_in(statement)?, &STAGING_TYPES);
    for (job, digest) in jobs.iter().zip(digests) {
        writer.write(&CopyRow::new(job, digest).params())?;
    }
    Ok(writer.finish()?)
}

/// One job as the values of a staging-table row, in [`STAGING_TYPES`] order.
pub struct CopyRow<'a> {
    provider: &'a str,
    event_id: &'a str,
    event_type: &'a str,
    verified_by: Option<&'a str>,
    event_timestamp: Timestamptz,
    received_at: Timestamptz,
    payload: RawJsonb<'a>,
    raw_body: &'a [u8],
    body_sha256: &'a [u8],
    unsigned_fields: Option<&'a str>,
}

impl<'a> CopyRow<'a> {
    /// The row for `job`, whose body's SHA-256 is `digest`
    /// ([`WebhookJob::body_sha256`], computed once per batch by the caller).
    pub fn new(job: &'a WebhookJob, digest: &'a [u8; 32]) -> Self {
        Self {
            provider: &job.provider,
            event_id: &job.event_id,
            event_type: &job.event_type,
            verified_by: job.verified_by.as_deref(),
            event_timestamp: Timestamptz(job.event_timestamp_us),
            received_at: Timestamptz(job.received_at_us),
            payload: RawJsonb(&job.payload),
            raw_body: job.body_as_received(),
            body_sha256: digest,
            unsigned_fields: Some(job.unsigned_fields.as_str()).filter(|u| !u.is_empty()),
        }
    }

    /// The values, for `BinaryCopyInWriter::write`.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.provider,
            &self.event_id,
            &self.event_type,
            &self.verified_by,
            &self.event_timestamp,
            &self.received_at,
            &self.payload,
            &self.raw_body,
            &self.body_sha256,
            &self.unsigned_fields,
        ]
    }
}

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// µs since the Unix epoch, sent as `timestamptz`'s binary form (µs since
/// 2000-01-01) without a detour through a date type, whose smaller range
/// once turned a valid instant into 1970-01-01. An instant before
/// PostgreSQL's first is refused as a [`RowError`], never replaced.
#[derive(Debug)]
pub(crate) struct Timestamptz(pub(crate) i64);

impl ToSql for Timestamptz {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if self.0 < crate::ingest::MIN_TIMESTAMP_US {
            return Err(Box::new(RowError("timestamp before PostgreSQL's earliest (4714-11-24 BC)")));
        }
        out.extend_from_slice(&(self.0 - PG_EPOCH_US).to_be_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ
    }

    to_sql_checked!();
}

/// Already-validated JSON text sent as `jsonb` without parsing it into a
/// value first (binary jsonb = version byte 1, then the text).
#[derive(Debug)]
struct RawJsonb<'a>(&'a [u8]);

impl ToSql for RawJsonb<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_commit_notifies_the_channel_the_api_listens_on() {
        assert_eq!(notify!(), format!("NOTIFY {}", super::EVENTS_CHANNEL));
    }
}
