//! RESP2 both ways for the enqueue: commands written straight into the
//! bytes of a batch's pipeline ([`Commands`]), so a job's body is copied
//! once, from the job to the bytes sent, with no `redis::Cmd` in between;
//! and, for the per-core enqueue ([`super::per_core`]), where the first
//! complete reply in a read buffer ends.
//!
//! Decoding a frame is redis-rs's (`redis::parse_redis_value`); only the
//! framing is here, because redis-rs's incremental `Parser` reads from a
//! blocking `Read` and keeps what it read ahead in its own buffer, so it
//! cannot be driven from the owned buffers of monoio's completion reads.

/// Longest bulk string accepted in a reply (Redis's own `proto-max-bulk-len`).
const MAX_BULK: usize = 512 * 1024 * 1024;

/// The reply is not RESP2 (or is a RESP3 type this client never asks for).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct FrameError(pub(super) &'static str);

/// The length of the complete reply at the start of `buf`, `Ok(None)` while
/// more bytes are needed.
///
/// # Errors
/// The bytes are not a RESP2 reply.
pub(super) fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    // Values still to be read: nested arrays add their elements.
    let mut need = 1usize;
    let mut at = 0usize;
    while need > 0 {
        let Some(&kind) = buf.get(at) else { return Ok(None) };
        let Some(end) = buf[at + 1..].windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let line = &buf[at + 1..at + 1 + end];
        let next = at + 1 + end + 2;
        need -= 1;
        match kind {
            b'+' | b'-' | b':' => at = next,
            b'$' => match length(line)? {
                None => at = next,
                Some(n) if n > MAX_BULK => return Err(FrameError("bulk string too long")),
                Some(n) => {
                    let stop = next + n + 2;
                    if buf.len() < stop {
                        return Ok(None);
                    }
                    if &buf[stop - 2..stop] != b"\r\n" {
                        return Err(FrameError("bulk string not ended by CRLF"));
                    }
                    at = stop;
                }
            },
            b'*' => {
                at = next;
                match length(line)? {
                    Some(n) if n > MAX_BULK => return Err(FrameError("array too long")),
                    Some(n) => need += n,
                    None => {}
                }
            }
            _ => return Err(FrameError("not a RESP2 reply")),
        }
    }
    Ok(Some(at))
}

/// A `$`/`*` length: `None` for -1 (nil).
fn length(line: &[u8]) -> Result<Option<usize>, FrameError> {
    if line == b"-1" {
        return Ok(None);
    }
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .map(Some)
        .ok_or(FrameError("bad length"))
}

/// What a pipeline's buffer keeps between batches. A batch of large bodies
/// (`BATCH_MAX` × `MAX_BODY_BYTES` at most) would otherwise pin its size
/// for as long as the process runs.
const KEEP: usize = 1024 * 1024;

/// The bytes of one pipeline, one command after another. Kept from batch
/// to batch (up to [`KEEP`]), so a batch allocates nothing once the buffer
/// has grown.
#[derive(Default)]
pub struct Commands {
    bytes: Vec<u8>,
}

impl Commands {
    /// Empties it, keeping the allocation unless it outgrew [`KEEP`].
    pub fn clear(&mut self) {
        if self.bytes.capacity() > KEEP {
            self.bytes = Vec::new();
        }
        self.bytes.clear();
    }

    /// The commands written, as sent.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, for a write that takes its buffer (monoio's), which puts
    /// them back after it to keep the allocation.
    pub(super) fn bytes_mut(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    /// A command of `args`.
    pub(super) fn command(&mut self, args: &[&[u8]]) {
        self.array(args.len());
        for a in args {
            self.bulk(a);
        }
    }

    /// `XADD <stream> * <the job's fields>`.
    pub fn xadd(&mut self, stream: &str, job: &crate::job::WebhookJob) {
        let mut count = Count(0);
        job.stream_fields(&mut count);
        self.array(3 + 2 * count.0);
        self.bulk(b"XADD");
        self.bulk(stream.as_bytes());
        self.bulk(b"*");
        job.stream_fields(self);
    }

    fn array(&mut self, n: usize) {
        self.bytes.push(b'*');
        self.bytes.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
    }

    fn bulk(&mut self, b: &[u8]) {
        self.bytes.push(b'$');
        self.bytes.extend_from_slice(itoa::Buffer::new().format(b.len()).as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
        self.bytes.extend_from_slice(b);
        self.bytes.extend_from_slice(b"\r\n");
    }
}

impl crate::job::FieldSink for Commands {
    fn field(&mut self, name: &str, value: &[u8]) {
        self.bulk(name.as_bytes());
        self.bulk(value);
    }
}

/// Counts a job's fields (an array's length comes first).
struct Count(usize);

impl crate::job::FieldSink for Count {
    fn field(&mut self, _: &str, _: &[u8]) {
        self.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_bytes_redis_rs_would_send() {
        let job = crate::job::WebhookJob {
            provider: "stripe".into(),
            event_id: "evt_1".into(),
            event_type: "charge.succeeded".into(),
            event_timestamp_us: 1_700_000_000_000_000,
            received_at_us: -5,
            payload: b"{\"a\":1}".to_vec(),
            raw_body: Some(b"raw \r\n bytes".to_vec()),
            verified_by: Some("stripe".into()),
            unsigned_fields: "x".into(),
            replay_of: Some(42),
        };
        let mut ours = Commands::default();
        ours.xadd("webhooks:{0}", &job);
        ours.command(&[b"WAIT", b"1", b"100"]);
        let mut pipe = redis::pipe();
        pipe.add_command(super::super::batch::xadd("webhooks:{0}", &job));
        pipe.cmd("WAIT").arg(1).arg(100);
        assert_eq!(ours.bytes(), &pipe.get_packed_pipeline()[..]);
        ours.clear();
        assert!(ours.bytes().is_empty());
        // A batch of large bodies does not pin its buffer's size.
        let big = crate::job::WebhookJob { payload: vec![b'x'; 2 * KEEP], ..job };
        ours.xadd("webhooks:{0}", &big);
        assert!(ours.bytes.capacity() > KEEP);
        ours.clear();
        assert!(ours.bytes.capacity() <= KEEP);
    }

    #[test]
    fn complete_replies_are_framed_and_incomplete_ones_wait() {
        let replies: [&[u8]; 7] = [
            b"+OK\r\n",
            b"-ERR wrong\r\n",
            b":42\r\n",
            b"$15\r\n1733000000000-0\r\n",
            b"$-1\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"*-1\r\n",
        ];
        for r in replies {
            let mut buf = r.to_vec();
            buf.extend_from_slice(b":7\r\n");
            assert_eq!(frame_len(&buf), Ok(Some(r.len())), "{:?}", String::from_utf8_lossy(r));
            for cut in 0..r.len() {
                assert_eq!(frame_len(&r[..cut]), Ok(None), "cut {cut} of {:?}", String::from_utf8_lossy(r));
            }
            // What redis-rs decodes from the frame is the whole reply.
            assert!(redis::parse_redis_value(r).is_ok());
        }
    }

    #[test]
    fn what_is_not_resp2_is_an_error_not_a_wait() {
        assert!(frame_len(b"?x\r\n").is_err());
        assert!(frame_len(b"$abc\r\n").is_err());
        assert!(frame_len(b"$3\r\nabcXY").is_err());
        assert!(frame_len(b"$99999999999\r\n").is_err());
        assert!(frame_len(format!("*{}\r\n", usize::MAX).as_bytes()).is_err());
    }
}
