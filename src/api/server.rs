//! The API's HTTP/1.1: an acceptor thread and a blocking thread per
//! connection, with the gateway's own head parser
//! ([`crate::http::request::parse_head`]) and response encoder.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::common::{Context, Request};
use super::routes;
use super::MAX_CONNECTIONS;
use crate::http::request::{parse_head, BodyFraming, HeadError, Limits};
use crate::http::response::{Extra, Message, ReplyTo, Response, Status, CONTINUE};

/// Largest request head and body the API reads.
const LIMITS: Limits = Limits { max_head: 16 * 1024, max_body: 64 * 1024 };
/// An idle keep-alive connection is closed after this; also the time a
/// client may take to send one request.
const IDLE: Duration = Duration::from_secs(30);
/// The pause after a failed accept (out of file descriptors), so the
/// acceptor does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Starts the acceptor. It blocks in `accept`, so a connection is taken at
/// once; once `shutdown` is cancelled, the next connection (the one
/// [`super::ApiHandle::join`] makes to wake it) ends it.
pub(super) fn spawn(
    listener: TcpListener,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new().name("api-accept".into()).spawn(move || {
        let open = Arc::new(AtomicUsize::new(0));
        loop {
            let accepted = listener.accept();
            if shutdown.is_cancelled() {
                return;
            }
            let stream = match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "api accept failed");
                    thread::sleep(ACCEPT_RETRY);
                    continue;
                }
            };
            if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                let r = Response::unavailable("too many api connections", 1).closing();
                let _ = reply(&stream, &r, ReplyTo::default(), &[]);
                continue;
            }
            open.fetch_add(1, Ordering::Relaxed);
            let (ctx, mine) = (ctx.clone(), open.clone());
            let spawned = thread::Builder::new().name("api-conn".into()).spawn(move || {
                serve(stream, &ctx);
                mine.fetch_sub(1, Ordering::Relaxed);
            });
            if let Err(e) = spawned {
                warn!(error = %e, "cannot start an api connection thread");
                open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    })
}

/// Serves one connection until it closes, idles out, or shutdown.
fn serve(mut stream: TcpStream, ctx: &Context) {
    let _ = stream.set_read_timeout(Some(IDLE));
    let _ = stream.set_write_timeout(Some(IDLE));
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let head = loop {
            match parse_head(&buf, &LIMITS) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    let _ = reply(&stream, &head_error(&e), ReplyTo::default(), &[]);
                    return;
                }
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let to = ReplyTo { http10: head.http10, keep_alive: head.keep_alive, head: false };
        let length = match head.body {
            BodyFraming::Empty => 0,
            BodyFraming::Length(n) => n,
            BodyFraming::Chunked => {
                let r = Response::error(
                    Status::BadRequest,
                    Message::One("send the body with Content-Length".into()),
                );
                let _ = reply(&stream, &r.closing(), to, &[]);
                return;
            }
        };
        if head.expect_continue && length > 0 && buf.len() < head.head_len + length {
            let _ = (&stream).write_all(CONTINUE);
        }
        while buf.len() < head.head_len + length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let headers = head.headers.of(&buf);
        let request = Request {
            method: head.method,
            target: head.target_in(&buf),
            authorization: headers.text("authorization"),
            content_type: head.content_type,
            body: &buf[head.head_len..head.head_len + length],
        };
        let (response, extra) = routes::handle(ctx, &request);
        let close = response.closes() || !head.keep_alive || ctx.shutdown.is_cancelled();
        let response = if close { response.closing() } else { response };
        if reply(&stream, &response, to, &extra).is_err() || close {
            return;
        }
        buf.drain(..head.head_len + length);
    }
}

/// Writes `r`, with `extra` header lines.
fn reply(mut stream: &TcpStream, r: &Response, to: ReplyTo, extra: &[u8]) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(512);
    r.encode(to, &Extra { fixed: extra, ..Extra::default() }, &mut out);
    stream.write_all(&out)
}

fn head_error(e: &HeadError) -> Response {
    let status = match e {
        HeadError::HeadTooLarge => Status::HeaderFieldsTooLarge,
        HeadError::BodyTooLarge { .. } => Status::PayloadTooLarge,
        HeadError::ExpectationFailed => Status::ExpectationFailed,
        _ => Status::BadRequest,
    };
    Response::error(status, Message::One(e.to_string())).closing()
}
