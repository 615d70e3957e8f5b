//! Responses, encoded straight into the connection's write buffer.
//!
//! Error bodies use NestJS's shape (`{"statusCode":…,"error":…,"message":…}`)
//! so clients of the NestJS design see no change. The 202 body is written by
//! hand: it is the hot path and its only variable part, a Redis stream id,
//! never needs escaping.

use std::borrow::Cow;
use std::io::Write;

use serde::Serialize;

/// The status codes the gateway sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 200: health answers.
    Ok,
    /// 202: the job is in Redis.
    Accepted,
    /// 204: a CORS preflight answer.
    NoContent,
    /// 400: malformed request or invalid body.
    BadRequest,
    /// 401: a source's signature is missing, wrong, or its timestamp stale.
    Unauthorized,
    /// 403: a token without the scope a route needs.
    Forbidden,
    /// 404: unknown path.
    NotFound,
    /// 405: known path, other method.
    MethodNotAllowed,
    /// 408: the request did not arrive within `REQUEST_TIMEOUT_MS`.
    RequestTimeout,
    /// 410: a cursor past the retention window.
    Gone,
    /// 413: body over `MAX_BODY_BYTES`.
    PayloadTooLarge,
    /// 415: body not JSON.
    UnsupportedMediaType,
    /// 417: an `Expect` other than `100-continue`.
    ExpectationFailed,
    /// 429: over the rate limit.
    TooManyRequests,
    /// 431: head over `MAX_HEADER_BYTES`.
    HeaderFieldsTooLarge,
    /// 501: a transfer coding the gateway does not implement.
    NotImplemented,
    /// 500: a report could not be produced, or parsing failed unexpectedly.
    InternalServerError,
    /// 503: Redis unavailable, slow, or the hand-off channel full.
    ServiceUnavailable,
}

impl Status {
    /// Every status, in the order of [`Status::index`].
    pub const ALL: [Status; 18] = [
        Status::Ok,
        Status::Accepted,
        Status::NoContent,
        Status::BadRequest,
        Status::Unauthorized,
        Status::Forbidden,
        Status::NotFound,
        Status::MethodNotAllowed,
        Status::RequestTimeout,
        Status::Gone,
        Status::PayloadTooLarge,
        Status::UnsupportedMediaType,
        Status::ExpectationFailed,
        Status::TooManyRequests,
        Status::HeaderFieldsTooLarge,
        Status::NotImplemented,
        Status::InternalServerError,
        Status::ServiceUnavailable,
    ];

    /// Position in [`Status::ALL`] (for per-status counters): the
    /// discriminant, since `ALL` lists the variants in declaration order.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Self::Ok => 200,
            Self::Accepted => 202,
            Self::NoContent => 204,
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Gone => 410,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::ExpectationFailed => 417,
            Self::TooManyRequests => 429,
            Self::HeaderFieldsTooLarge => 431,
            Self::NotImplemented => 501,
            Self::InternalServerError => 500,
            Self::ServiceUnavailable => 503,
        }
    }

    /// The reason phrase, also the `error` field of error bodies.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Accepted => "Accepted",
            Self::NoContent => "No Content",
            Self::BadRequest => "Bad Request",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not Found",
            Self::MethodNotAllowed => "Method Not Allowed",
            Self::RequestTimeout => "Request Timeout",
            Self::Gone => "Gone",
            Self::PayloadTooLarge => "Payload Too Large",
            Self::UnsupportedMediaType => "Unsupported Media Type",
            Self::ExpectationFailed => "Expectation Failed",
            Self::TooManyRequests => "Too Many Requests",
            Self::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Self::NotImplemented => "Not Implemented",
            Self::InternalServerError => "Internal Server Error",
            Self::ServiceUnavailable => "Service Unavailable",
        }
    }
}

/// The `message` of an error body: a list for validation, a sentence otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Message {
    /// One sentence.
    One(String),
    /// One entry per failed rule.
    Many(Vec<String>),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "statusCode")]
    status_code: u16,
    error: &'static str,
    message: &'a Message,
}

/// The `x-ratelimit-*` values of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    /// `x-ratelimit-limit`.
    pub limit: u64,
    /// `x-ratelimit-remaining`.
    pub remaining: u64,
    /// `x-ratelimit-reset`, seconds.
    pub reset_secs: u64,
}

/// The request a response answers, as far as encoding cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplyTo {
    /// Answer in HTTP/1.0 (and say `keep-alive` explicitly when keeping it).
    pub http10: bool,
    /// The request allows reusing the connection.
    pub keep_alive: bool,
    /// A `HEAD` request: the headers a `GET` would get, never a body
    /// (a keep-alive client would read the body as the next answer).
    pub head: bool,
}

/// Per-response headers decided by the connection, not the handler.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    /// Pre-built header lines sent on every response (security headers).
    pub fixed: &'a [u8],
    /// `Access-Control-Allow-Origin` for an allowed origin.
    pub cors_origin: Option<&'a str>,
    /// Send `Vary: Origin` (CORS is configured).
    pub vary_origin: bool,
    /// Rate-limit state to report.
    pub rate: Option<RateHeaders>,
}

