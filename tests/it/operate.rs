//! The operator's API (issue 27), against real Redis and PostgreSQL: dead
//! letters searched, replayed by filter (a dry run first) and deleted;
//! rejections kept within their bounds with no secret in them; per-source
//! health and its series; every route's scopes and errors.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use webhook_ingestor::ingest::sources::Sources;

use crate::consume::{Api, ADMIN, READ};
use crate::harness::{event, wait_until, Client, TestApp};

const DRAIN: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec_operate_secret_4d1f";

pub const SOURCES: &str = r#"
[[source]]
route = "stripe"
kind = "stripe"
secrets = ["whsec_operate_secret_4d1f"]

[[source]]
route = "open"
kind = "envelope"
silent_after_secs = 60
"#;

fn tokens() -> webhook_ingestor::api::Tokens {
    webhook_ingestor::api::Tokens::parse([format!("read:{READ}").as_str(), &format!("admin:{ADMIN}")])
        .unwrap()
}

/// Gateway, one worker thread (two attempts before a dead letter) and the API.
fn operating_app(
    sources: Option<&str>,
    tweak: impl FnOnce(&mut webhook_ingestor::config::Config),
) -> TestApp {
    TestApp::spawn_full(|c| {
        c.api.addr = "127.0.0.1:0".parse().unwrap();
        c.api.tokens = tokens();
        c.worker.max_attempts = 2;
        c.worker.reclaim_idle = Duration::from_millis(200);
        c.worker.threads = 1;
        if let Some(s) = sources {
            c.ingest.sources = Some(Arc::new(Sources::parse(s, &|_| None).unwrap()));
        }
        tweak(c);
    })
}

fn api(app: &TestApp, token: Option<&str>) -> Api {
    Api::new(app.app_api_addr().expect("the API runs"), token)
}

fn ids_of(page: &Value) -> Vec<i64> {
    page["data"].as_array().unwrap().iter().map(|d| d["id"].as_i64().unwrap()).collect()
}

