//! Per-request CPU costs of the ingest path, without I/O:
//!
//! * `parse_validate/*`: body → `WebhookJob` with each JSON parser, on the
//!   seed's k6 payload (~230 B) and a real-world Stripe
//!   `payment_intent.succeeded` event (~3.9 KiB). Decides `Ingestor::DEFAULT_PARSER`.
//!   `Serde-depth-unchecked` is the default parser with `MAX_JSON_DEPTH` off: the
//!   difference is what the depth check costs.
//! * `verify/*`: what checking a sender's signature (and reading its body)
//!   costs on a 3.9 KiB Stripe event, one secret or a rotation's two.
//! * `verify_kind/*`: the signature check of each mechanism of the catalog
//!   on a ~300-byte body: HMAC kinds, a signed URL and form (Twilio), the
//!   body-signed token (Mailgun), and the public-key ones (Ed25519 for
//!   Discord, ECDSA P-256 for SendGrid).
//! * `public_key_verifier/*`: the verifiers those two could use (RustCrypto's
//!   `p256` or `ring` for ECDSA; dalek's `verify`, `verify_strict` or `ring`
//!   for Ed25519).
//! * `handoff/*`: the cross-thread hop a request makes to the Redis pipeline
//!   thread and back (crossbeam channel → std thread → oneshot → waker), with
//!   64 requests in flight on one monoio runtime, against the same work done
//!   without leaving the core.
//!
//! Run: `cargo bench --bench ingest` (figures in `tuning.md`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use monoio::{FusionDriver, RuntimeBuilder};
use webhook_ingestor::ingest::{Ingestor, JsonParser};
use webhook_ingestor::job::WebhookJob;
use webhook_ingestor::queue::Enqueuer;

const SEED: &str = r#"{"provider":"stripe","eventId":"evt_a1B2c3D4e5F6","timestamp":"2026-11-22T21:35:25.123Z","data":{"amount":4200,"currency":"brl","customer_id":"cus_x1Y2z3W4","status":"succeeded"}}"#;
const STRIPE: &str = include_str!("fixtures/stripe_payment_intent_succeeded.json");

fn parse_validate(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_validate");
    for (name, body) in [("seed_230B", SEED.trim()), ("stripe_3.9KiB", STRIPE.trim())] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        for parser in [JsonParser::Serde, JsonParser::Simd] {
            let mut ingestor = Ingestor::new(parser);
            assert!(ingestor.ingest("stripe", body.as_bytes(), 0).is_ok(), "{name} must be valid");
            group.bench_with_input(BenchmarkId::new(format!("{parser:?}"), name), body, |b, body| {
                b.iter(|| ingestor.ingest(black_box("stripe"), black_box(body.as_bytes()), 0).unwrap())
            });
        }
        // What MAX_JSON_DEPTH costs: the default parser with the check off.
        let mut unchecked = Ingestor::new(JsonParser::Serde).with_max_depth(0);
        group.bench_with_input(BenchmarkId::new("Serde-depth-unchecked", name), body, |b, body| {
            b.iter(|| unchecked.ingest(black_box("stripe"), black_box(body.as_bytes()), 0).unwrap())
        });
    }
    group.finish();
}

/// Concurrent requests per runtime in the hand-off bench.
const IN_FLIGHT: u64 = 64;

fn job() -> WebhookJob {
    WebhookJob {
        provider: "stripe".into(),
        event_id: "evt_1".into(),
        event_type: String::new(),
        verified_by: None,
        event_timestamp_us: 0,
        received_at_us: 0,
        payload: SEED.as_bytes().to_vec(),
        raw_body: None,
        unsigned_fields: String::new(),
        replay_of: None,
    }
}

