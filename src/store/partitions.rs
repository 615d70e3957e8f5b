//! What PostgreSQL keeps, and for how long: partitions of `webhook_events`
//! created ahead and dropped whole after `EVENT_RETENTION`, and the dedupe
//! generations that keep `(provider, event_id)` exact within
//! `DEDUPE_WINDOW` (sql/0003_retention.sql has the tables).
//!
//! # Event partitions
//! One range partition of `received_at` per `PARTITION_INTERVAL`, aligned
//! to the interval since the Unix epoch (UTC). [`maintain`] creates the
//! current one and the next two, and drops every partition whose upper
//! bound lies before `now − EVENT_RETENTION`. A row whose partition is
//! missing (a backlog older than anything premade) makes the writer call
//! [`cover`] and retry; it is never refused for it. Partitions are created
//! as a table and then attached (`SHARE UPDATE EXCLUSIVE` on the parent,
//! which writers do not wait for) and detached `CONCURRENTLY` before they
//! are dropped, so neither step stops the writers. There is no DEFAULT
//! partition: with one, PostgreSQL refuses `DETACH … CONCURRENTLY`.
//!
//! # Dedupe generations
//! A partitioned table cannot carry `UNIQUE (provider, event_id)`. The keys
//! live in `webhook_event_keys`, one LIST partition per generation, each
//! unique on `(gen, provider, event_id)`. A batch inserts its keys into the
//! current generation (`ON CONFLICT DO NOTHING`: a copy stored in the same
//! generation is caught by the index, even when two workers insert it at
//! once), skipping keys found in the older generations still inside the
//! window, and only the rows whose key went in are stored: one statement.
//!
//! The gap between generations is closed by a lock: every writer takes
//! [`GENERATION_LOCK`] shared before it reads which generation is current;
//! [`maintain`] switches to the next generation holding it exclusively. So
//! when a switch commits, every insert into the old generation has
//! committed, and a writer that then checks the old generation sees them.
//! A generation ends `PARTITION_INTERVAL` after it began and is dropped
//! whole once it ended more than `DEDUPE_WINDOW` ago: a copy arriving
//! within the window of its first is always found.
//!
//! # Locks and who runs it
//! One process at a time ([`MAINTENANCE_LOCK`], tried, never waited for).
//! A switch waits at most [`LOCK_WAIT`] for the writers in flight (and they
//! wait for it no longer), else it is tried again on the next run.

use std::time::Duration;

use postgres::{Client, GenericClient};
use time::OffsetDateTime;
use tracing::{info, warn};

use super::StoreError;

/// Shared by every writer while it inserts keys; exclusive for a switch of
/// generation (see the module docs).
pub const GENERATION_LOCK: i64 = 0x7765_6268_6f6f_6b32; // "webhook2"
/// Held by the one process running [`maintain`] or [`cover`].
pub const MAINTENANCE_LOCK: i64 = 0x7765_6268_6f6f_6b33; // "webhook3"
/// The longest a generation switch, a detach or a drop waits for a lock
/// (and so the longest writers queue behind it).
pub const LOCK_WAIT: Duration = Duration::from_secs(2);
/// Event partitions made ahead of the current one.
const PREMADE: i64 = 2;

/// How long rows and keys are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// `PARTITION_INTERVAL` (default 1 day): the span of one event
    /// partition and of one dedupe generation.
    pub interval: Duration,
    /// `EVENT_RETENTION` (default 30 days; `None` = keep everything).
    pub events: Option<Duration>,
    /// `DEDUPE_WINDOW` (default 7 days): how long after its first copy a
    /// copy of `(provider, event_id)` is still recognised.
    pub dedupe_window: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(86_400),
            events: Some(Duration::from_secs(30 * 86_400)),
            dedupe_window: Duration::from_secs(7 * 86_400),
        }
    }
}

impl Retention {
    /// How often [`maintain`] runs: twice per interval, and at least every
    /// ten minutes.
    pub fn maintenance_every(&self) -> Duration {
        (self.interval / 2).min(Duration::from_secs(600))
    }

    fn interval_us(&self) -> i64 {
        (self.interval.as_micros() as i64).max(1)
    }
}

/// One partition of `webhook_events`: `[from, to)` in µs since the epoch
/// (`from` `None` = `MINVALUE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The table's name.
    pub name: String,
    /// Lower bound, µs (None: unbounded).
    pub from: Option<i64>,
    /// Upper bound, µs (exclusive).
    pub to: i64,
    /// A `DETACH … CONCURRENTLY` was interrupted: finish it.
    pub detach_pending: bool,
}

