//! Numbered migrations from `sql/`, compiled into the binary.
//!
//! Each runs in its own transaction and is recorded in `schema_migrations`;
//! a transaction-level advisory lock makes concurrent starts (several
//! workers, several gateways) apply each migration exactly once.

use postgres::Client;
use tracing::info;

use super::StoreError;

/// `(version, name, sql)`, in order. Add new files here, never edit old ones.
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "0001_init.sql", include_str!("../../sql/0001_init.sql")),
    (2, "0002_sources.sql", include_str!("../../sql/0002_sources.sql")),
    (3, "0003_retention.sql", include_str!("../../sql/0003_retention.sql")),
    (4, "0004_digests.sql", include_str!("../../sql/0004_digests.sql")),
    (5, "0005_consumers.sql", include_str!("../../sql/0005_consumers.sql")),
    (6, "0006_dead_letter_replays.sql", include_str!("../../sql/0006_dead_letter_replays.sql")),
];

/// Arbitrary constant for `pg_advisory_xact_lock`, shared by every instance.
const MIGRATION_LOCK: i64 = 0x7765_6268_6f6f_6b31; // "webhook1"

/// Applies the migrations not yet applied. Returns how many were applied.
///
/// # Errors
/// [`StoreError`] if a migration fails; it is rolled back, later ones are not tried.
pub fn migrate(client: &mut Client) -> Result<usize, StoreError> {
    // Under the lock too: two first starts creating the table at once
    // collide in the catalog (23505 on pg_type) despite IF NOT EXISTS.
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version bigint PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    )?;
    tx.commit()?;
    let mut applied = 0;
    for (version, name, sql) in MIGRATIONS {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        let done = tx.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version])?.is_some();
        if done {
            continue;
        }
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name])?;
        tx.commit()?;
        info!(version, name, "migration applied");
        applied += 1;
    }
    Ok(applied)
}
