//! The requests the gateway refused, kept for operators (`GET
//! /v1/rejections`): the most recent per source, bounded by count per
//! source and by bytes in all, with time, status, reason, client address,
//! the headers (any that could carry a secret or a signature redacted) and
//! the first [`BODY_KEPT`] bytes of the body.
//!
//! Each core keeps its own share in a shard behind a mutex only it takes
//! while serving (the API takes it for the time of a copy when asked), and
//! only for a refusal: a 202 never touches it. The bounds are split evenly
//! between the shards, so the whole stays within them.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;

/// Body bytes kept per rejection.
pub const BODY_KEPT: usize = 4096;
/// Header bytes kept per rejection (names and values); later headers are
/// dropped and the rejection says so.
pub const HEADERS_KEPT: usize = 8192;

/// What a kept header's value becomes when its name suggests a secret.
pub const REDACTED: &str = "[redacted]";

/// Header names (lowercase substrings) whose values are never kept: a
/// signature, a token, a cookie or a key is what an attacker who reads the
/// rejections must not get, and what a sender's retry would reuse.
const SECRET_NAMES: [&str; 9] =
    ["authorization", "cookie", "signature", "token", "secret", "key", "hmac", "password", "session"];

/// Whether a header called `name` is kept only as `[redacted]` (any
/// letter case; nothing allocated).
pub fn is_secret_header(name: &[u8]) -> bool {
    SECRET_NAMES.iter().any(|s| name.windows(s.len()).any(|w| w.eq_ignore_ascii_case(s.as_bytes())))
}

/// One refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// When, µs since the epoch.
    pub at_us: i64,
    /// Its order among all kept rejections (core in the high bits), the
    /// tie-break of a cursor.
    pub seq: u64,
    /// The source (route) it was sent to; `None` before any route was
    /// known (a malformed head, an unknown path).
    pub source: Option<usize>,
    /// The status answered.
    pub status: u16,
    /// Why ([`crate::http::response::Response::reason`]).
    pub reason: &'static str,
    /// The client (through `TRUST_PROXY`'s proxies).
    pub client: IpAddr,
    /// The method and target.
    pub request_line: String,
    /// The headers in order, one `name: value` line each (a header value
    /// holds no line break), secret ones as [`REDACTED`]: one buffer, not
    /// two strings per header ([`Rejection::headers`] reads them).
    pub header_lines: String,
    /// Headers past [`HEADERS_KEPT`] were dropped.
    pub headers_cut: bool,
    /// The first [`BODY_KEPT`] bytes of the body (empty when it was never read).
    pub body: Vec<u8>,
    /// The body's length as sent (or announced).
    pub body_bytes: usize,
}

impl Rejection {
    /// What it holds, roughly, in bytes.
    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.request_line.len() + self.header_lines.len() + self.body.len()
    }

    /// The headers kept, `(name, value)` in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.header_lines.lines().map(|l| l.split_once(": ").unwrap_or((l, "")))
    }
}

/// The bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Rejections kept per source (the unrouted count as one source).
    pub per_source: usize,
    /// Bytes kept in all.
    pub bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self { per_source: 1000, bytes: 16 << 20 }
    }
}

struct Shard {
    /// By source slot ([`Rejections::slot`]), oldest first.
    by_source: Vec<VecDeque<Rejection>>,
    bytes: usize,
    next: u64,
}

impl Shard {
    fn pop_oldest(&mut self, slot: usize) {
        if let Some(gone) = self.by_source[slot].pop_front() {
            self.bytes -= gone.size();
        }
    }
}

/// Every core's kept rejections.
pub struct Rejections {
    shards: Vec<Mutex<Shard>>,
    per_source: usize,
    bytes: usize,
    sources: usize,
}

impl Rejections {
    /// Room for `cores` shards of `sources` sources within `bounds`.
    pub fn new(cores: usize, sources: usize, bounds: Bounds) -> Self {
        let cores = cores.max(1);
        let shard = || {
            Mutex::new(Shard {
                by_source: (0..=sources).map(|_| VecDeque::new()).collect(),
                bytes: 0,
                next: 0,
            })
        };
        Self {
            shards: (0..cores).map(|_| shard()).collect(),
            per_source: bounds.per_source.div_ceil(cores),
            bytes: bounds.bytes / cores,
            sources,
        }
    }

    /// Whether any is kept (bounds of 0 turn the keeping off: a refusal
    /// then costs its counter only).
    pub fn enabled(&self) -> bool {
        self.per_source > 0 && self.bytes > 0
    }

    /// Where the rejections of `source` are kept: its index, or the slot of
    /// the unrouted (`None`, or an index past the sources).
    pub fn slot(&self, source: Option<usize>) -> usize {
        source.filter(|&i| i < self.sources).unwrap_or(self.sources)
    }

    fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
        shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `r` in core `core`'s shard, dropping the oldest past the bounds.
    pub fn keep(&self, core: usize, mut r: Rejection) {
        let Some(shard) = self.shards.get(core) else { return };
        let mut s = Self::lock(shard);
        let slot = self.slot(r.source);
        r.seq = ((core as u64) << 48) | s.next;
        s.next += 1;
        let size = r.size();
        if size > self.bytes {
            return;
        }
        s.bytes += size;
        s.by_source[slot].push_back(r);
        if s.by_source[slot].len() > self.per_source {
            s.pop_oldest(slot);
        }
        while s.bytes > self.bytes {
            // The oldest of all: the earliest front (few sources: a scan).
            let oldest = s
                .by_source
                .iter()
                .enumerate()
                .filter_map(|(i, q)| q.front().map(|r| (r.seq, i)))
                .min()
                .map(|(_, i)| i);
            let Some(i) = oldest else { break };
            s.pop_oldest(i);
        }
    }

    /// Up to `limit` kept rejections of `slot` (every slot: `None`) that
    /// `keep` accepts, newest first, older than `before` (`(at_us, seq)` of
    /// the last one seen). Each shard's lists are walked from their newest
    /// end and only as far as `limit` matches: those suffice for the newest
    /// `limit` of all, and only they are copied.
    pub fn newest(
        &self,
        slot: Option<usize>,
        keep: impl Fn(&Rejection) -> bool,
        before: Option<(i64, u64)>,
        limit: usize,
    ) -> Vec<Rejection> {
        let mut out: Vec<Rejection> = Vec::new();
        for shard in &self.shards {
            let s = Self::lock(shard);
            for (i, q) in s.by_source.iter().enumerate() {
                if slot.is_some_and(|want| want != i) {
                    continue;
                }
                out.extend(
                    q.iter()
                        .rev()
                        .filter(|r| before.is_none_or(|b| (r.at_us, r.seq) < b) && keep(r))
                        .take(limit)
                        .cloned(),
                );
            }
        }
        out.sort_unstable_by_key(|r| std::cmp::Reverse((r.at_us, r.seq)));
        out.truncate(limit);
        out
    }

    /// How many are kept and what they hold, in bytes.
    pub fn usage(&self) -> (usize, usize) {
        self.shards.iter().fold((0, 0), |(n, b), shard| {
            let s = Self::lock(shard);
            (n + s.by_source.iter().map(VecDeque::len).sum::<usize>(), b + s.bytes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejection(source: Option<usize>, at_us: i64, body: usize) -> Rejection {
        Rejection {
            at_us,
            seq: 0,
            source,
            status: 401,
            reason: "bad_signature",
            client: [127, 0, 0, 1].into(),
            request_line: "POST /webhooks/stripe".into(),
            header_lines: format!("stripe-signature: {REDACTED}\n"),
            headers_cut: false,
            body: vec![b'x'; body],
            body_bytes: body,
        }
    }

    #[test]
    fn each_source_keeps_its_most_recent_within_the_count() {
        let r = Rejections::new(2, 2, Bounds { per_source: 10, bytes: 1 << 20 });
        for i in 0..100 {
            r.keep((i % 2) as usize, rejection(Some(0), i, 10));
        }
        r.keep(0, rejection(Some(1), 1000, 10));
        let all = r.newest(None, |_| true, None, 1000);
        assert_eq!(all.iter().filter(|x| x.source == Some(0)).count(), 10, "5 a core, 2 cores");
        assert_eq!(all[0].at_us, 1000, "newest first");
        assert!(all.iter().filter(|x| x.source == Some(0)).all(|x| x.at_us >= 90), "the most recent kept");
        let page = r.newest(Some(0), |_| true, Some((95, 0)), 3);
        assert_eq!(page.iter().map(|x| x.at_us).collect::<Vec<_>>(), [94, 93, 92], "a cursor pages on");
    }

    #[test]
    fn the_bytes_in_all_drop_the_oldest_of_any_source() {
        let r = Rejections::new(1, 3, Bounds { per_source: 1000, bytes: 64 << 10 });
        for i in 0..200 {
            r.keep(0, rejection(Some((i % 3) as usize), i, 4096));
        }
        let (n, bytes) = r.usage();
        assert!(bytes <= 64 << 10, "{bytes} bytes kept");
        assert!((10..20).contains(&n), "{n} kept of 4 KiB each");
        let kept = r.newest(None, |_| true, None, 1000);
        assert!(kept.iter().all(|x| x.at_us >= 200 - n as i64), "the newest are the ones kept");
        // An unrouted one and an unknown index go to the unrouted slot.
        r.keep(0, rejection(None, 500, 1));
        r.keep(0, rejection(Some(99), 501, 1));
        assert_eq!(r.newest(None, |x| x.at_us >= 500, None, 10).len(), 2);
        assert_eq!(r.newest(Some(r.slot(None)), |_| true, None, 10).len(), 2, "both in the unrouted slot");
    }

    #[test]
    fn signature_and_token_headers_are_secret() {
        for name in [
            "Stripe-Signature",
            "X-Hub-Signature-256",
            "X-Shopify-Hmac-Sha256",
            "Authorization",
            "X-Gitlab-Token",
            "Cookie",
            "X-Api-Key",
            "webhook-signature",
        ] {
            assert!(is_secret_header(name.as_bytes()), "{name}");
        }
        for name in ["Content-Type", "User-Agent", "X-GitHub-Delivery", "webhook-id", "X-Request-Id"] {
            assert!(!is_secret_header(name.as_bytes()), "{name}");
        }
        let r = rejection(None, 1, 0);
        assert_eq!(r.headers().collect::<Vec<_>>(), [("stripe-signature", REDACTED)]);
    }
}
