//! What each request gets, decided apart from the connection's I/O: route,
//! refusals decided by the head, and the answer itself.
//!
//! [`Handler::precheck`] refuses from the head alone, in this order: route,
//! method (`OPTIONS` answers a preflight), provider, rate limit, content
//! type. [`Handler::respond`] runs a webhook through its source: the
//! signature on the raw bytes (401), the body (400), then either a
//! challenge's answer (200) or the job handed to Redis (202 once Redis has
//! it, 503 otherwise); the operations routes ask the health thread. The
//! connection loop ([`super::conn`]) knows nothing of routes or senders: it
//! frames, calls these two, and writes what they return.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::cors::Cors;
use super::proxy::TrustedProxies;
use super::ratelimit::RateLimiter;
use super::request::{BodyFraming, ContentType, HeadError, Headers, Method, RequestHead};
use super::response::{Extra, Message, RateHeaders, Response, Status};
use super::router::{route, Route, WEBHOOK_ALLOW};
use crate::ingest::sources::{Admitted, Request, Sources};
use crate::ingest::{IngestError, Ingestor};
use crate::job::{now_us, WebhookJob};
use crate::queue::{EnqueueError, Enqueuer};
use crate::telemetry::metrics::{CoreMetrics, Metrics, RouteLabel};
use crate::telemetry::rejections::{self, Rejection};
use crate::telemetry::sources::{refusal_index, SourceOutcome};

/// One core's request policy; shared by its connections through the core's context.
pub(crate) struct Handler {
    pub(crate) retry_after_secs: u32,
    pub(crate) enqueuer: Enqueuer,
    pub(crate) ingestor: RefCell<Ingestor>,
    pub(crate) sources: Arc<Sources>,
    /// `MAX_BODY_BYTES`: the body limit of routes without their own.
    pub(crate) max_body: usize,
    /// Header lines sent on every response (helmet's, or none).
    pub(crate) fixed_headers: &'static [u8],
    pub(crate) cors: Cors,
    pub(crate) limiter: RefCell<RateLimiter>,
    /// Peers whose `X-Forwarded-For` names the client (`TRUST_PROXY`).
    pub(crate) proxies: TrustedProxies,
    pub(crate) health: crate::health::Health,
    /// This core's counters (only this core writes them).
    pub(crate) metrics: Arc<CoreMetrics>,
    /// Everyone's, for rendering `/metrics` and keeping rejections.
    pub(crate) all_metrics: Arc<Metrics>,
    /// This core's index (its shard of the kept rejections).
    pub(crate) core: usize,
}

/// A refused request as the connection has it, for [`Handler::refused`].
pub(crate) struct Refused<'a> {
    /// The head, and the bytes it was parsed from (`None`: the head itself
    /// was refused).
    pub(crate) head: Option<(&'a RequestHead, &'a [u8])>,
    /// The body as read (empty when it never was).
    pub(crate) body: &'a [u8],
    /// The peer's address.
    pub(crate) peer: IpAddr,
}

/// What the head alone decided.
pub(crate) struct Precheck<'h> {
    /// The answer, when the request is refused (or answered) from its head.
    pub(crate) refusal: Option<Response>,
    /// The per-response headers for this request.
    pub(crate) extra: Extra<'h>,
    /// The largest body this route takes (a chunked body is cut there).
    pub(crate) body_limit: usize,
}

