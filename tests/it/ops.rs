//! Operations: liveness and the container health probe.

use std::process::Command;

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
