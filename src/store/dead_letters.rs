//! `webhook_dead_letters`: entries that could not be stored, kept in
//! PostgreSQL with their body so Redis holds only work in flight. A dead
//! letter is inserted once per stream entry (`UNIQUE (stream, stream_id)`),
//! so a move repeated after a lost reply keeps one row. The retention of
//! [`super::partitions`] deletes rows older than `EVENT_RETENTION`.
//!
//! A replayed dead letter stays here, marked ([`mark_replayed`]), until the
//! worker transaction that stores its event deletes it ([`super::write_batch`]
//! with the job's `replay_of`); dead again, it takes its new error in the
//! same row ([`insert`]). [`search`] is what the API's and the CLI's views
//! read.

use postgres::types::ToSql;
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
    /// The row this letter is a replay of, dead again (it replaces that
    /// row's error rather than adding a row); `None` for a first death.
    pub replay_of: Option<i64>,
    /// When it was last replayed, µs since the epoch, while its event is on
    /// its way (`None`: not being replayed).
    pub replayed_at_us: Option<i64>,
    /// How often it was replayed.
    pub replays: i32,
}

const COLUMNS: &str = "provider, event_id, event_type, verified_by,
    (extract(epoch FROM event_timestamp) * 1000000)::bigint, (extract(epoch FROM received_at) * 1000000)::bigint,
    raw_body, payload, fields, error, sqlstate, attempts, stream, stream_id,
    (extract(epoch FROM dead_at) * 1000000)::bigint, id, unsigned_fields,
    (extract(epoch FROM replayed_at) * 1000000)::bigint, replays";

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
        replay_of: None,
        replayed_at_us: r.get(17),
        replays: r.get(18),
    }
}

/// Stores `letters` in one transaction; returns how many were new (a
/// letter already stored for its stream entry is kept as it was). A letter
/// that is a replay dead again updates its row (the new error, attempts and
/// stream entry; no longer being replayed), or is inserted if that row is
/// gone (deleted by an operator meanwhile).
///
/// # Errors
/// [`StoreError`]; nothing is stored then.
pub fn insert(client: &mut postgres::Client, letters: &[DeadLetter]) -> Result<u64, StoreError> {
    let mut tx = client.transaction()?;
    // A replay dead again ($17 names its row) updates that row; otherwise,
    // or when that row is gone, the letter is inserted.
    let statement = tx.prepare(
        "WITH again AS (
             UPDATE webhook_dead_letters
                SET error = $10, sqlstate = $11, attempts = $12, stream = $13, stream_id = $14,
                    dead_at = $15, replayed_at = NULL
              WHERE id = $17::bigint
          RETURNING id)
         INSERT INTO webhook_dead_letters (provider, event_id, event_type, verified_by, event_timestamp,
             received_at, raw_body, payload, fields, error, sqlstate, attempts, stream, stream_id, dead_at,
             unsigned_fields)
         SELECT $1::text, $2::text, $3::text, $4::text, $5::timestamptz, $6::timestamptz, $7::bytea,
                $8::bytea, $9::jsonb, $10::text, $11::text, $12::bigint, $13::text, $14::text,
                $15::timestamptz, $16::text
          WHERE NOT EXISTS (SELECT 1 FROM again)
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
                &d.replay_of,
            ],
        )?;
    }
    tx.commit()?;
    Ok(new)
}

/// Which dead letters a search or a replay by filter takes. Every field
/// left `None` matches all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Dead at or after, µs since the epoch.
    pub since_us: Option<i64>,
    /// Dead before, µs since the epoch.
    pub until_us: Option<i64>,
    /// The provider (route) it came in on.
    pub provider: Option<String>,
    /// PostgreSQL's SQLSTATE for it.
    pub sqlstate: Option<String>,
    /// Text its error contains, in any case.
    pub text: Option<String>,
}

/// The condition of [`Filter`], on parameters `$1`–`$5`. Each query is
/// planned with its values (unnamed statements), so an absent condition
/// folds away and the indexes serve what is left.
const MATCHES: &str = "($1::timestamptz IS NULL OR dead_at >= $1)
    AND ($2::timestamptz IS NULL OR dead_at < $2)
    AND ($3::text IS NULL OR provider = $3)
    AND ($4::text IS NULL OR sqlstate = $4)
    AND ($5::text IS NULL OR strpos(lower(error), lower($5)) > 0)";

