//! Reading the stored events in commit order, for the consumer API
//! ([`crate::api`]) and anyone who reads the table directly.
//!
//! # The rule
//! Several workers commit at once, so `id`s become visible out of order: a
//! reader that polls `WHERE id > $last` skips, silently and for good, every
//! row committed after it saw a higher id. Each row therefore carries the
//! transaction that stored it (`xid`, `xid8`), and a reader goes in
//! `(xid, id)` order and only below `pg_snapshot_xmin(pg_current_snapshot())`:
//! every transaction below that horizon has ended, so nothing can appear
//! behind a [`Position`] once handed out. A transaction left open elsewhere
//! in the database holds the horizon back (readers wait; nothing is skipped).
//!
//! # Positions
//! A [`Position`] is the `(xid, id)` of the last row read, and that row's
//! `received_at`, which tells whether what follows it may have been dropped
//! by the retention ([`horizon`]). Its text form is opaque to clients.

use postgres::Client;
use time::OffsetDateTime;

use super::StoreError;

/// Where a reader stands: after the row `(xid, id)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The storing transaction of the last row read (0: before every row).
    pub xid: u64,
    /// Its id.
    pub id: i64,
    /// Its `received_at`, µs since the epoch (`i64::MIN` for the start).
    pub received_us: i64,
}

impl Position {
    /// Before every row kept.
    pub const START: Self = Self { xid: 0, id: 0, received_us: i64::MIN };

    /// Whether this is [`Position::START`].
    pub fn is_start(&self) -> bool {
        self.xid == 0 && self.id == 0
    }

    /// The opaque text form handed to clients.
    pub fn encode(&self) -> String {
        if self.is_start() {
            return "start".into();
        }
        format!("{:x}-{:x}-{:x}", self.xid, self.id, self.received_us)
    }

    /// The position `text` stands for; `None` if it is not one this
    /// gateway handed out.
    pub fn decode(text: &str) -> Option<Self> {
        if text == "start" {
            return Some(Self::START);
        }
        let mut parts = text.split('-');
        let xid = u64::from_str_radix(parts.next()?, 16).ok()?;
        let id = i64::from_str_radix(parts.next()?, 16).ok()?;
        let received_us = i64::from_str_radix(parts.next()?, 16).ok()?;
        if parts.next().is_some() || id < 0 {
            return None;
        }
        Some(Self { xid, id, received_us })
    }
}

/// One stored event as the API shows it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its row id.
    pub id: i64,
    /// The provider (route).
    pub provider: String,
    /// The sender's id.
    pub event_id: String,
    /// The sender's event type (`""` when it has none).
    pub event_type: String,
    /// The sender's timestamp.
    pub timestamp: OffsetDateTime,
    /// When the gateway received it.
    pub received_at: OffsetDateTime,
    /// When a worker stored it.
    pub stored_at: OffsetDateTime,
    /// The scheme that verified it (`None`: unsigned).
    pub verified_by: Option<String>,
    /// The payload, as JSON text.
    pub payload: String,
    /// Its position: where a reader stands once it has read it.
    pub position: Position,
}

/// Which events a page holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Filter<'a> {
    /// Only this provider's.
    pub provider: Option<&'a str>,
    /// Only this event type.
    pub event_type: Option<&'a str>,
}

/// The columns an [`Event`] is read from. The `xid` goes out as text
/// under another name: an output column named `xid` would be what `ORDER
/// BY xid` sorts by (output names come first), as text, where "1000" sorts
/// before "998".
const COLUMNS: &str = "id, provider, event_id, event_type, event_timestamp, received_at, stored_at, \
                       verified_by, payload::text, xid::text AS xid_text";

fn event(row: &postgres::Row) -> Result<Event, StoreError> {
    let received_at: OffsetDateTime = row.get(5);
    let xid = xid_at(row, 9)?;
    let id: i64 = row.get(0);
    Ok(Event {
        id,
        provider: row.get(1),
        event_id: row.get(2),
        event_type: row.get(3),
        timestamp: row.get(4),
        received_at,
        stored_at: row.get(6),
        verified_by: row.get(7),
        payload: row.get(8),
        position: Position { xid, id, received_us: micros(received_at) },
    })
}

