//! The API's routes (every one needs a token; the scope each needs is in
//! the README's table):
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

use percent_encoding::percent_decode_str;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::auth::{bearer, Caller, Scope, Tokens};
use super::notify::Notifier;
use crate::http::request::{ContentType, Method};
use crate::http::response::{Message, Response, Status};
use crate::store::events::{self, Event, Filter, Position};
use crate::store::{Pool, StoreError};

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

/// What every request can reach.
pub(super) struct Context {
    pub(super) tokens: Tokens,
    pub(super) pool: Pool,
    /// `MIGRATE_ON_START`, and whether the migrations have been checked: an
    /// API started before any worker creates the tables itself.
    pub(super) migrate: bool,
    pub(super) migrated: std::sync::atomic::AtomicBool,
    pub(super) notifier: std::sync::Arc<Notifier>,
    pub(super) shutdown: CancellationToken,
}

/// One request, as the routes need it.
pub(super) struct Request<'a> {
    pub(super) method: Method,
    pub(super) target: &'a str,
    pub(super) authorization: Option<&'a str>,
    pub(super) content_type: ContentType,
    pub(super) body: &'a [u8],
}

/// A route's failure: the response it becomes.
type Reply = Result<Response, Response>;

/// Answers `r`, with any header lines the response needs beyond the
/// encoder's (`WWW-Authenticate`).
pub(super) fn handle(ctx: &Context, r: &Request<'_>) -> (Response, Vec<u8>) {
    let (path, query) = r.target.split_once('?').unwrap_or((r.target, ""));
    let Some(caller) = r.authorization.and_then(bearer).and_then(|t| ctx.tokens.check(t)) else {
        let message = if r.authorization.is_some() { "unknown token" } else { "a bearer token is required" };
        let response = Response::error(Status::Unauthorized, Message::One(message.into()));
        return (response, b"www-authenticate: Bearer\r\n".to_vec());
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let outcome = route(ctx, r, caller, &segments, query).unwrap_or_else(|e| e);
    (outcome, Vec::new())
}

fn route(ctx: &Context, r: &Request<'_>, caller: Caller, segments: &[&str], query: &str) -> Reply {
    let q = Query::parse(query)?;
    match (r.method, segments) {
        (Method::Get, ["v1", "events"]) => events_page(ctx, &q),
        (Method::Get, ["v1", "events", provider, event_id]) => one_event(ctx, provider, event_id),
        (Method::Get, ["v1", "consumers"]) => list_consumers(ctx),
        (Method::Get, ["v1", "consumers", name, "events"]) => consumer_page(ctx, name, &q),
        (Method::Post, ["v1", "consumers", name, "ack"]) => ack(ctx, name, r),
        (Method::Post, ["v1", "consumers", name, "seek"]) => seek(ctx, name, r),
        (Method::Delete, ["v1", "consumers", name]) => {
            let outcome = admin(caller).and_then(|()| delete_consumer(ctx, name));
            let status = outcome.as_ref().unwrap_or_else(|e| e).status();
            info!(token = caller.token, route = "DELETE /v1/consumers/:name", consumer = %name,
                  status = status.code(), "admin call");
            outcome
        }
        (
            _,
            ["v1", "events"]
            | ["v1", "events", _, _]
            | ["v1", "consumers"]
            | ["v1", "consumers", _, "events"],
        ) => Err(Response::error(Status::MethodNotAllowed, Message::One("use GET".into())).with_allow("GET")),
        (_, ["v1", "consumers", _, "ack" | "seek"]) => {
            Err(Response::error(Status::MethodNotAllowed, Message::One("use POST".into())).with_allow("POST"))
        }
        (_, ["v1", "consumers", _]) => {
            Err(Response::error(Status::MethodNotAllowed, Message::One("use DELETE".into()))
                .with_allow("DELETE"))
        }
        _ => Err(Response::error(
            Status::NotFound,
            Message::One(format!("no api route {}", segments.join("/"))),
        )),
    }
}

fn admin(caller: Caller) -> Result<(), Response> {
    if caller.scope >= Scope::Admin {
        Ok(())
    } else {
        Err(Response::error(Status::Forbidden, Message::One("this route needs an admin token".into())))
    }
}

/// A pooled connection, the tables migrated first if this process has not
/// checked yet.
fn connection(ctx: &Context) -> Result<r2d2::PooledConnection<crate::store::Manager>, Response> {
    let mut client = ctx.pool.get().map_err(|e| unavailable(&e.into()))?;
    if ctx.migrate && !ctx.migrated.load(std::sync::atomic::Ordering::Acquire) {
        crate::store::migrate(&mut client).map_err(|e| unavailable(&e))?;
        ctx.migrated.store(true, std::sync::atomic::Ordering::Release);
    }
    Ok(client)
}

fn bad(message: impl Into<String>) -> Response {
    Response::error(Status::BadRequest, Message::One(message.into()))
}

fn unavailable(e: &StoreError) -> Response {
    warn!(error = %e, "api: postgres failed");
    Response::unavailable(format!("the event store is unavailable: {e}"), 1)
}

/// The query string's parameters, decoded.
#[derive(Default)]
struct Query {
    after: Option<String>,
    limit: Option<String>,
    provider: Option<String>,
    event_type: Option<String>,
    wait: Option<String>,
}

impl Query {
    fn parse(query: &str) -> Result<Self, Response> {
        let mut q = Self::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .map_err(|_| bad(format!("{k} is not UTF-8")))?
                .into_owned();
            let slot = match k {
                "after" => &mut q.after,
                "limit" => &mut q.limit,
                "provider" => &mut q.provider,
                "type" => &mut q.event_type,
                "wait" => &mut q.wait,
                other => return Err(bad(format!("unknown parameter {other:?}"))),
            };
            *slot = Some(v);
        }
        Ok(q)
    }

    fn limit(&self) -> Result<i64, Response> {
        match &self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| bad(format!("limit must be a whole number from 1 to {MAX_LIMIT}"))),
        }
    }

    fn wait(&self) -> Result<Duration, Response> {
        match &self.wait {
            None => Ok(Duration::ZERO),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|s| (0.0..=MAX_WAIT.as_secs_f64()).contains(s))
                .map(Duration::from_secs_f64)
                .ok_or_else(|| bad(format!("wait must be seconds from 0 to {}", MAX_WAIT.as_secs()))),
        }
    }

    fn filter(&self) -> Filter<'_> {
        Filter { provider: self.provider.as_deref(), event_type: self.event_type.as_deref() }
    }
}

