//! The dead letters (issue 27), read from `webhook_dead_letters`
//! ([`crate::store::dead_letters`]) and replayed by the same code as the
//! CLI's `replay` ([`crate::worker::replay`]):
//!
//! * `GET /v1/dead-letters?since=&until=&provider=&sqlstate=&q=&limit=&cursor=`
//!   (read): newest first, `limit` 1–1000 (default 100), `q` a text the
//!   error contains (any case), `since`/`until` RFC 3339 times of death;
//!   `{"data":[…],"next":"<cursor>"|null}` (`next` is null on the last page).
//! * `GET /v1/dead-letters/<id>` (read): one, whole: the body as received
//!   (`rawBody` as text when it is UTF-8, else `rawBodyBase64`), the error,
//!   attempts, times, and whether it is being replayed.
//! * `POST /v1/dead-letters/replay` (admin): `{"ids":[…]}` or
//!   `{"filter":{…the search's fields…},"dry_run":true|false,"max":N}` →
//!   `{"matched":N,"replayed":M}`. A replayed entry goes back into its
//!   stream and through the worker path (dedupe included); its row leaves
//!   the table in the transaction that stores the event, and takes the new
//!   error if it fails again. A filter takes only those not already being
//!   replayed; `max` bounds how many (default: all).
//! * `DELETE /v1/dead-letters/<id>` (admin).

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use super::common::{
    bad, connection, json, json_body, not_found, rfc3339_us, time_us, unavailable, Context, Params, Reply,
    Request,
};
use crate::http::response::Response;
use crate::store::dead_letters::{self as store, Filter};
use crate::worker::{replay as replay_letters, ReplayScope};

const MAX_LIMIT: i64 = 1000;
const DEFAULT_LIMIT: i64 = 100;
/// Ids one replay by id takes at most.
const MAX_IDS: usize = 10_000;

/// The search's fields, from the query or a replay's `filter`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterFields {
    since: Option<String>,
    until: Option<String>,
    provider: Option<String>,
    sqlstate: Option<String>,
    q: Option<String>,
}

impl FilterFields {
    fn from_query(q: &Params) -> Self {
        let own = |k: &str| q.get(k).map(str::to_string);
        Self {
            since: own("since"),
            until: own("until"),
            provider: own("provider"),
            sqlstate: own("sqlstate"),
            q: own("q"),
        }
    }

    fn filter(self) -> Result<Filter, Response> {
        let time = |name: &str, v: Option<String>| v.map(|v| time_us(name, &v)).transpose();
        if let Some(code) = &self.sqlstate {
            if code.len() != 5 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(bad("sqlstate is a five-character SQLSTATE such as 23514"));
            }
        }
        if self.q.as_ref().is_some_and(|q| q.is_empty() || q.len() > 200) {
            return Err(bad("q is 1 to 200 characters of the error"));
        }
        Ok(Filter {
            since_us: time("since", self.since)?,
            until_us: time("until", self.until)?,
            provider: self.provider,
            sqlstate: self.sqlstate,
            text: self.q,
        })
    }
}

fn id_of(text: &str) -> Result<i64, Response> {
    text.parse::<i64>()
        .ok()
        .filter(|i| *i > 0)
        .ok_or_else(|| bad("a dead letter's id is a positive whole number"))
}

pub(super) fn search(ctx: &Context, q: &Params) -> Reply {
    q.only(&["since", "until", "provider", "sqlstate", "q", "limit", "cursor"])?;
    let limit = q.int("limit", 1..=MAX_LIMIT, DEFAULT_LIMIT)?;
    let before = q.get("cursor").map(id_of).transpose()?;
    let filter = FilterFields::from_query(q).filter()?;
    let mut client = connection(ctx)?;
    let page = store::search(&mut *client, &filter, before, limit).map_err(|e| unavailable(&e))?;
    let next = (page.len() as i64 == limit).then(|| page.last().map(|l| l.letter.id.to_string())).flatten();
    let data: Vec<serde_json::Value> = page
        .iter()
        .map(|s| {
            let l = &s.letter;
            serde_json::json!({
                "id": l.id,
                "provider": l.provider,
                "eventId": l.event_id,
                "eventType": l.event_type,
                "error": l.error,
                "sqlstate": l.sqlstate,
                "attempts": l.attempts,
                "receivedAt": l.received_at_us.map(rfc3339_us),
                "deadAt": rfc3339_us(l.dead_at_us),
                "bodyBytes": s.body_bytes,
                "replayedAt": l.replayed_at_us.map(rfc3339_us),
                "replays": l.replays,
            })
        })
        .collect();
    json(&serde_json::json!({ "data": data, "next": next }))
}