/// Column `i` of `row`: an `xid8` selected as text (the driver has no type
/// for it), as a number.
fn xid_at(row: &postgres::Row, i: usize) -> Result<u64, StoreError> {
    row.get::<_, String>(i).parse().map_err(|_| StoreError::Schema("an xid8 column is not a number"))
}

fn micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1000) as i64
}

/// Up to `limit` events after `after` in commit order, only those no
/// transaction still running could precede.
///
/// # Errors
/// PostgreSQL failed.
pub fn page(
    client: &mut Client,
    after: Position,
    limit: i64,
    filter: Filter<'_>,
) -> Result<Vec<Event>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM webhook_events
          WHERE (xid, id) > ($1::text::xid8, $2)
            AND xid < pg_snapshot_xmin(pg_current_snapshot())
            AND ($3::text IS NULL OR provider = $3)
            AND ($4::text IS NULL OR event_type = $4)
          ORDER BY xid, id
          LIMIT $5"
    );
    let rows = client
        .query(&sql, &[&after.xid.to_string(), &after.id, &filter.provider, &filter.event_type, &limit])?;
    rows.iter().map(event).collect()
}

/// The event the sender `provider` sent as `event_id`, if it is kept.
///
/// # Errors
/// PostgreSQL failed.
pub fn one(client: &mut Client, provider: &str, event_id: &str) -> Result<Option<Event>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM webhook_events WHERE provider = $1 AND event_id = $2 ORDER BY received_at LIMIT 1"
    );
    client.query_opt(&sql, &[&provider, &event_id])?.as_ref().map(event).transpose()
}

/// The last position readers can reach now (where `latest` seeks to).
///
/// # Errors
/// PostgreSQL failed.
pub fn latest(client: &mut Client) -> Result<Position, StoreError> {
    let row = client.query_opt(
        "SELECT xid::text AS xid_text, id, received_at FROM webhook_events
          WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY xid DESC, id DESC LIMIT 1",
        &[],
    )?;
    position_of(row.as_ref())
}

/// The position just before the first event (in commit order) received at
/// or after `at_us`; the last position if there is none.
///
/// # Errors
/// PostgreSQL failed.
pub fn before_time(client: &mut Client, at: OffsetDateTime) -> Result<Position, StoreError> {
    let row = client.query_opt(
        "SELECT xid::text AS xid_text, id, received_at FROM webhook_events
          WHERE received_at >= $1 AND xid < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY xid, id LIMIT 1",
        &[&at],
    )?;
    match row {
        // Just before it: the same transaction, the id before.
        Some(r) => {
            let p = position_of(Some(&r))?;
            Ok(Position { id: p.id - 1, ..p })
        }
        None => latest(client),
    }
}

fn position_of(row: Option<&postgres::Row>) -> Result<Position, StoreError> {
    let Some(r) = row else { return Ok(Position::START) };
    let xid = xid_at(r, 0)?;
    Ok(Position { xid, id: r.get(1), received_us: micros(r.get(2)) })
}

/// The oldest `received_at` (µs) still kept: the lower bound of the oldest
/// partition; `None` while nothing has been dropped yet (the first
/// partition starts at `MINVALUE`) or nothing is partitioned.
///
/// # Errors
/// PostgreSQL failed.
pub fn horizon(client: &mut Client) -> Result<Option<i64>, StoreError> {
    let parts = super::partitions::partitions(client)?;
    // `None` (MINVALUE) sorts first: nothing dropped yet.
    Ok(parts.iter().map(|p| p.from).min().flatten())
}

/// A named consumer and where it stands.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// Its name.
    pub name: String,
    /// Its committed position.
    pub position: Position,
    /// When it last acknowledged a page.
    pub acked_at: Option<OffsetDateTime>,
}

