//! Stage 1: HTTP/1.1 on every core.
//!
//! One monoio runtime per core ([`server`]), each pinned and accepting on
//! its own `SO_REUSEPORT` listener, so the kernel spreads connections and no
//! lock is shared on the hot path. A connection ([`conn`]) is read into one
//! buffer, framed by [`request`] (httparse + strict `Content-Length` /
//! [`chunked`] handling), routed by [`router`], and answered by
//! [`response`]. The only things that cross cores are the job channel and
//! its reply (see [`crate::queue`]).
//!
//! The layer is written on `httparse` rather than `monoio-http`: measured
//! here, monoio-http 0.3.12 buffered unbounded headers, sent no 400/413/431
//! and ignored `Expect` and `Connection: close` (`tuning.md`).
//!
//! Status mapping, all in one place ([`conn`]): 202 only when Redis has the
//! job; 400 bad syntax or body; 404/405 routing; 408 slow request; 413 body
//! over `MAX_BODY_BYTES` (refused from the header, unread); 415 not JSON;
//! 417 an `Expect` other than `100-continue`; 431 head over
//! `MAX_HEADER_BYTES`; 501 unknown transfer coding; 503 with `Retry-After`
//! when the job could not be put in Redis, or a per-core bound ([`budget`]:
//! connections, connections per client, body bytes in flight) is reached.

pub mod budget;
pub mod chunked;
mod conn;
pub mod cores;
pub mod cors;
mod handler;
pub mod proxy;
pub mod ratelimit;
pub mod request;
pub mod response;
pub mod router;
pub mod security;
pub mod server;