impl Handler {
    /// Headers for a response that has no parsed request (framing errors).
    pub(crate) fn bare_extra(&self) -> Extra<'static> {
        Extra { fixed: self.fixed_headers, ..Extra::default() }
    }

    /// Where `target` leads.
    pub(crate) fn route(&self, target: &str) -> Route {
        route(target, &self.sources)
    }

    /// Refusals decided by the head alone (see the module docs), and the
    /// per-response headers.
    pub(crate) fn precheck<'h>(
        &self,
        head: &'h RequestHead,
        route: &Route,
        peer: IpAddr,
        now: Instant,
    ) -> Precheck<'h> {
        let origin = head.origin.as_deref().filter(|o| self.cors.allows(o));
        let mut extra = Extra {
            fixed: self.fixed_headers,
            cors_origin: origin,
            vary_origin: self.cors.enabled(),
            rate: None,
        };
        let mut body_limit = self.max_body;
        let refusal = match route {
            Route::NotFound => Some(Response::error(
                Status::NotFound,
                Message::One("Cannot find the requested route".into()),
            )),
            Route::Live if matches!(head.method, Method::Get | Method::Head) => Some(Response::live()),
            Route::Health | Route::Metrics if matches!(head.method, Method::Get | Method::Head) => None,
            Route::Live | Route::Health | Route::Metrics => Some(
                Response::error(Status::MethodNotAllowed, Message::One("only GET is allowed".into()))
                    .with_allow("GET, HEAD"),
            ),
            Route::BadProvider | Route::Webhook { .. } if head.method == Method::Options => {
                let granted = head.origin.as_deref().is_some_and(|o| self.cors.allows(o));
                Some(Response::preflight(granted))
            }
            Route::BadProvider | Route::Webhook { .. } if head.method != Method::Post => Some(
                Response::error(
                    Status::MethodNotAllowed,
                    Message::One("only POST is allowed on /webhooks/:provider".into()),
                )
                .with_allow(WEBHOOK_ALLOW),
            ),
            Route::BadProvider => Some(bad_request("provider must match ^[a-z0-9_-]{1,64}$")),
            Route::Webhook { source, .. } => {
                let (limited, rate) = self.rate_limit(head, peer, now);
                extra.rate = rate;
                let source = self.sources.get(*source);
                let form =
                    head.content_type == ContentType::Form && source.is_some_and(|s| s.kind.takes_form());
                body_limit = source.and_then(|s| s.max_body).unwrap_or(self.max_body);
                match limited {
                    Some(resp) => Some(resp),
                    // The head parser let it through under the largest
                    // route's limit; this route's own is smaller.
                    None if matches!(head.body, BodyFraming::Length(n) if n > body_limit) => {
                        Some(too_large(body_limit))
                    }
                    None if head.content_type != ContentType::Json && !form => Some(Response::error(
                        Status::UnsupportedMediaType,
                        Message::One("Content-Type must be application/json".into()),
                    )),
                    None => None,
                }
            }
        };
        Precheck { refusal, extra, body_limit }
    }

    /// The rate limiter's word on a webhook, and what to report of it.
    fn rate_limit(
        &self,
        head: &RequestHead,
        peer: IpAddr,
        now: Instant,
    ) -> (Option<Response>, Option<RateHeaders>) {
        let mut limiter = self.limiter.borrow_mut();
        if !limiter.enabled() {
            return (None, None);
        }
        let ip = self.proxies.client(peer, head.forwarded_for.as_deref());
        let d = limiter.check(ip, now);
        let headers = RateHeaders { limit: d.limit, remaining: d.remaining, reset_secs: d.reset_secs };
        if d.allowed {
            return (None, Some(headers));
        }
        let retry = u32::try_from(d.reset_secs).unwrap_or(u32::MAX);
        (Some(Response::rate_limited(retry)), Some(headers))
    }

    /// Answers a request `precheck` let through. The webhook's provider
    /// string moves into the job.
    pub(crate) async fn respond(
        &self,
        route: Route,
        target: &str,
        headers: Headers<'_>,
        body: &[u8],
    ) -> Response {
        match route {
            Route::Webhook { provider, source } => {
                self.webhook(provider, source, target, headers, body).await
            }
            Route::Metrics => {
                let gauges = self.health.queue_gauges().await;
                Response::prometheus(self.all_metrics.render(self.enqueuer.backlog() as u64, gauges))
            }
            Route::Health => {
                let report = self.health.check().await;
                let status = if report.healthy { Status::Ok } else { Status::ServiceUnavailable };
                Response::json(status, report.json)
            }
            // `precheck` answers every other route.
            _ => Response::error(Status::InternalServerError, Message::One("internal error".into())),
        }
    }

    async fn webhook(
        &self,
        provider: String,
        index: usize,
        target: &str,
        headers: Headers<'_>,
        body: &[u8],
    ) -> Response {
        let Some(source) = self.sources.get(index) else {
            return Response::error(Status::NotFound, Message::One("Cannot find the requested route".into()));
        };
        let received_at_us = now_us();
        let req = Request {
            route: &provider,
            target,
            headers,
            body,
            now_secs: received_at_us.div_euclid(1_000_000),
            received_at_us,
        };
        if let Err(why) = source.kind.verify(&req) {
            return Response::error(Status::Unauthorized, Message::One(why.message()))
                .with_reason(why.reason());
        }
        // A bug in parsing must cost one request a 500, not the core its
        // runtime (and every connection on it): the body is attacker-chosen.
        let admitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            source.kind.admit(&mut self.ingestor.borrow_mut(), &req)
        }));
        let (identity, payload, raw_body, ack) = match admitted {
            Ok(Ok(Admitted::Event(identity))) => (identity, body.to_vec(), None, None),
            Ok(Ok(Admitted::Decoded(identity, json))) => (identity, json, Some(body.to_vec()), None),
            Ok(Ok(Admitted::Acknowledged(identity, reply))) => (identity, body.to_vec(), None, Some(reply)),
            Ok(Ok(Admitted::Reply(json))) => {
                self.metrics.record_source(Some(index), SourceOutcome::Answered);
                return Response::json(Status::Ok, json);
            }
            Ok(Ok(Admitted::Text(text))) => {
                self.metrics.record_source(Some(index), SourceOutcome::Answered);
                return Response::typed("text/plain; charset=utf-8", text);
            }
            Ok(Err(e)) => return invalid(&e).with_reason("invalid_body"),
            Err(_) => {
                tracing::error!(body_len = body.len(), source = %source.route, "ingest panicked; answered 500");
                self.ingestor.borrow_mut().reset();
                return Response::error(Status::InternalServerError, Message::One("internal error".into()));
            }
        };
        let job = WebhookJob {
            provider,
            event_id: identity.event_id,
            event_type: identity.event_type,
            event_timestamp_us: identity.event_timestamp_us,
            received_at_us,
            verified_by: source.kind.scheme().map(str::to_string),
            payload,
            raw_body,
            unsigned_fields: source.kind.unsigned_fields().to_string(),
            replay_of: None,
        };
        match self.enqueuer.enqueue(job).await {
            Ok(id) => {
                self.metrics.record_source(Some(index), SourceOutcome::Accepted(received_at_us));
                match ack {
                    // The same promise as a 202 (Redis has it), in the sender's words.
                    Some(reply) => Response::json(Status::Ok, reply),
                    None => Response::accepted(id),
                }
            }
            Err(e) => {
                let (message, reason) = unavailable_message(&e);
                Response::unavailable(message, self.retry_after_secs).with_reason(reason)
            }
        }
    }

    /// Whose refusal a response on `route` would be: a source's
    /// (`Some(Some(i))`), one before any source was known (`Some(None)`), or
    /// nobody's (the operations routes: their 503 is a report, not a
    /// refusal of a sender).
    pub(crate) fn refusal_source(route: &Route) -> Option<Option<usize>> {
        match route {
            Route::Webhook { source, .. } => Some(Some(*source)),
            Route::BadProvider | Route::NotFound => Some(None),
            Route::Health | Route::Metrics | Route::Live => None,
        }
    }

    /// Counts `resp` against `source` and keeps the request among the
    /// recent rejections, when `resp` refuses it (anything but a 2xx).
    /// Never called for a 202: the accept path pays nothing for it.
    pub(crate) fn refused(&self, resp: &Response, source: Option<usize>, r: Refused<'_>) {
        let Some(reason) = resp.reason() else { return };
        let status = resp.status().code();
        if let Some(i) = refusal_index(status, reason) {
            self.metrics.record_source(source, SourceOutcome::Refused(i));
        }
        if !self.all_metrics.rejections.enabled() {
            return;
        }
        let (mut request_line, mut header_lines, mut headers_cut) = (String::new(), String::new(), false);
        let mut body_bytes = r.body.len();
        let mut client = r.peer;
        if let Some((head, bytes)) = r.head {
            request_line = format!("{} {}", head.method.as_str(), head.target_in(bytes));
            client = self.proxies.client(r.peer, head.forwarded_for.as_deref());
            if let BodyFraming::Length(n) = head.body {
                body_bytes = body_bytes.max(n);
            }
            header_lines.reserve(head.head_len.min(rejections::HEADERS_KEPT));
            for (name, value) in head.headers.of(&bytes[..head.head_len.min(bytes.len())]).iter() {
                let value: &[u8] =
                    if rejections::is_secret_header(name) { rejections::REDACTED.as_bytes() } else { value };
                if header_lines.len() + name.len() + value.len() + 3 > rejections::HEADERS_KEPT {
                    headers_cut = true;
                    break;
                }
                header_lines.push_str(&String::from_utf8_lossy(name));
                header_lines.push_str(": ");
                header_lines.push_str(&String::from_utf8_lossy(value));
                header_lines.push('\n');
            }
        }
        let rejection = Rejection {
            at_us: now_us(),
            seq: 0,
            source,
            status,
            reason,
            client,
            request_line,
            header_lines,
            headers_cut,
            body: r.body[..r.body.len().min(rejections::BODY_KEPT)].to_vec(),
            body_bytes,
        };
        self.all_metrics.rejections.keep(self.core, rejection);
    }

    /// The metrics label of `route`.
    pub(crate) fn label(route: &Route) -> RouteLabel {
        match route {
            Route::Webhook { .. } | Route::BadProvider => RouteLabel::Webhook,
            Route::Health => RouteLabel::Health,
            Route::Live => RouteLabel::Live,
            Route::Metrics | Route::NotFound => RouteLabel::Unknown,
        }
    }
}

