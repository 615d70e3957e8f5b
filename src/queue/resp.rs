//! RESP2 framing for the per-core enqueue ([`super::per_core`]): where the
//! first complete reply in a read buffer ends.
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

#[cfg(test)]
mod tests {
    use super::*;

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