fn handoff(c: &mut Criterion) {
    let mut group = c.benchmark_group("handoff");
    group.throughput(Throughput::Elements(1));
    group.bench_function("cross_thread_round_trip", |b| {
        b.iter_custom(|iters| {
            let (enqueuer, rx) = Enqueuer::bounded(65_536, Duration::from_secs(10));
            // Stands in for the Redis thread: answers in batches, like the pipeline does.
            let answerer = std::thread::spawn(move || {
                let mut batch = Vec::with_capacity(256);
                while let Ok(first) = rx.recv() {
                    batch.push(first);
                    batch.extend(rx.try_iter().take(255));
                    for p in batch.drain(..) {
                        p.reply.send(Ok("1-0".to_string()));
                    }
                }
            });
            let elapsed = run_tasks(iters, move |_| {
                let enqueuer = enqueuer.clone();
                async move { enqueuer.enqueue(job()).await.unwrap() }
            });
            answerer.join().unwrap();
            elapsed
        })
    });
    group.bench_function("same_core_baseline", |b| {
        b.iter_custom(|iters| {
            run_tasks(iters, |_| async move {
                // The same allocations and oneshot, answered on the core.
                let (tx, rx) = futures_channel::oneshot::channel::<Result<String, ()>>();
                let j = black_box(job());
                let _ = tx.send(Ok("1-0".to_string()));
                drop(j);
                rx.await.unwrap().unwrap()
            })
        })
    });
    group.finish();
}

