//! Every refusal: the exact status, NestJS's error shape, no stream entry,
//! and a server that still answers afterwards.

use crate::harness::{event, Client, Response, TestApp};

/// Checks the NestJS error shape and returns the response for more checks.
fn assert_error(resp: &Response, status: u16) {
    assert_eq!(resp.status, status, "{}", String::from_utf8_lossy(&resp.body));
    let v = resp.json();
    assert_eq!(v["statusCode"], status, "{v}");
    assert!(v["error"].is_string() && !v["message"].is_null(), "{v}");
}

fn assert_still_serves(app: &TestApp, stored_before: usize) {
    assert_eq!(app.stream_len(), stored_before, "a refused request must not reach the stream");
    assert_eq!(app.post("stripe", &event("stripe", "evt_after")).status, 202);
}

const TS: &str = "2026-11-22T21:35:25.123Z";

#[test]
fn invalid_bodies_get_400_with_every_failed_rule() {
    let app = TestApp::spawn();
    let long_id = "e".repeat(256);
    let cases: Vec<(String, &[&str])> = vec![
        ("{".into(), &["body must be valid JSON"]),
        // Ending in a backslash once panicked a core (found by fuzzing).
        (r#"{"provider":"stripe","eventId":"e\"#.into(), &["body must be valid JSON"]),
        (r#"{"provider":"stripe","eventId":"e","timestamp":"#.into(), &["body must be valid JSON"]),
        ("not json".into(), &["body must be valid JSON"]),
        ("".into(), &["body must be valid JSON"]),
        (r#"{"provider":"stripe",}"#.into(), &["body must be valid JSON"]),
        ("{} {}".into(), &["body must be valid JSON"]),
        ("[]".into(), &["body must be a JSON object"]),
        ("null".into(), &["body must be a JSON object"]),
        ("42".into(), &["body must be a JSON object"]),
        (
            "{}".into(),
            &[
                "provider should not be empty",
                "eventId should not be empty",
                "timestamp should not be empty",
                "data must be an object",
            ],
        ),
        (
            format!(r#"{{"eventId":"e","timestamp":"{TS}","data":{{}}}}"#),
            &["provider should not be empty", "provider must be a string"],
        ),
        (
            format!(r#"{{"provider":"github","eventId":"e","timestamp":"{TS}","data":{{}}}}"#),
            &["provider must be equal to the path parameter (stripe)"],
        ),
        (
            format!(r#"{{"provider":7,"eventId":"e","timestamp":"{TS}","data":{{}}}}"#),
            &["provider must be a string"],
        ),
        (
            format!(r#"{{"provider":"stripe","eventId":"","timestamp":"{TS}","data":{{}}}}"#),
            &["eventId should not be empty"],
        ),
        (
            format!(r#"{{"provider":"stripe","eventId":null,"timestamp":"{TS}","data":{{}}}}"#),
            &["eventId should not be empty", "eventId must be a string"],
        ),
        (
            format!(r#"{{"provider":"stripe","eventId":123,"timestamp":"{TS}","data":{{}}}}"#),
            &["eventId must be a string"],
        ),
        (
            format!(r#"{{"provider":"stripe","eventId":["e"],"timestamp":"{TS}","data":{{}}}}"#),
            &["eventId must be a string"],
        ),
        (
            format!(r#"{{"provider":"stripe","eventId":"{long_id}","timestamp":"{TS}","data":{{}}}}"#),
            &["eventId must be shorter than or equal to 255 bytes"],
        ),
        (
            r#"{"provider":"stripe","eventId":"e","timestamp":"yesterday","data":{}}"#.into(),
            &["timestamp must be a valid ISO 8601 date string"],
        ),
        (
            r#"{"provider":"stripe","eventId":"e","timestamp":1700000000,"data":{}}"#.into(),
            &["timestamp must be a valid ISO 8601 date string"],
        ),
        (
            r#"{"provider":"stripe","eventId":"e","timestamp":"2026-02-30T00:00:00Z","data":{}}"#.into(),
            &["timestamp must be a valid ISO 8601 date string"],
        ),
        (
            format!(r#"{{"provider":"stripe","eventId":"e","timestamp":"{TS}"}}"#),
            &["data should not be empty", "data must be an object"],
        ),
        (
            format!(r#"{{"provider":"stripe","eventId":"e","timestamp":"{TS}","data":[1]}}"#),
            &["data must be an object"],
        ),
        (
            format!(
                r#"{{"provider":"stripe","eventId":"e","timestamp":"{TS}","data":{{"note":"a\u0000b"}}}}"#
            ),
            &["body must not contain the escape"],
        ),
        (
            format!(r#"{{"provider":"stripe","eventId":"e","timestamp":"{TS}","data":{{"wei":1e131072}}}}"#),
            &["body must not contain a number beyond PostgreSQL numeric's range"],
        ),
        (
            format!(r#"{{"provider":"stripe","eventId":"e","timestamp":"{TS}","data":"x"}}"#),
            &["data must be an object"],
        ),
        (
            format!(
                r#"{{"provider":"stripe","eventId":"e","timestamp":"{TS}","data":{}1{}}}"#,
                "[".repeat(5000),
                "]".repeat(5000)
            ),
            &["body must not nest arrays and objects deeper than 1000 levels"],
        ),
        (
            format!(
                r#"{{"provider":"stripe","eventId":"e","timestamp":"{TS}","data":{}1{}}}"#,
                r#"{"a":"#.repeat(1000),
                "}".repeat(1000)
            ),
            &["body must not nest arrays and objects deeper than 1000 levels"],
        ),
        (
            r#"{"provider":"stripe","eventId":"e","timestamp":"-005000-01-01T00:00:00Z","data":{}}"#
                .to_string(),
            &["timestamp must not be before 4714-11-24T00:00:00Z BC"],
        ),
    ];
    assert!(cases.len() >= 20);
    let mut client = app.client();
    for (body, expected) in &cases {
        let resp = client.post("stripe", body);
        assert_error(&resp, 400);
        let got = resp.messages();
        for want in *expected {
            assert!(got.iter().any(|m| m.starts_with(want)), "body {body:.80}: expected {want:?} in {got:?}");
        }
    }
    // Invalid UTF-8 inside a string is not JSON.
    let mut raw = br#"{"provider":"stripe","eventId":"e"#.to_vec();
    raw.extend_from_slice(b"\xff\xfe");
    raw.extend_from_slice(format!(r#"","timestamp":"{TS}","data":{{}}}}"#).as_bytes());
    let mut req = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        raw.len()
    )
    .into_bytes();
    req.extend_from_slice(&raw);
    client.send(&req);
    let resp = client.read_response().unwrap();
    assert_error(&resp, 400);
    assert!(resp.messages()[0].starts_with("body must be valid JSON"));

    assert_still_serves(&app, 0);
}

#[test]
fn unknown_paths_get_404_and_other_methods_405_with_allow() {
    let app = TestApp::spawn();
    let mut client = app.client();
    for path in ["/", "/webhooks", "/webhooks/", "/webhooks/a/b", "/webhook/stripe"] {
        client.send(
            format!(
                "POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            )
            .as_bytes(),
        );
        assert_error(&client.read_response().unwrap(), 404);
    }
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        client.send(format!("{method} /webhooks/stripe HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        let resp = client.read_response().unwrap();
        assert_error(&resp, 405);
        assert_eq!(resp.header("allow"), Some("POST"));
    }
    assert_still_serves(&app, 0);
}

#[test]
fn a_malformed_provider_in_the_path_gets_400() {
    let app = TestApp::spawn();
    for provider in ["Stripe", "str%20ipe", &"a".repeat(65)] {
        let resp = app.post(provider, &event(provider, "evt"));
        assert_error(&resp, 400);
        assert!(resp.messages()[0].contains("provider"), "{:?}", resp.messages());
    }
    assert_still_serves(&app, 0);
}

#[test]
fn non_json_content_types_get_415() {
    let app = TestApp::spawn();
    let body = event("stripe", "evt");
    let mut client = app.client();
    for ct in ["Content-Type: text/plain\r\n", "Content-Type: application/x-www-form-urlencoded\r\n", ""] {
        client.send(
            format!("POST /webhooks/stripe HTTP/1.1\r\n{ct}Content-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        );
        assert_error(&client.read_response().unwrap(), 415);
    }
    assert_still_serves(&app, 0);
}

#[test]
fn oversized_bodies_get_413_before_they_are_read() {
    let app = TestApp::spawn_with(|c| c.http.max_body_bytes = 4096);

    // Declared too large: refused from the header, the body is never sent.
    let mut client = app.client();
    client.send(b"POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n");
    let resp = client.read_response().unwrap();
    assert_error(&resp, 413);
    assert_eq!(resp.header("connection"), Some("close"));

    // Chunked: refused as soon as a chunk size would pass the limit.
    let mut client = app.client();
    client.send(b"POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n");
    client.send(&[b'a'; 0x800]);
    client.send(b"\r\n801\r\n");
    assert_error(&client.read_response().unwrap(), 413);

    // With Expect: 100-continue the client never has to send it.
    let mut client = app.client();
    client.send(b"POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n");
    assert_error(&client.read_response().unwrap(), 413);

    assert_still_serves(&app, 0);
}

#[test]
fn an_oversized_head_gets_431() {
    let app = TestApp::spawn_with(|c| c.http.max_header_bytes = 2048);
    let mut client = app.client();
    let _ = client
        .try_send(format!("POST /webhooks/stripe HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(4096)).as_bytes());
    assert_error(&client.read_response().unwrap(), 431);
    assert_still_serves(&app, 0);
}

#[test]
fn garbage_and_ambiguous_framing_get_400_and_a_closed_connection() {
    let app = TestApp::spawn();
    let requests: [&[u8]; 5] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n",
        b"POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
        b"POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: -1\r\n\r\n",
        b"POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ];
    for raw in requests {
        let mut client = Client::connect(app.addr);
        client.send(raw);
        let resp = client
            .read_response()
            .unwrap_or_else(|| panic!("no answer to {:?}", String::from_utf8_lossy(raw)));
        assert_error(&resp, 400);
        assert!(client.is_closed(), "connection must close after {:?}", String::from_utf8_lossy(raw));
    }
    let mut client = Client::connect(app.addr);
    client.send(b"POST /webhooks/stripe HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
    assert_error(&client.read_response().unwrap(), 501);
    assert_still_serves(&app, 0);
}
