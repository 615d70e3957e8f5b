//! Request-head parsing: bytes → [`RequestHead`], pure and allocation-light,
//! so it can be unit-tested and fuzzed without a socket.
//!
//! Only what the gateway acts on is kept (method, target, framing, content
//! type, connection handling). Framing is strict, because a lenient server
//! behind a proxy is how request smuggling happens: `Content-Length` together
//! with `Transfer-Encoding`, two `Content-Length`s, a non-decimal length, or
//! any transfer coding but a lone `chunked` are refused and the connection
//! is closed.

use thiserror::Error;

pub use crate::ingest::sources::headers::{HeaderSpans, Headers, MAX_HEADERS};

/// The request methods the gateway tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `POST`
    Post,
    /// `GET`
    Get,
    /// `HEAD`
    Head,
    /// `OPTIONS`
    Options,
    /// `DELETE` (the API's; the webhook routes answer it 405)
    Delete,
    /// Anything else (`PUT`, `PATCH`, extension methods).
    Other,
}

impl Method {
    /// Its name (`OTHER` for the rest).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Post => "POST",
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Options => "OPTIONS",
            Self::Delete => "DELETE",
            Self::Other => "OTHER",
        }
    }
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body (no `Content-Length`, or 0).
    Empty,
    /// Exactly this many bytes follow the head.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The `Content-Type`, as far as routing cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// No header.
    Missing,
    /// `application/json` or `application/*+json`, any parameters.
    Json,
    /// `application/x-www-form-urlencoded`, which only sources that say so
    /// take (GitHub's default for a new hook).
    Form,
    /// Anything else.
    Other,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method.
    pub method: Method,
    /// Where the request target lies in the head's bytes (routing needs the
    /// sources, so it happens after parsing: [`RequestHead::target`]).
    pub target: (u32, u32),
    /// Body framing, already checked against the body limit.
    pub body: BodyFraming,
    /// `Expect: 100-continue` was sent.
    pub expect_continue: bool,
    /// Whether the connection may be reused after this request.
    pub keep_alive: bool,
    /// True for HTTP/1.0 (changes the keep-alive default and the reply line).
    pub http10: bool,
    /// The content type.
    pub content_type: ContentType,
    /// Length of the head in bytes, including the final CRLF CRLF.
    pub head_len: usize,
    /// The `Origin` header (browsers only; allocated only when present).
    pub origin: Option<String>,
    /// Every `X-Forwarded-For` value, comma-joined in order (allocated only
    /// when present; read only when the peer is a trusted proxy).
    pub forwarded_for: Option<String>,
    /// Every header, by position in the head's bytes.
    pub headers: HeaderSpans,
}

impl RequestHead {
    /// The request target (path and query) in `head`, the bytes it was parsed from.
    pub fn target_in<'a>(&self, head: &'a [u8]) -> &'a str {
        let (at, len) = (self.target.0 as usize, self.target.1 as usize);
        // httparse only accepts visible ASCII in a target.
        std::str::from_utf8(&head[at..at + len]).unwrap_or_default()
    }
}

/// Why a head is refused. Every variant closes the connection after its answer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x, or broken syntax.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// Framing headers that conflict or cannot be trusted.
    #[error("ambiguous request framing: {0}")]
    Framing(&'static str),
    /// A transfer coding other than a lone `chunked`.
    #[error("unsupported transfer-encoding")]
    UnsupportedEncoding,
    /// An `Expect` other than `100-continue` on HTTP/1.1 (417).
    #[error("unsupported expectation; only 100-continue is understood")]
    ExpectationFailed,
    /// The head is larger than `MAX_HEADER_BYTES` or has too many headers.
    #[error("request header fields too large")]
    HeadTooLarge,
    /// `Content-Length` above `MAX_BODY_BYTES`.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted head.
    pub max_head: usize,
    /// Largest accepted body.
    pub max_body: usize,
}

