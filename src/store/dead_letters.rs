//! `webhook_dead_letters`: entries that could not be stored, kept in
//! PostgreSQL with their body so Redis holds only work in flight. A dead
//! letter is inserted once per stream entry (`UNIQUE (stream, stream_id)`),
//! so a move repeated after a lost reply keeps one row. The retention of
//! [`super::partitions`] deletes rows older than `EVENT_RETENTION`.

use postgres::GenericClient;

use super::{StoreError, Timestamptz};

/// One dead letter, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its row id (0 before it is stored).
    pub id: i64,
    /// The job's fields; `None` when the entry did not decode.
    pub provider: Option<String>,
    /// The sender's id.
    pub event_id: Option<String>,
    /// The sender's type.
    pub event_type: Option<String>,
    /// The scheme that verified it.
    pub verified_by: Option<String>,
    /// µs since the epoch.
    pub event_timestamp_us: Option<i64>,
    /// µs since the epoch.
    pub received_at_us: Option<i64>,
    /// The body exactly as received.
    pub raw_body: Option<Vec<u8>>,
    /// The JSON meant for `payload` when it is not the body (a form delivery).
    pub payload: Option<Vec<u8>>,
    /// An undecodable entry's fields, name → base64 of the value.
    pub fields: Option<serde_json::Value>,
    /// The last error.
    pub error: String,
    /// Its SQLSTATE, when PostgreSQL gave one.
    pub sqlstate: Option<String>,
    /// Deliveries when it was given up.
    pub attempts: i64,
    /// The stream (partition) it came from.
    pub stream: String,
    /// Its id in that stream.
    pub stream_id: String,
    /// When it was dead-lettered, µs since the epoch.
    pub dead_at_us: i64,
    /// The fields read from headers the signature does not cover.
    pub unsigned_fields: Option<String>,
}

const COLUMNS: &str = "provider, event_id, event_type, verified_by,
    (extract(epoch FROM event_timestamp) * 1000000)::bigint, (extract(epoch FROM received_at) * 1000000)::bigint,
    raw_body, payload, fields, error, sqlstate, attempts, stream, stream_id,
    (extract(epoch FROM dead_at) * 1000000)::bigint, id, unsigned_fields";

fn from_row(r: &postgres::Row) -> DeadLetter {
    DeadLetter {
        provider: r.get(0),
        event_id: r.get(1),
        event_type: r.get(2),
        verified_by: r.get(3),
        event_timestamp_us: r.get(4),
        received_at_us: r.get(5),
        raw_body: r.get(6),
        payload: r.get(7),
        fields: r.get(8),
        error: r.get(9),
        sqlstate: r.get(10),
        attempts: r.get(11),
        stream: r.get(12),
        stream_id: r.get(13),
        dead_at_us: r.get(14),
        id: r.get(15),
        unsigned_fields: r.get(16),
    }
}

/// Stores `letters` in one transaction; returns how many were new (a
/// letter already stored for its stream entry is kept as it was).
///
/// # Errors
/// [`StoreError`]; nothing is stored then.
pub fn insert(client: &mut postgres::Client, letters: &[DeadLetter]) -> Result<u64, StoreError> {
    let mut tx = client.transaction()?;
    let statement = tx.prepare(
        "INSERT INTO webhook_dead_letters (provider, event_id, event_type, verified_by, event_timestamp,
             received_at, raw_body, payload, fields, error, sqlstate, attempts, stream, stream_id, dead_at,
             unsigned_fields)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (stream, stream_id) DO NOTHING",
    )?;
    let mut new = 0;
    for d in letters {
        let us = |v: Option<i64>| v.map(Timestamptz);
        new += tx.execute(
            &statement,
            &[
                &d.provider,
                &d.event_id,
                &d.event_type,
                &d.verified_by,
                &us(d.event_timestamp_us),
                &us(d.received_at_us),
                &d.raw_body,
                &d.payload,
                &d.fields,
                &d.error,
                &d.sqlstate,
                &d.attempts,
                &d.stream,
                &d.stream_id,
                &Timestamptz(d.dead_at_us),
                &d.unsigned_fields,
            ],
        )?;
    }
    tx.commit()?;
    Ok(new)
}

/// Dead letters by id (every one when `ids` is `None`), oldest first, at most `limit`.
///
/// # Errors
/// [`StoreError`].
pub fn list(
    client: &mut impl GenericClient,
    ids: Option<&[i64]>,
    limit: i64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let rows = match ids {
        None => client
            .query(&format!("SELECT {COLUMNS} FROM webhook_dead_letters ORDER BY id LIMIT $1"), &[&limit])?,
        Some(ids) => client.query(
            &format!("SELECT {COLUMNS} FROM webhook_dead_letters WHERE id = ANY($1) ORDER BY id LIMIT $2"),
            &[&ids, &limit],
        )?,
    };
    Ok(rows.iter().map(from_row).collect())
}

/// Deletes one dead letter; whether it was there.
///
/// # Errors
/// [`StoreError`].
pub fn delete(client: &mut impl GenericClient, id: i64) -> Result<bool, StoreError> {
    Ok(client.execute("DELETE FROM webhook_dead_letters WHERE id = $1", &[&id])? == 1)
}

/// How many dead letters the table holds.
///
/// # Errors
/// [`StoreError`].
pub fn count(client: &mut impl GenericClient) -> Result<i64, StoreError> {
    Ok(client.query_one("SELECT count(*) FROM webhook_dead_letters", &[])?.get(0))
}
