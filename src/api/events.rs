//! The events and the named consumers (issue 26):
//!
//! * `GET /v1/events?after=&limit=&provider=&type=&wait=` (read): up to
//!   `limit` (1–1000, default 100) events after the cursor `after` (none:
//!   from the oldest kept), in commit order ([`crate::store::events`]).
//!   `{"data":[…],"next":"<cursor>","done":<bool>}`: `next` is always valid
//!   to pass back (the same cursor when nothing came); `done` is true when
//!   nothing newer is visible yet. `wait` (0–30 s) long-polls until an
//!   event is visible or the time is up. A cursor from before the retention
//!   horizon gets 410 with `oldest`, the cursor to start again from.
//! * `GET /v1/events/<provider>/<eventId>` (read): one event, or 404.
//! * `GET /v1/consumers` (read): every named consumer, its cursor and its
//!   lag (events, up to [`LAG_CAP`], and seconds behind).
//! * `GET /v1/consumers/<name>/events?limit=&wait=` (read): the page after
//!   the consumer's committed cursor, without moving it (a name never acked
//!   reads from the oldest kept event; reading makes no consumer).
//! * `POST /v1/consumers/<name>/ack {"cursor":"<next>"}` (read): commits it;
//!   the first ack or seek of a name makes the consumer, within
//!   [`MAX_CONSUMERS`].
//! * `POST /v1/consumers/<name>/seek {"to":"oldest"|"latest"|"<cursor>"|"<RFC 3339 time>"}`
//!   (read): moves it.
//! * `DELETE /v1/consumers/<name>` (admin): forgets it.
//!
//! Delivery to a named consumer is at least once: a consumer that acks
//! what it has processed sees each event once in effect, and one that dies
//! before its ack sees the page again.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::common::{
    bad, connection, json, json_body, not_found, rfc3339, segment, unavailable, Context, Params, Reply,
    Request,
};
use crate::http::response::{Response, Status};
use crate::store::events::{self, Event, Filter, Position};

/// Most events a page holds, and the default.
const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 100;
/// Longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// Events counted behind a consumer, at most (counting costs a scan).
pub(super) const LAG_CAP: i64 = 100_000;
/// Named consumers kept at most: each is a row that only an admin's
/// `DELETE` removes, so their number has a bound.
const MAX_CONSUMERS: i64 = 1000;

fn limit(q: &Params) -> Result<i64, Response> {
    q.int("limit", 1..=MAX_LIMIT, DEFAULT_LIMIT)
}

fn wait(q: &Params) -> Result<Duration, Response> {
    match q.get("wait") {
        None => Ok(Duration::ZERO),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|s| (0.0..=MAX_WAIT.as_secs_f64()).contains(s))
            .map(Duration::from_secs_f64)
            .ok_or_else(|| bad(format!("wait must be seconds from 0 to {}", MAX_WAIT.as_secs()))),
    }
}

fn cursor(text: &str) -> Result<Position, Response> {
    Position::decode(text).ok_or_else(|| bad("after is not a cursor this gateway handed out"))
}

pub(super) fn page(ctx: &Context, q: &Params) -> Reply {
    q.only(&["after", "limit", "provider", "type", "wait"])?;
    let after = q.get("after").map(cursor).transpose()?.unwrap_or(Position::START);
    let filter = Filter { provider: q.get("provider"), event_type: q.get("type") };
    page_after(ctx, after, limit(q)?, wait(q)?, filter)
}

/// The page after `after`, long-polling up to `wait` for a first event.
fn page_after(ctx: &Context, after: Position, limit: i64, wait: Duration, filter: Filter<'_>) -> Reply {
    let deadline = Instant::now() + wait;
    let mut client = connection(ctx)?;
    if let Some(oldest) = events::horizon(&mut client).map_err(|e| unavailable(&e))? {
        if !after.is_start() && after.received_us < oldest {
            return Err(gone());
        }
    }
    loop {
        let seen = ctx.notifier.generation();
        let page = events::page(&mut client, after, limit, filter).map_err(|e| unavailable(&e))?;
        if !page.is_empty() || Instant::now() >= deadline || ctx.shutdown.is_cancelled() {
            return Ok(page_response(after, limit, &page));
        }
        // No connection is held while waiting.
        drop(client);
        ctx.notifier.wait(seen, deadline);
        client = connection(ctx)?;
    }
}