pub(super) fn one(ctx: &Context, q: &Params, id: &str) -> Reply {
    q.only(&[])?;
    let id = id_of(id)?;
    let letter = store::get(&mut *connection(ctx)?, id).map_err(|e| unavailable(&e))?;
    let Some(l) = letter else { return Err(not_found(format!("no dead letter {id}"))) };
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let (text, binary) = match &l.raw_body {
        Some(raw) => match std::str::from_utf8(raw) {
            Ok(t) => (Some(t.to_string()), None),
            Err(_) => (None, Some(b64(raw))),
        },
        None => (None, None),
    };
    json(&serde_json::json!({
        "id": l.id,
        "provider": l.provider,
        "eventId": l.event_id,
        "eventType": l.event_type,
        "verifiedBy": l.verified_by,
        "timestamp": l.event_timestamp_us.map(rfc3339_us),
        "receivedAt": l.received_at_us.map(rfc3339_us),
        "rawBody": text,
        "rawBodyBase64": binary,
        "payload": l.payload.as_deref().map(|p| String::from_utf8_lossy(p).into_owned()),
        "fields": l.fields,
        "unsignedFields": l.unsigned_fields,
        "error": l.error,
        "sqlstate": l.sqlstate,
        "attempts": l.attempts,
        "stream": l.stream,
        "streamId": l.stream_id,
        "deadAt": rfc3339_us(l.dead_at_us),
        "replayedAt": l.replayed_at_us.map(rfc3339_us),
        "replays": l.replays,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    ids: Option<Vec<i64>>,
    filter: Option<FilterFields>,
    #[serde(default)]
    dry_run: bool,
    max: Option<u64>,
}

pub(super) fn replay(ctx: &Context, r: &Request<'_>) -> Reply {
    let body: ReplayBody = json_body(r)?;
    let scope = match (body.ids, body.filter) {
        (Some(_), Some(_)) => return Err(bad("give ids or filter, not both")),
        (None, None) => {
            return Err(bad("give ids (a list of dead-letter ids) or filter (an object; {} for all)"))
        }
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_IDS || ids.iter().any(|i| *i <= 0) {
                return Err(bad(format!("ids is 1 to {MAX_IDS} positive dead-letter ids")));
            }
            if body.max.is_some() {
                return Err(bad("max applies to a filter; ids name each one"));
            }
            ReplayScope::Ids(ids)
        }
        (None, Some(fields)) => ReplayScope::Filter { filter: fields.filter()?, max: body.max },
    };
    let queue = &ctx.gateway.queue;
    let mut con = queue
        .connect(Duration::from_secs(2), Duration::from_secs(5))
        .map_err(|e| Response::unavailable(format!("redis is unavailable: {e}"), 1))?;
    let mut client = connection(ctx)?;
    let done = replay_letters(&mut con, &mut client, &queue.streams(), &scope, body.dry_run)
        .map_err(|e| Response::unavailable(format!("the replay stopped: {e}"), 1))?;
    json(&serde_json::json!({ "matched": done.matched, "replayed": done.replayed, "dryRun": body.dry_run }))
}

pub(super) fn delete(ctx: &Context, id: &str) -> Reply {
    let id = id_of(id)?;
    if store::delete(&mut *connection(ctx)?, id).map_err(|e| unavailable(&e))? {
        json(&serde_json::json!({ "deleted": id }))
    } else {
        Err(not_found(format!("no dead letter {id}")))
    }
}
