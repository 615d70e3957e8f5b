//! Any bytes as a webhook body, through both JSON parsers: never a panic,
//! the same verdict and fields from serde_json and simd-json (but for one
//! known difference, below), and an accepted
//! body is well-formed UTF-8 JSON carried byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use webhook_ingestor::ingest::{IngestError, Ingestor, JsonParser};

fuzz_target!(|body: &[u8]| {
    let serde = Ingestor::new(JsonParser::Serde).ingest("stripe", body, 0);
    let simd = Ingestor::new(JsonParser::Simd).ingest("stripe", body, 0);
    match (&serde, &simd) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            assert_eq!(a.payload, body);
            let value: serde_json::Value = serde_json::from_slice(body).expect("accepted means JSON");
            assert!(value.is_object());
        }
        (Err(_), Err(_)) => {}
        // Known and documented: simd-json refuses numbers beyond a double's
        // range (1e400), which serde_json skips and jsonb stores.
        (Ok(_), Err(IngestError::Json(m))) if m.contains("InvalidNumber") => {}
        _ => panic!("the parsers disagree on {:?}: {serde:?} vs {simd:?}", String::from_utf8_lossy(body)),
    }
});
