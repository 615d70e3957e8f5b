//! One HTTP/1.1 connection: read → frame → dispatch → answer, until the
//! client leaves, misbehaves, idles too long, or the core shuts down.
//!
//! Bytes are read by appending to one buffer (monoio's rent API hands the
//! buffer to the kernel and back). Requests already buffered are answered
//! before the next read, and all their answers go out in one write, which is
//! what makes pipelining cheap. Every wait is bounded: `KEEPALIVE_TIMEOUT_MS`
//! between requests, `REQUEST_TIMEOUT_MS` from a request's first byte to its
//! last and for writing its answer.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::budget::{BufferBudget, Grant, SMALL_BODY};
use super::chunked::{ChunkError, ChunkedDecoder};
use super::cors::Cors;
use super::proxy::TrustedProxies;
use super::ratelimit::RateLimiter;
use super::request::{parse_head, BodyFraming, ContentType, HeadError, Limits, Method, RequestHead};
use super::response::{Extra, Message, RateHeaders, ReplyTo, Response, Status, CONTINUE};
use super::router::{Route, WEBHOOK_ALLOW};
use crate::ingest::Ingestor;
use crate::queue::{EnqueueError, Enqueuer};
use crate::telemetry::metrics::{CoreMetrics, Metrics, RouteLabel};

/// Smallest free space kept at the end of the read buffer before a read.
const READ_CHUNK: usize = 4096;
/// Pending answers are written once they reach this size, even mid-pipeline.
const WBUF_FLUSH_AT: usize = 64 * 1024;
/// After a response that closes the connection, how long (and how much) we
/// keep reading and discarding, so the client receives the answer instead of
/// a reset caused by unread bytes.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;
/// The same for a connection refused at accept.
const REFUSE_LINGER_TIME: Duration = Duration::from_millis(100);
/// A buffer grown past this for one large request is given back before
/// the connection waits for the next one, so an idle keep-alive connection
/// holds a few KiB, not its largest request.
const RBUF_KEEP: usize = 64 * 1024;
const WBUF_KEEP: usize = 2 * WBUF_FLUSH_AT;

/// Everything a connection needs from its core; one per core, shared by `Rc`.
pub(crate) struct CoreContext {
    pub(crate) limits: Limits,
    pub(crate) request_timeout: Duration,
    pub(crate) keepalive_timeout: Duration,
    pub(crate) retry_after_secs: u32,
    pub(crate) enqueuer: Enqueuer,
    pub(crate) ingestor: RefCell<Ingestor>,
    pub(crate) shutdown: CancellationToken,
    /// Header lines sent on every response (helmet's, or none).
    pub(crate) fixed_headers: &'static [u8],
    pub(crate) cors: Cors,
    pub(crate) limiter: RefCell<RateLimiter>,
    /// Peers whose `X-Forwarded-For` names the client (`TRUST_PROXY`).
    pub(crate) proxies: TrustedProxies,
    /// Body bytes in flight on this core (`MAX_BUFFER_BYTES_PER_CORE`).
    pub(crate) buffers: BufferBudget,
    pub(crate) health: crate::health::Health,
    /// This core's counters (only this core writes them).
    pub(crate) metrics: Arc<CoreMetrics>,
    /// Everyone's, for rendering `/metrics`.
    pub(crate) all_metrics: Arc<Metrics>,
}

impl CoreContext {
    /// Headers for a response that has no parsed request (framing errors).
    fn bare_extra(&self) -> Extra<'static> {
        Extra { fixed: self.fixed_headers, ..Extra::default() }
    }
}

/// Why a connection ended early; only for debug logs.
#[derive(Debug)]
enum End {
    /// The peer closed, idled out, or we were asked to shut down.
    Quiet,
    /// A socket error.
    Io(std::io::Error),
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Io(e)
    }
}

/// Serves one accepted connection to completion.
pub(crate) async fn serve(stream: TcpStream, peer: std::net::IpAddr, ctx: Rc<CoreContext>) {
    let mut conn = Conn::new(stream, peer);
    if let Err(End::Io(e)) = conn.run(&ctx).await {
        tracing::debug!(error = %e, "connection ended by an I/O error");
    }
}

