//! Every sender kind's signature check and body reading on arbitrary bytes:
//! the input's first line is the value given to every signature and
//! timestamp header of every scheme, the rest is the body. Nothing may
//! panic, and no signed kind may accept what nobody signed.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use webhook_ingestor::http::request::{HeaderSpans, Headers};
use webhook_ingestor::ingest::sources::{Request, Sources};
use webhook_ingestor::ingest::Ingestor;

const SOURCES: &str = include_str!("../../sources.example.toml");
const HEADERS: [&str; 14] = [
    "Stripe-Signature",
    "X-Hub-Signature-256",
    "X-GitHub-Event",
    "X-GitHub-Delivery",
    "X-Shopify-Hmac-Sha256",
    "X-Shopify-Event-Id",
    "X-Slack-Signature",
    "X-Slack-Request-Timestamp",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "Paddle-Signature",
    "X-Acme-Signature",
    "X-Shopify-Triggered-At",
];

fn sources() -> &'static Sources {
    static S: OnceLock<Sources> = OnceLock::new();
    S.get_or_init(|| Sources::parse(SOURCES, &|_| None).expect("the example parses"))
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (value, body) = (&data[..split], data.get(split + 1..).unwrap_or_default());
    // A header value cannot hold CR, LF or NUL; httparse would refuse it.
    let value: Vec<u8> = value.iter().copied().filter(|b| !matches!(b, b'\r' | b'\n' | 0)).collect();
    let mut block = Vec::new();
    for name in HEADERS {
        block.extend_from_slice(name.as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(&value);
        block.extend_from_slice(b"\r\n");
    }
    // Once as JSON, once as a form delivery (GitHub's other content type).
    let mut form = block.clone();
    form.extend_from_slice(b"Content-Type: application/x-www-form-urlencoded\r\n\r\n");
    block.extend_from_slice(b"\r\n");
    let mut ingestor = Ingestor::default();
    for block in [&block, &form] {
        let mut spans = HeaderSpans::default();
        let headers = Headers::parse_block(block, &mut spans);
        for source in sources().iter() {
            let req = Request { route: &source.route, headers, body, now_secs: 1_700_000_000, received_at_us: 0 };
            let verdict = source.kind.verify(&req);
            if source.kind.scheme().is_some() {
                assert!(verdict.is_err(), "{} accepted an unsigned request", source.route);
            }
            let _ = source.kind.admit(&mut ingestor, &req);
        }
    }
});
