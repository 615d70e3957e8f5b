//! Writing a batch: one transaction per batch, the keys into the current
//! dedupe generation first (a fast path when all are new), then a binary
//! COPY of the rows; otherwise the staging table and the gated insert, the
//! conflicts kept apart, the replays' dead letters deleted, and the
//! commit's one `NOTIFY`.

use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::session::last_row;
use super::{dead_letters, partitions, Retention, RowError, StoreError};
use crate::job::WebhookJob;

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