/// Parses a request head from the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed (and the head so far is
/// within `limits.max_head`).
///
/// # Errors
/// A [`HeadError`]; the caller answers it and closes the connection.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<RequestHead>, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head => return Err(HeadError::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(HeadError::Malformed("unsupported HTTP version")),
        Err(_) => return Err(HeadError::Malformed("invalid request line or header")),
    };
    if head_len > limits.max_head {
        return Err(HeadError::HeadTooLarge);
    }
    // httparse takes a bare LF as a line end. A proxy in front that does not
    // would forward such a "line" inside a header value: one request, two
    // readings of its headers (a smuggled header). Only CRLF ends a line here.
    if memchr::memchr_iter(b'\n', &buf[..head_len]).any(|i| i == 0 || buf[i - 1] != b'\r') {
        return Err(HeadError::Malformed("a line of the request head ends in a bare LF"));
    }
    let http10 = req.version == Some(0);
    let method = match req.method.unwrap_or_default() {
        "POST" => Method::Post,
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        "DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let path = req.path.unwrap_or_default();
    let target = ((path.as_ptr() as usize - buf.as_ptr() as usize) as u32, path.len() as u32);

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    let mut content_type = ContentType::Missing;
    let mut origin = None;
    let mut forwarded_for = None;
    let mut headers = HeaderSpans::default();
    for h in req.headers.iter() {
        headers.push(buf, h.name.as_bytes(), h.value);
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(HeadError::Framing("more than one Content-Length"));
            }
            content_length = Some(parse_content_length(h.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::UnsupportedEncoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(trim) {
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") && !http10 {
            // An HTTP/1.0 client cannot wait for a 100: RFC 9110 §10.1.1
            // says to ignore the expectation there.
            if !trim(h.value).eq_ignore_ascii_case(b"100-continue") {
                return Err(HeadError::ExpectationFailed);
            }
            expect_continue = true;
        } else if name.eq_ignore_ascii_case("content-type") {
            // Routing would read the last and a sender the first: refuse
            // the ambiguity (a singleton field, RFC 9110 §8.3).
            if content_type != ContentType::Missing {
                return Err(HeadError::Malformed("more than one Content-Type"));
            }
            content_type = classify_content_type(h.value);
        } else if name.eq_ignore_ascii_case("origin") {
            origin = std::str::from_utf8(trim(h.value)).ok().map(str::to_owned);
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            // Several headers are one list (RFC 9110 §5.3); order is what counts.
            let value = String::from_utf8_lossy(trim(h.value));
            match &mut forwarded_for {
                None => forwarded_for = Some(value.into_owned()),
                Some(list) => {
                    list.push_str(", ");
                    list.push_str(&value);
                }
            }
        }
    }

    let body = match (content_length, chunked) {
        (Some(_), true) => return Err(HeadError::Framing("both Content-Length and Transfer-Encoding")),
        (None, true) if http10 => return Err(HeadError::Framing("Transfer-Encoding in HTTP/1.0")),
        (None, true) => BodyFraming::Chunked,
        (Some(n), false) if n > limits.max_body => {
            return Err(HeadError::BodyTooLarge { limit: limits.max_body });
        }
        (Some(0), false) | (None, false) => BodyFraming::Empty,
        (Some(n), false) => BodyFraming::Length(n),
    };
    let keep_alive = if http10 { conn_keep_alive && !conn_close } else { !conn_close };
    Ok(Some(RequestHead {
        method,
        target,
        body,
        expect_continue,
        keep_alive,
        http10,
        content_type,
        head_len,
        origin,
        forwarded_for,
        headers,
    }))
}

fn parse_content_length(v: &[u8]) -> Result<usize, HeadError> {
    let v = trim(v);
    if v.is_empty() || v.len() > 15 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Framing("Content-Length is not a decimal number"));
    }
    Ok(v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')))
}

