//! What an operator reads (issue 27):
//!
//! * `GET /v1/rejections?source=&status=&since=&limit=&cursor=` (read): the
//!   requests refused lately, newest first ([`crate::telemetry::rejections`]:
//!   kept per core, bounded per source and in bytes), each with its time,
//!   status, reason, client, request line, headers (secret ones redacted)
//!   and the first 4 KiB of its body (`body` as text when UTF-8, else
//!   `bodyBase64`). `source` is a route, or `_unrouted` for refusals before
//!   a route was known.
//! * `GET /v1/sources` (read): per source its kind and scheme, its last
//!   202, and what its requests became since the start, over the last 5
//!   minutes and the last hour (sampled by [`super::windows::Windows`]),
//!   and its last rejection.
//! * `GET /v1/stats` (read): [`crate::report`], as the CLI's `stats`.
//! * `GET /` (no token): the status page, a shell with no data that reads
//!   the routes above with the token its user enters (kept in the page's
//!   memory only) or that a proxy in front adds to each request.

use std::time::Duration;

use base64::Engine as _;

use super::common::{bad, connection, json, rfc3339_us, Context, Params, Reply};
use super::windows::WINDOWS;
use crate::http::response::Response;
use crate::telemetry::rejections::Rejection;
use crate::telemetry::sources::{SourceTotals, REFUSALS, UNROUTED};

/// The refusals of `t` that are not zero, as `[{status, reason, count}]`.
fn refusals(t: &[u64]) -> Vec<serde_json::Value> {
    REFUSALS
        .iter()
        .zip(t)
        .filter(|(_, n)| **n > 0)
        .map(|(&(status, reason), n)| serde_json::json!({ "status": status, "reason": reason, "count": n }))
        .collect()
}

fn window(now: &SourceTotals, then: Option<&SourceTotals>) -> serde_json::Value {
    let zero = SourceTotals { refused: vec![0; REFUSALS.len()], ..SourceTotals::default() };
    let then = then.unwrap_or(&zero);
    let refused: Vec<u64> =
        now.refused.iter().zip(&then.refused).map(|(a, b)| a.saturating_sub(*b)).collect();
    serde_json::json!({
        "accepted": now.accepted.saturating_sub(then.accepted),
        "answered": now.answered.saturating_sub(then.answered),
        "rejected": refused.iter().sum::<u64>(),
        "byReason": refusals(&refused),
    })
}

fn rejection_summary(r: &Rejection) -> serde_json::Value {
    serde_json::json!({ "at": rfc3339_us(r.at_us), "status": r.status, "reason": r.reason })
}

pub(super) fn sources(ctx: &Context, q: &Params) -> Reply {
    q.only(&[])?;
    let metrics = &ctx.gateway.metrics;
    let totals = metrics.source_totals();
    let starts: Vec<_> = WINDOWS.iter().map(|(_, len)| ctx.windows.start_of(*len)).collect();
    let now_us = crate::job::now_us();
    let describe = |i: usize, name: &str, silent_after: Option<std::time::Duration>| {
        let t = &totals[i];
        let quiet_us = t.last_accepted_us.map(|us| (now_us - us).max(0));
        let last = metrics.rejections.newest(Some(i), |_| true, None, 1);
        let mut v = serde_json::json!({
            "source": name,
            "lastAcceptedAt": t.last_accepted_us.map(rfc3339_us),
            "secondsSinceLastAccepted": quiet_us.map(|us| us as f64 / 1e6),
            "silentAfterSeconds": silent_after.map(|d| d.as_secs()),
            // Never accepted counts as silent past any interval.
            "silent": silent_after.map(|d| quiet_us.is_none_or(|us| us > d.as_micros() as i64)),
            "total": window(t, None),
            "lastRejection": last.first().map(rejection_summary),
        });
        for ((label, _), start) in WINDOWS.iter().zip(&starts) {
            let mut w = window(t, start.as_ref().map(|(s, _)| &s[i]));
            w["seconds"] = serde_json::json!(start.as_ref().map_or(0, |(_, d)| d.as_secs()));
            v[*label] = w;
        }
        v
    };
    let sources = &ctx.gateway.sources;
    let data: Vec<serde_json::Value> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut v = describe(i, &s.route, s.silent_after);
            v["kind"] = serde_json::json!(s.kind_name);
            v["scheme"] = serde_json::json!(s.kind.scheme());
            v
        })
        .collect();
    let unrouted = describe(metrics.rejections.slot(None), UNROUTED, None);
    json(&serde_json::json!({ "data": data, "unrouted": unrouted }))
}