fn cursor(text: &str) -> Result<Position, Response> {
    Position::decode(text).ok_or_else(|| bad("after is not a cursor this gateway handed out"))
}

fn events_page(ctx: &Context, q: &Query) -> Reply {
    let after = q.after.as_deref().map(cursor).transpose()?.unwrap_or(Position::START);
    page_after(ctx, after, q.limit()?, q.wait()?, q.filter())
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

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
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

fn one_event(ctx: &Context, provider: &str, event_id: &str) -> Reply {
    let decode = |s: &str| percent_decode_str(s).decode_utf8().map(|c| c.into_owned());
    let (provider, event_id) = match (decode(provider), decode(event_id)) {
        (Ok(p), Ok(e)) => (p, e),
        _ => return Err(bad("the provider and the event id must be UTF-8")),
    };
    let mut client = connection(ctx)?;
    let event = events::one(&mut client, &provider, &event_id).map_err(|e| unavailable(&e))?;
    match event {
        Some(e) => {
            let mut out = Vec::with_capacity(e.payload.len() + 256);
            write_event(&mut out, &e);
            Ok(Response::json(Status::Ok, out))
        }
        None => Err(Response::error(
            Status::NotFound,
            Message::One(format!("no event {event_id:?} of {provider:?} is kept")),
        )),
    }
}

/// A consumer name: 1 to 100 of `A-Z a-z 0-9 . _ -`.
fn consumer_name(name: &str) -> Result<&str, Response> {
    let ok = (1..=100).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    ok.then_some(name).ok_or_else(|| bad("a consumer name is 1 to 100 of A-Z a-z 0-9 . _ -"))
}

fn consumer_page(ctx: &Context, name: &str, q: &Query) -> Reply {
    let name = consumer_name(name)?;
    if q.after.is_some() || q.provider.is_some() || q.event_type.is_some() {
        return Err(bad(
            "a named consumer reads from its own cursor, every event: only limit and wait apply",
        ));
    }
    let at = events::consumer_position(&mut *connection(ctx)?, name).map_err(|e| unavailable(&e))?;
    page_after(ctx, at, q.limit()?, q.wait()?, Filter::default())
}

#[derive(Deserialize)]
struct AckBody {
    cursor: String,
}

#[derive(Deserialize)]
struct SeekBody {
    to: String,
}

fn json_body<'a, T: Deserialize<'a>>(r: &Request<'a>) -> Result<T, Response> {
    if r.content_type != ContentType::Json {
        return Err(Response::error(
            Status::UnsupportedMediaType,
            Message::One("send the body as application/json".into()),
        ));
    }
    serde_json::from_slice(r.body).map_err(|e| bad(format!("body: {e}")))
}

fn ack(ctx: &Context, name: &str, r: &Request<'_>) -> Reply {
    let name = consumer_name(name)?;
    let body: AckBody = json_body(r)?;
    let to = Position::decode(&body.cursor)
        .ok_or_else(|| bad("cursor is not a cursor this gateway handed out"))?;
    move_consumer(&mut *connection(ctx)?, name, to)
}

fn seek(ctx: &Context, name: &str, r: &Request<'_>) -> Reply {
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
    let body = serde_json::json!({ "name": name, "cursor": to.encode() });
    Ok(Response::json(Status::Ok, serde_json::to_vec(&body).expect("a JSON value serialises")))
}

fn list_consumers(ctx: &Context) -> Reply {
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
    let body = serde_json::json!({ "data": data });
    Ok(Response::json(Status::Ok, serde_json::to_vec(&body).expect("a JSON value serialises")))
}

fn delete_consumer(ctx: &Context, name: &str) -> Reply {
    let name = consumer_name(name)?;
    let mut client = connection(ctx)?;
    if events::delete_consumer(&mut client, name).map_err(|e| unavailable(&e))? {
        Ok(Response::json(
            Status::Ok,
            serde_json::to_vec(&serde_json::json!({ "deleted": name })).expect("json"),
        ))
    } else {
        Err(Response::error(Status::NotFound, Message::One(format!("no consumer {name:?}"))))
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