/// Answers a connection the core will not serve (a cap is reached) with
/// 503 and `Retry-After`, without reading a request, and closes it. The
/// linger is short: a refused client must not hold a socket for long.
pub(crate) async fn refuse(stream: TcpStream, ctx: Rc<CoreContext>, why: &'static str) {
    let mut conn = Conn::new(stream, std::net::Ipv4Addr::UNSPECIFIED.into());
    let resp = Response::unavailable(why, ctx.retry_after_secs).closing();
    resp.encode(ReplyTo::default(), &ctx.bare_extra(), &mut conn.wbuf);
    ctx.metrics.record(RouteLabel::Unknown, Status::ServiceUnavailable, Duration::ZERO);
    if conn.flush(&ctx).await.is_ok() {
        let _ = conn.linger_close(REFUSE_LINGER_TIME).await;
    }
}

struct Conn {
    stream: TcpStream,
    /// The client's address as the socket sees it.
    peer: std::net::IpAddr,
    /// Received bytes; `rbuf[start..]` is not yet consumed.
    rbuf: Vec<u8>,
    start: usize,
    /// Answers not yet written.
    wbuf: Vec<u8>,
}

/// How a read waits.
#[derive(Clone, Copy)]
enum Wait {
    /// Between requests: up to the keep-alive timeout, and shutdown ends it.
    Idle,
    /// Inside a request: until its deadline.
    Until(Instant),
}

impl Conn {
    fn new(stream: TcpStream, peer: std::net::IpAddr) -> Self {
        Self {
            stream,
            peer,
            rbuf: Vec::with_capacity(READ_CHUNK * 2),
            start: 0,
            wbuf: Vec::with_capacity(512),
        }
    }

    async fn run(&mut self, ctx: &CoreContext) -> Result<(), End> {
        loop {
            // Set when the first byte of this request is seen.
            let mut deadline = None;
            let mut head = loop {
                match parse_head(&self.rbuf[self.start..], &ctx.limits) {
                    Ok(Some(head)) => break head,
                    Ok(None) => {
                        let wait = if self.start == self.rbuf.len() {
                            // Nothing of the next request yet: answers to
                            // pipelined requests go out before we wait.
                            self.flush(ctx).await?;
                            Wait::Idle
                        } else {
                            Wait::Until(*deadline.get_or_insert_with(|| Instant::now() + ctx.request_timeout))
                        };
                        self.fill(ctx, wait).await?;
                    }
                    Err(e) => {
                        let resp = head_error_response(&e);
                        let to = ReplyTo::default();
                        return self.close_with(ctx, resp, to, ctx.bare_extra(), RouteLabel::Unknown).await;
                    }
                }
            };
            let now = Instant::now();
            let deadline = deadline.unwrap_or_else(|| now + ctx.request_timeout);
            let to = ReplyTo {
                http10: head.http10,
                keep_alive: head.keep_alive,
                head: head.method == Method::Head,
            };
            let (refusal, rate) = self.precheck(ctx, &head, now);
            let origin = head.origin.as_deref().filter(|o| ctx.cors.allows(o));
            let extra = Extra {
                fixed: ctx.fixed_headers,
                cors_origin: origin,
                vary_origin: ctx.cors.enabled(),
                rate,
            };
            if let (Some(resp), true) = (&refusal, head.expect_continue && head.body != BodyFraming::Empty) {
                // The client is waiting for our word before sending the body:
                // answer now and never read it (RFC 9110 §10.1.1).
                return self.close_with(ctx, resp.clone(), to, extra, route_label(&head.route)).await;
            }
            // Held until the answer is decided: the body is in memory until then.
            let (body, _grant) = match self.read_body(ctx, &head, deadline).await? {
                Ok(read) => read,
                Err(resp) => return self.close_with(ctx, resp, to, extra, route_label(&head.route)).await,
            };
            let mut resp = match refusal {
                Some(resp) => resp,
                None => self.dispatch(ctx, &mut head.route, &body).await,
            };
            if ctx.shutdown.is_cancelled() {
                resp = resp.closing();
            }
            resp.encode(to, &extra, &mut self.wbuf);
            ctx.metrics.record(route_label(&head.route), resp.status(), now.elapsed());
            if !head.keep_alive || resp.closes() {
                self.flush(ctx).await?;
                self.linger_close(LINGER_TIME).await?;
                return Ok(());
            }
            // A client pipelining tiny requests faster than it reads would
            // otherwise make us hold ~40× its bytes in answers: write them out
            // now and let TCP push back on its sends.
            if self.wbuf.len() >= WBUF_FLUSH_AT {
                self.flush(ctx).await?;
            }
        }
    }

