//! The API's routes: the table below, the scope each needs, and what every
//! route shares (the token check, the audit line of admin calls, query
//! parameters, JSON bodies, the error shape). The routes themselves are in
//! [`super::events`] (events and named consumers), [`super::dead_letters`]
//! and [`super::operate`] (rejections, sources, stats, the status page).
//!
//! | route | scope |
//! |---|---|
//! | `GET /` (the status page: an empty shell, its data read with a token) | none |
//! | `GET /v1/events`, `GET /v1/events/<provider>/<eventId>` | read |
//! | `GET /v1/consumers`, `GET /v1/consumers/<name>/events` | read |
//! | `POST /v1/consumers/<name>/ack`, `POST /v1/consumers/<name>/seek` | read |
//! | `DELETE /v1/consumers/<name>` | admin |
//! | `GET /v1/dead-letters`, `GET /v1/dead-letters/<id>` | read |
//! | `POST /v1/dead-letters/replay`, `DELETE /v1/dead-letters/<id>` | admin |
//! | `GET /v1/rejections`, `GET /v1/sources`, `GET /v1/stats` | read |
//!
//! No token or an unknown one is 401 with `WWW-Authenticate: Bearer`; a
//! `read` token on an admin route is 403. Every admin call is logged with
//! the token's position in the list (never the token), the route and the
//! status.

use std::collections::HashMap;

use percent_encoding::percent_decode_str;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::auth::{bearer, Caller, Scope, Tokens};
use super::notify::Notifier;
use super::{dead_letters, events, operate};
use crate::http::request::{ContentType, Method};
use crate::http::response::{Message, Response, Status};
use crate::store::{Pool, StoreError};

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
    /// What the gateway it runs beside knows: the queue, its sources, its
    /// counters and the requests it refused.
    pub(super) gateway: super::Gateway,
    /// Per-source counts sampled over the last hour.
    pub(super) windows: std::sync::Arc<operate::Windows>,
}

/// One request, as the routes need it.
pub(super) struct Request<'a> {
    pub(super) method: Method,
    pub(super) target: &'a str,
    pub(super) authorization: Option<&'a str>,
    pub(super) content_type: ContentType,
    pub(super) body: &'a [u8],
}

/// A route's answer; its failure is the response it becomes.
pub(super) type Reply = Result<Response, Response>;