pub(super) fn rejections(ctx: &Context, q: &Params) -> Reply {
    q.only(&["source", "status", "since", "limit", "cursor"])?;
    let limit = q.int("limit", 1..=1000, 100)? as usize;
    let metrics = &ctx.gateway.metrics;
    let wanted_slot = match q.get("source") {
        None => None,
        Some(UNROUTED) => Some(metrics.rejections.slot(None)),
        Some(name) => Some(
            ctx.gateway
                .sources
                .iter()
                .position(|s| s.route == name)
                .ok_or_else(|| bad(format!("no source {name:?}; GET /v1/sources lists them")))?,
        ),
    };
    let status = q
        .get("status")
        .map(|s| {
            s.parse::<u16>()
                .ok()
                .filter(|s| (400..600).contains(s))
                .ok_or_else(|| bad("status is 400 to 599"))
        })
        .transpose()?;
    let since = q.time_us("since")?;
    let before = q
        .get("cursor")
        .map(|c| {
            c.split_once('-')
                .and_then(|(a, b)| Some((a.parse::<i64>().ok()?, b.parse::<u64>().ok()?)))
                .ok_or_else(|| bad("cursor is not one this route handed out"))
        })
        .transpose()?;
    let page = metrics.rejections.newest(
        wanted_slot,
        |r| status.is_none_or(|s| r.status == s) && since.is_none_or(|t| r.at_us >= t),
        before,
        limit,
    );
    let next = (page.len() == limit).then(|| page.last().map(|r| format!("{}-{}", r.at_us, r.seq))).flatten();
    let names = |r: &Rejection| {
        r.source.and_then(|i| ctx.gateway.sources.get(i)).map_or(UNROUTED.to_string(), |s| s.route.clone())
    };
    let data: Vec<serde_json::Value> = page
        .iter()
        .map(|r| {
            let (text, b64) = match std::str::from_utf8(&r.body) {
                Ok(t) => (Some(t), None),
                // A cut inside a character is still text up to the cut.
                Err(e) if e.error_len().is_none() => {
                    (std::str::from_utf8(&r.body[..e.valid_up_to()]).ok(), None)
                }
                Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(&r.body))),
            };
            serde_json::json!({
                "at": rfc3339_us(r.at_us),
                "source": names(r),
                "status": r.status,
                "reason": r.reason,
                "client": r.client.to_string(),
                "request": r.request_line,
                "headers": r.headers().collect::<Vec<_>>(),
                "headersCut": r.headers_cut,
                "body": text,
                "bodyBase64": b64,
                "bodyBytes": r.body_bytes,
                "bodyKept": r.body.len(),
            })
        })
        .collect();
    let (kept, bytes) = metrics.rejections.usage();
    json(&serde_json::json!({ "data": data, "next": next, "kept": kept, "keptBytes": bytes }))
}

pub(super) fn stats(ctx: &Context, q: &Params) -> Reply {
    q.only(&[])?;
    let queue = &ctx.gateway.queue;
    let mut client = connection(ctx)?;
    let connect = || queue.connect(Duration::from_secs(1), Duration::from_secs(2)).ok();
    let mut con = ctx.stats_redis.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let kept = con.is_some();
    if !kept {
        *con = connect();
    }
    let mut report = crate::report::read(queue, con.as_mut(), Some(&mut *client));
    if kept && report.as_ref().is_ok_and(|r| r.queue.is_none()) {
        // The kept connection broke (Redis restarted?): once more on a new one.
        *con = connect();
        report = crate::report::read(queue, con.as_mut(), Some(&mut *client));
    }
    let report = report.map_err(|e| super::common::unavailable(&e))?;
    if report.queue.is_none() {
        *con = None;
    }
    drop(con);
    json(&report)
}

/// The headers every page asset carries: no other origin, no inline code,
/// no framing, nothing cached or sent on.
pub(super) const PAGE_HEADERS: &[u8] = b"content-security-policy: default-src 'none'; script-src 'self'; \
style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n\
x-content-type-options: nosniff\r\nreferrer-policy: no-referrer\r\ncache-control: no-store\r\nx-frame-options: DENY\r\n";

/// The status page's assets, by path segment: the page, its script and its style.
pub(super) fn asset(name: &str) -> Option<Response> {
    let (content_type, body): (&'static str, &'static str) = match name {
        "" => ("text/html; charset=utf-8", include_str!("page/status.html")),
        "status.js" => ("text/javascript; charset=utf-8", include_str!("page/status.js")),
        "status.css" => ("text/css; charset=utf-8", include_str!("page/status.css")),
        _ => return None,
    };
    Some(Response::typed(content_type, body.as_bytes()))
}
