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

use tracing::info;

use super::auth::{bearer, Caller, Scope};
use super::common::{Context, Params, Reply, Request};
use super::{dead_letters, events, operate};
use crate::http::request::Method;
use crate::http::response::{Message, Response, Status};

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