/// What one [`maintain`] run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintained {
    /// Event partitions created.
    pub created: Vec<String>,
    /// Event partitions dropped.
    pub dropped: Vec<String>,
    /// The generation switched to, if one was.
    pub switched_to: Option<i32>,
    /// Generations dropped.
    pub generations_dropped: Vec<i32>,
    /// Dead letters deleted for being older than `EVENT_RETENTION`.
    pub dead_letters_deleted: u64,
    /// Conflicting deliveries deleted for being older than `EVENT_RETENTION`.
    pub conflicts_deleted: u64,
}

/// The start of the interval slot holding `t_us`.
fn slot_start(t_us: i64, interval_us: i64) -> i64 {
    t_us.div_euclid(interval_us) * interval_us
}

/// The parts of `[from, to)` that no partition in `existing` covers.
fn gaps(existing: &[Partition], from: i64, to: i64) -> Vec<(i64, i64)> {
    let mut covered: Vec<(i64, i64)> = existing.iter().map(|p| (p.from.unwrap_or(i64::MIN), p.to)).collect();
    covered.sort_unstable();
    let mut out = Vec::new();
    let mut at = from;
    for (lo, hi) in covered {
        if at >= to {
            break;
        }
        if hi <= at {
            continue;
        }
        if lo > at {
            out.push((at, lo.min(to)));
        }
        at = at.max(hi);
    }
    if at < to {
        out.push((at, to));
    }
    out
}

/// `µs` as a `timestamptz` literal (UTC).
fn literal(us: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// The name of the partition starting at `from`: `webhook_events_p20261207`
/// for a day, with the time and µs only when they are not zero.
fn partition_name(from: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(from) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let mut name = format!("webhook_events_p{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day());
    let (h, m, s, us) = (t.hour(), t.minute(), t.second(), t.microsecond());
    if (h, m, s, us) != (0, 0, 0, 0) {
        name.push_str(&format!("_{h:02}{m:02}{s:02}"));
    }
    if us != 0 {
        name.push_str(&format!("_{us:06}"));
    }
    name
}

/// The partitions of `webhook_events`, by lower bound.
///
/// # Errors
/// [`StoreError`].
pub fn partitions(client: &mut impl GenericClient) -> Result<Vec<Partition>, StoreError> {
    let rows = client.query(
        r"SELECT c.relname::text, i.inhdetachpending,
                 (extract(epoch FROM (regexp_match(b, 'FROM \(''([^'']+)''\)'))[1]::timestamptz) * 1000000)::bigint,
                 (extract(epoch FROM (regexp_match(b, 'TO \(''([^'']+)''\)'))[1]::timestamptz) * 1000000)::bigint
            FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid,
                 pg_get_expr(c.relpartbound, c.oid) AS b
           WHERE i.inhparent = 'webhook_events'::regclass",
        &[],
    )?;
    let mut out: Vec<Partition> = rows
        .iter()
        .filter_map(|r| {
            let to: Option<i64> = r.get(3);
            Some(Partition { name: r.get(0), detach_pending: r.get(1), from: r.get(2), to: to? })
        })
        .collect();
    out.sort_by_key(|p| (p.from.unwrap_or(i64::MIN), p.to));
    Ok(out)
}

/// Creates the partitions that rows received in `[from_us, to_us]` need
/// (whole interval slots, less what existing partitions cover), under the
/// maintenance lock, waiting for it. Returns the names created.
///
/// # Errors
/// [`StoreError`]; nothing half-made stays (one transaction).
pub fn cover(
    client: &mut Client,
    retention: &Retention,
    from_us: i64,
    to_us: i64,
) -> Result<Vec<String>, StoreError> {
    let step = retention.interval_us();
    let from = slot_start(from_us, step);
    let to = slot_start(to_us, step).saturating_add(step);
    let mut tx = client.transaction()?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = {}; SELECT pg_advisory_xact_lock({MAINTENANCE_LOCK})",
        LOCK_WAIT.as_millis()
    ))?;
    let existing = partitions(&mut tx)?;
    let mut created = Vec::new();
    for (lo, hi) in gaps(&existing, from, to) {
        // Whole slots: one partition per interval, a gap's edges clipped.
        let mut at = lo;
        while at < hi {
            let end = (slot_start(at, step).saturating_add(step)).min(hi);
            let name = partition_name(at);
            tx.batch_execute(&format!(
                "CREATE TABLE {name} (LIKE webhook_events INCLUDING DEFAULTS INCLUDING STORAGE);
                 ALTER TABLE webhook_events ATTACH PARTITION {name} FOR VALUES FROM ('{}') TO ('{}')",
                literal(at),
                literal(end)
            ))?;
            created.push(name);
            at = end;
        }
    }
    tx.commit()?;
    if !created.is_empty() {
        info!(partitions = ?created, "event partitions created");
    }
    Ok(created)
}