impl Filter {
    /// Runs `sql`, whose `$1`–`$5` are [`MATCHES`]'s and `$6`… are `more`.
    fn query(
        &self,
        client: &mut impl GenericClient,
        sql: &str,
        more: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let (since, until) = (self.since_us.map(Timestamptz), self.until_us.map(Timestamptz));
        let mut params: Vec<&(dyn ToSql + Sync)> =
            vec![&since, &until, &self.provider, &self.sqlstate, &self.text];
        params.extend_from_slice(more);
        Ok(client.query(sql, &params)?)
    }
}

/// One dead letter as a search lists it: everything but the body
/// (`raw_body`, `payload` and `fields` are `None`), and the body's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The letter, without its body.
    pub letter: DeadLetter,
    /// Bytes of the body as received (0 for an undecodable entry).
    pub body_bytes: i64,
}

/// Up to `limit` dead letters matching `filter`, newest first, below the
/// id `before` (the cursor of the page before; `None`: from the newest).
///
/// # Errors
/// [`StoreError`].
pub fn search(
    client: &mut impl GenericClient,
    filter: &Filter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Summary>, StoreError> {
    // COLUMNS with the body's three columns left out (NULL) and its size after.
    let columns = COLUMNS.replace("raw_body, payload, fields", "NULL::bytea, NULL::bytea, NULL::jsonb");
    let sql = format!(
        "SELECT {columns}, coalesce(octet_length(raw_body), 0)::bigint
           FROM webhook_dead_letters
          WHERE {MATCHES} AND ($6::bigint IS NULL OR id < $6)
          ORDER BY id DESC LIMIT $7"
    );
    let rows = filter.query(client, &sql, &[&before, &limit])?;
    Ok(rows.iter().map(|r| Summary { letter: from_row(r), body_bytes: r.get(19) }).collect())
}

/// Up to `max` dead letters matching `filter` that are not being
/// replayed, oldest first, above the id `after`.
///
/// # Errors
/// [`StoreError`].
pub fn matching(
    client: &mut impl GenericClient,
    filter: &Filter,
    after: i64,
    max: i64,
) -> Result<Vec<DeadLetter>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM webhook_dead_letters
          WHERE {MATCHES} AND replayed_at IS NULL AND id > $6
          ORDER BY id LIMIT $7"
    );
    Ok(filter.query(client, &sql, &[&after, &max])?.iter().map(from_row).collect())
}

/// How many dead letters match `filter` and are not being replayed.
///
/// # Errors
/// [`StoreError`].
pub fn count_matching(client: &mut impl GenericClient, filter: &Filter) -> Result<i64, StoreError> {
    let sql = format!("SELECT count(*) FROM webhook_dead_letters WHERE {MATCHES} AND replayed_at IS NULL");
    Ok(filter.query(client, &sql, &[])?[0].get(0))
}

/// One dead letter, whole, or `None`.
///
/// # Errors
/// [`StoreError`].
pub fn get(client: &mut impl GenericClient, id: i64) -> Result<Option<DeadLetter>, StoreError> {
    let row =
        client.query_opt(&format!("SELECT {COLUMNS} FROM webhook_dead_letters WHERE id = $1"), &[&id])?;
    Ok(row.as_ref().map(from_row))
}

/// Marks a dead letter as replayed (its event is on its way); whether it
/// was there.
///
/// # Errors
/// [`StoreError`].
pub fn mark_replayed(client: &mut impl GenericClient, id: i64) -> Result<bool, StoreError> {
    let n = client.execute(
        "UPDATE webhook_dead_letters SET replayed_at = now(), replays = replays + 1 WHERE id = $1",
        &[&id],
    )?;
    Ok(n == 1)
}

/// Deletes the dead letters `ids` whose replays a write stores (called by the write
/// that stores them, in its transaction).
///
/// # Errors
/// [`StoreError`].
pub fn forget_stored(client: &mut impl GenericClient, ids: &[i64]) -> Result<(), StoreError> {
    if !ids.is_empty() {
        client.execute("DELETE FROM webhook_dead_letters WHERE id = ANY($1)", &[&ids])?;
    }
    Ok(())
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
