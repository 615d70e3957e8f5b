//! HTTP/1.1 behaviour: keep-alive, pipelining, timeouts.

use std::time::{Duration, Instant};

use webhook_ingestor::job::WebhookJob;

use crate::harness::{event, post_request, TestApp};

#[test]
fn a_thousand_requests_share_one_keep_alive_connection() {
    let app = TestApp::spawn();
    let mut client = app.client();
    for i in 0..1000 {
        let resp = client.post("stripe", &event("stripe", &format!("evt_{i}")));
        assert_eq!(resp.status, 202, "request {i}");
        assert_eq!(resp.header("connection"), None, "keep-alive is the HTTP/1.1 default");
    }
    assert_eq!(app.stream_len(), 1000);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let app = TestApp::spawn();
    let mut client = app.client();
    let mut burst = Vec::new();
    for i in 0..50 {
        burst.extend(post_request("stripe", &event("stripe", &format!("evt_{i}"))));
    }
    // An invalid one in the middle must not shift the answers.
    burst.extend(post_request("stripe", "{}"));
    burst.extend(post_request("stripe", &event("stripe", "evt_last")));
    client.send(&burst);

    let answers: Vec<_> = (0..52).map(|_| client.read_response().unwrap()).collect();
    assert!(answers[..50].iter().all(|r| r.status == 202));
    assert_eq!(answers[50].status, 400);
    assert_eq!(answers[51].status, 202);
    let entries = app.stream_entries();
    assert_eq!(entries.len(), 51);
    let mut expected: Vec<String> = (0..50).map(|i| format!("evt_{i}")).collect();
    expected.push("evt_last".into());
    let order: Vec<String> =
        entries.iter().map(|(_, f)| WebhookJob::from_stream_fields(f.clone()).unwrap().event_id).collect();
    assert_eq!(order, expected, "entries are stored in request order");
    let ids: Vec<String> = answers.iter().filter(|r| r.status == 202).map(|r| r.job_id()).collect();
    let stored: Vec<String> = entries.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, stored, "each answer carries its own request's stream id");
}

#[test]
fn connection_close_is_honoured() {
    let app = TestApp::spawn();
    let mut client = app.client();
    let body = event("stripe", "evt_close");
    client.send(
        format!("POST /webhooks/stripe HTTP/1.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
            .as_bytes(),
    );
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 202);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(client.is_closed());
}

#[test]
fn a_request_that_trickles_in_too_slowly_gets_408() {
    let app = TestApp::spawn_with(|c| c.http.request_timeout = Duration::from_millis(300));
    let mut client = app.client();
    let started = Instant::now();
    client.send(b"POST /webhooks/stripe HTTP/1.1\r\nContent-");
    let resp = client.read_response().expect("a 408 before the close");
    assert_eq!(resp.status, 408);
    assert!(client.is_closed());
    assert!(started.elapsed() < Duration::from_secs(5), "cut off after {:?}", started.elapsed());
}