/// One maintenance run (see the module docs), if no other process is
/// running one: `None` then.
///
/// # Errors
/// [`StoreError`]: the step that failed; the ones before it stay done, and
/// the next run takes up the rest.
pub fn maintain(
    client: &mut Client,
    retention: &Retention,
    now_us: i64,
) -> Result<Option<Maintained>, StoreError> {
    let locked: bool = client.query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK])?.get(0);
    if !locked {
        return Ok(None);
    }
    let result = maintain_locked(client, retention, now_us);
    // A broken connection took the session lock with it.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK]);
    result.map(Some)
}

fn maintain_locked(
    client: &mut Client,
    retention: &Retention,
    now_us: i64,
) -> Result<Maintained, StoreError> {
    let mut done = Maintained::default();
    let step = retention.interval_us();
    let current = slot_start(now_us, step);
    client.batch_execute(&format!("SET lock_timeout = {}", LOCK_WAIT.as_millis()))?;
    let result = (|| {
        // cover() takes the same lock per transaction; this session holds it already.
        done.created = cover(client, retention, current, current.saturating_add(PREMADE * step))?;
        done.switched_to = switch_generation(client, retention)?;
        done.generations_dropped = drop_generations(client, retention)?;
        if let Some(keep) = retention.events {
            let horizon = now_us.saturating_sub(keep.as_micros() as i64);
            for p in partitions(client)? {
                if p.to <= horizon {
                    detach_and_drop(client, "webhook_events", &p.name, p.detach_pending)?;
                    info!(partition = %p.name, "event partition past EVENT_RETENTION dropped");
                    done.dropped.push(p.name);
                }
            }
            done.dead_letters_deleted = delete_older(client, "webhook_dead_letters", "dead_at", horizon)?;
            done.conflicts_deleted = delete_older(client, "webhook_event_conflicts", "detected_at", horizon)?;
        }
        Ok(done)
    })();
    let _ = client.batch_execute("RESET lock_timeout");
    result
}

