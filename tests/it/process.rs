//! The real binary as a process: signals and restarts.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{event, free_port, wait_until, Client, PostgresServer, RedisServer, DB};

/// The binary serving `role` on `port`; `extra` environment overrides the defaults.
fn spawn_gateway(
    port: u16,
    redis: &RedisServer,
    pg: Option<&PostgresServer>,
    role: &str,
    extra: &[(&str, &str)],
) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_webhook-ingestor"));
    cmd.args(["serve", "--role", role])
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("CORES", "2")
        .env("PIN_CORES", "false")
        .env("REDIS_URL", redis.url())
        .env("SHUTDOWN_TIMEOUT_MS", "5000")
        .env("WORKER_BLOCK_MS", "100")
        .env("LOG_LEVEL", "warn")
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(pg) = pg {
        cmd.env("DATABASE_URL", pg.url(DB));
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.spawn().expect("the binary starts")
}

fn signal(child: &Child, sig: &str) {
    assert!(Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap().success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_listening(port: u16) {
    wait_until(Duration::from_secs(10), "the gateway to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

#[test]
fn sigterm_under_load_exits_0_and_every_202_is_a_row_after_restart() {
    let redis = RedisServer::start();
    let pg = PostgresServer::start();
    pg.create_database(DB);
    let port = free_port();
    let mut gateway = spawn_gateway(port, &redis, Some(&pg), "all", &[]);
    wait_listening(port);

    // Eight keep-alive clients post until the server goes away.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let addr = ([127, 0, 0, 1], port).into();
                let mut accepted = Vec::new();
                let mut client = Client::connect(addr);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let id = format!("evt_{c}_{i}");
                    if client
                        .try_send(&crate::harness::post_request("stripe", &event("stripe", &id)))
                        .is_err()
                    {
                        break;
                    }
                    match client.read_response() {
                        Some(r) if r.status == 202 => accepted.push(id),
                        Some(r) if r.header("connection") == Some("close") => break,
                        Some(_) => {}
                        None => break,
                    }
                }
                accepted
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));

    let signalled = Instant::now();
    signal(&gateway, "-TERM");
    let status = wait_exit(&mut gateway, Duration::from_secs(10));
    let took = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    let accepted: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert_eq!(status.code(), Some(0), "a drained shutdown exits 0");
    assert!(took < Duration::from_secs(6), "within SHUTDOWN_TIMEOUT_MS + slack: {took:?}");
    assert!(accepted.len() > 100, "the load was real: {} accepted", accepted.len());

    // A restart (workers only) stores whatever the first process had not.
    let mut worker = spawn_gateway(free_port(), &redis, Some(&pg), "worker", &[]);
    let mut db = pg.client(DB);
    let stored = |db: &mut postgres::Client| -> HashSet<String> {
        db.query("SELECT event_id FROM webhook_events", &[]).unwrap().iter().map(|r| r.get(0)).collect()
    };
    wait_until(Duration::from_secs(30), "every 202 to be a row", || {
        let rows = stored(&mut db);
        accepted.iter().all(|id| rows.contains(id))
    });
    let total: i64 = db.query_one("SELECT count(*) FROM webhook_events", &[]).unwrap().get(0);
    let distinct: i64 =
        db.query_one("SELECT count(DISTINCT event_id) FROM webhook_events", &[]).unwrap().get(0);
    assert_eq!(total, distinct, "no event stored twice");
    assert!(
        total as usize >= accepted.len() && total as usize <= accepted.len() + 8,
        "{total} rows for {} 202s",
        accepted.len()
    );
    signal(&worker, "-TERM");
    assert_eq!(wait_exit(&mut worker, Duration::from_secs(10)).code(), Some(0));
}

#[test]
fn a_second_signal_exits_at_once() {
    let redis = RedisServer::start();
    let port = free_port();
    let patient = [("ENQUEUE_TIMEOUT_MS", "30000"), ("SHUTDOWN_TIMEOUT_MS", "30000")];
    let mut gateway = spawn_gateway(port, &redis, None, "api", &patient);
    wait_listening(port);
    assert_eq!(
        Client::connect(([127, 0, 0, 1], port).into()).post("stripe", &event("stripe", "evt_up")).status,
        202
    );
    // A request stuck on a frozen Redis keeps the drain waiting...
    redis.pause();
    let stuck = std::thread::spawn(move || {
        let mut c = Client::connect(([127, 0, 0, 1], port).into());
        c.try_send(&crate::harness::post_request("stripe", &event("stripe", "evt_stuck"))).unwrap();
        c.read_response()
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&gateway, "-TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(gateway.try_wait().unwrap().is_none(), "still draining after the first signal");
    // ...until the second signal.
    let second = Instant::now();
    signal(&gateway, "-TERM");
    let status = wait_exit(&mut gateway, Duration::from_secs(5));
    assert!(second.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Some(143));
    redis.resume();
    assert!(stuck.join().unwrap().is_none(), "the stuck request got no 202");
}
