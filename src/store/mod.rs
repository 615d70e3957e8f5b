//! Stage 5: PostgreSQL. Batches of jobs in, rows out, exactly once per
//! `(provider, event_id)`.
//!
//! [`Store::write_batch`] runs ONE transaction: a binary `COPY` of the batch
//! into a per-session temporary staging table, then `INSERT … SELECT … ON
//! CONFLICT (provider, event_id) DO NOTHING`, then `COMMIT`. A redelivered
//! job (the worker path is at-least-once) is therefore a no-op. The payload is
//! sent as the raw body bytes (`jsonb` binary format: a version byte, then
//! the text), never re-serialised.
//!
//! Connections come from an `r2d2` pool of sync `postgres` clients, used only
//! from worker threads (the sync client runs its own small tokio runtime and
//! must never run on a monoio core).
//!
//! Errors are classified for the worker ([`StoreError::is_systemic`]):
//! connection loss, disk full, shutdown, read-only, schema errors affect every
//! batch alike and are retried; data errors belong to one entry and are
//! isolated by splitting the batch.

mod migrate;

use std::time::Duration;

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;
use thiserror::Error;
use time::OffsetDateTime;

use crate::job::WebhookJob;

pub use migrate::{migrate, MIGRATIONS};

/// The pool type.
pub type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

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
}

impl StoreError {
    /// True when the failure is not caused by the rows themselves, so the
    /// same batch will succeed once the database recovers: no connection,
    /// server shutting down or out of resources, read-only, broken schema,
    /// serialization conflicts. False for data errors (class 22, 23 other
    /// than the handled unique conflict, …), which one entry causes.
    pub fn is_systemic(&self) -> bool {
        let StoreError::Postgres(e) = self else { return true };
        let Some(code) = e.code() else { return true }; // I/O, closed connection
        let code = code.code();
        matches!(
            &code[..2],
            "08" | "53" | "54" | "55" | "57" | "58" | "40" | "42" | "XX" | "3D" | "3F" | "28"
        ) || code == "25006"
    }
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
    /// Jobs whose `(provider, event_id)` was already stored.
    pub duplicates: u64,
}

/// Builds the connection pool (connections are opened lazily).
///
/// # Errors
/// [`StoreError::Config`] when the URL cannot be parsed.
pub fn pool(database_url: &str, size: u32, connect_timeout: Duration) -> Result<Pool, StoreError> {
    let config: postgres::Config =
        database_url.parse().map_err(|e: postgres::Error| StoreError::Config(e.to_string()))?;
    let manager = PostgresConnectionManager::new(config, NoTls);
    Ok(r2d2::Pool::builder()
        .max_size(size)
        .min_idle(Some(0))
        .connection_timeout(connect_timeout)
        .build_unchecked(manager))
}

/// Columns of the staging table, in COPY order.
pub const STAGING_TYPES: [Type; 5] =
    [Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ, Type::TIMESTAMPTZ, Type::JSONB];

/// Writes `jobs` in one transaction (see the module docs).
///
/// # Errors
/// [`StoreError`]; nothing is committed then.
pub fn write_batch(client: &mut postgres::Client, jobs: &[&WebhookJob]) -> Result<Written, StoreError> {
    let mut tx = client.transaction()?;
    // Per session; ON COMMIT DELETE ROWS empties it at every commit. The
    // "already exists" NOTICE would be a log line per batch: silence it.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         CREATE TEMP TABLE IF NOT EXISTS webhook_staging (
             provider text, event_id text, event_timestamp timestamptz, received_at timestamptz, payload jsonb
         ) ON COMMIT DELETE ROWS",
    )?;
    let sink = tx.copy_in(
        "COPY webhook_staging (provider, event_id, event_timestamp, received_at, payload) FROM STDIN (FORMAT binary)",
    )?;
    let mut writer = BinaryCopyInWriter::new(sink, &STAGING_TYPES);
    for job in jobs {
        writer.write(&CopyRow::new(job).params())?;
    }
    writer.finish()?;
    let inserted = tx.execute(
        "INSERT INTO webhook_events (provider, event_id, event_timestamp, received_at, payload)
         SELECT provider, event_id, event_timestamp, received_at, payload FROM webhook_staging
         ON CONFLICT (provider, event_id) DO NOTHING",
        &[],
    )?;
    tx.commit()?;
    Ok(Written { inserted, duplicates: jobs.len() as u64 - inserted })
}

/// One job as the values of a staging-table row, in [`STAGING_TYPES`] order.
pub struct CopyRow<'a> {
    provider: &'a str,
    event_id: &'a str,
    event_timestamp: OffsetDateTime,
    received_at: OffsetDateTime,
    payload: RawJsonb<'a>,
}

impl<'a> CopyRow<'a> {
    /// The row for `job`.
    pub fn new(job: &'a WebhookJob) -> Self {
        Self {
            provider: &job.provider,
            event_id: &job.event_id,
            event_timestamp: micros_to_datetime(job.event_timestamp_us),
            received_at: micros_to_datetime(job.received_at_us),
            payload: RawJsonb(&job.payload),
        }
    }

    /// The values, for `BinaryCopyInWriter::write`.
    pub fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [&self.provider, &self.event_id, &self.event_timestamp, &self.received_at, &self.payload]
    }
}

fn micros_to_datetime(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
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