fn invalid(e: &IngestError) -> Response {
    Response::error(Status::BadRequest, Message::Many(e.messages()))
}

/// A 400 with one message, in the validation shape.
pub(crate) fn bad_request(message: &str) -> Response {
    Response::error(Status::BadRequest, Message::Many(vec![message.to_owned()]))
}

/// The message and the counted reason of a 503.
fn unavailable_message(e: &EnqueueError) -> (&'static str, &'static str) {
    match e {
        EnqueueError::Saturated => ("queue is saturated, retry later", "saturated"),
        EnqueueError::Unavailable(_) => ("queue is unavailable, retry later", "queue_unavailable"),
        EnqueueError::TimedOut => ("queue did not answer in time, retry later", "queue_timed_out"),
        EnqueueError::QueueFull => ("queue is full, retry later", "queue_full"),
        EnqueueError::MemoryFull => ("queue is full (redis memory), retry later", "memory_full"),
        EnqueueError::Closed => ("server is shutting down, retry later", "shutting_down"),
    }
}

/// 413 for a body over `limit`, closing: the rest of it is never read.
pub(crate) fn too_large(limit: usize) -> Response {
    Response::error(Status::PayloadTooLarge, Message::One(format!("request body larger than {limit} bytes")))
        .closing()
}

/// The answer to a request whose head could not be taken.
pub(crate) fn head_error(e: &HeadError) -> Response {
    match e {
        HeadError::Malformed(_) | HeadError::Framing(_) => bad_request(&e.to_string()),
        HeadError::UnsupportedEncoding => {
            Response::error(Status::NotImplemented, Message::One(e.to_string()))
        }
        HeadError::ExpectationFailed => {
            Response::error(Status::ExpectationFailed, Message::One(e.to_string()))
        }
        HeadError::HeadTooLarge => Response::error(Status::HeaderFieldsTooLarge, Message::One(e.to_string())),
        HeadError::BodyTooLarge { limit } => too_large(*limit),
    }
}