/// 410 in the error shape, with the cursor to start again from.
fn gone() -> Response {
    let body = serde_json::json!({
        "statusCode": 410,
        "error": "Gone",
        "message": "the events after this cursor are past the retention window (EVENT_RETENTION); start again from `oldest`",
        "oldest": Position::START.encode(),
    });
    Response::json(Status::Gone, serde_json::to_vec(&body).expect("a JSON value serialises"))
}

/// Appends `e` as JSON. The payload is PostgreSQL's own text of a `jsonb`
/// (valid JSON by construction), written as it is rather than parsed again:
/// at thousands of events a second the second parse is most of a page's cost.
fn write_event(out: &mut Vec<u8>, e: &Event) {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Head<'a> {
        id: i64,
        provider: &'a str,
        event_id: &'a str,
        event_type: &'a str,
        timestamp: String,
        received_at: String,
        stored_at: String,
        verified_by: Option<&'a str>,
    }
    let head = Head {
        id: e.id,
        provider: &e.provider,
        event_id: &e.event_id,
        event_type: &e.event_type,
        timestamp: rfc3339(e.timestamp),
        received_at: rfc3339(e.received_at),
        stored_at: rfc3339(e.stored_at),
        verified_by: e.verified_by.as_deref(),
    };
    serde_json::to_writer(&mut *out, &head).expect("writing to a Vec cannot fail");
    // `{…}` → `{…,"payload":<payload>}`
    out.pop();
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(e.payload.as_bytes());
    out.push(b'}');
}

fn page_response(after: Position, limit: i64, page: &[Event]) -> Response {
    let next = page.last().map_or(after, |e| e.position);
    let mut out = Vec::with_capacity(64 + page.iter().map(|e| e.payload.len() + 256).sum::<usize>());
    out.extend_from_slice(b"{\"data\":[");
    for (i, e) in page.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_event(&mut out, e);
    }
    let done = (page.len() as i64) < limit;
    out.extend_from_slice(format!("],\"next\":\"{}\",\"done\":{done}}}", next.encode()).as_bytes());
    Response::json(Status::Ok, out)
}

pub(super) fn one(ctx: &Context, q: &Params, provider: &str, event_id: &str) -> Reply {
    q.only(&[])?;
    let (provider, event_id) = (segment(provider)?, segment(event_id)?);
    let mut client = connection(ctx)?;
    let event = events::one(&mut client, &provider, &event_id).map_err(|e| unavailable(&e))?;
    match event {
        Some(e) => {
            let mut out = Vec::with_capacity(e.payload.len() + 256);
            write_event(&mut out, &e);
            Ok(Response::json(Status::Ok, out))
        }
        None => Err(not_found(format!("no event {event_id:?} of {provider:?} is kept"))),
    }
}

/// A consumer name: 1 to 100 of `A-Z a-z 0-9 . _ -`.
fn consumer_name(name: &str) -> Result<&str, Response> {
    let ok = (1..=100).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(name).ok_or_else(|| bad("a consumer name is 1 to 100 of A-Z a-z 0-9 . _ -"))
}

pub(super) fn consumer_page(ctx: &Context, name: &str, q: &Params) -> Reply {
    let name = consumer_name(name)?;
    if ["after", "provider", "type"].iter().any(|p| q.get(p).is_some()) {
        return Err(bad(
            "a named consumer reads from its own cursor, every event: only limit and wait apply",
        ));
    }
    q.only(&["limit", "wait"])?;
    let at = events::consumer_position(&mut *connection(ctx)?, name).map_err(|e| unavailable(&e))?;
    page_after(ctx, at, limit(q)?, wait(q)?, Filter::default())
}

#[derive(Deserialize)]
struct AckBody {
    cursor: String,
}

#[derive(Deserialize)]
struct SeekBody {
    to: String,
}

