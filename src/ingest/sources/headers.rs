//! A request's headers as the senders' checks read them: spans into the
//! head's bytes that the HTTP parser records (no copies), read by name in
//! any letter case. Here, beside the senders, so that a source depends on
//! nothing of the HTTP layer; the parser fills [`HeaderSpans`].

/// Most headers one request may carry; more is answered 431.
pub const MAX_HEADERS: usize = 64;

/// Where each header's name and value lie in the head's bytes, so the
/// handler (a sender's signature check) can read any header later without
/// the parser keeping copies. Offsets are from the start of the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSpans {
    spans: [(u32, u32, u32, u32); MAX_HEADERS],
    len: usize,
}

impl Default for HeaderSpans {
    fn default() -> Self {
        Self { spans: [(0, 0, 0, 0); MAX_HEADERS], len: 0 }
    }
}

impl HeaderSpans {
    /// Records a header whose name and value are slices of `head`.
    pub fn push(&mut self, head: &[u8], name: &[u8], value: &[u8]) {
        let at = |part: &[u8]| (part.as_ptr() as usize - head.as_ptr() as usize) as u32;
        self.spans[self.len] = (at(name), name.len() as u32, at(value), value.len() as u32);
        self.len += 1;
    }

    /// The headers of the head `bytes` these spans were made from.
    pub fn of<'a>(&'a self, bytes: &'a [u8]) -> Headers<'a> {
        Headers { spans: &self.spans[..self.len], bytes }
    }
}

/// A request's headers, read from its head bytes.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a> {
    spans: &'a [(u32, u32, u32, u32)],
    bytes: &'a [u8],
}

impl<'a> Headers<'a> {
    /// `(name, value)` of every header, in order (values trimmed).
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        let b = self.bytes;
        self.spans.iter().map(move |&(n, nl, v, vl)| {
            (&b[n as usize..(n + nl) as usize], trim(&b[v as usize..(v + vl) as usize]))
        })
    }

    /// The first header called `name` (any letter case), trimmed.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        let (b, want) = (self.bytes, name.as_bytes());
        // Names are compared where they lie; only the match's value is sliced and trimmed.
        self.spans.iter().find_map(|&(n, nl, v, vl)| {
            (nl as usize == want.len() && b[n as usize..(n + nl) as usize].eq_ignore_ascii_case(want))
                .then(|| trim(&b[v as usize..(v + vl) as usize]))
        })
    }

    /// The same, as text (`None` if absent or not UTF-8).
    pub fn text(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Headers built from raw text, for tests and benches: `"Name: value\r\n…"`.
    pub fn parse_block(block: &'a [u8], spans: &'a mut HeaderSpans) -> Self {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        if let Ok(httparse::Status::Complete((_, parsed))) = httparse::parse_headers(block, &mut slots) {
            for h in parsed {
                spans.push(block, h.name.as_bytes(), h.value);
            }
        }
        spans.of(block)
    }
}

fn trim(v: &[u8]) -> &[u8] {
    v.trim_ascii()
}
