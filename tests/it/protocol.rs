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
    let app = TestApp::spawn_with(|c| c.request_timeout = Duration::from_millis(300));
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
    let app = TestApp::spawn_with(|c| c.request_timeout = Duration::from_millis(300));
    let mut client = app.client();
    client.send(b"POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro");
    assert_eq!(client.read_response().unwrap().status, 408);
    assert_eq!(app.stream_len(), 0);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let app = TestApp::spawn_with(|c| c.keepalive_timeout = Duration::from_millis(200));
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
    config.port = app.addr.port();
    let err = webhook_ingestor::app::start(&config, webhook_ingestor::app::Role::Api)
        .err()
        .expect("second start must fail");
    assert!(matches!(err, webhook_ingestor::app::StartError::PortInUse(_)), "{err}");
    assert_eq!(app.post("stripe", &event("stripe", "evt")).status, 202);
}

#[test]
fn shutdown_lets_the_request_in_flight_finish_and_closes_the_listener() {
    let app = TestApp::spawn_with(|c| c.enqueue_timeout = Duration::from_secs(10));
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
    let base = Config { host: [127, 0, 0, 1].into(), port: 0, ..Config::default() };
    for cores in [CoreSelection::List(vec![4095]), CoreSelection::Count(4096)] {
        let config = Config { cores: cores.clone(), ..base.clone() };
        let err = start(&config, Role::Api).err().expect("refused");
        assert!(matches!(err, StartError::Cores(_)), "{cores:?}: {err}");
        assert!(err.to_string().starts_with("CORES:"), "{err}");
    }
}
