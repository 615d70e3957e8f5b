//! Native senders end to end: requests signed by the senders' own libraries
//! (`tests/senders/sign.py`: stripe, standardwebhooks, slack-sdk, and the
//! stdlib recipes GitHub, Shopify and Paddle document) posted over real HTTP
//! to a gateway with a sources file, a real Redis and a real PostgreSQL.
//! Every scheme meets the same matrix: valid, old secret, wrong secret, one
//! byte changed, header missing, empty, 31 and 33 bytes, not hex or base64,
//! stale and future timestamps, a second signature that alone matches, and
//! the sender's retry, which must be one row.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use webhook_ingestor::ingest::sources::Sources;

use crate::harness::{wait_until, Client, Response, TestApp};

/// One route per kind; each signing kind has a new and an old secret.
pub const SOURCES: &str = r#"
[[source]]
route = "stripe"
kind = "stripe"
secrets = ["whsec_new_stripe", "whsec_old_stripe"]

[[source]]
route = "github"
kind = "github"
secrets = ["gh-new", "gh-old"]

[[source]]
route = "shopify"
kind = "shopify"
secrets = ["shop-new", "shop-old"]

[[source]]
route = "slack"
kind = "slack"
secrets = ["slack-new", "slack-old"]

[[source]]
route = "clerk"
kind = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"]

[[source]]
route = "paddle"
kind = "paddle"
secrets = ["pdl_ntfset_new", "pdl_ntfset_old"]
# Paddle's own window is 5 s (unit-tested at its edges); a loaded CI
# machine can take longer than that between signing and sending.
tolerance_secs = 30

[[source]]
route = "acme"
kind = "hmac"
secrets = ["acme-new", "acme-old"]
header = "X-Acme-Signature"
algorithm = "sha512"
encoding = "base64"
id_pointer = "/delivery/id"
type_pointer = "/kind"

[[source]]
route = "open"
kind = "envelope"
"#;

pub(crate) fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// What `sign.py` is asked to sign.
#[derive(serde::Serialize)]
struct ToSign<'a> {
    scheme: &'a str,
    secret: &'a str,
    body: &'a str,
    timestamp: i64,
    id: &'a str,
}