/// What a response carries.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Body {
    /// `{"accepted":true,"jobId":…}`.
    Accepted(String),
    /// NestJS's error shape.
    Error(Message),
    /// A document built elsewhere (a health report, Prometheus text); the
    /// content type follows `Response::text`.
    Raw(Cow<'static, [u8]>),
    /// Nothing (204).
    Empty,
}

/// What to send for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: Status,
    body: Body,
    retry_after: Option<u32>,
    allow: Option<&'static str>,
    close: bool,
    preflight: bool,
    /// The body's type when it is not JSON (Prometheus text, a page).
    content_type: Option<&'static str>,
    /// Why a refusal was refused, as counted per source and kept with the
    /// rejection (`None`: the status says it, [`Response::reason`]).
    reason: Option<&'static str>,
}

impl Response {
    fn new(status: Status, body: Body) -> Self {
        Self {
            status,
            body,
            retry_after: None,
            allow: None,
            close: false,
            preflight: false,
            content_type: None,
            reason: None,
        }
    }

    /// 200 with a Prometheus text exposition.
    pub fn prometheus(text: String) -> Self {
        Self::typed("text/plain; version=0.0.4; charset=utf-8", text.into_bytes())
    }

    /// 200 with `body` of `content_type` (a page, its script).
    pub fn typed(content_type: &'static str, body: impl Into<Cow<'static, [u8]>>) -> Self {
        Self { content_type: Some(content_type), ..Self::new(Status::Ok, Body::Raw(body.into())) }
    }

