//! Any bytes as the start of a request: `parse_head` answers need-more,
//! a head, or an error; never a panic. A parsed head lies inside the input,
//! and a prefix of an input that parsed never parses to something else.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webhook_ingestor::http::request::{parse_head, Limits};

const LIMITS: Limits = Limits { max_head: 8192, max_body: 1 << 20 };

fuzz_target!(|data: &[u8]| {
    match parse_head(data, &LIMITS) {
        Ok(Some(head)) => {
            assert!(head.head_len <= data.len() && head.head_len <= LIMITS.max_head);
            assert!(data[..head.head_len].ends_with(b"\n"), "a head ends at its blank line");
            // The bytes before the end of the head are not yet a request.
            assert!(matches!(parse_head(&data[..head.head_len - 1], &LIMITS), Ok(None) | Err(_)));
            // The head alone parses to the same framing.
            let again = parse_head(&data[..head.head_len], &LIMITS).expect("same bytes").expect("complete");
            assert_eq!(again.head_len, head.head_len);
            assert_eq!(again.body, head.body);
        }
        Ok(None) => assert!(data.len() <= LIMITS.max_head, "need-more past the head limit"),
        Err(_) => {}
    }
});