    /// Reads the body of `head` (whose head starts at `self.start`) and
    /// consumes the whole request from the buffer. `Err(response)` refuses it.
    /// A body beyond [`SMALL_BODY`] comes with its grant on the core's
    /// budget, to be held until the request is answered.
    ///
    /// Positions are kept relative to `self.start`, because `fill` may move
    /// the unconsumed bytes to the front of the buffer.
    async fn read_body<'c>(
        &mut self,
        ctx: &'c CoreContext,
        head: &RequestHead,
        deadline: Instant,
    ) -> Result<Result<(Body, Option<Grant<'c>>), Response>, End> {
        let off = head.head_len;
        let buffered = self.rbuf.len() - self.start - off;
        let mut grant = match head.body {
            BodyFraming::Length(n) if n > SMALL_BODY => match ctx.buffers.take(n) {
                Some(g) => Some(g),
                None => return Ok(Err(self.over_budget(ctx))),
            },
            _ => None,
        };
        let needs_more = match head.body {
            BodyFraming::Empty => false,
            BodyFraming::Length(n) => buffered < n,
            BodyFraming::Chunked => true,
        };
        if head.expect_continue && needs_more {
            self.flush(ctx).await?;
            self.write_raw(ctx, CONTINUE).await?;
        }
        match head.body {
            BodyFraming::Empty => {
                self.start += off;
                Ok(Ok((Body::Buffered(self.start..self.start), None)))
            }
            BodyFraming::Length(n) => {
                self.rbuf.reserve((self.start + off + n).saturating_sub(self.rbuf.len()));
                while self.rbuf.len() - self.start - off < n {
                    self.fill(ctx, Wait::Until(deadline)).await?;
                }
                let body = self.start + off;
                self.start = body + n;
                Ok(Ok((Body::Buffered(body..body + n), grant)))
            }
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new(ctx.limits.max_body);
                let mut body = Vec::new();
                let mut pos = off;
                loop {
                    match decoder.decode(&self.rbuf[self.start + pos..], &mut body) {
                        Ok((used, true)) => {
                            pos += used;
                            break;
                        }
                        Ok((_, false)) => {}
                        Err(ChunkError::TooLarge(limit)) => return Ok(Err(too_large(limit))),
                        Err(ChunkError::Malformed) => {
                            return Ok(Err(bad_request("malformed chunked body").closing()));
                        }
                    }
                    if body.len() > SMALL_BODY {
                        let covered = match &mut grant {
                            Some(g) => g.grow_to(body.len()),
                            None => ctx.buffers.take(body.len()).map(|g| grant = Some(g)).is_some(),
                        };
                        if !covered {
                            return Ok(Err(self.over_budget(ctx)));
                        }
                    }
                    // Everything after the head is decoded into `body`: drop it
                    // so a long chunked body does not sit in memory twice.
                    self.rbuf.truncate(self.start + off);
                    pos = off;
                    self.fill(ctx, Wait::Until(deadline)).await?;
                }
                self.start += pos;
                Ok(Ok((Body::Owned(body), grant)))
            }
        }
    }

    /// The core holds `MAX_BUFFER_BYTES_PER_CORE` of bodies already: refuse
    /// this one unread, as busy (the sender retries), and close.
    fn over_budget(&self, ctx: &CoreContext) -> Response {
        Response::unavailable("server is busy with large requests, retry later", ctx.retry_after_secs)
            .closing()
    }

    /// Runs the routes that wait on another thread: the webhook route
    /// (ingest, enqueue, wait for Redis) and the readiness report.
    /// The webhook's provider string moves into the job (the route keeps
    /// its variant, which is all the caller still reads).
    async fn dispatch(&self, ctx: &CoreContext, route: &mut Route, body: &Body) -> Response {
        let provider = match route {
            Route::Webhook { provider } => std::mem::take(provider),
            Route::Metrics => {
                let gauges = ctx.health.queue_gauges().await;
                return Response::prometheus(ctx.all_metrics.render(ctx.enqueuer.backlog() as u64, gauges));
            }
            Route::Health => {
                let report = ctx.health.check().await;
                let status = if report.healthy { Status::Ok } else { Status::ServiceUnavailable };
                return Response::json(status, report.json);
            }
            _ => unreachable!("precheck answers every other route"),
        };
        let bytes = match body {
            Body::Buffered(range) => &self.rbuf[range.clone()],
            Body::Owned(v) => &v[..],
        };
        // A bug in parsing must cost one request a 500, not the core its
        // runtime (and every connection on it): the body is attacker-chosen.
        let ingested = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.ingestor.borrow_mut().ingest(provider, bytes, now_us())
        }));
        let job = match ingested {
            Ok(Ok(job)) => job,
            Ok(Err(e)) => return Response::error(Status::BadRequest, Message::Many(e.messages())),
            Err(_) => {
                tracing::error!(body_len = bytes.len(), "ingest panicked; answered 500");
                ctx.ingestor.borrow_mut().reset();
                return Response::error(Status::InternalServerError, Message::One("internal error".into()));
            }
        };
        match ctx.enqueuer.enqueue(job).await {
            Ok(id) => Response::accepted(id),
            Err(e) => Response::unavailable(unavailable_message(&e), ctx.retry_after_secs),
        }
    }

    /// Reads more bytes; ends the connection on EOF, timeout, or (while idle)
    /// shutdown.
    async fn fill(&mut self, ctx: &CoreContext, wait: Wait) -> Result<(), End> {
        if self.start == self.rbuf.len() {
            if self.rbuf.capacity() > RBUF_KEEP {
                self.rbuf = Vec::with_capacity(READ_CHUNK * 2);
            }
            self.rbuf.clear();
            self.start = 0;
        } else if self.start > 0 && self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK {
            self.rbuf.drain(..self.start);
            self.start = 0;
        }
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK {
            self.rbuf.reserve(READ_CHUNK);
        }
        let len = self.rbuf.len();
        let buf = std::mem::take(&mut self.rbuf);
        let read = self.stream.read(buf.slice_mut(len..));
        let (res, slice) = match wait {
            Wait::Idle => monoio::select! {
                r = monoio::time::timeout(ctx.keepalive_timeout, read) => match r {
                    Ok(r) => r,
                    Err(_) => return Err(End::Quiet),
                },
                _ = ctx.shutdown.cancelled() => return Err(End::Quiet),
            },
            Wait::Until(deadline) => {
                match monoio::time::timeout(deadline.saturating_duration_since(Instant::now()), read).await {
                    Ok(r) => r,
                    Err(_) => {
                        // The buffer went with the cancelled read; answer anyway.
                        let resp = Response::error(
                            Status::RequestTimeout,
                            Message::One("request not received in time".into()),
                        );
                        let to = ReplyTo::default();
                        let _ = self.close_with(ctx, resp, to, ctx.bare_extra(), RouteLabel::Unknown).await;
                        return Err(End::Quiet);
                    }
                }
            }
        };
        self.rbuf = slice.into_inner();
        match res? {
            0 => Err(End::Quiet),
            _ => Ok(()),
        }
    }

    /// Writes the pending answers.
    async fn flush(&mut self, ctx: &CoreContext) -> Result<(), End> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.wbuf);
        match monoio::time::timeout(ctx.request_timeout, self.stream.write_all(buf)).await {
            Ok((res, mut buf)) => {
                res?;
                if buf.capacity() > WBUF_KEEP {
                    buf = Vec::with_capacity(512);
                }
                buf.clear();
                self.wbuf = buf;
                Ok(())
            }
            // A client that does not read its answers is dropped.
            Err(_) => Err(End::Quiet),
        }
    }

    async fn write_raw(&mut self, ctx: &CoreContext, bytes: &'static [u8]) -> Result<(), End> {
        match monoio::time::timeout(ctx.request_timeout, self.stream.write_all(bytes)).await {
            Ok((res, _)) => res.map(|_| ()).map_err(End::Io),
            Err(_) => Err(End::Quiet),
        }
    }

    /// Sends `resp` (after any answers still pending) and closes the
    /// connection (see [`Conn::linger_close`]).
    async fn close_with(
        &mut self,
        ctx: &CoreContext,
        resp: Response,
        to: ReplyTo,
        extra: Extra<'_>,
        route: RouteLabel,
    ) -> Result<(), End> {
        let status = resp.status();
        resp.closing().encode(to, &extra, &mut self.wbuf);
        ctx.metrics.record(route, status, Duration::ZERO);
        self.flush(ctx).await?;
        self.linger_close(LINGER_TIME).await
    }

    /// Closes our side after the last answer is written, then reads and
    /// discards for a moment, so that bytes the client already sent do not
    /// turn that answer (a 202 included) into a reset.
    async fn linger_close(&mut self, linger: Duration) -> Result<(), End> {
        self.stream.shutdown().await?;
        let until = Instant::now() + linger;
        let mut discarded = 0;
        let mut buf = std::mem::take(&mut self.rbuf);
        while discarded < LINGER_BYTES {
            buf.clear();
            buf.reserve(READ_CHUNK);
            let left = until.saturating_duration_since(Instant::now());
            match monoio::time::timeout(left, self.stream.read(buf)).await {
                Ok((Ok(n), b)) if n > 0 => {
                    discarded += n;
                    buf = b;
                }
                _ => break,
            }
        }
        Ok(())
    }
}

