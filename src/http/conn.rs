//! One HTTP/1.1 connection: read → frame → dispatch → answer, until the
//! client leaves, misbehaves, idles too long, or the core shuts down.
//!
//! Bytes are read by appending to one buffer (monoio's rent API hands the
//! buffer to the kernel and back). Requests already buffered are answered
//! before the next read, and all their answers go out in one write, which is
//! what makes pipelining cheap. Every wait is bounded: `KEEPALIVE_TIMEOUT_MS`
//! between requests, `REQUEST_TIMEOUT_MS` from a request's first byte to its
//! last and for writing its answer.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::budget::{BufferBudget, Grant, SMALL_BODY};
use super::chunked::{ChunkError, ChunkedDecoder};
use super::handler::{bad_request, head_error, too_large, Handler, Refused};
use super::request::{parse_head, BodyFraming, Limits, Method, RequestHead};
use super::response::{Extra, Message, ReplyTo, Response, Status, CONTINUE};
use crate::telemetry::metrics::{CoreMetrics, RouteLabel};

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
    pub(crate) shutdown: CancellationToken,
    /// Body bytes in flight on this core (`MAX_BUFFER_BYTES_PER_CORE`).
    pub(crate) buffers: BufferBudget,
    /// What each request gets.
    pub(crate) handler: Handler,
    /// This core's counters (only this core writes them).
    pub(crate) metrics: Arc<CoreMetrics>,
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
pub(crate) async fn refuse(
    stream: TcpStream,
    peer: std::net::IpAddr,
    ctx: Rc<CoreContext>,
    why: &'static str,
) {
    let mut conn = Conn::new(stream, peer);
    let resp =
        Response::unavailable(why, ctx.handler.retry_after_secs).with_reason("over_capacity").closing();
    ctx.handler.refused(&resp, None, Refused { head: None, body: &[], peer });
    resp.encode(ReplyTo::default(), &ctx.handler.bare_extra(), &mut conn.wbuf);
    ctx.metrics.record(RouteLabel::Unknown, Status::ServiceUnavailable.index(), Duration::ZERO);
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
            let head = loop {
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
                        let resp = head_error(&e);
                        ctx.handler.refused(&resp, None, Refused { head: None, body: &[], peer: self.peer });
                        let to = ReplyTo::default();
                        return self
                            .close_with(ctx, resp, to, ctx.handler.bare_extra(), RouteLabel::Unknown)
                            .await;
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
            let route = ctx.handler.route(head.target_in(&self.rbuf[self.start..]));
            let label = Handler::label(&route);
            // Whose refusal an answer of this route would be (none for the
            // operations routes); only a refusal is ever kept.
            let whose = Handler::refusal_source(&route);
            let check = ctx.handler.precheck(&head, &route, self.peer, now);
            let extra = check.extra;
            if let Some(resp) = &check.refusal {
                if !self.body_in_hand(&head) {
                    self.note_refusal(ctx, whose, resp, &head, self.start, &[]);
                    // Refused from its head (404, 405, 415, 429…): a large
                    // body still to come is never read, only the connection
                    // closed. A client waiting on `Expect: 100-continue`
                    // gets its answer at once (RFC 9110 §10.1.1).
                    return self.close_with(ctx, resp.clone(), to, extra, label).await;
                }
            }
            // Held until the answer is decided: the body is in memory until then.
            let (body, head_at, _grant) = match self.read_body(ctx, &head, deadline, check.body_limit).await?
            {
                Ok(read) => read,
                Err(resp) => {
                    self.note_refusal(ctx, whose, &resp, &head, self.start, &[]);
                    return self.close_with(ctx, resp, to, extra, label).await;
                }
            };
            let mut resp = match check.refusal {
                Some(resp) => resp,
                None => {
                    let headers = head.headers.of(&self.rbuf[head_at..head_at + head.head_len]);
                    let bytes = match &body {
                        Body::Buffered(range) => &self.rbuf[range.clone()],
                        Body::Owned(v) => &v[..],
                    };
                    let target = head.target_in(&self.rbuf[head_at..]);
                    ctx.handler.respond(route, target, headers, bytes).await
                }
            };
            if resp.reason().is_some() {
                let body = match &body {
                    Body::Buffered(range) => &self.rbuf[range.clone()],
                    Body::Owned(v) => &v[..],
                };
                self.note_refusal(ctx, whose, &resp, &head, head_at, body);
            }
            if ctx.shutdown.is_cancelled() {
                resp = resp.closing();
            }
            resp.encode(to, &extra, &mut self.wbuf);
            ctx.metrics.record(label, resp.status().index(), now.elapsed());
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
    /// consumes the whole request from the buffer; also says where the head's
    /// bytes now are (reading may move them). `Err(response)` refuses it.
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
        body_limit: usize,
    ) -> Result<Result<(Body, usize, Option<Grant<'c>>), Response>, End> {
        let off = head.head_len;
        let buffered = self.rbuf.len() - self.start - off;
        // Accounted as the bytes arrive, never from the declared length.
        let mut grant = match head.body {
            BodyFraming::Length(n) if n > SMALL_BODY => Some(ctx.buffers.open(self.peer)),
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
                let head_at = self.start;
                self.start += off;
                Ok(Ok((Body::Buffered(self.start..self.start), head_at, None)))
            }
            BodyFraming::Length(n) => {
                loop {
                    let received = self.rbuf.len() - self.start - off;
                    if received >= n {
                        break;
                    }
                    // Room for what comes next, doubling as it comes, held on
                    // the budget before it is read into.
                    let room = match &mut grant {
                        None => n,
                        Some(g) => {
                            let room = (received.max(READ_CHUNK) * 2).min(n);
                            if !g.grow_to(room) {
                                return Ok(Err(self.over_budget(ctx)));
                            }
                            room
                        }
                    };
                    self.rbuf.reserve((self.start + off + room).saturating_sub(self.rbuf.len()));
                    self.fill(ctx, Wait::Until(deadline)).await?;
                }
                let (head_at, body) = (self.start, self.start + off);
                self.start = body + n;
                Ok(Ok((Body::Buffered(body..body + n), head_at, grant)))
            }
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::new(body_limit);
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
                    if body.len() > SMALL_BODY
                        && !grant.get_or_insert_with(|| ctx.buffers.open(self.peer)).grow_to(body.len())
                    {
                        return Ok(Err(self.over_budget(ctx)));
                    }
                    // Everything after the head is decoded into `body`: drop it
                    // so a long chunked body does not sit in memory twice.
                    self.rbuf.truncate(self.start + off);
                    pos = off;
                    self.fill(ctx, Wait::Until(deadline)).await?;
                }
                let head_at = self.start;
                self.start += pos;
                Ok(Ok((Body::Owned(body), head_at, grant)))
            }
        }
    }

    /// Counts and keeps `resp` as a refusal of `whose` (none for the
    /// operations routes), the request's head at `head_at` in the buffer.
    fn note_refusal(
        &self,
        ctx: &CoreContext,
        whose: Option<Option<usize>>,
        resp: &Response,
        head: &RequestHead,
        head_at: usize,
        body: &[u8],
    ) {
        if let Some(source) = whose {
            let head = Some((head, &self.rbuf[head_at..]));
            ctx.handler.refused(resp, source, Refused { head, body, peer: self.peer });
        }
    }

    /// Whether a refused request's body is cheap to skip, so the connection
    /// can be kept (a pipelining client over its rate limit): none, all of
    /// it in the buffer already, or small enough to read ([`SMALL_BODY`]).
    /// Any other is never read: the connection is closed after the answer.
    fn body_in_hand(&self, head: &RequestHead) -> bool {
        match head.body {
            BodyFraming::Empty => true,
            BodyFraming::Length(n) => n <= SMALL_BODY || self.rbuf.len() - self.start - head.head_len >= n,
            BodyFraming::Chunked => false,
        }
    }

    /// The core holds `MAX_BUFFER_BYTES_PER_CORE` of bodies already: refuse
    /// this one unread, as busy (the sender retries), and close.
    fn over_budget(&self, ctx: &CoreContext) -> Response {
        Response::unavailable("server is busy with large requests, retry later", ctx.handler.retry_after_secs)
            .with_reason("over_capacity")
            .closing()
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
                        ctx.handler.refused(&resp, None, Refused { head: None, body: &[], peer: self.peer });
                        let to = ReplyTo::default();
                        let _ = self
                            .close_with(ctx, resp, to, ctx.handler.bare_extra(), RouteLabel::Unknown)
                            .await;
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
        ctx.metrics.record(route, status.index(), Duration::ZERO);
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
