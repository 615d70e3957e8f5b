//! What every route of the API shares: the context a request can reach,
//! the request as the routes see it, query parameters, JSON bodies, and
//! the error shape of each failure (a leaf: the routes import it, it
//! imports none of them).

use std::collections::HashMap;

use percent_encoding::percent_decode_str;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::auth::Tokens;
use super::notify::Notifier;
use super::windows::Windows;
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
    pub(super) windows: std::sync::Arc<Windows>,
    /// The connection `GET /v1/stats` reads the queue through, kept between
    /// requests (the status page asks every 5 s) and made again after a
    /// failure.
    pub(super) stats_redis: std::sync::Mutex<Option<crate::queue::Conn>>,
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
    pub(super) fn parse(query: &str) -> Result<Self, Response> {
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
        self.get(name).map(|v| time_us(name, v)).transpose()
    }
}

/// `value`, the parameter or field `name`, as an RFC 3339 time in µs since
/// the epoch (400 naming it otherwise).
pub(super) fn time_us(name: &str, value: &str) -> Result<i64, Response> {
    OffsetDateTime::parse(value, &Rfc3339)
        .map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
        .map_err(|_| bad(format!("{name} must be an RFC 3339 time (2026-12-07T10:00:00Z)")))
}
