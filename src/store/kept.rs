//! What PostgreSQL keeps now (rows, bytes of the events, their indexes
//! and the dedupe keys, generations, partitions): for `stats`, `GET
//! /v1/stats` and the soak benchmark.

use postgres::Client;

use super::partitions::{partitions, Partition};
use super::StoreError;

/// What PostgreSQL keeps now, for `stats` and the soak benchmark.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    /// Rows of `webhook_events` (the planner's estimate past a million).
    pub rows: i64,
    /// Heap and TOAST bytes of every event partition.
    pub table_bytes: i64,
    /// Index bytes of every event partition.
    pub index_bytes: i64,
    /// Bytes of the dedupe keys, indexes included.
    pub key_bytes: i64,
    /// Dedupe generations inside the window.
    pub generations: i64,
    /// The event partitions.
    pub partitions: Vec<Partition>,
}

/// Reads [`Kept`]. Exact row counts are cheap below a million rows;
/// above, the statistics' estimate is used (a count would scan them all).
///
/// # Errors
/// [`StoreError`].
pub fn kept(client: &mut Client) -> Result<Kept, StoreError> {
    let partitions = partitions(client)?;
    let sizes = client.query_one(
        "SELECT coalesce(sum(pg_table_size(inhrelid)), 0)::bigint, coalesce(sum(pg_indexes_size(inhrelid)), 0)::bigint,
                coalesce(sum(c.reltuples) FILTER (WHERE c.reltuples > 0), 0)::bigint
           FROM pg_inherits JOIN pg_class c ON c.oid = inhrelid
          WHERE inhparent = 'webhook_events'::regclass",
        &[],
    )?;
    let estimate: i64 = sizes.get(2);
    let rows = if estimate < 1_000_000 {
        client.query_one("SELECT count(*) FROM webhook_events", &[])?.get(0)
    } else {
        estimate
    };
    let keys = client.query_one(
        "SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint, (SELECT count(*) FROM webhook_dedupe_generations)
           FROM pg_inherits WHERE inhparent = 'webhook_event_keys'::regclass",
        &[],
    )?;
    Ok(Kept {
        rows,
        table_bytes: sizes.get(0),
        index_bytes: sizes.get(1),
        key_bytes: keys.get(0),
        generations: keys.get(1),
        partitions,
    })
}