pub(super) fn ack(ctx: &Context, name: &str, r: &Request<'_>) -> Reply {
    let name = consumer_name(name)?;
    let body: AckBody = json_body(r)?;
    let to = Position::decode(&body.cursor)
        .ok_or_else(|| bad("cursor is not a cursor this gateway handed out"))?;
    move_consumer(&mut *connection(ctx)?, name, to)
}

pub(super) fn seek(ctx: &Context, name: &str, r: &Request<'_>) -> Reply {
    let name = consumer_name(name)?;
    let body: SeekBody = json_body(r)?;
    let mut client = connection(ctx)?;
    let to = match body.to.as_str() {
        "oldest" => Position::START,
        "latest" => events::latest(&mut client).map_err(|e| unavailable(&e))?,
        other => match (Position::decode(other), OffsetDateTime::parse(other, &Rfc3339)) {
            (Some(p), _) => p,
            (None, Ok(t)) => events::before_time(&mut client, t).map_err(|e| unavailable(&e))?,
            (None, Err(_)) => {
                return Err(bad("to is oldest, latest, a cursor, or an RFC 3339 time"));
            }
        },
    };
    move_consumer(&mut client, name, to)
}

/// Commits `to` as the consumer's cursor (the consumer made if new, within
/// [`MAX_CONSUMERS`]) and answers it.
fn move_consumer(client: &mut postgres::Client, name: &str, to: Position) -> Reply {
    if !events::set_consumer(client, name, to, MAX_CONSUMERS).map_err(|e| unavailable(&e))? {
        return Err(bad(format!(
            "at most {MAX_CONSUMERS} named consumers are kept; an admin token's DELETE /v1/consumers/<name> frees one"
        )));
    }
    json(&serde_json::json!({ "name": name, "cursor": to.encode() }))
}

pub(super) fn consumers(ctx: &Context, q: &Params) -> Reply {
    q.only(&[])?;
    let mut client = connection(ctx)?;
    let all = events::consumers(&mut client, LAG_CAP).map_err(|e| unavailable(&e))?;
    let now = OffsetDateTime::now_utc();
    let data: Vec<serde_json::Value> = all
        .iter()
        .map(|(c, behind, first)| {
            serde_json::json!({
                "name": c.name,
                "cursor": c.position.encode(),
                "ackedAt": c.acked_at.map(rfc3339),
                "lagEvents": behind,
                "lagEventsCapped": *behind >= LAG_CAP,
                "lagSeconds": first.map_or(0.0, |t| (now - t).as_seconds_f64().max(0.0)),
            })
        })
        .collect();
    json(&serde_json::json!({ "data": data }))
}

pub(super) fn delete_consumer(ctx: &Context, name: &str) -> Reply {
    let name = consumer_name(name)?;
    let mut client = connection(ctx)?;
    if events::delete_consumer(&mut client, name).map_err(|e| unavailable(&e))? {
        json(&serde_json::json!({ "deleted": name }))
    } else {
        Err(not_found(format!("no consumer {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_json_with_each_payload_as_stored() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_795_383_325_123_000_000).unwrap();
        let e = Event {
            id: 7,
            provider: "stripe".into(),
            event_id: "evt_\"quoted\"\n".into(),
            event_type: String::new(),
            timestamp: t,
            received_at: t,
            stored_at: t,
            verified_by: None,
            payload: r#"{"a": [1, 2.5e3, "x\"y"]}"#.into(),
            position: Position { xid: 9, id: 7, received_us: 1 },
        };
        let r = page_response(Position::START, 2, &[e.clone(), e]);
        let mut out = Vec::new();
        r.encode(Default::default(), &Default::default(), &mut out);
        let body = &out[out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["data"][1]["eventId"], "evt_\"quoted\"\n");
        assert_eq!(v["data"][0]["payload"]["a"][2], "x\"y");
        assert_eq!(v["data"][0]["timestamp"], "2026-11-22T21:35:25.123Z");
        assert_eq!(v["data"][0]["verifiedBy"], serde_json::Value::Null);
        assert_eq!(v["next"], Position { xid: 9, id: 7, received_us: 1 }.encode());
        assert_eq!(v["done"], false, "a full page: maybe more");
    }
}