    /// Names why the request was refused (one of the reasons counted per
    /// source: `bad_signature`, `queue_full`…).
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Why the request was refused: the reason given, or the status's own
    /// (`rate_limited`, `too_large`…); `None` for an answer that is not a
    /// refusal (2xx).
    pub fn reason(&self) -> Option<&'static str> {
        if self.reason.is_some() {
            return self.reason;
        }
        Some(match self.status {
            Status::Ok | Status::Accepted | Status::NoContent => return None,
            Status::BadRequest => "bad_request",
            Status::Unauthorized => "unauthorized",
            Status::Forbidden => "forbidden",
            Status::NotFound => "not_found",
            Status::MethodNotAllowed => "method_not_allowed",
            Status::RequestTimeout => "request_timeout",
            Status::Gone => "gone",
            Status::PayloadTooLarge => "too_large",
            Status::UnsupportedMediaType => "unsupported_media_type",
            Status::ExpectationFailed => "expectation_failed",
            Status::TooManyRequests => "rate_limited",
            Status::HeaderFieldsTooLarge => "header_too_large",
            Status::NotImplemented => "not_implemented",
            Status::InternalServerError => "internal_error",
            Status::ServiceUnavailable => "unavailable",
        })
    }

    /// 202 `{"accepted":true,"jobId":…}`.
    pub fn accepted(job_id: String) -> Self {
        Self::new(Status::Accepted, Body::Accepted(job_id))
    }

    /// An error in NestJS's shape.
    pub fn error(status: Status, message: Message) -> Self {
        Self::new(status, Body::Error(message))
    }

    /// A JSON document with the given status.
    pub fn json(status: Status, body: impl Into<Cow<'static, [u8]>>) -> Self {
        Self::new(status, Body::Raw(body.into()))
    }

    /// 503 with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u32) -> Self {
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::error(Status::ServiceUnavailable, Message::One(message.into()))
        }
    }

    /// 200 `{"status":"ok"}`: the process serves.
    pub fn live() -> Self {
        Self::json(Status::Ok, &b"{\"status\":\"ok\"}"[..])
    }

    /// 429 with `Retry-After`.
    pub fn rate_limited(retry_after_secs: u32) -> Self {
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::error(Status::TooManyRequests, Message::One("rate limit exceeded, retry later".into()))
        }
    }

    /// 204 to an `OPTIONS` request; with `cors`, the preflight grants.
    pub fn preflight(cors: bool) -> Self {
        Self { allow: Some("POST, OPTIONS"), preflight: cors, ..Self::new(Status::NoContent, Body::Empty) }
    }

    /// Adds an `Allow` header (405).
    pub fn with_allow(mut self, allow: &'static str) -> Self {
        self.allow = Some(allow);
        self
    }

    /// Marks the connection to be closed after this response.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// The status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether the connection closes after this response.
    pub fn closes(&self) -> bool {
        self.close
    }

    /// Appends the encoded response. The connection stays open only if the
    /// request allows it and `!self.close`.
    pub fn encode(&self, to: ReplyTo, extra: &Extra<'_>, out: &mut Vec<u8>) {
        let ReplyTo { http10, keep_alive, head } = to;
        const ACCEPTED_OPEN: &[u8] = b"{\"accepted\":true,\"jobId\":\"";
        const ACCEPTED_CLOSE: &[u8] = b"\"}";
        // Error bodies go through serde for escaping; the 202 body is written
        // in place (a stream id needs no escaping), so the hot path does not
        // allocate here.
        let error_body = match &self.body {
            Body::Error(message) => {
                let e = ErrorBody { status_code: self.status.code(), error: self.status.reason(), message };
                Some(serde_json::to_vec(&e).expect("serialising to a Vec cannot fail"))
            }
            _ => None,
        };
        let body_len = match (&self.body, &error_body) {
            (Body::Accepted(id), _) => ACCEPTED_OPEN.len() + id.len() + ACCEPTED_CLOSE.len(),
            (Body::Raw(json), _) => json.len(),
            (_, Some(e)) => e.len(),
            _ => 0,
        };
        let version = if http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        let _ = write!(out, "{version} {} {}\r\n", self.status.code(), self.status.reason());
        // 204 carries neither a body nor its headers (RFC 9110 §8.6).
        if self.status != Status::NoContent {
            let content_type = self.content_type.unwrap_or("application/json; charset=utf-8");
            let _ = write!(out, "content-type: {content_type}\r\ncontent-length: {body_len}\r\n");
        }
        out.extend_from_slice(extra.fixed);
        if let Some(secs) = self.retry_after {
            let _ = write!(out, "retry-after: {secs}\r\n");
        }
        if let Some(allow) = self.allow {
            let _ = write!(out, "allow: {allow}\r\n");
        }
        if let Some(r) = extra.rate {
            let _ = write!(
                out,
                "x-ratelimit-limit: {}\r\nx-ratelimit-remaining: {}\r\nx-ratelimit-reset: {}\r\n",
                r.limit, r.remaining, r.reset_secs
            );
        }
        if let Some(origin) = extra.cors_origin {
            let _ = write!(out, "access-control-allow-origin: {origin}\r\n");
            if self.preflight {
                let _ = write!(
                    out,
                    "access-control-allow-methods: {}\r\naccess-control-allow-headers: {}\r\naccess-control-max-age: {}\r\n",
                    super::cors::ALLOW_METHODS,
                    super::cors::ALLOW_HEADERS,
                    super::cors::MAX_AGE_SECS
                );
            }
        }
        if extra.vary_origin {
            out.extend_from_slice(b"vary: Origin\r\n");
        }
        match (keep_alive && !self.close, http10) {
            (false, _) => out.extend_from_slice(b"connection: close\r\n"),
            (true, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
            (true, false) => {}
        }
        out.extend_from_slice(b"\r\n");
        if head {
            return;
        }
        match (&self.body, error_body) {
            (Body::Accepted(id), _) => {
                out.extend_from_slice(ACCEPTED_OPEN);
                out.extend_from_slice(id.as_bytes());
                out.extend_from_slice(ACCEPTED_CLOSE);
            }
            (Body::Raw(json), _) => out.extend_from_slice(json),
            (_, Some(e)) => out.extend_from_slice(&e),
            _ => {}
        }
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_count_every_status_this_layer_answers() {
        let codes: Vec<u16> = Status::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(codes, crate::telemetry::metrics::STATUS_CODES, "one order, one list");
        assert!(Status::ALL.iter().enumerate().all(|(i, s)| s.index() == i), "index is the position");
    }

    fn text(r: &Response, http10: bool, keep_alive: bool) -> String {
        let mut out = Vec::new();
        r.encode(ReplyTo { http10, keep_alive, head: false }, &Extra::default(), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_head_answer_has_the_get_headers_and_no_body() {
        let mut out = Vec::new();
        let r = Response::json(Status::Ok, &b"{\"status\":\"ok\"}"[..]);
        r.encode(ReplyTo { http10: false, keep_alive: true, head: true }, &Extra::default(), &mut out);
        let t = String::from_utf8(out).unwrap();
        assert!(t.contains("content-length: 15\r\n"), "{t}");
        assert!(t.ends_with("\r\n\r\n"), "{t}");
    }

    #[test]
    fn every_status_indexes_its_place_in_all() {
        for (i, status) in Status::ALL.iter().enumerate() {
            assert_eq!(status.index(), i, "{status:?}");
        }
    }

    #[test]
    fn accepted_has_the_job_id() {
        let t = text(&Response::accepted("1-0".into()), false, true);
        assert!(t.starts_with("HTTP/1.1 202 Accepted\r\n"));
        assert!(t.contains("content-length: 31\r\n"));
        assert!(t.ends_with("\r\n\r\n{\"accepted\":true,\"jobId\":\"1-0\"}"));
        assert!(!t.contains("connection:"));
    }

    #[test]
    fn errors_use_the_nestjs_shape() {
        let r = Response::error(Status::BadRequest, Message::Many(vec!["a \"b\"".into()]));
        let t = text(&r, false, true);
        assert!(t.ends_with(r#"{"statusCode":400,"error":"Bad Request","message":["a \"b\""]}"#), "{t}");
        let t = text(&Response::unavailable("down", 3).closing(), true, true);
        assert!(t.starts_with("HTTP/1.0 503 Service Unavailable\r\n"));
        assert!(t.contains("retry-after: 3\r\n") && t.contains("connection: close\r\n"));
        assert!(t.ends_with(r#"{"statusCode":503,"error":"Service Unavailable","message":"down"}"#));
    }
}