/// Runs `tests/senders/<script>` with `input` as JSON on stdin and reads
/// its JSON answer; a script that fails fails the test with its stderr.
pub(crate) fn python<T: serde::de::DeserializeOwned>(script: &str, input: &impl serde::Serialize) -> T {
    let path = format!("{}/tests/senders/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new("python3")
        .arg(&path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs (scripts/test installs it)");
    child.stdin.take().unwrap().write_all(&serde_json::to_vec(input).unwrap()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{script} failed (scripts/install-deps installs the senders' libraries): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The signature header values the senders' libraries produce, in order.
fn sign(requests: &[ToSign<'_>]) -> Vec<String> {
    python("sign.py", &requests)
}

/// What the sender's own library (through `sign.py`) says of `body` with
/// the signature header `header`: "verified" or its error.
fn library_verdict(scheme: &str, secret: &str, header: &str, body: &[u8]) -> String {
    let req = serde_json::json!([{
        "scheme": scheme, "secret": secret, "verify": header, "body_b64": base64_encode(body)
    }]);
    let out: Vec<String> = python("sign.py", &req);
    out[0].clone()
}

/// A gateway whose routes are [`SOURCES`].
pub fn gateway() -> TestApp {
    TestApp::spawn_full(|c| {
        c.ingest.sources = Some(Arc::new(Sources::parse(SOURCES, &|_| None).unwrap()));
    })
}

fn post(app: &TestApp, route: &str, headers: &[(String, String)], body: &str) -> Response {
    post_as(app, route, "application/json", headers, body)
}

fn post_as(
    app: &TestApp,
    route: &str,
    content_type: &str,
    headers: &[(String, String)],
    body: &str,
) -> Response {
    let mut req = format!("POST /webhooks/{route} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut client = Client::connect(app.addr);
    client.send(req.as_bytes());
    client.read_response().expect("an answer")
}

/// One request of the matrix and the status it must get.
struct Case {
    what: String,
    headers: Vec<(String, String)>,
    body: String,
    expect: u16,
}

fn run(app: &TestApp, route: &str, cases: &[Case]) {
    for case in cases {
        let resp = post(app, route, &case.headers, &case.body);
        assert_eq!(
            resp.status,
            case.expect,
            "{route}: {}: {}",
            case.what,
            String::from_utf8_lossy(&resp.body)
        );
        if resp.status == 401 {
            let doc = resp.json();
            assert_eq!(
                (doc["statusCode"].as_u64(), doc["error"].as_str()),
                (Some(401), Some("Unauthorized"))
            );
            let message = doc["message"].as_str().unwrap();
            assert!(!message.contains("new") && !message.contains("old"), "no secret in {message:?}");
        }
    }
}

/// The stored rows of `route`: `event_id → (event_type, verified_by, payload)`.
fn rows(app: &TestApp, route: &str) -> HashMap<String, (String, Option<String>, serde_json::Value)> {
    app.pg()
        .query(
            "SELECT event_id, event_type, verified_by, payload::text FROM webhook_events WHERE provider = $1",
            &[&route],
        )
        .unwrap()
        .iter()
        .map(|r| {
            let payload: String = r.get(3);
            (r.get(0), (r.get(1), r.get(2), serde_json::from_str(&payload).unwrap()))
        })
        .collect()
}

pub(crate) fn wait_rows(
    app: &TestApp,
    route: &str,
    n: usize,
) -> HashMap<String, (String, Option<String>, serde_json::Value)> {
    wait_until(Duration::from_secs(30), &format!("{n} rows for {route}"), || rows(app, route).len() >= n);
    std::thread::sleep(Duration::from_millis(300)); // and no more
    let found = rows(app, route);
    assert_eq!(found.len(), n, "{route}: {:?}", found.keys());
    found
}

/// `s` with its last character changed (a signature or body off by one byte).
fn flip_last(s: &str) -> String {
    let mut b = s.as_bytes().to_vec();
    let last = b.last_mut().unwrap();
    *last = if *last == b'0' { b'1' } else { b'0' };
    String::from_utf8(b).unwrap()
}

pub(crate) fn h(name: &str, value: &str) -> (String, String) {
    (name.to_string(), value.to_string())
}

#[test]
fn stripe_signed_by_the_stripe_library() {
    let app = gateway();
    let t = now();
    let body = |id: &str| {
        format!(
            r#"{{"id":"{id}","object":"event","type":"invoice.paid","created":{t},"data":{{"object":{{"amount":4200}}}}}}"#
        )
    };
    let (b1, b2, b3) = (body("evt_1"), body("evt_2"), body("evt_3"));
    let retry_t = t + 5;
    let sigs = sign(&[
        ToSign { scheme: "stripe", secret: "whsec_new_stripe", body: &b1, timestamp: t, id: "" },
        ToSign { scheme: "stripe", secret: "whsec_old_stripe", body: &b2, timestamp: t, id: "" },
        ToSign { scheme: "stripe", secret: "whsec_wrong", body: &b1, timestamp: t, id: "" },
        ToSign { scheme: "stripe", secret: "whsec_new_stripe", body: &b1, timestamp: t - 301, id: "" },
        ToSign { scheme: "stripe", secret: "whsec_new_stripe", body: &b3, timestamp: t + 3600, id: "" },
        ToSign { scheme: "stripe", secret: "whsec_new_stripe", body: &b1, timestamp: retry_t, id: "" },
    ]);
    let v1 = |header: &str| header.split_once(",v1=").unwrap().1.to_string();
    let sig = |v: String| vec![h("Stripe-Signature", &v)];
    let good = v1(&sigs[0]);
    let cases = [
        Case { what: "valid".into(), headers: sig(sigs[0].clone()), body: b1.clone(), expect: 202 },
        Case { what: "the old secret".into(), headers: sig(sigs[1].clone()), body: b2.clone(), expect: 202 },
        Case { what: "a wrong secret".into(), headers: sig(sigs[2].clone()), body: b1.clone(), expect: 401 },
        Case {
            what: "one byte changed".into(),
            headers: sig(sigs[0].clone()),
            body: b1.replace("4200", "4201"),
            expect: 401,
        },
        Case { what: "no header".into(), headers: vec![], body: b1.clone(), expect: 401 },
        Case { what: "empty v1".into(), headers: sig(format!("t={t},v1=")), body: b1.clone(), expect: 401 },
        Case {
            what: "31 bytes".into(),
            headers: sig(format!("t={t},v1={}", &good[..62])),
            body: b1.clone(),
            expect: 401,
        },
        Case {
            what: "33 bytes".into(),
            headers: sig(format!("t={t},v1={good}ab")),
            body: b1.clone(),
            expect: 401,
        },
        Case {
            what: "not hex".into(),
            headers: sig(format!("t={t},v1={}", good.replace(|c: char| c.is_ascii_digit(), "z"))),
            body: b1.clone(),
            expect: 401,
        },
        Case { what: "301 s old".into(), headers: sig(sigs[3].clone()), body: b1.clone(), expect: 401 },
        Case {
            what: "an hour ahead (the libraries accept it)".into(),
            headers: sig(sigs[4].clone()),
            body: b3.clone(),
            expect: 202,
        },
        Case {
            what: "only the second v1 matches".into(),
            headers: sig(format!("t={t},v1={},v1={good}", flip_last(&good))),
            body: b1.clone(),
            expect: 202,
        },
        Case {
            what: "the sender's retry".into(),
            headers: sig(sigs[5].clone()),
            body: b1.clone(),
            expect: 202,
        },
    ];
    run(&app, "stripe", &cases);
    let stored = wait_rows(&app, "stripe", 3);
    let (kind, verified, payload) = &stored["evt_1"];
    assert_eq!((kind.as_str(), verified.as_deref()), ("invoice.paid", Some("stripe")));
    assert_eq!(payload["data"]["object"]["amount"], 4200);
    let at: f64 = app
        .pg()
        .query_one(
            "SELECT extract(epoch FROM event_timestamp)::float8 FROM webhook_events WHERE event_id = 'evt_1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(at, t as f64, "Stripe's `created` is the event time");
    // The row keeps the bytes Stripe signed: its own library verifies them
    // from the row, and refuses the jsonb text (reordered, respaced).
    let (raw, text): (Vec<u8>, String) = {
        let row = app
            .pg()
            .query_one("SELECT raw_body, payload::text FROM webhook_events WHERE event_id = 'evt_1'", &[])
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(raw, b1.as_bytes());
    let check = |body: &[u8]| library_verdict("stripe", "whsec_new_stripe", &sigs[0], body);
    assert_eq!(check(&raw), "verified", "stripe-python re-verifies the stored body");
    assert!(
        check(text.as_bytes()).starts_with("SignatureVerificationError"),
        "the jsonb text is not what was signed"
    );
    // Rejections are counted per source and reason.
    let metrics = crate::ops::scrape(&app);
    assert!(
        metrics[r#"webhook_source_rejected_total{source="stripe",status="401",reason="bad_signature"}"#]
            >= 5.0
    );
    assert_eq!(
        metrics[r#"webhook_source_rejected_total{source="stripe",status="401",reason="stale_timestamp"}"#],
        1.0
    );
    assert_eq!(
        metrics[r#"webhook_source_rejected_total{source="stripe",status="401",reason="missing_signature"}"#],
        1.0
    );
    assert_eq!(metrics[r#"webhook_source_accepted_total{source="stripe"}"#], 5.0);
}

#[test]
fn standard_webhooks_signed_by_the_standardwebhooks_library() {
    let app = gateway();
    let t = now();
    let body = r#"{"type":"user.created","data":{"id":"user_1","email":"a@example.com"}}"#;
    let (new, old) = ("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
    let sigs = sign(&[
        ToSign { scheme: "standard-webhooks", secret: new, body, timestamp: t, id: "msg_1" },
        ToSign { scheme: "standard-webhooks", secret: old, body, timestamp: t, id: "msg_2" },
        ToSign {
            scheme: "standard-webhooks",
            secret: "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            body,
            timestamp: t,
            id: "msg_1",
        },
        ToSign { scheme: "standard-webhooks", secret: new, body, timestamp: t - 301, id: "msg_1" },
        ToSign { scheme: "standard-webhooks", secret: new, body, timestamp: t + 400, id: "msg_1" },
        ToSign { scheme: "standard-webhooks", secret: new, body, timestamp: t + 2, id: "msg_1" },
    ]);
    let headers = |id: &str, ts: i64, sig: &str| {
        vec![h("webhook-id", id), h("webhook-timestamp", &ts.to_string()), h("webhook-signature", sig)]
    };
    let good = sigs[0].strip_prefix("v1,").unwrap();
    let raw = base64_decode(good);
    let b64 = |bytes: &[u8]| base64_encode(bytes);
    let cases = [
        Case { what: "valid".into(), headers: headers("msg_1", t, &sigs[0]), body: body.into(), expect: 202 },
        Case {
            what: "the old secret".into(),
            headers: headers("msg_2", t, &sigs[1]),
            body: body.into(),
            expect: 202,
        },
        Case {
            what: "a wrong secret".into(),
            headers: headers("msg_1", t, &sigs[2]),
            body: body.into(),
            expect: 401,
        },
        Case {
            what: "one byte changed".into(),
            headers: headers("msg_1", t, &sigs[0]),
            body: body.replace("user_1", "user_2"),
            expect: 401,
        },
        Case {
            what: "no header".into(),
            headers: headers("msg_1", t, &sigs[0])[..2].to_vec(),
            body: body.into(),
            expect: 401,
        },
        Case { what: "empty".into(), headers: headers("msg_1", t, "v1,"), body: body.into(), expect: 401 },
        Case {
            what: "31 bytes".into(),
            headers: headers("msg_1", t, &format!("v1,{}", b64(&raw[..31]))),
            body: body.into(),
            expect: 401,
        },
        Case {
            what: "33 bytes".into(),
            headers: headers("msg_1", t, &format!("v1,{}", b64(&[&raw[..], &[0]].concat()))),
            body: body.into(),
            expect: 401,
        },
        Case {
            what: "not base64".into(),
            headers: headers("msg_1", t, "v1,%%%%"),
            body: body.into(),
            expect: 401,
        },
        Case {
            what: "301 s old".into(),
            headers: headers("msg_1", t - 301, &sigs[3]),
            body: body.into(),
            expect: 401,
        },
        Case {
            what: "400 s ahead".into(),
            headers: headers("msg_1", t + 400, &sigs[4]),
            body: body.into(),
            expect: 401,
        },
        Case {
            what: "only the second matches".into(),
            headers: headers("msg_1", t, &format!("v1,{} {}", b64(&[0; 32]), sigs[0])),
            body: body.into(),
            expect: 202,
        },
        Case {
            what: "svix-* headers, the sender's retry".into(),
            headers: headers("msg_1", t + 2, &sigs[5])
                .into_iter()
                .map(|(k, v)| (k.replace("webhook-", "svix-"), v))
                .collect(),
            body: body.into(),
            expect: 202,
        },
    ];
    run(&app, "clerk", &cases);
    let stored = wait_rows(&app, "clerk", 2);
    assert_eq!(stored["msg_1"].0, "user.created");
    assert_eq!(stored["msg_1"].1.as_deref(), Some("standard-webhooks"));
}

#[test]
fn slack_signed_by_slack_sdk_with_its_challenge() {
    let app = gateway();
    let t = now();
    let body = |id: &str| {
        format!(
            r#"{{"type":"event_callback","event_id":"{id}","event_time":{t},"event":{{"type":"app_mention","text":"hi"}}}}"#
        )
    };
    let (b1, b2) = (body("Ev1"), body("Ev2"));
    let challenge = r#"{"token":"x","challenge":"c-123","type":"url_verification"}"#;
    let sigs = sign(&[
        ToSign { scheme: "slack", secret: "slack-new", body: &b1, timestamp: t, id: "" },
        ToSign { scheme: "slack", secret: "slack-old", body: &b2, timestamp: t, id: "" },
        ToSign { scheme: "slack", secret: "slack-wrong", body: &b1, timestamp: t, id: "" },
        ToSign { scheme: "slack", secret: "slack-new", body: &b1, timestamp: t - 301, id: "" },
        ToSign { scheme: "slack", secret: "slack-new", body: &b1, timestamp: t + 400, id: "" },
        ToSign { scheme: "slack", secret: "slack-new", body: &b1, timestamp: t + 1, id: "" },
        ToSign { scheme: "slack", secret: "slack-new", body: challenge, timestamp: t, id: "" },
    ]);
    let headers = |ts: i64, sig: &str| {
        vec![h("X-Slack-Request-Timestamp", &ts.to_string()), h("X-Slack-Signature", sig)]
    };
    let good = sigs[0].strip_prefix("v0=").unwrap();
    let cases = [
        Case { what: "valid".into(), headers: headers(t, &sigs[0]), body: b1.clone(), expect: 202 },
        Case { what: "the old secret".into(), headers: headers(t, &sigs[1]), body: b2.clone(), expect: 202 },
        Case { what: "a wrong secret".into(), headers: headers(t, &sigs[2]), body: b1.clone(), expect: 401 },
        Case {
            what: "one byte changed".into(),
            headers: headers(t, &sigs[0]),
            body: b1.replace("hi", "ho"),
            expect: 401,
        },
        Case {
            what: "no signature".into(),
            headers: headers(t, &sigs[0])[..1].to_vec(),
            body: b1.clone(),
            expect: 401,
        },
        Case { what: "empty".into(), headers: headers(t, "v0="), body: b1.clone(), expect: 401 },
        Case {
            what: "31 bytes".into(),
            headers: headers(t, &format!("v0={}", &good[..62])),
            body: b1.clone(),
            expect: 401,
        },
        Case {
            what: "33 bytes".into(),
            headers: headers(t, &format!("v0={good}00")),
            body: b1.clone(),
            expect: 401,
        },
        Case {
            what: "not hex".into(),
            headers: headers(t, &format!("v0={}", good.replace(|c: char| c.is_ascii_digit(), "x"))),
            body: b1.clone(),
            expect: 401,
        },
        Case { what: "301 s old".into(), headers: headers(t - 301, &sigs[3]), body: b1.clone(), expect: 401 },
        Case {
            what: "400 s ahead".into(),
            headers: headers(t + 400, &sigs[4]),
            body: b1.clone(),
            expect: 401,
        },
        Case {
            what: "the sender's retry".into(),
            headers: [headers(t + 1, &sigs[5]), vec![h("X-Slack-Retry-Num", "1")]].concat(),
            body: b1.clone(),
            expect: 202,
        },
    ];
    run(&app, "slack", &cases);
    let answer = post(&app, "slack", &headers(t, &sigs[6]), challenge);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), serde_json::json!({"challenge": "c-123"}));
    let unsigned = post(&app, "slack", &[], challenge);
    assert_eq!(unsigned.status, 401, "a challenge is verified first");
    let stored = wait_rows(&app, "slack", 2);
    assert_eq!(stored["Ev1"].0, "app_mention");
}

/// GitHub and Shopify: signed with the recipes their docs give.
#[test]
fn github_and_shopify_signed_as_their_docs_say() {
    let app = gateway();
    let push = r#"{"ref":"refs/heads/main","commits":[{"id":"abc"}]}"#;
    let order = r#"{"id":820982911946154500,"email":"jon@example.com"}"#;
    let sigs = sign(&[
        ToSign { scheme: "github", secret: "gh-new", body: push, timestamp: 0, id: "" },
        ToSign { scheme: "github", secret: "gh-old", body: push, timestamp: 0, id: "" },
        ToSign { scheme: "github", secret: "gh-wrong", body: push, timestamp: 0, id: "" },
        ToSign { scheme: "shopify", secret: "shop-new", body: order, timestamp: 0, id: "" },
        ToSign { scheme: "shopify", secret: "shop-old", body: order, timestamp: 0, id: "" },
        ToSign { scheme: "shopify", secret: "shop-wrong", body: order, timestamp: 0, id: "" },
        ToSign {
            scheme: "github",
            secret: "gh-new",
            body: r#"{"zen":"Keep it logically awesome."}"#,
            timestamp: 0,
            id: "",
        },
    ]);

    let gh = |sig: &str, delivery: &str| {
        vec![h("X-Hub-Signature-256", sig), h("X-GitHub-Event", "push"), h("X-GitHub-Delivery", delivery)]
    };
    let gh_hex = sigs[0].strip_prefix("sha256=").unwrap();
    run(
        &app,
        "github",
        &[
            Case { what: "valid".into(), headers: gh(&sigs[0], "d-1"), body: push.into(), expect: 202 },
            Case {
                what: "the old secret".into(),
                headers: gh(&sigs[1], "d-2"),
                body: push.into(),
                expect: 202,
            },
            Case {
                what: "a wrong secret".into(),
                headers: gh(&sigs[2], "d-1"),
                body: push.into(),
                expect: 401,
            },
            Case {
                what: "one byte changed".into(),
                headers: gh(&sigs[0], "d-1"),
                body: push.replace("abc", "abd"),
                expect: 401,
            },
            Case {
                what: "no header".into(),
                headers: gh(&sigs[0], "d-1")[1..].to_vec(),
                body: push.into(),
                expect: 401,
            },
            Case { what: "empty".into(), headers: gh("sha256=", "d-1"), body: push.into(), expect: 401 },
            Case {
                what: "31 bytes".into(),
                headers: gh(&format!("sha256={}", &gh_hex[..62]), "d-1"),
                body: push.into(),
                expect: 401,
            },
            Case {
                what: "33 bytes".into(),
                headers: gh(&format!("sha256={gh_hex}00"), "d-1"),
                body: push.into(),
                expect: 401,
            },
            Case {
                what: "not hex".into(),
                headers: gh(&format!("sha256={}", gh_hex.replace(|c: char| c.is_ascii_digit(), "g")), "d-1"),
                body: push.into(),
                expect: 401,
            },
            Case { what: "no prefix".into(), headers: gh(gh_hex, "d-1"), body: push.into(), expect: 401 },
            Case {
                what: "the redelivery".into(),
                headers: gh(&sigs[0], "d-1"),
                body: push.into(),
                expect: 202,
            },
        ],
    );
    let ping = post(
        &app,
        "github",
        &[h("X-Hub-Signature-256", &sigs[6]), h("X-GitHub-Event", "ping"), h("X-GitHub-Delivery", "d-ping")],
        r#"{"zen":"Keep it logically awesome."}"#,
    );
    assert_eq!(ping.status, 200, "GitHub's ping gets a 2xx");

    let shop = |sig: &str, id: &str| {
        vec![
            h("X-Shopify-Hmac-Sha256", sig),
            h("X-Shopify-Topic", "orders/create"),
            h("X-Shopify-Event-Id", id),
            h("X-Shopify-Webhook-Id", &format!("w-{id}")),
        ]
    };
    let raw = base64_decode(&sigs[3]);
    run(
        &app,
        "shopify",
        &[
            Case { what: "valid".into(), headers: shop(&sigs[3], "e-1"), body: order.into(), expect: 202 },
            Case {
                what: "the old secret".into(),
                headers: shop(&sigs[4], "e-2"),
                body: order.into(),
                expect: 202,
            },
            Case {
                what: "a wrong secret".into(),
                headers: shop(&sigs[5], "e-1"),
                body: order.into(),
                expect: 401,
            },
            Case {
                what: "one byte changed".into(),
                headers: shop(&sigs[3], "e-1"),
                body: order.replace("jon", "jan"),
                expect: 401,
            },
            Case {
                what: "no header".into(),
                headers: shop(&sigs[3], "e-1")[1..].to_vec(),
                body: order.into(),
                expect: 401,
            },
            Case {
                what: "31 bytes".into(),
                headers: shop(&base64_encode(&raw[..31]), "e-1"),
                body: order.into(),
                expect: 401,
            },
            Case {
                what: "33 bytes".into(),
                headers: shop(&base64_encode(&[&raw[..], &[1]].concat()), "e-1"),
                body: order.into(),
                expect: 401,
            },
            Case { what: "not base64".into(), headers: shop("!!!!", "e-1"), body: order.into(), expect: 401 },
            Case {
                what: "unprefixed names".into(),
                headers: shop(&sigs[3], "e-1")
                    .into_iter()
                    .map(|(k, v)| (k.replace("X-Shopify", "Shopify"), v))
                    .collect(),
                body: order.into(),
                expect: 202,
            },
        ],
    );

    let github = wait_rows(&app, "github", 2);
    assert_eq!((github["d-1"].0.as_str(), github["d-1"].1.as_deref()), ("push", Some("github")));
    let shopify = wait_rows(&app, "shopify", 2);
    assert_eq!(shopify["e-1"].0, "orders/create");
}

#[test]
fn a_github_hook_left_at_its_default_form_content_type_delivers_too() {
    let app = gateway();
    let json = r#"{"ref":"refs/heads/main","head_commit":{"message":"fix: a+b & c"}}"#;
    let form = format!("payload={}", form_encode(json));
    let sigs = sign(&[
        ToSign { scheme: "github", secret: "gh-new", body: &form, timestamp: 0, id: "" },
        ToSign { scheme: "github", secret: "gh-wrong", body: &form, timestamp: 0, id: "" },
    ]);
    const FORM: &str = "application/x-www-form-urlencoded";
    let headers = |sig: &str| {
        vec![h("X-Hub-Signature-256", sig), h("X-GitHub-Event", "push"), h("X-GitHub-Delivery", "d-form")]
    };
    let resp = post_as(&app, "github", FORM, &headers(&sigs[0]), &form);
    assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(
        post_as(&app, "github", FORM, &headers(&sigs[1]), &form).status,
        401,
        "verified on the form's bytes"
    );
    let no_payload = "ref=refs%2Fheads%2Fmain";
    let sig =
        &sign(&[ToSign { scheme: "github", secret: "gh-new", body: no_payload, timestamp: 0, id: "" }])[0];
    assert_eq!(post_as(&app, "github", FORM, &headers(sig), no_payload).status, 400);
    // Only the kinds that take forms do: the others keep answering 415.
    for route in ["stripe", "open"] {
        assert_eq!(post_as(&app, route, FORM, &[], &form).status, 415, "{route}");
    }

    let github = wait_rows(&app, "github", 1);
    let stored = &github["d-form"].2;
    assert_eq!(
        stored,
        &serde_json::from_str::<serde_json::Value>(json).unwrap(),
        "the decoded JSON is stored"
    );
    let raw: Vec<u8> = app
        .pg()
        .query_one("SELECT raw_body FROM webhook_events WHERE event_id = 'd-form'", &[])
        .unwrap()
        .get(0);
    assert_eq!(raw, form.as_bytes(), "and the form's bytes GitHub signed, as received");
}

/// `application/x-www-form-urlencoded` encoding of a field value.
fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => (b as char).to_string(),
            b' ' => "+".into(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// Paddle: signed as its docs say, with a 30 s window here (see SOURCES).
#[test]
fn paddle_signed_as_its_docs_say() {
    let app = gateway();
    let t = now();
    let paddle = |id: &str| {
        format!(
            r#"{{"event_id":"{id}","event_type":"transaction.completed","occurred_at":"2026-11-22T21:35:25.000000Z","data":{{"id":"txn_1"}}}}"#
        )
    };
    let (p1, p2) = (paddle("evt_p1"), paddle("evt_p2"));
    let sigs = sign(&[
        ToSign { scheme: "paddle", secret: "pdl_ntfset_new", body: &p1, timestamp: t, id: "" },
        ToSign { scheme: "paddle", secret: "pdl_ntfset_old", body: &p2, timestamp: t, id: "" },
        ToSign { scheme: "paddle", secret: "pdl_ntfset_wrong", body: &p1, timestamp: t, id: "" },
        ToSign { scheme: "paddle", secret: "pdl_ntfset_new", body: &p1, timestamp: t - 60, id: "" },
        ToSign { scheme: "paddle", secret: "pdl_ntfset_new", body: &p1, timestamp: t + 60, id: "" },
        ToSign { scheme: "paddle", secret: "pdl_ntfset_new", body: &p1, timestamp: t + 1, id: "" },
    ]);
    let pad = |sig: &str| vec![h("Paddle-Signature", sig)];
    let h1 = sigs[0].split_once(";h1=").unwrap().1;
    run(
        &app,
        "paddle",
        &[
            Case { what: "valid".into(), headers: pad(&sigs[0]), body: p1.clone(), expect: 202 },
            Case { what: "the old secret".into(), headers: pad(&sigs[1]), body: p2.clone(), expect: 202 },
            Case { what: "a wrong secret".into(), headers: pad(&sigs[2]), body: p1.clone(), expect: 401 },
            Case {
                what: "one byte changed".into(),
                headers: pad(&sigs[0]),
                body: p1.replace("txn_1", "txn_2"),
                expect: 401,
            },
            Case { what: "no header".into(), headers: vec![], body: p1.clone(), expect: 401 },
            Case {
                what: "empty".into(),
                headers: pad(&format!("ts={t};h1=")),
                body: p1.clone(),
                expect: 401,
            },
            Case {
                what: "31 bytes".into(),
                headers: pad(&format!("ts={t};h1={}", &h1[..62])),
                body: p1.clone(),
                expect: 401,
            },
            Case {
                what: "33 bytes".into(),
                headers: pad(&format!("ts={t};h1={h1}00")),
                body: p1.clone(),
                expect: 401,
            },
            Case {
                what: "not hex".into(),
                headers: pad(&format!("ts={t};h1={}", h1.replace(|c: char| c.is_ascii_digit(), "q"))),
                body: p1.clone(),
                expect: 401,
            },
            Case { what: "60 s old".into(), headers: pad(&sigs[3]), body: p1.clone(), expect: 401 },
            Case { what: "60 s ahead".into(), headers: pad(&sigs[4]), body: p1.clone(), expect: 401 },
            Case {
                what: "only the second h1 matches".into(),
                headers: pad(&format!("ts={t};h1={};h1={h1}", flip_last(h1))),
                body: p1.clone(),
                expect: 202,
            },
            Case { what: "the retry".into(), headers: pad(&sigs[5]), body: p1.clone(), expect: 202 },
        ],
    );

    let paddle_rows = wait_rows(&app, "paddle", 2);
    assert_eq!(paddle_rows["evt_p1"].0, "transaction.completed");
    assert_eq!(paddle_rows["evt_p1"].1.as_deref(), Some("paddle"));
}

#[test]
fn a_generic_hmac_source_and_the_envelope_routes() {
    let app = gateway();
    let body = |id: u64| format!(r#"{{"delivery":{{"id":{id}}},"kind":"thing.made"}}"#);
    let (b1, b2) = (body(1), body(2));
    let sigs = sign(&[
        ToSign { scheme: "hmac-sha512-base64", secret: "acme-new", body: &b1, timestamp: 0, id: "" },
        ToSign { scheme: "hmac-sha512-base64", secret: "acme-old", body: &b2, timestamp: 0, id: "" },
        ToSign { scheme: "hmac-sha512-base64", secret: "acme-wrong", body: &b1, timestamp: 0, id: "" },
    ]);
    let acme = |sig: &str| vec![h("X-Acme-Signature", sig)];
    let raw = base64_decode(&sigs[0]);
    run(
        &app,
        "acme",
        &[
            Case { what: "valid".into(), headers: acme(&sigs[0]), body: b1.clone(), expect: 202 },
            Case { what: "the old secret".into(), headers: acme(&sigs[1]), body: b2.clone(), expect: 202 },
            Case { what: "a wrong secret".into(), headers: acme(&sigs[2]), body: b1.clone(), expect: 401 },
            Case {
                what: "one byte changed".into(),
                headers: acme(&sigs[0]),
                body: b1.replace("made", "mad!"),
                expect: 401,
            },
            Case { what: "no header".into(), headers: vec![], body: b1.clone(), expect: 401 },
            Case {
                what: "63 bytes".into(),
                headers: acme(&base64_encode(&raw[..63])),
                body: b1.clone(),
                expect: 401,
            },
            Case {
                what: "only the second matches".into(),
                headers: acme(&format!("{},{}", base64_encode(&[0; 64]), sigs[0])),
                body: b1.clone(),
                expect: 202,
            },
        ],
    );
    let stored = wait_rows(&app, "acme", 2);
    assert_eq!((stored["1"].0.as_str(), stored["1"].1.as_deref()), ("thing.made", Some("hmac")));

    // With a sources file only the listed routes exist; the envelope still works where listed.
    let unlisted = post(&app, "stripe2", &[], "{}");
    assert_eq!(unlisted.status, 404);
    let seed = r#"{"provider":"open","eventId":"evt_open","timestamp":"2026-11-22T21:35:25Z","data":{}}"#;
    assert_eq!(post(&app, "open", &[], seed).status, 202);
    let open = wait_rows(&app, "open", 1);
    assert_eq!((open["evt_open"].0.as_str(), open["evt_open"].1.as_deref()), ("", None));
    // A Stripe route does not take the unsigned envelope any more.
    let injected = post(&app, "stripe", &[], &seed.replace("\"open\"", "\"stripe\""));
    assert_eq!(injected.status, 401);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn a_bad_sources_file_stops_the_start_by_name_and_check_config_redacts_the_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("sources.toml");
    std::fs::write(&good, SOURCES).unwrap();
    let env = |file: &std::path::Path| vec![("SOURCES_FILE", file.display().to_string())];
    let shown = crate::security::run_binary(&["check-config"], &env(&good), Duration::from_secs(10));
    for route in ["\"stripe\"", "\"clerk\"", "\"acme\""] {
        assert!(shown.contains(route), "check-config lists {route}: {shown:.3000}");
    }
    assert!(shown.contains("redacted"), "{shown:.3000}");
    for secret in ["whsec_new_stripe", "gh-new", "acme-old", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"] {
        assert!(!shown.contains(secret), "check-config shows {secret}");
    }

    let bad = dir.path().join("bad.toml");
    for (text, expected) in [
        ("[[source]]\nroute = \"pay\"\nkind = \"stripe\"\nsecrets = []\n", "source \"pay\": secrets: must not be empty"),
        ("[[source]]\nroute = \"x\"\nkind = \"stripee\"\nsecrets = [\"s\"]\n", "source \"x\": kind: unknown kind"),
        ("[[source]]\nroute = \"x\"\nkind = \"stripe\"\nsecrets = [\"s\"]\n[[source]]\nroute = \"x\"\nkind = \"github\"\nsecrets = [\"s\"]\n", "route: another source"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let port = crate::harness::free_port().to_string();
        let mut e = env(&bad);
        e.push(("PORT", port));
        let out = crate::security::run_binary(&["serve", "--role", "api"], &e, Duration::from_secs(10));
        assert!(out.contains("invalid configuration: SOURCES_FILE=") && out.contains(expected), "{expected}: {out:.2000}");
        assert!(!out.contains("webhook-ingestor serving"), "{out:.2000}");
    }
}

/// Entries a gateway of the first format left in the stream are stored
/// after the upgrade, as the untyped, unverified envelopes they are.
#[test]
fn version_1_entries_left_in_the_stream_drain_normally() {
    let app = TestApp::spawn_full(|_| {});
    let mut con = app.redis.con();
    let body = r#"{"provider":"stripe","eventId":"evt_v1","timestamp":"2026-11-22T21:35:25Z","data":{}}"#;
    let _: String = redis::cmd("XADD")
        .arg("webhooks")
        .arg("*")
        .arg("v")
        .arg(1)
        .arg("p")
        .arg("stripe")
        .arg("e")
        .arg("evt_v1")
        .arg("t")
        .arg(1_795_383_325_000_000i64)
        .arg("r")
        .arg(1_795_383_326_000_000i64)
        .arg("b")
        .arg(body)
        .query(&mut con)
        .unwrap();
    wait_until(Duration::from_secs(30), "the v1 row", || app.rows() == 1);
    let row = app.pg().query_one("SELECT event_type, verified_by FROM webhook_events", &[]).unwrap();
    assert_eq!((row.get::<_, String>(0), row.get::<_, Option<String>>(1)), (String::new(), None));
    assert_eq!(app.dead_letters(), 0);
}

#[test]
fn a_stripe_signature_with_a_stray_item_is_accepted_as_stripe_python_accepts_it() {
    let app = gateway();
    let t = now();
    let body =
        format!(r#"{{"id":"evt_stray","object":"event","type":"invoice.paid","created":{t},"data":{{}}}}"#);
    let sig =
        sign(&[ToSign { scheme: "stripe", secret: "whsec_new_stripe", body: &body, timestamp: t, id: "" }])
            .remove(0);
    for header in [format!("{sig},stray"), format!("stray,{sig}"), format!("{sig}, ,junk")] {
        assert_eq!(
            library_verdict("stripe", "whsec_new_stripe", &header, body.as_bytes()),
            "verified",
            "{header}"
        );
        let resp = post(&app, "stripe", &[h("Stripe-Signature", &header)], &body);
        assert_eq!(resp.status, 202, "{header}: {}", String::from_utf8_lossy(&resp.body));
    }
    wait_rows(&app, "stripe", 1);
    let unsigned: Option<String> = app
        .pg()
        .query_one("SELECT unsigned_fields FROM webhook_events WHERE event_id = 'evt_stray'", &[])
        .unwrap()
        .get(0);
    assert_eq!(unsigned, None, "Stripe's id, type and time are all under its signature");
}

#[test]
fn slack_rate_limit_notices_interactivity_and_slash_commands_signed_by_slack_sdk() {
    // Before: the rate-limit notice (no event_id) got 400, and the two form
    // formats 415, though slack_sdk's verifier accepts all three.
    let app = gateway();
    let t = now();
    let minute = t - t % 60;
    let rate = format!(
        r#"{{"token":"x","type":"app_rate_limited","team_id":"T1","minute_rate_limited":{minute},"api_app_id":"A1"}}"#
    );
    let action = r#"{"type":"block_actions","trigger_id":"1334.7384.80889","team":{"id":"T1"},"actions":[{"action_id":"approve","value":"yes & no"}]}"#;
    let interactivity = format!("payload={}", form_encode(action));
    let slash = "token=x&team_id=T1&command=%2Fweather&text=94070+today&trigger_id=2.3.abc";
    let sigs = sign(&[
        ToSign { scheme: "slack", secret: "slack-new", body: &rate, timestamp: t, id: "" },
        ToSign { scheme: "slack", secret: "slack-new", body: &interactivity, timestamp: t, id: "" },
        ToSign { scheme: "slack", secret: "slack-old", body: slash, timestamp: t, id: "" },
    ]);
    let headers =
        |sig: &str| vec![h("X-Slack-Request-Timestamp", &t.to_string()), h("X-Slack-Signature", sig)];
    let form = "application/x-www-form-urlencoded";
    assert_eq!(post(&app, "slack", &headers(&sigs[0]), &rate).status, 202);
    assert_eq!(post_as(&app, "slack", form, &headers(&sigs[1]), &interactivity).status, 202);
    assert_eq!(post_as(&app, "slack", form, &headers(&sigs[2]), slash).status, 202);
    // A form signed with the wrong secret is still refused.
    assert_eq!(post_as(&app, "slack", form, &headers(&flip_last(&sigs[2])), slash).status, 401);

    let rows = wait_rows(&app, "slack", 3);
    let limited = &rows[&format!("app_rate_limited:A1:T1:{minute}")];
    assert_eq!((limited.0.as_str(), limited.1.as_deref()), ("app_rate_limited", Some("slack")));
    let clicked = &rows["1334.7384.80889"];
    assert_eq!(clicked.0, "block_actions");
    assert_eq!(clicked.2["actions"][0]["value"], "yes & no", "the payload field's JSON, decoded");
    let command = &rows["2.3.abc"];
    assert_eq!(command.0, "slash_command");
    assert_eq!(
        (command.2["command"].as_str(), command.2["text"].as_str()),
        (Some("/weather"), Some("94070 today"))
    );
    let raw: Vec<u8> = app
        .pg()
        .query_one("SELECT raw_body FROM webhook_events WHERE event_id = '2.3.abc'", &[])
        .unwrap()
        .get(0);
    assert_eq!(raw, slash.as_bytes(), "the form as signed, byte for byte");
}

#[test]
fn a_github_route_takes_bodies_up_to_githubs_cap_while_other_routes_keep_max_body_bytes() {
    // GitHub sends up to 25 MB; MAX_BODY_BYTES (1 MiB here) was global, so
    // a big push got 413 and was never redelivered.
    let app = gateway();
    assert_eq!(app.config.http.max_body_bytes, 1 << 20);
    let padding = "x".repeat(3 << 20);
    let body = format!(r#"{{"ref":"refs/heads/main","pad":"{padding}"}}"#);
    let sig =
        sign(&[ToSign { scheme: "github", secret: "gh-new", body: &body, timestamp: 0, id: "" }]).remove(0);
    let headers =
        vec![h("X-Hub-Signature-256", &sig), h("X-GitHub-Event", "push"), h("X-GitHub-Delivery", "big-1")];
    let resp = post(&app, "github", &headers, &body);
    assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(post(&app, "stripe", &[], &body).status, 413, "other routes keep MAX_BODY_BYTES");
    let rows = wait_rows(&app, "github", 1);
    assert!(rows.contains_key("big-1"));
    // GitHub signs the body only: the row says which of its fields are the
    // headers' word alone.
    let unsigned: Option<String> = app
        .pg()
        .query_one("SELECT unsigned_fields FROM webhook_events WHERE event_id = 'big-1'", &[])
        .unwrap()
        .get(0);
    assert_eq!(unsigned.as_deref(), Some("event_id,event_type"));
}