/// Where a request's body lives: in the read buffer, or decoded from chunks.
enum Body {
    Buffered(std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl Conn {
    /// Refusals decided by the head alone, in this order: route, method
    /// (`OPTIONS` answers a preflight), provider, rate limit, content type.
    /// Also returns the rate-limit state to report.
    fn precheck(
        &self,
        ctx: &CoreContext,
        head: &RequestHead,
        now: Instant,
    ) -> (Option<Response>, Option<RateHeaders>) {
        let refusal = match &head.route {
            Route::NotFound => {
                Response::error(Status::NotFound, Message::One("Cannot find the requested route".into()))
            }
            Route::Live if matches!(head.method, Method::Get | Method::Head) => Response::live(),
            Route::Health | Route::Metrics if matches!(head.method, Method::Get | Method::Head) => {
                return (None, None)
            }
            Route::Live | Route::Health | Route::Metrics => {
                Response::error(Status::MethodNotAllowed, Message::One("only GET is allowed".into()))
                    .with_allow("GET, HEAD")
            }
            Route::BadProvider | Route::Webhook { .. } if head.method == Method::Options => {
                let granted = head.origin.as_deref().is_some_and(|o| ctx.cors.allows(o));
                Response::preflight(granted)
            }
            Route::BadProvider | Route::Webhook { .. } if head.method != Method::Post => Response::error(
                Status::MethodNotAllowed,
                Message::One("only POST is allowed on /webhooks/:provider".into()),
            )
            .with_allow(WEBHOOK_ALLOW),
            Route::BadProvider => bad_request("provider must match ^[a-z0-9_-]{1,64}$"),
            Route::Webhook { .. } => {
                let mut limiter = ctx.limiter.borrow_mut();
                let rate = if limiter.enabled() {
                    let ip = ctx.proxies.client(self.peer, head.forwarded_for.as_deref());
                    let d = limiter.check(ip, now);
                    let headers =
                        RateHeaders { limit: d.limit, remaining: d.remaining, reset_secs: d.reset_secs };
                    if !d.allowed {
                        let retry = u32::try_from(d.reset_secs).unwrap_or(u32::MAX);
                        return (Some(Response::rate_limited(retry)), Some(headers));
                    }
                    Some(headers)
                } else {
                    None
                };
                if head.content_type != ContentType::Json {
                    let resp = Response::error(
                        Status::UnsupportedMediaType,
                        Message::One("Content-Type must be application/json".into()),
                    );
                    return (Some(resp), rate);
                }
                return (None, rate);
            }
        };
        (Some(refusal), None)
    }
}

fn route_label(route: &Route) -> RouteLabel {
    match route {
        Route::Webhook { .. } | Route::BadProvider => RouteLabel::Webhook,
        Route::Health => RouteLabel::Health,
        Route::Live => RouteLabel::Live,
        Route::Metrics | Route::NotFound => RouteLabel::Unknown,
    }
}

fn head_error_response(e: &HeadError) -> Response {
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

fn bad_request(message: &str) -> Response {
    Response::error(Status::BadRequest, Message::Many(vec![message.to_owned()]))
}

fn too_large(limit: usize) -> Response {
    Response::error(Status::PayloadTooLarge, Message::One(format!("request body larger than {limit} bytes")))
        .closing()
}

fn unavailable_message(e: &EnqueueError) -> &'static str {
    match e {
        EnqueueError::Saturated => "queue is saturated, retry later",
        EnqueueError::Unavailable(_) => "queue is unavailable, retry later",
        EnqueueError::TimedOut => "queue did not answer in time, retry later",
        EnqueueError::QueueFull => "queue is full, retry later",
        EnqueueError::MemoryFull => "queue is full (redis memory), retry later",
        EnqueueError::Closed => "server is shutting down, retry later",
    }
}

/// Microseconds since the Unix epoch, from the system clock.
fn now_us() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}