#[test]
fn a_body_that_never_arrives_gets_408() {
    let app = TestApp::spawn_with(|c| c.http.request_timeout = Duration::from_millis(300));
    let mut client = app.client();
    client.send(b"POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro");
    assert_eq!(client.read_response().unwrap().status, 408);
    assert_eq!(app.stream_len(), 0);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let app = TestApp::spawn_with(|c| c.http.keepalive_timeout = Duration::from_millis(200));
    let mut client = app.client();
    assert_eq!(client.post("stripe", &event("stripe", "evt")).status, 202);
    let idle_since = Instant::now();
    assert!(client.is_closed());
    assert!(idle_since.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_second_gateway_on_the_same_port_is_refused() {
    let app = TestApp::spawn();
    let mut config = app.config.clone();
    config.http.port = app.addr.port();
    let err = webhook_ingestor::app::start(&config, webhook_ingestor::app::Role::Api)
        .err()
        .expect("second start must fail");
    assert!(matches!(err, webhook_ingestor::app::StartError::PortInUse(_)), "{err}");
    assert_eq!(app.post("stripe", &event("stripe", "evt")).status, 202);
}

#[test]
fn shutdown_lets_the_request_in_flight_finish_and_closes_the_listener() {
    let app = TestApp::spawn_with(|c| c.queue.enqueue_timeout = Duration::from_secs(10));
    assert_eq!(app.post("stripe", &event("stripe", "evt_link_up")).status, 202);
    app.redis.pause();
    let addr = app.addr;
    let in_flight = std::thread::spawn(move || {
        let mut client = crate::harness::Client::connect(addr);
        client.post("stripe", &event("stripe", "evt_in_flight"))
    });
    std::thread::sleep(Duration::from_millis(300));

    app.shutdown_token().cancel();
    std::thread::sleep(Duration::from_millis(300));
    assert!(std::net::TcpStream::connect(addr).is_err(), "no new connections once shutdown starts");
    app.redis.resume();

    let resp = in_flight.join().unwrap();
    assert_eq!(resp.status, 202, "the request in flight still gets its answer");
    assert_eq!(resp.header("connection"), Some("close"));
    assert_eq!(app.stream_len(), 2);
}

#[test]
fn cores_outside_this_process_cpu_set_are_refused_by_name() {
    use webhook_ingestor::app::{start, Role, StartError};
    use webhook_ingestor::config::{Config, CoreSelection};
    for cores in [CoreSelection::List(vec![4095]), CoreSelection::Count(4096)] {
        let mut config = Config::default();
        config.http.host = [127, 0, 0, 1].into();
        config.http.port = 0;
        config.http.cores = cores.clone();
        let err = start(&config, Role::Api).err().expect("refused");
        assert!(matches!(err, StartError::Cores(_)), "{cores:?}: {err}");
        assert!(err.to_string().starts_with("CORES:"), "{err}");
    }
}

/// Everything the server sends within `wait` after `bytes`, as text.
fn raw_exchange(app: &TestApp, bytes: &[u8], wait: Duration) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(app.addr).unwrap();
    s.write_all(bytes).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let until = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn a_head_answer_carries_no_body_so_the_next_answer_is_read_right() {
    let app = TestApp::spawn();
    let text = raw_exchange(
        &app,
        b"HEAD /health/live HTTP/1.1\r\nHost: t\r\n\r\nHEAD /nope HTTP/1.1\r\nHost: t\r\n\r\nGET /health/live HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(1),
    );
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(answers.len(), 3, "{text}");
    assert!(
        answers[0].starts_with("200 OK") && answers[0].ends_with("\r\n\r\n"),
        "no body after HEAD: {text}"
    );
    assert!(answers[0].contains("content-length: 15\r\n"), "the headers GET would get");
    assert!(
        answers[1].starts_with("404") && answers[1].ends_with("\r\n\r\n"),
        "no body on an error either: {text}"
    );
    assert!(answers[2].ends_with("\r\n\r\n{\"status\":\"ok\"}"), "{text}");
}

#[test]
fn connection_close_with_bytes_still_unread_ends_in_a_clean_close_not_a_reset() {
    use std::io::{Read, Write};
    let app = TestApp::spawn();
    let body = event("stripe", "evt_close_unread");
    let mut req = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    // More than one read takes: still in the kernel when the answer is sent.
    req.extend(std::iter::repeat_n(b'x', 256 * 1024));
    let mut s = std::net::TcpStream::connect(app.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => break Err(e),
        }
    };
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 202 Accepted"), "{text}");
    // Closing with unread bytes would reset the connection (and can destroy
    // the answer); lingering reads them first and closes cleanly.
    assert!(end.is_ok(), "the connection was reset: {end:?}");
}

#[test]
fn expect_100_continue_is_ignored_on_http10_and_an_unknown_expectation_gets_417() {
    use std::io::{Read, Write};
    let app = TestApp::spawn();
    let body = event("stripe", "evt_http10");
    let mut s = std::net::TcpStream::connect(app.addr).unwrap();
    s.write_all(
        format!(
            "POST /webhooks/stripe HTTP/1.0\r\nExpect: 100-continue\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut buf = [0u8; 4096];
    let early = s.read(&mut buf);
    assert!(
        early.is_err(),
        "an HTTP/1.0 client got an interim answer: {:?}",
        early.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    s.write_all(body.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.0 202 Accepted"), "{}", String::from_utf8_lossy(&buf[..n]));

    let text = raw_exchange(
        &app,
        b"POST /webhooks/stripe HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n",
        Duration::from_secs(1),
    );
    assert!(text.starts_with("HTTP/1.1 417 Expectation Failed"), "{text}");
}

#[test]
fn a_global_rate_limit_below_the_core_count_still_serves() {
    // One request a second over two cores: half a token each, which used to
    // refuse every request forever.
    let app = TestApp::spawn_with(|c| {
        c.http.rate_limit_global = 1;
        c.http.rate_limit_per_ip = 0;
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_slow_lane")).status, 202);
}
