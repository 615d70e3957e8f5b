//! Operations: liveness and the container health probe.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{free_port, TestApp};

#[test]
fn health_live_answers_200_without_touching_redis() {
    let mut app = TestApp::spawn();
    app.redis.kill();
    let mut client = app.client();
    client.send(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json(), serde_json::json!({"status": "ok"}));
    assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
    client.send(b"POST /health/live HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("GET, HEAD"));
}

fn healthcheck(port: u16) -> bool {
    Command::new(env!("CARGO_BIN_EXE_webhook-ingestor"))
        .arg("healthcheck")
        .env("PORT", port.to_string())
        .env_remove("REDIS_URL")
        .env_remove("DATABASE_URL")
        .status()
        .expect("the binary runs")
        .success()
}

#[test]
fn the_healthcheck_command_reports_a_serving_gateway_and_fails_otherwise() {
    let app = TestApp::spawn();
    assert!(healthcheck(app.addr.port()));
    assert!(!healthcheck(free_port()), "nothing listens there");
}

pub fn health(app: &TestApp) -> (u16, serde_json::Value) {
    let mut client = app.client();
    client.send(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = client.read_response().unwrap();
    (resp.status, resp.json())
}

/// Polls `/health` until it answers `status`; returns how long that took.
fn health_becomes(app: &TestApp, status: u16, within: Duration) -> (Duration, serde_json::Value) {
    let started = Instant::now();
    loop {
        let (got, doc) = health(app);
        if got == status {
            return (started.elapsed(), doc);
        }
        assert!(started.elapsed() < within, "/health still {got} after {within:?}: {doc}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn health_reports_every_dependency_in_terminus_shape() {
    let app = TestApp::spawn_full(|_| {});
    let (status, doc) = health(&app);
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["error"], json!({}));
    for name in ["redis", "database", "memory_rss"] {
        assert_eq!(doc["info"][name]["status"], "up", "{doc}");
        assert_eq!(doc["details"][name]["status"], "up", "{doc}");
    }
    assert!(doc["details"]["memory_rss"]["rss_bytes"].as_u64().unwrap() > 0);
}

#[test]
fn health_warns_when_a_commit_is_not_durable_and_stays_up() {
    // The test servers run with fsync=off (speed): exactly what a
    // production server must not, and what /health must say.
    let app = TestApp::spawn_full(|c| {
        c.store.synchronous_commit = webhook_ingestor::store::SynchronousCommit::Local
    });
    let (status, doc) = health(&app);
    assert_eq!(status, 200, "a warning, not an outage: {doc}");
    let db = &doc["details"]["database"];
    assert_eq!(db["status"], "up");
    assert_eq!(db["fsync"], "off");
    assert_eq!(db["synchronous_commit"], "local", "the gateway's own setting, per session: {doc}");
    assert!(db["warning"].as_str().unwrap().contains("fsync=off"), "{doc}");
    // check-config says the same.
    let out = Command::new(env!("CARGO_BIN_EXE_webhook-ingestor"))
        .arg("check-config")
        .env("DATABASE_URL", app.postgres.as_ref().unwrap().url(crate::harness::DB))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("postgres: fsync=off synchronous_commit=on"), "{text}");
    assert!(text.contains("postgres: warning: the server runs with fsync=off"), "{text}");
}

#[test]
fn health_goes_503_when_postgres_stops_and_200_when_it_returns() {
    let mut app = TestApp::spawn_full(|_| {});
    health_becomes(&app, 200, Duration::from_secs(5));
    app.postgres.as_mut().unwrap().stop();
    let (took, doc) = health_becomes(&app, 503, Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "503 after {took:?}");
    assert_eq!(doc["status"], "error");
    assert_eq!(doc["error"]["database"]["status"], "down");
    // The error text (hosts, users, databases) stays in the log.
    assert_eq!(doc["error"]["database"]["message"], "unreachable", "{doc}");
    assert_eq!(doc["info"]["redis"]["status"], "up");
    app.postgres.as_mut().unwrap().start_again();
    health_becomes(&app, 200, Duration::from_secs(10));
}

#[test]
fn health_goes_503_when_redis_stops_and_200_when_it_returns() {
    let mut app = TestApp::spawn_full(|_| {});
    health_becomes(&app, 200, Duration::from_secs(5));
    app.redis.kill();
    let (took, doc) = health_becomes(&app, 503, Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "503 after {took:?}");
    assert_eq!(doc["error"]["redis"]["status"], "down");
    assert_eq!(doc["info"]["database"]["status"], "up");
    app.redis.restart();
    health_becomes(&app, 200, Duration::from_secs(10));
}

#[test]
fn health_checks_memory_and_only_the_dependencies_of_the_role() {
    let app = TestApp::spawn_with(|c| c.ops.memory_limit_bytes = 1 << 20);
    let (status, doc) = health(&app);
    assert_eq!(status, 503);
    assert_eq!(doc["error"]["memory_rss"]["status"], "down");
    assert!(doc["details"].get("database").is_none(), "the api role has no database: {doc}");
}

/// A strict reading of the Prometheus text format: every sample belongs to a
/// declared metric family; returns `series → value`.
fn parse_prometheus(text: &str) -> std::collections::HashMap<String, f64> {
    let mut families = std::collections::HashSet::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            families.insert(name.to_string());
        } else if line.starts_with("# HELP ") || line.is_empty() {
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let name = series.split('{').next().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{name}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| families.contains(*f));
            assert!(families.contains(name) || family.is_some(), "sample of an undeclared metric: {line}");
            if series.contains('{') {
                assert!(series.ends_with('}') && series.contains("=\""), "{line}");
            }
            samples.insert(series.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("{line}")));
        }
    }
    samples
}

