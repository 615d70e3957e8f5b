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

use postgres::NoTls;
use r2d2_postgres::PostgresConnectionManager;

/// The columns every statement of a batch names, in the binary COPY's
/// order (the batch's binary COPY encodes them so): one spelling for all of them.
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

pub mod dead_letters;
mod error;
pub mod events;
pub mod kept;
mod migrate;
pub mod partitions;
mod session;
mod write;

pub use error::{RowError, StoreError};
pub use migrate::{migrate, MIGRATIONS};
pub use partitions::Retention;
pub use session::{
    connect_config, durability, durability_warning, pool, Session, SynchronousCommit, Timeouts,
};
pub(crate) use write::Timestamptz;
pub use write::{canary, count_conflicts, probe, write_batch, CopyRow, Written, INSERT_KEYS, STAGING_TYPES};

/// The channel [`notify!`] notifies, for listeners.
pub const EVENTS_CHANNEL: &str = "webhook_events";

/// The pool's connection manager.
pub type Manager = PostgresConnectionManager<NoTls>;
/// The pool type.
pub type Pool = r2d2::Pool<Manager>;

#[cfg(test)]
mod tests {
    #[test]
    fn the_commit_notifies_the_channel_the_api_listens_on() {
        assert_eq!(notify!(), format!("NOTIFY {}", super::EVENTS_CHANNEL));
    }
}