#[test]
fn dead_letters_are_searched_replayed_by_filter_after_a_dry_run_and_leave_once_stored() {
    let app = operating_app(None, |_| {});
    assert_eq!(app.post("shop", &event("shop", "evt_first")).status, 202);
    wait_until(DRAIN, "migrations and a first row", || app.rows() == 1);
    // PostgreSQL refuses the "poison" provider's events (a constraint an
    // operator added by mistake), and one id of another provider.
    app.pg()
        .batch_execute(
            "ALTER TABLE webhook_events ADD CONSTRAINT no_poison CHECK (provider <> 'poison');
             ALTER TABLE webhook_events ADD CONSTRAINT no_evt_x CHECK (event_id <> 'evt_x')",
        )
        .unwrap();
    for i in 0..6 {
        assert_eq!(app.post("poison", &event("poison", &format!("evt_p{i}"))).status, 202);
    }
    assert_eq!(app.post("shop", &event("shop", "evt_x")).status, 202);
    for i in 0..10 {
        assert_eq!(app.post("shop", &event("shop", &format!("evt_ok{i}"))).status, 202);
    }
    wait_until(DRAIN, "seven dead letters", || app.dead_letters() == 7);
    wait_until(DRAIN, "the good rows", || app.rows() == 11);

    let read = api(&app, Some(READ));
    let admin = api(&app, Some(ADMIN));
    // Search: newest first, by provider, SQLSTATE, error text, time; paged.
    let all = read.ok("/v1/dead-letters");
    assert_eq!(ids_of(&all).len(), 7);
    assert!(ids_of(&all).windows(2).all(|w| w[0] > w[1]), "newest first");
    let poison = read.ok("/v1/dead-letters?provider=poison&sqlstate=23514");
    assert_eq!(ids_of(&poison).len(), 6);
    assert_eq!(poison["data"][0]["attempts"], 2);
    assert_eq!(ids_of(&read.ok("/v1/dead-letters?q=NO_EVT_X")).len(), 1, "error text, any case");
    assert_eq!(ids_of(&read.ok("/v1/dead-letters?since=2100-01-01T00:00:00Z")).len(), 0);
    assert_eq!(ids_of(&read.ok("/v1/dead-letters?until=2100-01-01T00:00:00Z")).len(), 7);
    let first = read.ok("/v1/dead-letters?provider=poison&limit=4");
    assert_eq!(ids_of(&first).len(), 4);
    let next = first["next"].as_str().expect("a next page");
    let second = read.ok(&format!("/v1/dead-letters?provider=poison&limit=4&cursor={next}"));
    assert_eq!(ids_of(&second).len(), 2);
    assert!(second["next"].is_null(), "the last page");
    let mut paged = ids_of(&first);
    paged.extend(ids_of(&second));
    assert_eq!(paged, ids_of(&poison), "the pages hold the search, once each");

    // One, whole: the body as sent, the error, attempts.
    let id = ids_of(&poison)[0];
    let one = read.ok(&format!("/v1/dead-letters/{id}"));
    let body: Value = serde_json::from_str(one["rawBody"].as_str().unwrap()).unwrap();
    assert_eq!(body["provider"], "poison");
    assert!(one["error"].as_str().unwrap().contains("no_poison"));
    assert_eq!(one["sqlstate"], "23514");

    // Replay is an admin's: 403 for a read token, nothing moves.
    let filter = r#"{"filter":{"provider":"poison","sqlstate":"23514"},"dry_run":true}"#;
    assert_eq!(read.post("/v1/dead-letters/replay", filter).status, 403);
    let dry = admin.post("/v1/dead-letters/replay", filter);
    assert_eq!(dry.status, 200, "{}", String::from_utf8_lossy(&dry.body));
    assert_eq!((dry.json()["matched"].as_u64(), dry.json()["replayed"].as_u64()), (Some(6), Some(0)));
    assert_eq!(app.dead_letters(), 7, "a dry run moves nothing");

    // Fixed; replayed for real, at most 4 first: they leave the table only
    // once stored, through the worker path.
    app.pg().batch_execute("ALTER TABLE webhook_events DROP CONSTRAINT no_poison").unwrap();
    let real = admin.post("/v1/dead-letters/replay", r#"{"filter":{"provider":"poison"},"max":4}"#);
    assert_eq!(real.status, 200, "{}", String::from_utf8_lossy(&real.body));
    assert_eq!((real.json()["matched"].as_u64(), real.json()["replayed"].as_u64()), (Some(6), Some(4)));
    wait_until(DRAIN, "four replayed rows", || app.rows() == 15);
    wait_until(DRAIN, "their dead letters gone", || app.dead_letters() == 3);
    let rest = admin.post("/v1/dead-letters/replay", r#"{"filter":{"provider":"poison"},"dry_run":false}"#);
    assert_eq!((rest.json()["matched"].as_u64(), rest.json()["replayed"].as_u64()), (Some(2), Some(2)));
    wait_until(DRAIN, "every poison row", || app.rows() == 17);
    wait_until(DRAIN, "only evt_x left", || app.dead_letters() == 1);
    let again = admin.post("/v1/dead-letters/replay", r#"{"filter":{"provider":"poison"}}"#);
    assert_eq!(again.json()["matched"], 0, "nothing left to replay");
    let stored: i64 = app
        .pg()
        .query_one("SELECT count(DISTINCT event_id) FROM webhook_events WHERE provider = 'poison'", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, 6, "each poison event stored once");

    // By id, then delete: evt_x still fails, so it dies again in its own row.
    let x = ids_of(&read.ok("/v1/dead-letters?q=no_evt_x"))[0];
    let by_id = admin.post("/v1/dead-letters/replay", &format!(r#"{{"ids":[{x}, 999999]}}"#));
    assert_eq!((by_id.json()["matched"].as_u64(), by_id.json()["replayed"].as_u64()), (Some(1), Some(1)));
    wait_until(DRAIN, "evt_x dead again", || {
        let l = read.ok(&format!("/v1/dead-letters/{x}"));
        l["replays"] == 1 && l["replayedAt"].is_null()
    });
    assert_eq!(app.dead_letters(), 1, "the same row");
    assert_eq!(read.request("DELETE", &format!("/v1/dead-letters/{x}"), None).status, 403);
    assert_eq!(admin.request("DELETE", &format!("/v1/dead-letters/{x}"), None).status, 200);
    assert_eq!(admin.request("DELETE", &format!("/v1/dead-letters/{x}"), None).status, 404);
    assert_eq!(read.get(&format!("/v1/dead-letters/{x}")).status, 404);
    assert_eq!(app.dead_letters(), 0);
}

#[test]
fn every_operator_route_checks_its_token_its_scope_and_its_input() {
    let app = operating_app(Some(SOURCES), |_| {});
    let none = api(&app, None);
    let wrong = api(&app, Some("not-a-token"));
    let read = api(&app, Some(READ));
    let admin = api(&app, Some(ADMIN));
    for path in ["/v1/dead-letters", "/v1/dead-letters/1", "/v1/rejections", "/v1/sources", "/v1/stats"] {
        for client in [&none, &wrong] {
            let r = client.get(path);
            assert_eq!(r.status, 401, "{path}");
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{path}");
        }
        assert_eq!(read.get(path).status, if path.ends_with("/1") { 404 } else { 200 }, "{path}");
    }
    for (method, path, body) in
        [("POST", "/v1/dead-letters/replay", r#"{"ids":[1]}"#), ("DELETE", "/v1/dead-letters/1", "")]
    {
        assert_eq!(none.request(method, path, Some(body)).status, 401, "{path}");
        let r = read.request(method, path, Some(body));
        assert_eq!(r.status, 403, "{path}");
        assert!(r.json()["message"].as_str().unwrap().contains("admin"), "{path}");
    }
    // 400s name what is wrong.
    for (path, words) in [
        ("/v1/dead-letters?since=yesterday", "since must be an RFC 3339 time"),
        ("/v1/dead-letters?sqlstate=bad", "sqlstate"),
        ("/v1/dead-letters?limit=0", "limit must be a whole number from 1 to 1000"),
        ("/v1/dead-letters?cursor=-4", "positive"),
        ("/v1/dead-letters?color=red", "unknown parameter \"color\""),
        ("/v1/dead-letters/abc", "positive whole number"),
        ("/v1/rejections?status=200", "status is 400 to 599"),
        ("/v1/rejections?source=nobody", "no source \"nobody\""),
        ("/v1/rejections?cursor=zzz", "cursor"),
        ("/v1/sources?x=1", "takes none"),
    ] {
        let r = read.get(path);
        assert_eq!(r.status, 400, "{path}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["message"].as_str().unwrap().contains(words), "{path}: {}", r.json());
    }
    for (body, words) in [
        (r#"{"ids":[1],"filter":{}}"#, "not both"),
        (r#"{}"#, "give ids"),
        (r#"{"ids":[]}"#, "positive dead-letter ids"),
        (r#"{"ids":[1],"max":3}"#, "max applies to a filter"),
        (r#"{"filter":{"since":"noon"}}"#, "since must be an RFC 3339 time"),
        (r#"{"filter":{"colour":"red"}}"#, "unknown field"),
        (r#"not json"#, "body"),
    ] {
        let r = admin.post("/v1/dead-letters/replay", body);
        assert_eq!(r.status, 400, "{body}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.json()["message"].as_str().unwrap().contains(words), "{body}: {}", r.json());
    }
    let r = admin.request("PUT", "/v1/dead-letters/replay", Some("{}"));
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = read.request("POST", "/v1/sources", Some("{}"));
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    assert_eq!(read.get("/v1/nothing-here").status, 404);
    // The status page's shell needs no token and carries a strict policy.
    let page = none.get("/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.header("content-security-policy").unwrap().contains("default-src 'none'"));
    assert!(String::from_utf8_lossy(&page.body).contains("/status.js"));
    assert_eq!(none.get("/status.js").status, 200);
    // Stats answers what the CLI prints.
    let stats = read.ok("/v1/stats");
    assert_eq!(stats["stream"], "webhooks");
    assert!(stats["queue"]["oldestUnackedSeconds"].is_number(), "{stats}");
    assert!(stats["store"]["rowsStored"].is_number(), "{stats}");
}

/// `n` requests to the Stripe route whose signature is wrong, each with an
/// `Authorization` header too; then one valid envelope on `open`.
fn flood_bad_signatures(app: &TestApp, n: usize) {
    let mut client = Client::connect(app.addr);
    for i in 0..n {
        let body =
            format!(r#"{{"id":"evt_{i}","type":"invoice.paid","created":1700000000,"note":"{SECRET}?"}}"#);
        let request = format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
             Stripe-Signature: t=1700000000,v1={:064x}\r\nAuthorization: Bearer {SECRET}\r\n\
             X-Request-Id: req-{i}\r\nContent-Length: {}\r\n\r\n{body}",
            i,
            body.len()
        );
        client.send(request.as_bytes());
        assert_eq!(client.read_response().unwrap().status, 401);
    }
}

#[test]
fn rejections_stay_within_their_bounds_keep_no_secret_and_show_in_the_source_health() {
    let app = operating_app(Some(SOURCES), |c| {
        c.ops.rejections.per_source = 100;
        c.ops.rejections.bytes = 4 << 20;
    });
    let read = api(&app, Some(READ));
    let before = read.ok("/v1/sources");
    let open = before["data"].as_array().unwrap().iter().find(|s| s["source"] == "open").unwrap().clone();
    assert_eq!(open["silent"], true, "never accepted: silent past its interval");
    assert!(open["lastAcceptedAt"].is_null());

    flood_bad_signatures(&app, 1500);
    // An unknown route and an unsupported type are kept too.
    assert_eq!(app.post("nobody", "{}").status, 404);
    assert_eq!(app.post("open", &event("open", "evt_open_1")).status, 202);

    let kept = read.ok("/v1/rejections?source=stripe&limit=1000");
    let data = kept["data"].as_array().unwrap();
    assert!(!data.is_empty() && data.len() <= 100, "{} kept for one source", data.len());
    assert!(kept["keptBytes"].as_u64().unwrap() <= 4 << 20);
    let newest = &data[0];
    assert_eq!((newest["status"].as_u64(), newest["reason"].as_str()), (Some(401), Some("bad_signature")));
    assert_eq!(newest["request"], "POST /webhooks/stripe");
    assert_eq!(newest["client"], "127.0.0.1");
    let header = |r: &Value, name: &str| {
        r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .map(|h| h[1].clone())
    };
    assert_eq!(header(newest, "x-request-id"), Some(Value::from("req-1499")), "the newest first");
    assert_eq!(header(newest, "stripe-signature"), Some(Value::from("[redacted]")));
    assert_eq!(header(newest, "authorization"), Some(Value::from("[redacted]")));
    for r in data {
        for h in r["headers"].as_array().unwrap() {
            assert!(!h[1].as_str().unwrap().contains(SECRET), "a secret in a kept header: {h}");
            assert!(!h[1].as_str().unwrap().contains("v1="), "a signature in a kept header: {h}");
        }
    }
    assert!(newest["body"].as_str().unwrap().contains("evt_1499"), "the body's start is kept");
    let unrouted = read.ok("/v1/rejections?source=_unrouted");
    assert_eq!(unrouted["data"][0]["status"], 404);
    // Paging the kept ones: no repeats, newest first.
    let first = read.ok("/v1/rejections?source=stripe&limit=30");
    let cursor = first["next"].as_str().unwrap();
    let second = read.ok(&format!("/v1/rejections?source=stripe&limit=30&cursor={cursor}"));
    let rid = |r: &Value| header(r, "x-request-id").unwrap();
    let ids: Vec<Value> =
        first["data"].as_array().unwrap().iter().chain(second["data"].as_array().unwrap()).map(rid).collect();
    // One connection is one core's: its share of the bound (100 over two
    // cores) holds its newest.
    assert!(ids.len() >= 50, "{} paged", ids.len());
    let expected: Vec<Value> =
        (1500 - ids.len()..1500).rev().map(|i| Value::from(format!("req-{i}"))).collect();
    assert_eq!(ids, expected);

    // The source health: counts by reason in the windows, the last 202.
    let after = read.ok("/v1/sources");
    let stripe = after["data"].as_array().unwrap().iter().find(|s| s["source"] == "stripe").unwrap();
    assert_eq!(stripe["kind"], "stripe");
    assert_eq!(stripe["last5m"]["rejected"], 1500);
    assert_eq!(stripe["last5m"]["byReason"][0]["reason"], "bad_signature");
    assert_eq!(stripe["last1h"]["rejected"], 1500);
    assert_eq!(stripe["lastRejection"]["reason"], "bad_signature");
    let open = after["data"].as_array().unwrap().iter().find(|s| s["source"] == "open").unwrap();
    assert_eq!(open["last5m"]["accepted"], 1);
    assert_eq!(open["silent"], false);
    assert!(open["lastAcceptedAt"].is_string());
    assert_eq!(after["unrouted"]["total"]["rejected"], 1);

    // The same as Prometheus series.
    let mut c = app.client();
    c.send(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n");
    let metrics = String::from_utf8(c.read_response().unwrap().body).unwrap();
    assert!(metrics.contains(
        r#"webhook_source_rejected_total{source="stripe",status="401",reason="bad_signature"} 1500"#
    ));
    assert!(metrics
        .contains(r#"webhook_source_rejected_total{source="_unrouted",status="404",reason="not_found"} 1"#));
    assert!(metrics.contains(r#"webhook_source_silent_after_seconds{source="open"} 60"#));
    let last = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"webhook_source_last_accepted_timestamp_seconds{source="open"} "#))
        .expect("the open source's last 202");
    let age = webhook_ingestor::job::now_us() as f64 / 1e6 - last.parse::<f64>().unwrap();
    assert!((0.0..120.0).contains(&age), "{age}");
    assert!(!metrics.contains(r#"webhook_source_last_accepted_timestamp_seconds{source="stripe"}"#));
    assert!(metrics.contains("webhook_queue_oldest_unacked_age_seconds"));
}

/// The Chromium of Debian's `chromium` package (scripts/test installs it).
fn chromium(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"])
        .args(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000"])
        .args(args)
        .output()
        .expect("chromium runs (scripts/test installs Debian's chromium package)");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn the_status_page_loads_in_chromium_without_console_errors_and_shows_a_sources_last_202() {
    let app = operating_app(Some(SOURCES), |_| {});
    assert_eq!(app.post("open", &event("open", "evt_page")).status, 202);
    flood_bad_signatures(&app, 3);
    wait_until(DRAIN, "the row", || app.rows() == 1);
    let read = api(&app, Some(READ));
    let sources = read.ok("/v1/sources");
    let open = sources["data"].as_array().unwrap().iter().find(|s| s["source"] == "open").unwrap();
    let last = open["lastAcceptedAt"].as_str().expect("a last 202").to_string();

    let url = format!("http://{}/#token={READ}", app.app_api_addr().unwrap());
    let shown = chromium(&["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&shown.stdout);
    let log = String::from_utf8_lossy(&shown.stderr);
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(!log.contains("Uncaught"), "{log}");
    assert!(dom.contains(&last), "the page shows open's last 202 ({last}): {dom}");
    assert!(dom.contains("bad_signature"), "the page shows the rejections: {dom}");
    assert!(!dom.contains("id=\"status\" hidden"), "the status is shown, not the token prompt: {dom}");

    // Without a token the page asks for one and shows nothing.
    let bare = chromium(&["--dump-dom", &format!("http://{}/", app.app_api_addr().unwrap())]);
    let dom = String::from_utf8_lossy(&bare.stdout);
    assert!(dom.contains("id=\"status\" hidden") && !dom.contains(&last), "{dom}");

    // A picture, for the README and for a person reading the test's output.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&dir).unwrap();
    let png = dir.join("status-page.png");
    chromium(&[&format!("--screenshot={}", png.display()), "--window-size=1280,1800", &url]);
    let bytes = std::fs::read(&png).expect("a screenshot");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{} bytes", bytes.len());
    println!("status page screenshot: {}", png.display());
}