pub fn scrape(app: &TestApp) -> std::collections::HashMap<String, f64> {
    let mut client = app.client();
    client.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    parse_prometheus(std::str::from_utf8(&resp.body).unwrap())
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_every_request() {
    let app = TestApp::spawn_full(|_| {});
    let accepted = r#"webhook_http_requests_total{route="webhook",status="202"}"#;
    let before = scrape(&app);
    let n = 37;
    let mut client = app.client();
    for i in 0..n {
        assert_eq!(client.post("stripe", &crate::harness::event("stripe", &format!("evt_{i}"))).status, 202);
    }
    assert_eq!(client.post("stripe", "{}").status, 400);
    crate::harness::wait_until(Duration::from_secs(30), "the rows", || app.rows() == n);
    crate::harness::wait_until(Duration::from_secs(10), "the worker counters", || {
        scrape(&app).get("webhook_rows_inserted_total").copied() == Some(n as f64)
    });
    // The queue gauges are cached for up to a second.
    crate::harness::wait_until(Duration::from_secs(10), "the queue gauges to show the drain", || {
        let m = scrape(&app);
        m.get("webhook_queue_length") == Some(&0.0) && m.get("webhook_queue_pending") == Some(&0.0)
    });
    let after = scrape(&app);

    let moved = after[accepted] - before.get(accepted).copied().unwrap_or(0.0);
    assert_eq!(moved, n as f64, "the 202 counter moved by exactly the posts");
    assert_eq!(after[r#"webhook_http_requests_total{route="webhook",status="400"}"#], 1.0);
    assert_eq!(after["webhook_enqueued_total"], n as f64);
    assert!(after["webhook_http_request_duration_seconds_count"] >= (n + 1) as f64);
    assert_eq!(
        after[r#"webhook_http_request_duration_seconds_bucket{le="+Inf"}"#],
        after["webhook_http_request_duration_seconds_count"]
    );
    assert_eq!(after["webhook_queue_length"], 0.0);
    assert_eq!(after["webhook_queue_pending"], 0.0);
    assert_eq!(after["webhook_dead_letter_length"], 0.0);
    assert!(after["webhook_resident_memory_bytes"] > 0.0);
}

#[test]
fn health_shows_dependency_errors_only_when_asked_to() {
    let mut app = TestApp::spawn_with(|c| c.ops.health_show_errors = true);
    app.redis.kill();
    let (_, doc) = health_becomes(&app, 503, Duration::from_secs(5));
    let message = doc["error"]["redis"]["message"].as_str().unwrap();
    assert_ne!(message, "unreachable", "{doc}");
    assert!(message.to_lowercase().contains("refused") || message.contains("os error"), "{doc}");

    let mut quiet = TestApp::spawn();
    quiet.redis.kill();
    let (_, doc) = health_becomes(&quiet, 503, Duration::from_secs(5));
    assert_eq!(doc["error"]["redis"]["message"], "unreachable", "{doc}");
    assert!(!doc.to_string().contains("os error") && !doc.to_string().contains("127.0.0.1"), "{doc}");
}

#[test]
fn a_flood_of_metrics_scrapes_never_starves_health() {
    let app = TestApp::spawn_full(|_| {});
    health_becomes(&app, 200, Duration::from_secs(5));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = app.addr;
    let scrapers: Vec<_> = (0..100)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut client = crate::harness::Client::connect(addr);
                let mut n = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    client.send(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
                    assert_eq!(client.read_response().unwrap().status, 200);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(4);
    let mut probes = Vec::new();
    while Instant::now() < until {
        probes.push(health(&app));
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes: u32 = scrapers.into_iter().map(|t| t.join().unwrap()).sum();
    let failed: Vec<&(u16, serde_json::Value)> = probes.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} /health probes failed during {scrapes} scrapes: {:?}",
        failed.len(),
        probes.len(),
        failed.first()
    );
    assert!(scrapes > 1000, "the flood was a flood: {scrapes} scrapes");
}
