//! Hostile and broken clients: many idle connections, slowloris, a client
//! that never reads, huge bodies, smuggling, pipelined floods. None of them
//! may stop a normal client being served or make memory grow without bound.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::fault::Gateway;
use crate::harness::{event, free_port, post_request, Client, RedisServer, TestApp};

/// A normal client still gets its 202s, on a new connection, at once.
fn assert_served(app: &TestApp, n: usize) {
    let mut client = app.client();
    client.set_read_timeout(Duration::from_secs(5));
    for i in 0..n {
        assert_eq!(client.post("stripe", &event("stripe", &format!("evt_normal_{i}"))).status, 202);
    }
}

#[test]
fn two_thousand_idle_keep_alive_connections_do_not_stop_a_normal_client() {
    let app = TestApp::spawn();
    let idle: Vec<Client> = (0..2000)
        .map(|_| {
            let mut c = app.client();
            c.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(c.read_response().expect("served").status, 200);
            c
        })
        .collect();
    assert_served(&app, 100);
    assert_eq!(app.stream_len(), 100);
    // The idle ones were kept, not shed to make room.
    let mut alive = 0;
    for mut c in idle.into_iter().step_by(100) {
        c.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n");
        alive += usize::from(c.read_response().is_some_and(|r| r.status == 200));
    }
    assert_eq!(alive, 20);
}

#[test]
fn slowloris_clients_sending_a_byte_a_second_are_cut_off_by_the_request_timeout() {
    let app = TestApp::spawn_with(|c| c.http.request_timeout = Duration::from_secs(2));
    let head = b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    let addr = app.addr;
    let started = Instant::now();
    let loris: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                // One byte a second until the server hangs up on us.
                for (sent, b) in head.iter().enumerate() {
                    if s.write_all(&[*b]).is_err() {
                        return (sent, started.elapsed());
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                (head.len(), started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_served(&app, 20);
    for l in loris {
        let (sent, at) = l.join().unwrap();
        // 2 s of timeout; the write that notices the close comes a second or two later.
        assert!(sent < 8, "a slowloris sent {sent} of {} head bytes before the cut", head.len());
        assert!(at < Duration::from_secs(8), "cut off only after {at:?}");
    }
}

/// Resident memory of a process, from `/proc`.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

#[test]
fn clients_that_never_read_their_answers_do_not_grow_memory() {
    let redis = RedisServer::start();
    let gateway = Gateway::spawn(free_port(), &redis, None, "api", &[("REQUEST_TIMEOUT_MS", "2000")]);
    let addr = gateway.addr();
    // Warm up so the baseline includes the runtimes' steady buffers.
    assert_eq!(Client::connect(addr).post("stripe", &event("stripe", "evt_warm")).status, 202);
    let before = rss_bytes(gateway.pid());

    // 20 clients each pipeline 32 MiB of tiny requests whose answers are
    // ~25× larger, and never read. TCP must push back: they cannot send it all.
    const TRIED: usize = 32 << 20;
    let request = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n";
    let floods: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
                let chunk = request.repeat(2048);
                let mut sent = 0;
                while sent < TRIED {
                    match s.write(&chunk) {
                        Ok(n) => sent += n,
                        Err(_) => break,
                    }
                }
                (sent, s)
            })
        })
        .collect();
    let floods: Vec<(usize, TcpStream)> = floods.into_iter().map(|t| t.join().unwrap()).collect();
    let peak = rss_bytes(gateway.pid());
    for (sent, _) in &floods {
        assert!(*sent < TRIED / 4, "the server kept reading from a client that never reads: {sent} bytes");
    }
    let grown = peak.saturating_sub(before);
    eprintln!("rss before {before} B, while 20 clients never read: {peak} B (+{grown} B)");
    assert!(grown < 32 << 20, "memory grew by {grown} B for 20 stalled clients");

    // The writes that cannot complete time out and those connections are dropped.
    std::thread::sleep(Duration::from_secs(4));
    let mut client = Client::connect(addr);
    assert_eq!(client.post("stripe", &event("stripe", "evt_after")).status, 202);
    drop(floods);
}

#[test]
fn a_10_mib_body_is_refused_with_413_and_the_server_stops_reading_it() {
    let app = TestApp::spawn(); // MAX_BODY_BYTES default: 1 MiB
    let body = vec![b'a'; 10 << 20];
    for framing in ["Content-Length: 10485760", "Transfer-Encoding: chunked"] {
        let mut stream = TcpStream::connect(app.addr).unwrap();
        stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let chunked = framing.contains("chunked");
        let reader = {
            let s = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut c = Client::from_stream(s);
                c.read_response()
            })
        };
        // Send the whole body; the server may hang up before we are done.
        let mut sent = 0;
        for piece in body.chunks(64 << 10) {
            let ok = if chunked {
                stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).and_then(|_| {
                    stream.write_all(piece)?;
                    stream.write_all(b"\r\n")
                })
            } else {
                stream.write_all(piece)
            };
            if ok.is_err() {
                break;
            }
            sent += piece.len();
        }
        let resp = reader.join().unwrap().expect("a 413 before the close");
        assert_eq!(resp.status, 413, "{framing}");
        assert_eq!(resp.header("connection"), Some("close"));
        eprintln!("{framing}: 413 after the client wrote {sent} of {} body bytes", body.len());
    }
    assert_eq!(app.stream_len(), 0);
    assert_served(&app, 5);
}

