//! Security headers, CORS and rate limiting, seen from the wire.

use std::time::Duration;

use webhook_ingestor::http::cors::Cors;
use webhook_ingestor::http::proxy::TrustedProxies;

use crate::harness::{event, post_request, wait_until, Client, Response, TestApp};

const HELMET: [(&str, &str); 12] = [
    ("content-security-policy", "default-src 'self';base-uri 'self';font-src 'self' https: data:;form-action 'self';frame-ancestors 'self';img-src 'self' data:;object-src 'none';script-src 'self';script-src-attr 'none';style-src 'self' https: 'unsafe-inline';upgrade-insecure-requests"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("origin-agent-cluster", "?1"),
    ("referrer-policy", "no-referrer"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("x-content-type-options", "nosniff"),
    ("x-dns-prefetch-control", "off"),
    ("x-download-options", "noopen"),
    ("x-frame-options", "SAMEORIGIN"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-xss-protection", "0"),
];

fn assert_helmet(resp: &Response) {
    for (name, value) in HELMET {
        assert_eq!(resp.header(name), Some(value), "{name} on a {}", resp.status);
    }
    assert_eq!(resp.header("x-powered-by"), None);
}

#[test]
fn security_headers_are_on_every_answer_errors_included() {
    let app = TestApp::spawn_with(|c| {
        c.http.max_body_bytes = 1024;
        c.http.rate_limit_per_ip = 3;
    });
    let mut client = app.client();
    let accepted = client.post("stripe", &event("stripe", "evt_1"));
    assert_eq!(accepted.status, 202);
    assert_helmet(&accepted);
    let invalid = client.post("stripe", "{}");
    assert_eq!(invalid.status, 400);
    assert_helmet(&invalid);
    client.send(b"GET /nope HTTP/1.1\r\n\r\n");
    let missing = client.read_response().unwrap();
    assert_eq!(missing.status, 404);
    assert_helmet(&missing);
    let limited = client.post("stripe", &event("stripe", "evt_2"));
    assert_eq!(limited.status, 202);
    let limited = client.post("stripe", &event("stripe", "evt_3"));
    assert_eq!(limited.status, 429, "the fourth request inside a second");
    assert_helmet(&limited);
    let mut big = app.client();
    big.send(
        b"POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 999999\r\n\r\n",
    );
    let too_large = big.read_response().unwrap();
    assert_eq!(too_large.status, 413);
    assert_helmet(&too_large);
}

#[test]
fn security_headers_can_be_turned_off() {
    let app = TestApp::spawn_with(|c| c.http.security_headers = false);
    let resp = app.post("stripe", &event("stripe", "evt"));
    assert_eq!(resp.status, 202);
    assert_eq!(resp.header("x-frame-options"), None);
}

fn preflight(client: &mut Client, origin: &str) -> Response {
    client.send(
        format!(
            "OPTIONS /webhooks/stripe HTTP/1.1\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n"
        )
        .as_bytes(),
    );
    client.read_response().unwrap()
}

fn post_from(client: &mut Client, origin: &str, id: &str) -> Response {
    let body = event("stripe", id);
    client.send(
        format!(
            "POST /webhooks/stripe HTTP/1.1\r\nOrigin: {origin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    client.read_response().unwrap()
}

#[test]
fn cors_grants_only_the_configured_origins() {
    let app = TestApp::spawn_with(|c| c.http.cors = Cors::parse("https://dashboard.example.com").unwrap());
    let mut client = app.client();

    let ok = preflight(&mut client, "https://dashboard.example.com");
    assert_eq!(ok.status, 204);
    assert!(ok.body.is_empty() && ok.header("content-length").is_none());
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://dashboard.example.com"));
    assert_eq!(ok.header("access-control-allow-methods"), Some("POST"));
    assert_eq!(ok.header("access-control-allow-headers"), Some("Content-Type"));
    assert_eq!(ok.header("vary"), Some("Origin"));
    let resp = post_from(&mut client, "https://dashboard.example.com", "evt_cors_ok");
    assert_eq!(resp.status, 202);
    assert_eq!(resp.header("access-control-allow-origin"), Some("https://dashboard.example.com"));
    assert_eq!(resp.header("vary"), Some("Origin"));

    let denied = preflight(&mut client, "https://evil.example.net");
    assert_eq!(denied.status, 204);
    assert_eq!(denied.header("access-control-allow-origin"), None);
    assert_eq!(denied.header("access-control-allow-methods"), None);
    let resp = post_from(&mut client, "https://evil.example.net", "evt_cors_denied");
    assert_eq!(resp.header("access-control-allow-origin"), None);
    // CORS only tells browsers whether a page may read the answer; the request itself is served.
    assert_eq!(resp.status, 202);
}

#[test]
fn no_cors_origins_means_no_cors_headers_at_all() {
    let app = TestApp::spawn();
    let mut client = app.client();
    let resp = preflight(&mut client, "https://dashboard.example.com");
    assert_eq!(resp.status, 204);
    assert_eq!(resp.header("access-control-allow-origin"), None);
    assert_eq!(resp.header("vary"), None);
}

#[test]
fn over_the_limit_gets_429_with_its_headers_and_every_202_is_stored() {
    let app = TestApp::spawn_full(|c| c.http.rate_limit_per_ip = 20);
    let mut client = app.client();
    let mut burst = Vec::new();
    for i in 0..100 {
        burst.extend(post_request("stripe", &event("stripe", &format!("evt_{i}"))));
    }
    client.send(&burst);
    let answers: Vec<Response> = (0..100).map(|_| client.read_response().unwrap()).collect();
    let accepted = answers.iter().filter(|r| r.status == 202).count();
    let limited: Vec<&Response> = answers.iter().filter(|r| r.status == 429).collect();
    assert_eq!(accepted + limited.len(), 100, "only 202 or 429");
    assert!((20..100).contains(&accepted), "the burst passes, the rest is limited: {accepted} accepted");
    let first = &answers[0];
    assert_eq!(first.header("x-ratelimit-limit"), Some("20"));
    assert_eq!(first.header("x-ratelimit-remaining"), Some("19"));
    for r in &limited {
        assert_eq!(r.json()["statusCode"], 429);
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        assert!(r.header("x-ratelimit-reset").is_some());
    }
    wait_until(Duration::from_secs(30), "every 202 stored", || app.rows() == accepted as i64);
    assert_eq!(app.stream_len(), 0);
}

#[test]
fn x_forwarded_for_counts_only_behind_a_trusted_proxy_and_only_its_right_end() {
    let post_as = |client: &mut Client, forwarded: &str, id: &str| {
        let body = event("stripe", id);
        client.send(
            format!(
                "POST /webhooks/stripe HTTP/1.1\r\nX-Forwarded-For: {forwarded}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        client.read_response().unwrap().status
    };
    let limited = |statuses: &[u16]| statuses.iter().filter(|s| **s == 429).count();
    // The test client (127.0.0.1) is a trusted load balancer, behind it a
    // trusted internal proxy (10.0.0.1) appends the client's address.
    let trusted = TestApp::spawn_with(|c| {
        c.http.rate_limit_per_ip = 2;
        c.http.cores = webhook_ingestor::config::CoreSelection::Count(1);
        c.http.trusted_proxies = TrustedProxies::parse("127.0.0.1, 10.0.0.0/8").unwrap();
    });
    let mut client = trusted.client();
    let statuses: Vec<u16> = (0..6)
        .map(|i| post_as(&mut client, &format!("203.0.113.{i}, 10.0.0.1"), &format!("evt_{i}")))
        .collect();
    assert_eq!(limited(&statuses), 0, "six clients behind the proxies: {statuses:?}");

    // One client rotating the leftmost entry (which it writes itself) is
    // still the one address the trusted proxy appended.
    let statuses: Vec<u16> = (0..6)
        .map(|i| post_as(&mut client, &format!("192.0.2.{i}, 198.51.100.9"), &format!("evt_rot_{i}")))
        .collect();
    assert_eq!(limited(&statuses), 4, "a rotated left end changes nothing: {statuses:?}");

    // Without trusted proxies the header is ignored: one client, the peer.
    let untrusted = TestApp::spawn_with(|c| {
        c.http.rate_limit_per_ip = 2;
        c.http.cores = webhook_ingestor::config::CoreSelection::Count(1);
    });
    let mut client = untrusted.client();
    let statuses: Vec<u16> =
        (0..6).map(|i| post_as(&mut client, &format!("203.0.113.{i}"), &format!("evt_{i}"))).collect();
    assert_eq!(limited(&statuses), 4, "a spoofed header changes nothing: {statuses:?}");
}

/// A password in every spelling the clients accept, none of which may be printed.
const SECRET: &str = "Sup3r/S3cr?t@x";

fn secret_env() -> Vec<(&'static str, String)> {
    vec![
        ("REDIS_URL", format!("redis://:{}@127.0.0.1:1/", SECRET.replace(['/', '?', '@'], "_"))),
        (
            "DATABASE_URL",
            format!(
                "host=127.0.0.1 port=1 user=u password='{}' dbname=webhooks",
                SECRET.replace('\'', "\\'")
            ),
        ),
    ]
}

pub fn run_binary(args: &[&str], env: &[(&str, String)], for_at_most: Duration) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhook-ingestor"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && started.elapsed() < for_at_most {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn passwords_never_reach_check_config_the_start_log_or_a_configuration_error() {
    let shown = run_binary(&["check-config"], &secret_env(), Duration::from_secs(10));
    assert!(shown.contains("database_url") && shown.contains("password=***"), "{shown}");
    // A URL whose password holds `/`, and one in a query parameter.
    let urls = vec![
        ("DATABASE_URL", format!("postgres://u:{SECRET}@127.0.0.1:1/webhooks")),
        ("REDIS_URL", format!("redis://127.0.0.1:1/?password={}", SECRET.replace(['/', '?', '@'], "_"))),
    ];
    let shown_urls = run_binary(&["check-config"], &urls, Duration::from_secs(10));

    let port = crate::harness::free_port().to_string();
    let mut env = secret_env();
    env.extend([
        ("PORT", port),
        ("HOST", "127.0.0.1".into()),
        ("LOG_LEVEL", "debug".into()),
        ("CORES", "1".into()),
    ]);
    let log = run_binary(&["serve", "--role", "all"], &env, Duration::from_secs(3));
    assert!(log.contains("webhook-ingestor serving"), "the gateway started: {log:.2000}");

    let bad = vec![("DATABASE_URL", format!("mysql://u:{SECRET}@h/db"))];
    let error = run_binary(&["check-config"], &bad, Duration::from_secs(10));
    assert!(error.contains("DATABASE_URL"), "{error}");

    for (what, text) in [
        ("check-config", &shown),
        ("check-config (URLs)", &shown_urls),
        ("the start log", &log),
        ("a configuration error", &error),
    ] {
        for piece in ["Sup3r", "S3cr", SECRET] {
            assert!(!text.contains(piece), "{what} shows the password: {text:.3000}");
        }
    }
}
