//! Per-core bounds on what clients can make the gateway hold: buffer memory
//! after a large request, body bytes in flight, connections per client.

use std::time::Duration;

use webhook_ingestor::config::CoreSelection;
use webhook_ingestor::http::proxy::TrustedProxies;

use crate::abuse::rss_bytes;
use crate::fault::Gateway;
use crate::harness::{event, free_port, wait_until, Client, RedisServer, TestApp};

/// A valid envelope of about `size` bytes.
fn padded_event(id: &str, size: usize) -> String {
    let padding = "x".repeat(size.saturating_sub(150));
    format!(
        r#"{{"provider":"stripe","eventId":"{id}","timestamp":"2026-11-22T21:35:25Z","data":{{"p":"{padding}"}}}}"#
    )
}

#[test]
fn idle_keep_alive_connections_give_back_the_buffers_of_their_large_requests() {
    let redis = RedisServer::start();
    let gateway = Gateway::spawn(free_port(), &redis, None, "api", &[]);
    let addr = gateway.addr();
    assert_eq!(Client::connect(addr).post("stripe", &event("stripe", "evt_warm")).status, 202);
    let before = rss_bytes(gateway.pid());
    // 200 clients each send one 1,000,000-byte request (a 404: the body is
    // still read, to keep the connection usable) and then idle.
    let body = vec![b'x'; 1_000_000];
    let idle: Vec<Client> = (0..200)
        .map(|_| {
            let mut c = Client::connect(addr);
            c.send(format!("POST /nope HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
            c.send(&body);
            assert_eq!(c.read_response().expect("an answer").status, 404);
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_bytes(gateway.pid());
    let grown = after.saturating_sub(before);
    eprintln!("rss before {before} B, with 200 idle connections after 1 MB requests: {after} B (+{grown} B)");
    // Kept at their peak, the buffers alone would be 200 MB.
    assert!(grown < 40 << 20, "idle connections hold {grown} B");
    drop(idle);
}

/// The head of a POST of `body` to the stripe route.
fn head(body: &str) -> String {
    format!(
        "POST /webhooks/stripe HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
}

/// A client connected from `source` (a loopback address: each is a client
/// of its own for the per-client bounds).
fn client_from(app: &TestApp, source: [u8; 4]) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&std::net::SocketAddr::from((source, 0)).into()).unwrap();
    socket.connect(&app.addr.into()).unwrap();
    let stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    Client::from_stream(stream)
}

#[test]
fn bodies_beyond_the_core_budget_get_503_unread_and_the_budget_comes_back() {
    let app = TestApp::spawn_with(|c| {
        c.http.cores = CoreSelection::Count(1);
        c.http.max_buffer_bytes_per_core = 2 << 20;
    });
    let body = |id: &str| padded_event(id, 900_000);
    // Two large bodies, all but their last bytes arrived, hold 1.8 MB of
    // the 2 MiB budget (counted as they arrive: a declared length alone
    // holds nothing). Three clients, so no one meets its half share.
    let (a, b) = (body("evt_a"), body("evt_b"));
    let mut ca = client_from(&app, [127, 0, 0, 2]);
    ca.send(head(&a).as_bytes());
    ca.send(&a.as_bytes()[..a.len() - 1000]);
    let mut cb = client_from(&app, [127, 0, 0, 3]);
    cb.send(head(&b).as_bytes());
    cb.send(&b.as_bytes()[..b.len() - 1000]);
    std::thread::sleep(Duration::from_millis(300));
    // A third is refused once its arriving bytes pass what is left, and
    // its connection closed without reading the rest.
    let c = body("evt_c");
    let mut cc = client_from(&app, [127, 0, 0, 4]);
    cc.send(head(&c).as_bytes());
    cc.send(&c.as_bytes()[..400_000]);
    let refused = cc.read_response().expect("an answer before the whole body");
    assert_eq!((refused.status, refused.header("retry-after")), (503, Some("1")));
    assert!(cc.is_closed());
    // Small requests are not accounted and still pass.
    assert_eq!(app.post("stripe", &event("stripe", "evt_small")).status, 202);
    // The first two complete; their budget is released.
    ca.send(&a.as_bytes()[a.len() - 1000..]);
    cb.send(&b.as_bytes()[b.len() - 1000..]);
    assert_eq!(ca.read_response().unwrap().status, 202);
    assert_eq!(cb.read_response().unwrap().status, 202);
    let mut again = client_from(&app, [127, 0, 0, 4]);
    again.send(head(&c).as_bytes());
    again.send(c.as_bytes());
    assert_eq!(again.read_response().unwrap().status, 202);
}

#[test]
fn one_client_holds_at_most_half_of_a_cores_body_budget() {
    let app = TestApp::spawn_with(|c| {
        c.http.cores = CoreSelection::Count(1);
        c.http.max_buffer_bytes_per_core = 4 << 20;
    });
    let body = |id: &str| padded_event(id, 900_000);
    // One client's slow bodies: two fit its 2 MiB share, a third does not.
    let slow: Vec<(Client, String)> = ["evt_s1", "evt_s2"]
        .iter()
        .map(|id| {
            let b = body(id);
            let mut c = client_from(&app, [127, 0, 0, 5]);
            c.send(head(&b).as_bytes());
            c.send(&b.as_bytes()[..b.len() - 1000]);
            (c, b)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let third = body("evt_s3");
    let mut c3 = client_from(&app, [127, 0, 0, 5]);
    c3.send(head(&third).as_bytes());
    c3.send(&third.as_bytes()[..400_000]);
    assert_eq!(c3.read_response().expect("refused").status, 503, "past its share");
    // Another client still has the other half.
    let other = body("evt_other");
    let mut co = client_from(&app, [127, 0, 0, 6]);
    co.send(head(&other).as_bytes());
    co.send(other.as_bytes());
    assert_eq!(co.read_response().unwrap().status, 202);
    for (mut c, b) in slow {
        c.send(&b.as_bytes()[b.len() - 1000..]);
        assert_eq!(c.read_response().unwrap().status, 202);
    }
}

#[test]
fn connections_per_client_are_capped_and_trusted_proxies_are_exempt() {
    let app = TestApp::spawn_with(|c| {
        c.http.cores = CoreSelection::Count(1);
        c.http.max_connections_per_ip = 3;
    });
    let mut held: Vec<Client> = (0..3)
        .map(|i| {
            let mut c = app.client();
            assert_eq!(c.post("stripe", &event("stripe", &format!("evt_{i}"))).status, 202);
            c
        })
        .collect();
    let mut fourth = app.client();
    let refused = fourth.read_response().expect("a 503 without asking");
    assert_eq!((refused.status, refused.header("retry-after")), (503, Some("1")));
    assert!(refused.json()["message"].as_str().unwrap().contains("too many connections from this client"));
    assert!(fourth.is_closed());
    // One leaves: a new one gets in.
    drop(held.pop());
    wait_until(Duration::from_secs(5), "a free slot", || {
        app.client().post("stripe", &event("stripe", "evt_slot")).status == 202
    });

    // Behind a proxy every client has the proxy's address: it is exempt.
    let proxied = TestApp::spawn_with(|c| {
        c.http.cores = CoreSelection::Count(1);
        c.http.max_connections_per_ip = 3;
        c.http.trusted_proxies = TrustedProxies::parse("127.0.0.1").unwrap();
    });
    let _many: Vec<Client> = (0..6)
        .map(|i| {
            let mut c = proxied.client();
            assert_eq!(c.post("stripe", &event("stripe", &format!("evt_p{i}"))).status, 202);
            c
        })
        .collect();
}