/// Where the consumer `name` stands: [`Position::START`] for a name never
/// acked nor sought. Reading writes nothing, so reads alone never grow the
/// table (nor take a transaction id, which would hold every reader back).
///
/// # Errors
/// PostgreSQL failed.
pub fn consumer_position(client: &mut Client, name: &str) -> Result<Position, StoreError> {
    let row = client.query_opt(
        "SELECT name, xid::text, id, received_at, acked_at FROM webhook_consumers WHERE name = $1",
        &[&name],
    )?;
    Ok(row.as_ref().map(consumer_of).transpose()?.map_or(Position::START, |c| c.position))
}

fn consumer_of(row: &postgres::Row) -> Result<Consumer, StoreError> {
    let xid = xid_at(row, 1)?;
    let received: Option<OffsetDateTime> = row.get(3);
    let id: i64 = row.get(2);
    let position = match received {
        Some(t) if !(xid == 0 && id == 0) => Position { xid, id, received_us: micros(t) },
        _ => Position::START,
    };
    Ok(Consumer { name: row.get(0), position, acked_at: row.get(4) })
}

/// Moves the consumer `name` to `to`, making it if it is new and fewer
/// than `cap` consumers exist: whether it was moved (false: the cap).
///
/// # Errors
/// PostgreSQL failed.
pub fn set_consumer(client: &mut Client, name: &str, to: Position, cap: i64) -> Result<bool, StoreError> {
    let received = (!to.is_start())
        .then(|| OffsetDateTime::from_unix_timestamp_nanos(i128::from(to.received_us) * 1000).ok())
        .flatten();
    let moved = client.execute(
        "INSERT INTO webhook_consumers (name, xid, id, received_at, acked_at)
         SELECT $1, $2::text::xid8, $3, $4, now()
          WHERE EXISTS (SELECT 1 FROM webhook_consumers WHERE name = $1)
             OR (SELECT count(*) FROM webhook_consumers) < $5
         ON CONFLICT (name) DO UPDATE
            SET xid = EXCLUDED.xid, id = EXCLUDED.id, received_at = EXCLUDED.received_at, acked_at = now()",
        &[&name, &to.xid.to_string(), &to.id, &received, &cap],
    )?;
    Ok(moved > 0)
}

/// Removes the consumer `name`: whether it existed.
///
/// # Errors
/// PostgreSQL failed.
pub fn delete_consumer(client: &mut Client, name: &str) -> Result<bool, StoreError> {
    Ok(client.execute("DELETE FROM webhook_consumers WHERE name = $1", &[&name])? > 0)
}

/// Every consumer with its lag: events visible after its position (counted
/// up to `cap`) and the `received_at` of the first of them.
///
/// # Errors
/// PostgreSQL failed.
pub fn consumers(
    client: &mut Client,
    cap: i64,
) -> Result<Vec<(Consumer, i64, Option<OffsetDateTime>)>, StoreError> {
    let rows = client.query(
        "SELECT c.name, c.xid::text, c.id, c.received_at, c.acked_at,
                (SELECT count(*) FROM (SELECT 1 FROM webhook_events e
                   WHERE (e.xid, e.id) > (c.xid, c.id) AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
                   LIMIT $1) behind),
                (SELECT e.received_at FROM webhook_events e
                   WHERE (e.xid, e.id) > (c.xid, c.id) AND e.xid < pg_snapshot_xmin(pg_current_snapshot())
                   ORDER BY e.xid, e.id LIMIT 1)
           FROM webhook_consumers c ORDER BY c.name",
        &[&cap],
    )?;
    rows.iter().map(|r| Ok((consumer_of(r)?, r.get(5), r.get(6)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_go_out_as_text_and_come_back() {
        assert_eq!(Position::START.encode(), "start");
        assert_eq!(Position::decode("start"), Some(Position::START));
        let p = Position { xid: 1000, id: 14_691, received_us: 1_796_000_000_000_000 };
        assert_eq!(Position::decode(&p.encode()), Some(p));
        for bad in ["", "zz", "1-2", "1-2-3-4", "3e8--1-5", "x-1-1"] {
            assert_eq!(Position::decode(bad), None, "{bad:?}");
        }
    }
}
