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

fn health(app: &TestApp) -> (u16, serde_json::Value) {
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
fn health_goes_503_when_postgres_stops_and_200_when_it_returns() {
    let mut app = TestApp::spawn_full(|_| {});
    health_becomes(&app, 200, Duration::from_secs(5));
    app.postgres.as_mut().unwrap().stop();
    let (took, doc) = health_becomes(&app, 503, Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "503 after {took:?}");
    assert_eq!(doc["status"], "error");
    assert_eq!(doc["error"]["database"]["status"], "down");
    assert!(doc["error"]["database"]["message"].as_str().is_some_and(|m| !m.is_empty()));
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
    let app = TestApp::spawn_with(|c| c.memory_limit_bytes = 1 << 20);
    let (status, doc) = health(&app);
    assert_eq!(status, 503);
    assert_eq!(doc["error"]["memory_rss"]["status"], "down");
    assert!(doc["details"].get("database").is_none(), "the api role has no database: {doc}");
}