/// Runs `iters` requests as `IN_FLIGHT` concurrent tasks on one runtime and
/// returns the wall time.
fn run_tasks<F, Fut>(iters: u64, make: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = String> + 'static,
{
    let mut rt = RuntimeBuilder::<FusionDriver>::new().enable_timer().build().unwrap();
    rt.block_on(async move {
        let start = Instant::now();
        let per_task = iters.div_ceil(IN_FLIGHT);
        let tasks: Vec<_> = (0..IN_FLIGHT)
            .map(|t| {
                let make = make.clone();
                monoio::spawn(async move {
                    for i in 0..per_task {
                        black_box(make(t * per_task + i).await);
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        start.elapsed()
    })
}

fn response_extras(c: &mut Criterion) {
    use webhook_ingestor::http::ratelimit::RateLimiter;
    use webhook_ingestor::http::response::{Extra, RateHeaders, ReplyTo, Response};
    const KEEP_ALIVE: ReplyTo = ReplyTo { http10: false, keep_alive: true, head: false };
    use webhook_ingestor::http::security::HELMET_HEADERS;

    let mut group = c.benchmark_group("response");
    let resp = Response::accepted("1795383325123-0".to_string());
    let mut out = Vec::with_capacity(2048);
    group.bench_function("encode_202_bare", |b| {
        b.iter(|| {
            out.clear();
            resp.encode(KEEP_ALIVE, black_box(&Extra::default()), &mut out);
        })
    });
    let full = Extra {
        fixed: HELMET_HEADERS,
        cors_origin: None,
        vary_origin: false,
        rate: Some(RateHeaders { limit: 20_000, remaining: 19_999, reset_secs: 1 }),
    };
    group.bench_function("encode_202_helmet_and_ratelimit_headers", |b| {
        b.iter(|| {
            out.clear();
            resp.encode(KEEP_ALIVE, black_box(&full), &mut out);
        })
    });
    let mut limiter = RateLimiter::new(100_000, 20_000, 2);
    let ips: Vec<std::net::IpAddr> = (0..1000u32).map(|i| std::net::IpAddr::from(i.to_be_bytes())).collect();
    let mut i = 0;
    group.bench_function("ratelimit_check_global_and_per_ip", |b| {
        b.iter(|| {
            i = (i + 1) % ips.len();
            black_box(limiter.check(ips[i], Instant::now()))
        })
    });
    let metrics = webhook_ingestor::telemetry::metrics::Metrics::new(1);
    let core = metrics.core(0);
    group.bench_function("metrics_record_per_request", |b| {
        b.iter(|| {
            core.record(
                black_box(webhook_ingestor::telemetry::metrics::RouteLabel::Webhook),
                black_box(webhook_ingestor::http::response::Status::Accepted.index()),
                black_box(Duration::from_micros(800)),
            )
        })
    });
    group.finish();
}

fn request_and_job_encoding(c: &mut Criterion) {
    use webhook_ingestor::http::request::{parse_head, Limits};
    let mut group = c.benchmark_group("encode");
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: gateway.example.com\r\nUser-Agent: Stripe/1.0 (+https://stripe.com/docs/webhooks)\r\nAccept: */*; q=0.5, application/xml\r\nContent-Type: application/json; charset=utf-8\r\nStripe-Signature: t=1795383325,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd\r\nContent-Length: {}\r\n\r\n",
        SEED.len()
    );
    let limits = Limits { max_head: 16 * 1024, max_body: 1 << 20 };
    group.bench_function("request_head_parse_stripe_like", |b| {
        b.iter(|| parse_head(black_box(head.as_bytes()), &limits).unwrap().unwrap())
    });
    let j = job();
    group.bench_function("job_to_xadd_command", |b| {
        let mut commands = webhook_ingestor::queue::Commands::default();
        b.iter(|| {
            commands.clear();
            commands.xadd("webhooks", black_box(&j));
            black_box(commands.bytes().len())
        })
    });
    group.bench_function("job_to_copy_row_binary", |b| {
        use webhook_ingestor::store::{CopyRow, STAGING_TYPES};
        let mut buf = postgres::types::private::BytesMut::with_capacity(1024);
        b.iter(|| {
            buf.clear();
            let digest = black_box(&j).body_sha256();
            let row = CopyRow::new(black_box(&j), &digest);
            for (value, ty) in row.params().iter().zip(STAGING_TYPES.iter()) {
                let _ = value.to_sql_checked(ty, &mut buf).unwrap();
            }
            black_box(buf.len())
        })
    });
    group.finish();
}

/// What verifying a sender costs per request, on a 3.9 KiB Stripe event:
/// the signature alone (one secret; two secrets × two signatures, as
/// during a rotation), and the whole source (signature, then the body held
/// to what jsonb stores and read for id, type, time), against the seed's
/// unsigned envelope on the same bytes (`parse_validate/Serde/stripe_3.9KiB`).
fn verify(c: &mut Criterion) {
    // The fixture's inner Stripe event, as Stripe posts it, and one of the
    // size bench-http posts.
    let fixture: serde_json::Value = serde_json::from_str(STRIPE).unwrap();
    let large = serde_json::to_vec(&fixture["data"]).unwrap();
    let small = br#"{"id":"evt_bench_1","object":"event","type":"payment_intent.succeeded","created":1795383325,"data":{"object":{"amount":4200,"currency":"brl","customer":"cus_x1Y2z3W4","status":"succeeded","description":"Order 100234, three items"}}}"#.to_vec();
    let mut group = c.benchmark_group("verify");
    for (size, body) in [("3.9KiB", large), ("300B", small)] {
        verify_one(&mut group, size, &body);
    }
    group.finish();
}

fn verify_one(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    size: &str,
    body: &[u8],
) {
    use webhook_ingestor::http::request::{HeaderSpans, Headers};
    use webhook_ingestor::ingest::sources::mac::{Algorithm, Encoding, Keys};
    use webhook_ingestor::ingest::sources::{Request, Sources};
    let t = "1795383325";
    let sign = |secret: &str| {
        Keys::new(Algorithm::Sha256, &[secret.as_bytes().to_vec()])
            .sign(&[t.as_bytes(), b".", body], Encoding::Hex)
    };
    let one =
        "[[source]]\nroute = \"stripe\"\nkind = \"stripe\"\nsecrets = [\"whsec_a\"]\ntolerance_secs = 0";
    let two = "[[source]]\nroute = \"stripe\"\nkind = \"stripe\"\nsecrets = [\"whsec_b\", \"whsec_a\"]\ntolerance_secs = 0";
    group.throughput(Throughput::Bytes(body.len() as u64));
    for (name, file, header) in [
        ("stripe_1_secret", one, format!("t={t},v1={}", sign("whsec_a"))),
        (
            "stripe_2_secrets_2_signatures",
            two,
            format!("t={t},v1={},v1={}", sign("whsec_c"), sign("whsec_a")),
        ),
    ] {
        let sources = Sources::parse(file, &|_| None).unwrap();
        let source = sources.get(0).unwrap();
        let block = format!("Stripe-Signature: {header}\r\n\r\n");
        let mut spans = HeaderSpans::default();
        let headers = Headers::parse_block(block.as_bytes(), &mut spans);
        let req = Request {
            route: "stripe",
            target: "/webhooks/stripe",
            headers,
            body,
            now_secs: 1_795_383_325,
            received_at_us: 0,
        };
        assert!(source.kind.verify(&req).is_ok(), "{name}");
        group.bench_function(BenchmarkId::new(format!("signature/{size}"), name), |b| {
            b.iter(|| source.kind.verify(black_box(&req)).unwrap())
        });
        let mut ingestor = Ingestor::default();
        group.bench_function(BenchmarkId::new(format!("signature_and_body/{size}"), name), |b| {
            b.iter(|| {
                source.kind.verify(black_box(&req)).unwrap();
                source.kind.admit(&mut ingestor, black_box(&req)).unwrap()
            })
        });
    }
}

/// One request per mechanism, signed as its sender signs, and what checking
/// it costs: the signature alone, then with the body read.
fn verify_kinds(c: &mut Criterion) {
    use ed25519_dalek::Signer as _;
    use webhook_ingestor::http::request::{HeaderSpans, Headers};
    use webhook_ingestor::ingest::sources::catalog::SAMPLE_SENDGRID_KEY;
    use webhook_ingestor::ingest::sources::mac::{Algorithm, Encoding, Keys};
    use webhook_ingestor::ingest::sources::{every_kind_sample, Request, Sources};

    const T: i64 = 1_795_383_325;
    let ts = T.to_string();
    let secret = "sample-secret-0123456789";
    let hmac = |parts: &[&[u8]], encoding| {
        Keys::new(Algorithm::Sha256, &[secret.as_bytes().to_vec()]).sign(parts, encoding)
    };
    let body = br#"{"id":"evt_bench_1","type":"payment_intent.succeeded","created":1795383325,"event_ts":1795383325000,"data":{"object":{"amount":4200,"currency":"brl","customer":"cus_x1Y2z3W4","status":"succeeded","description":"Order 100234, three items"}}}"#;
    let discord = ed25519_dalek::SigningKey::from_bytes(
        &hex::decode("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let interaction = br#"{"type":2,"id":"1100000000000000001","application_id":"110000000000000000","token":"aW50ZXJhY3Rpb24tdG9rZW4","data":{"id":"1","name":"order","options":[{"name":"n","value":1}]}}"#;
    let discord_sig = hex::encode(discord.sign(&[ts.as_bytes(), interaction].concat()).to_bytes());
    let twilio_form = b"MessageSid=SM0001&MessageStatus=delivered&AccountSid=AC0001&From=%2B14158675310&To=%2B18005551212&Body=Order+100234%2C+three+items";
    let twilio_sig = Keys::new(Algorithm::Sha1, &[secret.as_bytes().to_vec()]).sign(
        &[b"https://hooks.example.com/webhooks/twilio", b"AccountSidAC0001BodyOrder 100234, three itemsFrom+14158675310MessageSidSM0001MessageStatusdeliveredTo+18005551212"],
        Encoding::Base64,
    );
    let mailgun_body = format!(
        r#"{{"signature":{{"timestamp":"{ts}","token":"bench-token","signature":"{}"}},"event-data":{{"id":"mg1","event":"delivered","timestamp":1795383325.5}}}}"#,
        hmac(&[ts.as_bytes(), b"bench-token"], Encoding::Hex)
    );
    let mut cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "stripe",
            format!("Stripe-Signature: t={ts},v1={}", hmac(&[ts.as_bytes(), b".", body], Encoding::Hex)),
            body.to_vec(),
        ),
        (
            "github",
            format!(
                "X-Hub-Signature-256: sha256={}\r\nX-GitHub-Delivery: d1\r\nX-GitHub-Event: push",
                hmac(&[body], Encoding::Hex)
            ),
            body.to_vec(),
        ),
        (
            "zoom",
            format!(
                "x-zm-signature: v0={}\r\nx-zm-request-timestamp: {ts}",
                hmac(&[b"v0:", ts.as_bytes(), b":", body], Encoding::Hex)
            ),
            body.to_vec(),
        ),
        ("gitlab", format!("X-Gitlab-Token: {secret}\r\nX-Gitlab-Event-UUID: u1"), body.to_vec()),
        ("mailgun", String::new(), mailgun_body.into_bytes()),
        (
            "twilio",
            format!("Content-Type: application/x-www-form-urlencoded\r\nX-Twilio-Signature: {twilio_sig}"),
            twilio_form.to_vec(),
        ),
        (
            "discord",
            format!("X-Signature-Ed25519: {discord_sig}\r\nX-Signature-Timestamp: {ts}"),
            interaction.to_vec(),
        ),
    ];
    let sendgrid = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
    let sg_body = br#"[{"email":"customer@example.com","timestamp":1795383325,"event":"delivered","sg_event_id":"sg1","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001"}]"#;
    let sg_sig: p256::ecdsa::Signature = sendgrid.sign(&[ts.as_bytes(), sg_body].concat());
    let sg_sig =
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sg_sig.to_der().as_bytes());
    cases.push(("sendgrid", format!("X-Twilio-Email-Event-Webhook-Signature: {sg_sig}\r\nX-Twilio-Email-Event-Webhook-Timestamp: {ts}"), sg_body.to_vec()));
    // The sample's SendGrid key is another: this bench's own route.
    let sg_public = {
        use p256::pkcs8::EncodePublicKey as _;
        let der = sendgrid.verifying_key().to_public_key_der().unwrap();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, der.as_bytes())
    };
    let file = every_kind_sample().replace(SAMPLE_SENDGRID_KEY, &sg_public);
    let sources = Sources::parse(&file, &|_| None).unwrap();
    let mut group = c.benchmark_group("verify_kind");
    group.throughput(Throughput::Elements(1));
    for (kind, header_lines, body) in &cases {
        let source = sources.iter().find(|s| s.kind_name == *kind).unwrap();
        let block = format!("{header_lines}\r\n\r\n");
        let mut spans = HeaderSpans::default();
        let headers = Headers::parse_block(block.as_bytes(), &mut spans);
        let target = format!("/webhooks/{}", source.route);
        let req =
            Request { route: &source.route, target: &target, headers, body, now_secs: T, received_at_us: 0 };
        assert_eq!(source.kind.verify(&req), Ok(()), "{kind}");
        group.bench_function(BenchmarkId::new("signature", kind), |b| {
            b.iter(|| source.kind.verify(black_box(&req)))
        });
        let mut ingestor = Ingestor::default();
        group.bench_function(BenchmarkId::new("signature_and_body", kind), |b| {
            b.iter(|| {
                source.kind.verify(black_box(&req)).unwrap();
                source.kind.admit(&mut ingestor, black_box(&req)).unwrap()
            })
        });
    }
    group.finish();
}

/// The verifiers the public-key kinds could use, on one 300-byte message:
/// why SendGrid's route verifies with `ring` and Discord's with dalek's
/// `verify` (tuning.md §29).
fn public_key_verifiers(c: &mut Criterion) {
    use ed25519_dalek::Signer as _;
    use p256::ecdsa::signature::Verifier as _;
    let message = vec![b'a'; 300];
    let mut group = c.benchmark_group("public_key_verifier");
    let p256_key = p256::ecdsa::SigningKey::from_slice(&[7; 32]).unwrap();
    let p256_sig: p256::ecdsa::Signature = p256_key.sign(&message);
    let p256_public = *p256_key.verifying_key();
    group.bench_function("ecdsa_p256/rustcrypto_p256", |b| {
        b.iter(|| p256_public.verify(black_box(&message), &p256_sig).unwrap())
    });
    let ring_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        p256_public.to_sec1_point(false).as_bytes().to_vec(),
    );
    let der = p256_sig.to_der();
    group.bench_function("ecdsa_p256/ring", |b| {
        b.iter(|| ring_key.verify(black_box(&message), der.as_bytes()).unwrap())
    });
    let ed_key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let ed_sig = ed_key.sign(&message);
    let ed_public = ed_key.verifying_key();
    group.bench_function("ed25519/dalek_verify", |b| {
        b.iter(|| ed25519_dalek::Verifier::verify(&ed_public, black_box(&message), &ed_sig).unwrap())
    });
    group.bench_function("ed25519/dalek_verify_strict", |b| {
        b.iter(|| ed_public.verify_strict(black_box(&message), &ed_sig).unwrap())
    });
    let ring_ed =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, ed_public.to_bytes().to_vec());
    let ed_bytes = ed_sig.to_bytes();
    group.bench_function("ed25519/ring", |b| {
        b.iter(|| ring_ed.verify(black_box(&message), &ed_bytes).unwrap())
    });
    group.finish();
}

criterion_group!(
    benches,
    parse_validate,
    handoff,
    response_extras,
    request_and_job_encoding,
    verify,
    verify_kinds,
    public_key_verifiers
);
criterion_main!(benches);
