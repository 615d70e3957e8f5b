//! What a 202 means: the job is in the stream, byte for byte.

use std::time::{SystemTime, UNIX_EPOCH};

use webhook_ingestor::job::WebhookJob;

use crate::harness::{event, post_request, TestApp};

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

#[test]
fn a_valid_webhook_gets_202_with_the_stream_id_of_its_entry() {
    let app = TestApp::spawn();
    let body = event("stripe", "evt_123");

    let before = now_us();
    let resp = app.post("stripe", &body);
    let after = now_us();

    assert_eq!(resp.status, 202);
    assert_eq!(resp.json()["accepted"], true);
    let entries = app.stream_entries();
    assert_eq!(entries.len(), 1);
    let (id, fields) = &entries[0];
    assert_eq!(&resp.job_id(), id);
    let job = WebhookJob::from_stream_fields(fields.clone()).unwrap();
    assert_eq!(job.provider, "stripe");
    assert_eq!(job.event_id, "evt_123");
    assert_eq!(job.event_timestamp_us, 1_795_383_325_123_000);
    assert!((before..=after).contains(&job.received_at_us), "{before} <= {} <= {after}", job.received_at_us);
    assert_eq!(job.payload, body.as_bytes(), "the body is stored exactly as received");
}

#[test]
fn extra_fields_whitespace_and_unicode_are_kept_exactly() {
    let app = TestApp::spawn();
    let body = "{ \"provider\" : \"github\",\n \"eventId\":\"d\u{e9}livery-\u{1f600}\", \"timestamp\":\"2026-11-22T21:35:25+05:30\",\
                \"data\":{\"nested\":[1,{\"a\":null}]}, \"signature\":\"sha256=abc\"}\n";
    let resp = app.post("github", body);
    assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));
    let (_, fields) = &app.stream_entries()[0];
    let job = WebhookJob::from_stream_fields(fields.clone()).unwrap();
    assert_eq!(job.event_id, "d\u{e9}livery-\u{1f600}");
    assert_eq!(job.payload, body.as_bytes());
}

#[test]
fn a_chunked_body_is_accepted_and_stored_decoded() {
    let app = TestApp::spawn();
    let body = event("shopify", "evt_chunked");
    let (a, b) = body.split_at(40);
    let mut client = app.client();
    client.send(
        format!(
            "POST /webhooks/shopify HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        )
        .as_bytes(),
    );
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));
    let job = WebhookJob::from_stream_fields(app.stream_entries()[0].1.clone()).unwrap();
    assert_eq!(job.payload, body.as_bytes());
    // The connection is still usable afterwards.
    assert_eq!(client.post("shopify", &event("shopify", "evt_next")).status, 202);
}

#[test]
fn expect_100_continue_gets_the_interim_answer_before_the_body_is_sent() {
    let app = TestApp::spawn();
    let body = event("stripe", "evt_expect");
    let mut client = app.client();
    client.send(
        format!(
            "POST /webhooks/stripe HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(client.read_response().unwrap().status, 100);
    client.send(body.as_bytes());
    assert_eq!(client.read_response().unwrap().status, 202);
    assert_eq!(app.stream_len(), 1);
}

#[test]
fn http_1_0_gets_an_http_1_0_answer_and_the_connection_closes() {
    let app = TestApp::spawn();
    let body = event("stripe", "evt_10");
    let mut client = app.client();
    let req = String::from_utf8(post_request("stripe", &body)).unwrap().replacen("HTTP/1.1", "HTTP/1.0", 1);
    client.send(req.as_bytes());
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 202);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(client.is_closed());
}