#[test]
fn smuggling_attempts_get_400_and_the_hidden_request_is_never_served() {
    let app = TestApp::spawn();
    let hidden = String::from_utf8(post_request("stripe", &event("stripe", "evt_smuggled"))).unwrap();
    let n = hidden.len();
    let attempts = [
        // CL.TE: a front end honouring Content-Length would forward `hidden` as body.
        format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}", n + 5),
        // TE.CL.
        format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{hidden}\r\n0\r\n\r\n", n),
        // Two different lengths.
        format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 0\r\nContent-Length: {n}\r\n\r\n{hidden}"),
        // An obfuscated Transfer-Encoding next to a length.
        format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {n}\r\nTransfer-Encoding: chunked, identity\r\n\r\n{hidden}"),
        // A chunk size that overflows 64 bits.
        format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n1000000000000000000000002\r\nab\r\n0\r\n\r\n{hidden}"),
        // A negative size and a size with junk after it.
        format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nab\r\n0\r\n\r\n{hidden}"),
        format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2 x\r\nab\r\n0\r\n\r\n{hidden}"),
        // A bare LF inside the chunk framing.
        format!("POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n{hidden}"),
    ];
    for raw in &attempts {
        let mut client = app.client();
        let _ = client.try_send(raw.as_bytes());
        let resp = client.read_response().unwrap_or_else(|| panic!("no answer to {raw:?}"));
        assert!(matches!(resp.status, 400 | 501), "{} for {raw:?}", resp.status);
        assert_eq!(resp.header("connection"), Some("close"), "{raw:?}");
        assert!(client.read_response().is_none(), "a second answer means the hidden request ran: {raw:?}");
    }
    assert_eq!(app.stream_len(), 0, "nothing, the hidden request included, was accepted");
    assert_served(&app, 5);
}

#[test]
fn a_pipelined_flood_is_answered_in_order() {
    let app = TestApp::spawn();
    // A known pattern: every third request is a 404, the rest are webhooks.
    const N: usize = 6000;
    let expected = |i: usize| if i % 3 == 2 { 404 } else { 202 };
    let mut stream = TcpStream::connect(app.addr).unwrap();
    let reader = {
        let s = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut c = Client::from_stream(s);
            let mut statuses = Vec::new();
            while let Some(r) = c.read_response() {
                statuses.push(r.status);
                if statuses.len() == N {
                    break;
                }
            }
            statuses
        })
    };
    let mut flood = Vec::new();
    for i in 0..N {
        if expected(i) == 404 {
            flood.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
        } else {
            flood.extend(post_request("stripe", &event("stripe", &format!("evt_{i:05}"))));
        }
    }
    stream.write_all(&flood).unwrap();
    let statuses = reader.join().unwrap();
    assert_eq!(statuses.len(), N, "every request answered");
    for (i, s) in statuses.iter().enumerate() {
        assert_eq!(*s, expected(i), "answer {i} out of order");
    }
    // The stream holds the webhooks in the order they were sent.
    let ids: Vec<String> = app
        .stream_entries()
        .into_iter()
        .map(|(_, f)| webhook_ingestor::job::WebhookJob::from_stream_fields(f.clone()).unwrap().event_id)
        .collect();
    let sent: Vec<String> = (0..N).filter(|i| expected(*i) == 202).map(|i| format!("evt_{i:05}")).collect();
    assert_eq!(ids, sent);
}

#[test]
fn connections_declaring_big_bodies_and_sending_nothing_hold_no_body_budget() {
    // 600 × 1 MiB declared is more than both cores' default budget (2 ×
    // 256 MiB): reserved from Content-Length, as before, every real body
    // over 16 KiB got 503 while they stayed open.
    let app = TestApp::spawn_with(|c| {
        c.http.max_connections_per_ip = 0;
        c.http.max_body_bytes = 2 << 20;
        c.http.request_timeout = Duration::from_secs(60);
    });
    let head = b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n";
    let held: Vec<TcpStream> = (0..600)
        .map(|_| {
            let mut s = TcpStream::connect(app.addr).unwrap();
            s.write_all(head).unwrap();
            s.write_all(b"{\"provider\":").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let padding = "x".repeat(20 * 1024);
    let mut client = app.client();
    for i in 0..20 {
        let body = format!(
            r#"{{"provider":"stripe","eventId":"evt_big_{i}","timestamp":"2026-11-22T21:35:25Z","data":{{"p":"{padding}"}}}}"#
        );
        assert_eq!(
            client.post("stripe", &body).status,
            202,
            "a real 20 KiB event, {} holders open",
            held.len()
        );
    }
    drop(held);
}

#[test]
fn a_request_refused_from_its_head_is_answered_and_its_body_never_read() {
    let app = TestApp::spawn();
    let mut s = TcpStream::connect(app.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A 404 whose 1 MiB body has not come: answered at once, then closed.
    s.write_all(b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{")
        .unwrap();
    let mut client = Client::from_stream(s);
    let resp = client.read_response().expect("answered before the body");
    assert_eq!(resp.status, 404);
    assert!(client.read_response().is_none(), "closed, not waiting for the body");
    // One whose body is all there is skipped and the connection kept.
    let mut client = app.client();
    let mut two = b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}".to_vec();
    two.extend(post_request("stripe", &event("stripe", "evt_after_404")));
    client.send(&two);
    assert_eq!(client.read_response().unwrap().status, 404);
    assert_eq!(client.read_response().unwrap().status, 202);
}