fn classify_content_type(v: &[u8]) -> ContentType {
    let media = trim(v.split(|&b| b == b';').next().unwrap_or_default());
    let Some(subtype) = media.strip_prefix(b"application/").or_else(|| {
        (media.len() > 12 && media[..12].eq_ignore_ascii_case(b"application/")).then(|| &media[12..])
    }) else {
        return ContentType::Other;
    };
    let json = subtype.eq_ignore_ascii_case(b"json")
        || (subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case(b"+json"));
    if json {
        ContentType::Json
    } else if subtype.eq_ignore_ascii_case(b"x-www-form-urlencoded") {
        ContentType::Form
    } else {
        ContentType::Other
    }
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_head: 1024, max_body: 100 };

    fn parse(s: &str) -> Result<Option<RequestHead>, HeadError> {
        parse_head(s.as_bytes(), &LIMITS)
    }

    #[test]
    fn a_webhook_post_is_understood() {
        let raw = "POST /webhooks/stripe?x=1 HTTP/1.1\r\nHost: a\r\ncontent-type: Application/JSON; charset=utf-8\r\nContent-Length: 12\r\n\r\n{...";
        let h = parse(raw).unwrap().unwrap();
        assert_eq!(h.method, Method::Post);
        assert_eq!(h.target_in(raw.as_bytes()), "/webhooks/stripe?x=1");
        assert_eq!(h.body, BodyFraming::Length(12));
        assert_eq!(h.content_type, ContentType::Json);
        assert!(h.keep_alive && !h.http10 && !h.expect_continue);
        assert_eq!(h.head_len, 114);
        assert_eq!((h.origin, h.forwarded_for), (None, None));
        let h = parse("POST /webhooks/s HTTP/1.1\r\nOrigin: https://a.test\r\nX-Forwarded-For: 203.0.113.7, 10.0.0.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.origin.as_deref(), Some("https://a.test"));
        assert_eq!(h.forwarded_for.as_deref(), Some("203.0.113.7, 10.0.0.1"));
        let h = parse("POST /webhooks/s HTTP/1.1\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-for: 2.2.2.2, 3.3.3.3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.forwarded_for.as_deref(), Some("1.1.1.1, 2.2.2.2, 3.3.3.3"));
    }

    #[test]
    fn every_header_can_be_read_back_from_the_head_bytes() {
        let raw = "POST /webhooks/s HTTP/1.1\r\nStripe-Signature:  t=1,v1=ab \r\nX-A: 1\r\nx-a: 2\r\n\r\n";
        let h = parse(raw).unwrap().unwrap();
        let headers = h.headers.of(raw.as_bytes());
        assert_eq!(headers.text("stripe-signature"), Some("t=1,v1=ab"));
        assert_eq!(headers.get("X-A"), Some(&b"1"[..]), "the first of two");
        assert_eq!(headers.iter().count(), 3);
        assert_eq!(headers.get("missing"), None);
    }

    #[test]
    fn incomplete_heads_ask_for_more_until_the_limit() {
        assert_eq!(parse("POST /webhooks/s HTTP/1.1\r\nHost:"), Ok(None));
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000));
        assert_eq!(parse(&big), Err(HeadError::HeadTooLarge));
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let both = "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(both), Err(HeadError::Framing(_))));
        assert_eq!(
            parse("POST / HTTP/1.1\r\nContent-Type: text/plain\r\ncontent-type: application/json\r\n\r\n"),
            Err(HeadError::Malformed("more than one Content-Type"))
        );
        for bare in [
            "POST / HTTP/1.1\nHost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\nX-Smuggled: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\n\n",
            "POST / HTTP/1.1\n\n",
        ] {
            assert_eq!(
                parse(bare),
                Err(HeadError::Malformed("a line of the request head ends in a bare LF")),
                "{bare:?}"
            );
        }
        let two = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert!(matches!(parse(two), Err(HeadError::Framing(_))));
        for cl in ["+5", "-1", "0x10", "5 5", "", "9999999999999999999"] {
            let r = parse(&format!("POST / HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n"));
            assert!(matches!(r, Err(HeadError::Framing(_)) | Err(HeadError::Malformed(_))), "{cl}: {r:?}");
        }
        let gz = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(parse(gz), Err(HeadError::UnsupportedEncoding));
        let te10 = "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(te10), Err(HeadError::Framing(_))));
    }

    #[test]
    fn body_limit_is_checked_from_the_header() {
        let r = parse("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n");
        assert_eq!(r, Err(HeadError::BodyTooLarge { limit: 100 }));
    }

    #[test]
    fn expect_is_ignored_on_http10_and_unknown_expectations_fail() {
        let h =
            parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n").unwrap().unwrap();
        assert!(!h.expect_continue);
        assert!(parse("POST / HTTP/1.0\r\nExpect: something\r\n\r\n").unwrap().is_some());
        assert_eq!(parse("POST / HTTP/1.1\r\nExpect: something\r\n\r\n"), Err(HeadError::ExpectationFailed));
        assert!(parse("POST / HTTP/1.1\r\nExpect: 100-Continue\r\n\r\n").unwrap().unwrap().expect_continue);
    }

    #[test]
    fn connection_handling_follows_the_version() {
        let h = parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive && h.http10);
        let h = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap();
        assert!(h.keep_alive);
        let h = parse("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn content_types_are_classified() {
        for (v, want) in [
            ("application/json", ContentType::Json),
            ("application/vnd.api+json", ContentType::Json),
            ("APPLICATION/JSON ; charset=utf-8", ContentType::Json),
            ("text/plain", ContentType::Other),
            ("application/jsonx", ContentType::Other),
            ("application/x-www-form-urlencoded", ContentType::Form),
            ("Application/X-WWW-Form-Urlencoded; charset=utf-8", ContentType::Form),
        ] {
            assert_eq!(classify_content_type(v.as_bytes()), want, "{v}");
        }
    }
}
