//! Any bytes as a chunked body, fed whole and in two pieces split where the
//! fuzzer says: the same verdict, the same decoded bytes, never more than
//! the limit, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webhook_ingestor::http::chunked::ChunkedDecoder;

const MAX: usize = 4096;

fuzz_target!(|input: (u16, &[u8])| {
    let (split, data) = input;
    let whole = {
        let mut d = ChunkedDecoder::new(MAX);
        let mut out = Vec::new();
        d.decode(data, &mut out).map(|(used, done)| (used, done, out))
    };
    let split = usize::from(split) % (data.len() + 1);
    let pieces = {
        let mut d = ChunkedDecoder::new(MAX);
        let mut out = Vec::new();
        d.decode(&data[..split], &mut out).and_then(|(used, done)| {
            if done {
                return Ok((used, done, out));
            }
            assert_eq!(used, split, "an unfinished body consumes everything it is given");
            d.decode(&data[split..], &mut out).map(|(more, done)| (used + more, done, out))
        })
    };
    match (&whole, &pieces) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert!(a.2.len() <= MAX);
            assert!(a.0 <= data.len());
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        _ => panic!("split at {split} changed the verdict: {whole:?} vs {pieces:?}"),
    }
});