/// Answers `r`, with any header lines the response needs beyond the
/// encoder's (`WWW-Authenticate`).
pub(super) fn handle(ctx: &Context, r: &Request<'_>) -> (Response, Vec<u8>) {
    let (path, query) = r.target.split_once('?').unwrap_or((r.target, ""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // The status page's assets hold no data (the page reads the routes
    // below with the token its user gives it), so they need none.
    if let (Method::Get, [name]) = (r.method, segments.as_slice()) {
        if let Some(page) = operate::asset(name) {
            return (page, operate::PAGE_HEADERS.to_vec());
        }
    }
    let Some(caller) = r.authorization.and_then(bearer).and_then(|t| ctx.tokens.check(t)) else {
        let message = if r.authorization.is_some() { "unknown token" } else { "a bearer token is required" };
        let response = Response::error(Status::Unauthorized, Message::One(message.into()));
        return (response, b"www-authenticate: Bearer\r\n".to_vec());
    };
    let outcome = route(ctx, r, caller, &segments, query).unwrap_or_else(|e| e);
    (outcome, Vec::new())
}

fn route(ctx: &Context, r: &Request<'_>, caller: Caller, segments: &[&str], query: &str) -> Reply {
    use Method::{Delete, Get, Post};
    let q = Params::parse(query)?;
    match (r.method, segments) {
        (Get, ["v1", "events"]) => events::page(ctx, &q),
        (Get, ["v1", "events", provider, event_id]) => events::one(ctx, &q, provider, event_id),
        (Get, ["v1", "consumers"]) => events::consumers(ctx, &q),
        (Get, ["v1", "consumers", name, "events"]) => events::consumer_page(ctx, name, &q),
        (Post, ["v1", "consumers", name, "ack"]) => events::ack(ctx, name, r),
        (Post, ["v1", "consumers", name, "seek"]) => events::seek(ctx, name, r),
        (Delete, ["v1", "consumers", name]) => {
            audited(caller, "DELETE /v1/consumers/:name", name, || events::delete_consumer(ctx, name))
        }
        (Get, ["v1", "dead-letters"]) => dead_letters::search(ctx, &q),
        (Post, ["v1", "dead-letters", "replay"]) => {
            audited(caller, "POST /v1/dead-letters/replay", "", || dead_letters::replay(ctx, r))
        }
        (Get, ["v1", "dead-letters", id]) if *id != "replay" => dead_letters::one(ctx, &q, id),
        (Delete, ["v1", "dead-letters", id]) if *id != "replay" => {
            audited(caller, "DELETE /v1/dead-letters/:id", id, || dead_letters::delete(ctx, id))
        }
        (Get, ["v1", "rejections"]) => operate::rejections(ctx, &q),
        (Get, ["v1", "sources"]) => operate::sources(ctx, &q),
        (Get, ["v1", "stats"]) => operate::stats(ctx, &q),
        (_, path) => Err(match allowed(path) {
            Some(allow) => Response::error(Status::MethodNotAllowed, Message::One(format!("use {allow}")))
                .with_allow(allow),
            None => Response::error(
                Status::NotFound,
                Message::One(format!("no api route /{}", segments.join("/"))),
            ),
        }),
    }
}

/// The methods a path takes, when it is a route.
fn allowed(path: &[&str]) -> Option<&'static str> {
    match path {
        [""]
        | ["status.js" | "status.css"]
        | ["v1", "events" | "consumers" | "dead-letters" | "rejections" | "sources" | "stats"]
        | ["v1", "events", _, _]
        | ["v1", "consumers", _, "events"] => Some("GET"),
        ["v1", "consumers", _, "ack" | "seek"] | ["v1", "dead-letters", "replay"] => Some("POST"),
        ["v1", "consumers", _] => Some("DELETE"),
        ["v1", "dead-letters", _] => Some("GET, DELETE"),
        _ => None,
    }
}

/// Runs an admin route for `caller` (403 without the scope) and logs the
/// call: the token's position, never the token.
fn audited(caller: Caller, route: &'static str, target: &str, run: impl FnOnce() -> Reply) -> Reply {
    let outcome = admin(caller).and_then(|()| run());
    let status = outcome.as_ref().unwrap_or_else(|e| e).status();
    info!(token = caller.token, route, target, status = status.code(), "admin call");
    outcome
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
pub(super) fn connection(ctx: &Context) -> Result<r2d2::PooledConnection<crate::store::Manager>, Response> {
    let mut client = ctx.pool.get().map_err(|e| unavailable(&e.into()))?;
    if ctx.migrate && !ctx.migrated.load(std::sync::atomic::Ordering::Acquire) {
        crate::store::migrate(&mut client).map_err(|e| unavailable(&e))?;
        ctx.migrated.store(true, std::sync::atomic::Ordering::Release);
    }
    Ok(client)
}

/// 400 with one message.
pub(super) fn bad(message: impl Into<String>) -> Response {
    Response::error(Status::BadRequest, Message::One(message.into()))
}

/// 404 with one message.
pub(super) fn not_found(message: impl Into<String>) -> Response {
    Response::error(Status::NotFound, Message::One(message.into()))
}

/// 503 for a PostgreSQL failure (logged; the message names no secret: the
/// driver's errors carry no password).
pub(super) fn unavailable(e: &StoreError) -> Response {
    warn!(error = %e, "api: postgres failed");
    Response::unavailable(format!("the event store is unavailable: {e}"), 1)
}

/// 200 with `value` as JSON.
pub(super) fn json(value: &impl serde::Serialize) -> Reply {
    Ok(Response::json(Status::Ok, serde_json::to_vec(value).expect("a JSON value serialises")))
}

/// A request body as JSON (415 for another type, 400 for what does not parse).
pub(super) fn json_body<'a, T: Deserialize<'a>>(r: &Request<'a>) -> Result<T, Response> {
    if r.content_type != ContentType::Json {
        return Err(Response::error(
            Status::UnsupportedMediaType,
            Message::One("send the body as application/json".into()),
        ));
    }
    serde_json::from_slice(r.body).map_err(|e| bad(format!("body: {e}")))
}

/// RFC 3339, UTC.
pub(super) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// µs since the epoch as RFC 3339.
pub(super) fn rfc3339_us(us: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000).map(rfc3339).unwrap_or_default()
}

/// A path segment, percent-decoded.
pub(super) fn segment(s: &str) -> Result<String, Response> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| bad("a path segment is not UTF-8"))
}

/// The query string's parameters, decoded. Each route says which it takes
/// ([`Params::only`]): an unknown one is a 400, never silently ignored.
#[derive(Default)]
pub(super) struct Params(HashMap<String, String>);

impl Params {
    fn parse(query: &str) -> Result<Self, Response> {
        let mut q = HashMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .map_err(|_| bad(format!("{k} is not UTF-8")))?
                .into_owned();
            if q.insert(k.to_string(), v).is_some() {
                return Err(bad(format!("{k} is given twice")));
            }
        }
        Ok(Self(q))
    }

    /// 400 unless every parameter is one of `names`.
    pub(super) fn only(&self, names: &[&str]) -> Result<(), Response> {
        match self.0.keys().find(|k| !names.contains(&k.as_str())) {
            Some(k) if names.is_empty() => {
                Err(bad(format!("unknown parameter {k:?}: this route takes none")))
            }
            Some(k) => Err(bad(format!("unknown parameter {k:?}; this route takes {}", names.join(", ")))),
            None => Ok(()),
        }
    }

    /// The value of `name`, if given.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// `name` as a whole number in `range`, `default` when absent.
    pub(super) fn int(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> Result<i64, Response> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().ok().filter(|n| range.contains(n)).ok_or_else(|| {
                bad(format!("{name} must be a whole number from {} to {}", range.start(), range.end()))
            }),
        }
    }

    /// `name` as an RFC 3339 time, in µs since the epoch.
    pub(super) fn time_us(&self, name: &str) -> Result<Option<i64>, Response> {
        self.get(name)
            .map(|v| {
                OffsetDateTime::parse(v, &Rfc3339)
                    .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
                    .map_err(|_| bad(format!("{name} must be an RFC 3339 time (2026-12-07T10:00:00Z)")))
            })
            .transpose()
    }
}
