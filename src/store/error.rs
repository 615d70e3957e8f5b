//! What a PostgreSQL failure means for the worker: systemic (every batch
//! alike: retried) or one entry's (isolated by splitting the batch).

use thiserror::Error;

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

/// A value [`super::CopyRow`] cannot encode (found inside a `postgres::Error`).
#[derive(Debug, Error)]
#[error("{0}")]
pub struct RowError(pub(super) &'static str);

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
