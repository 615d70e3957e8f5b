//! Every sender kind's signature check and body reading on arbitrary bytes:
//! the input's first line is the value given to every signature and
//! timestamp header of every scheme, the rest is the body. Every kind runs,
//! from the shipped example and from one route per kind
//! (`every_kind_sample`). Nothing may panic, and no signed kind may take
//! what nobody signed: a verdict of yes is only ever a ping answered and
//! not stored (WooCommerce's unsigned `webhook_id=` form).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use webhook_ingestor::http::request::{HeaderSpans, Headers};
use webhook_ingestor::ingest::sources::{every_kind_sample, Admitted, Request, Sources};
use webhook_ingestor::ingest::Ingestor;

const SOURCES: &str = include_str!("../../sources.example.toml");
const HEADERS: [&str; 52] = [
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
    "X-Signature-Ed25519",
    "X-Signature-Timestamp",
    "X-Twilio-Email-Event-Webhook-Signature",
    "X-Twilio-Email-Event-Webhook-Timestamp",
    "X-Twilio-Signature",
    "X-Twilio-Webhooks-Signature-Settings",
    "I-Twilio-Idempotency-Token",
    "X-HubSpot-Signature-v3",
    "X-HubSpot-Request-Timestamp",
    "x-square-hmacsha256-signature",
    "x-zm-signature",
    "x-zm-request-timestamp",
    "Twitch-Eventsub-Message-Id",
    "Twitch-Eventsub-Message-Timestamp",
    "Twitch-Eventsub-Message-Signature",
    "Twitch-Eventsub-Message-Type",
    "X-Gitlab-Token",
    "X-Gitlab-Event",
    "X-Gitlab-Event-UUID",
    "Linear-Signature",
    "Linear-Delivery",
    "X-Hub-Signature",
    "X-Request-UUID",
    "X-Event-Key",
    "Typeform-Signature",
    "Calendly-Webhook-Signature",
    "X-Signature",
    "X-WC-Webhook-Signature",
    "X-WC-Webhook-Delivery-ID",
    "X-CC-Webhook-Signature",
    "Mux-Signature",
    "X-PagerDuty-Signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "X-Event-Name",
    "X-WC-Webhook-Topic",
    "Idempotency-Key",
];

fn sources() -> &'static [Sources; 2] {
    static S: OnceLock<[Sources; 2]> = OnceLock::new();
    S.get_or_init(|| {
        [
            Sources::parse(SOURCES, &|_| None).expect("the example parses"),
            Sources::parse(&every_kind_sample(), &|_| None).expect("the sample parses"),
        ]
    })
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
        for source in sources().iter().flat_map(Sources::iter) {
            let req = Request {
                route: &source.route,
                target: "/webhooks/x?a=1",
                headers,
                body,
                now_secs: 1_700_000_000,
                received_at_us: 0,
            };
            let verdict = source.kind.verify(&req);
            let admitted = source.kind.admit(&mut ingestor, &req);
            if source.kind.scheme().is_some() && verdict.is_ok() {
                assert!(
                    matches!(admitted, Ok(Admitted::Reply(_))),
                    "{} took a request nobody signed: {admitted:?}",
                    source.route
                );
            }
        }
    }
});