/// Starts the next generation once the current one is an interval old.
fn switch_generation(client: &mut Client, retention: &Retention) -> Result<Option<i32>, StoreError> {
    let row = client.query_one(
        "SELECT gen, started_at <= now() - make_interval(secs => $1) FROM webhook_dedupe_generations
          ORDER BY gen DESC LIMIT 1",
        &[&retention.interval.as_secs_f64()],
    )?;
    let (current, due): (i32, bool) = (row.get(0), row.get(1));
    if !due {
        return Ok(None);
    }
    let next = current + 1;
    // Made and attached before the switch: writers never wait for it.
    client.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS webhook_event_keys_g{next} (LIKE webhook_event_keys);
         DO $$ BEGIN
           IF NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = 'webhook_event_keys_g{next}'::regclass) THEN
             ALTER TABLE webhook_event_keys ATTACH PARTITION webhook_event_keys_g{next} FOR VALUES IN ({next});
           END IF;
         END $$"
    ))?;
    let mut tx = client.transaction()?;
    let switched = tx.execute("SELECT pg_advisory_xact_lock($1)", &[&GENERATION_LOCK]).and_then(|_| {
        tx.execute("UPDATE webhook_dedupe_generations SET ended_at = now() WHERE gen = $1", &[&current])?;
        tx.execute("INSERT INTO webhook_dedupe_generations (gen) VALUES ($1)", &[&next])
    });
    match switched {
        Ok(_) => {
            tx.commit()?;
            info!(generation = next, "dedupe generation started");
            Ok(Some(next))
        }
        Err(e) if e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            warn!(
                wait_ms = LOCK_WAIT.as_millis() as u64,
                "dedupe generation switch gave up waiting for the writers; tried again next run"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Drops the generations that ended more than `DEDUPE_WINDOW` ago: first
/// their row (writers stop reading them), then their keys.
fn drop_generations(client: &mut Client, retention: &Retention) -> Result<Vec<i32>, StoreError> {
    let gone: Vec<i32> = client
        .query(
            "DELETE FROM webhook_dedupe_generations
              WHERE ended_at < now() - make_interval(secs => $1) RETURNING gen",
            &[&retention.dedupe_window.as_secs_f64()],
        )?
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Also any left behind by a run cut short after the DELETE.
    let orphans: Vec<(String, bool)> = client
        .query(
            "SELECT c.relname::text, i.inhdetachpending FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'webhook_event_keys'::regclass
                AND substr(c.relname, 21)::int < (SELECT min(gen) FROM webhook_dedupe_generations)",
            &[],
        )?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (name, pending) in orphans {
        detach_and_drop(client, "webhook_event_keys", &name, pending)?;
        info!(partition = %name, "dedupe generation past DEDUPE_WINDOW dropped");
    }
    Ok(gone)
}

/// `DETACH PARTITION … CONCURRENTLY` (or `FINALIZE` one left pending),
/// then `DROP TABLE`: the parent is never locked against writers.
fn detach_and_drop(client: &mut Client, parent: &str, name: &str, pending: bool) -> Result<(), StoreError> {
    let how = if pending { "FINALIZE" } else { "CONCURRENTLY" };
    client.batch_execute(&format!("ALTER TABLE {parent} DETACH PARTITION {name} {how}"))?;
    client.batch_execute(&format!("DROP TABLE {name}"))?;
    Ok(())
}

/// Rows of `table` whose `at` column lies before `horizon_us`, in slices
/// so no transaction is long. `table` and `at` are this module's constants.
fn delete_older(client: &mut Client, table: &str, at: &str, horizon_us: i64) -> Result<u64, StoreError> {
    let horizon = literal(horizon_us);
    let statement = format!(
        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {at} < $1::text::timestamptz LIMIT 10000)"
    );
    let mut deleted = 0;
    loop {
        let n = client.execute(&statement, &[&horizon])?;
        deleted += n;
        if n < 10_000 {
            return Ok(deleted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(from: Option<i64>, to: i64) -> Partition {
        Partition { name: String::new(), from, to, detach_pending: false }
    }

    #[test]
    fn gaps_are_what_no_partition_covers() {
        assert_eq!(gaps(&[], 0, 10), vec![(0, 10)]);
        assert_eq!(gaps(&[part(Some(0), 10)], 0, 10), vec![]);
        assert_eq!(gaps(&[part(None, 4)], 0, 10), vec![(4, 10)], "the legacy partition's edge");
        assert_eq!(gaps(&[part(Some(2), 4), part(Some(6), 8)], 0, 10), vec![(0, 2), (4, 6), (8, 10)]);
        assert_eq!(gaps(&[part(Some(6), 8), part(Some(2), 4)], 3, 7), vec![(4, 6)], "any order");
        assert_eq!(gaps(&[part(Some(20), 30)], 0, 10), vec![(0, 10)]);
    }

    #[test]
    fn slots_align_to_the_interval_before_the_epoch_too() {
        assert_eq!(slot_start(86_400_000_000 + 5, 86_400_000_000), 86_400_000_000);
        assert_eq!(slot_start(-1, 1_000_000), -1_000_000);
        assert_eq!(slot_start(0, 7), 0);
    }

    #[test]
    fn names_and_literals_are_utc() {
        let day = 1_796_601_600_000_000; // 2026-12-07 00:00:00 UTC
        assert_eq!(partition_name(day), "webhook_events_p20261207");
        assert_eq!(partition_name(day + 3_723_000_000), "webhook_events_p20261207_010203");
        assert_eq!(partition_name(day + 5), "webhook_events_p20261207_000000_000005");
        assert_eq!(literal(day + 5), "2026-12-07 00:00:00.000005+00");
    }

    #[test]
    fn maintenance_runs_twice_an_interval_and_at_least_every_ten_minutes() {
        let r = |secs| Retention { interval: Duration::from_secs(secs), ..Retention::default() };
        assert_eq!(r(86_400).maintenance_every(), Duration::from_secs(600));
        assert_eq!(r(4).maintenance_every(), Duration::from_secs(2));
    }
}
