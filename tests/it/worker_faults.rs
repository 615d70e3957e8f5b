//! The worker under Redis and PostgreSQL trouble, driven a step at a time:
//! a batch in hand is never dropped, never reclaimed while it is worked on,
//! and a lost connection costs neither a delivery nor a reclaim wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use webhook_ingestor::app::Role;
use webhook_ingestor::store;
use webhook_ingestor::worker::{Worker, WorkerSettings};

use crate::harness::{event, wait_until, TestApp, DB};
use crate::worker::worker_settings;

fn pool(app: &TestApp) -> store::Pool {
    store::pool(&app.postgres.as_ref().unwrap().url(DB), 4, store::Timeouts::default()).unwrap()
}

fn worker(app: &TestApp, name: &str, settings: &Arc<WorkerSettings>) -> Worker {
    Worker::new(name.into(), settings.clone(), pool(app), CancellationToken::new()).unwrap()
}

fn post_events(app: &TestApp, n: usize, tag: &str) {
    let mut client = app.client();
    for i in 0..n {
        assert_eq!(client.post("stripe", &event("stripe", &format!("{tag}_{i}"))).status, 202);
    }
}

/// `(id, deliveries)` of every pending entry.
fn deliveries(app: &TestApp) -> Vec<(String, usize)> {
    let r: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg("webhooks")
        .arg("ingest")
        .arg("-")
        .arg("+")
        .arg(10_000)
        .query(&mut app.redis.con())
        .unwrap();
    r.ids.into_iter().map(|p| (p.id, p.times_delivered)).collect()
}

#[test]
fn a_read_holds_no_more_than_the_byte_budget() {
    let app = TestApp::spawn_api_with_postgres();
    let padding = "x".repeat(60_000);
    let mut client = app.client();
    for i in 0..100 {
        let body = format!(
            r#"{{"provider":"stripe","eventId":"evt_big_{i}","timestamp":"2026-11-22T21:35:25Z","data":{{"p":"{padding}"}}}}"#
        );
        assert_eq!(client.post("stripe", &body).status, 202);
    }
    let mut settings = (*worker_settings(&app, Duration::from_secs(60))).clone();
    settings.batch_max_bytes = 1 << 20;
    settings.max_body_bytes = 64 << 10;
    let settings = Arc::new(settings);
    let mut w = worker(&app, "budget", &settings);
    let entries = w.read().unwrap();
    let held: usize = entries.iter().map(|e| e.job.as_ref().unwrap().payload.len()).sum();
    assert!(!entries.is_empty() && held <= 1 << 20, "{} entries, {held} bytes", entries.len());
    assert!(entries.len() < 100, "a read is sized by bytes, not only by WORKER_BATCH_MAX");
    let stored = w.store(entries).unwrap();
    w.finalize(stored).unwrap();
    // The rest still drains, a budget at a time.
    let started = Instant::now();
    while app.rows() < 100 {
        w.run_once().unwrap();
        assert!(started.elapsed() < Duration::from_secs(60), "draining stalled at {} rows", app.rows());
    }
}

#[test]
fn a_batch_blocked_in_a_long_write_keeps_its_claim_and_nobody_reclaims_it() {
    let app = TestApp::spawn_api_with_postgres();
    post_events(&app, 50, "evt_long");
    store::migrate(&mut app.pg()).unwrap();
    let settings = worker_settings(&app, Duration::from_millis(600));

    // Hold the table so the write blocks well past RECLAIM_IDLE_MS.
    let mut locker = app.pg();
    let mut lock = locker.transaction().unwrap();
    lock.batch_execute("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE").unwrap();
    let mut a = worker(&app, "a", &settings);
    let writer = std::thread::spawn(move || a.run_once().unwrap());
    wait_until(Duration::from_secs(10), "A to take the batch", || deliveries(&app).len() == 50);
    std::thread::sleep(Duration::from_secs(2));

    let mut b = worker(&app, "b", &settings);
    let stolen = b.read().unwrap();
    assert!(stolen.is_empty(), "B reclaimed {} entries A is still writing", stolen.len());
    lock.rollback().unwrap();
    let report = writer.join().unwrap();
    assert_eq!((report.read, report.inserted), (50, 50));
    assert_eq!(app.rows(), 50);
    assert!(deliveries(&app).is_empty(), "everything acknowledged");
}

#[test]
fn a_live_worker_on_another_host_blocked_past_its_marks_expiry_keeps_its_batch() {
    // Silent in Redis for longer than a dead process's mark lasts, but alive:
    // its claim keeper keeps the mark, so nobody takes its entries.
    let app = TestApp::spawn_api_with_postgres();
    post_events(&app, 50, "evt_slow");
    store::migrate(&mut app.pg()).unwrap();
    let on = |host: &str| {
        let mut s = (*worker_settings(&app, Duration::from_secs(60))).clone();
        s.host = host.into();
        Arc::new(s)
    };
    let mut locker = app.pg();
    let mut lock = locker.transaction().unwrap();
    lock.batch_execute("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE").unwrap();
    let name = |host| webhook_ingestor::queue::keys::consumer(host, std::process::id(), 0);
    let mut a = worker(&app, &name("host-a"), &on("host-a"));
    let writer = std::thread::spawn(move || a.run_once().unwrap());
    wait_until(Duration::from_secs(10), "A to take the batch", || deliveries(&app).len() == 50);

    let mut b = worker(&app, &name("host-b"), &on("host-b"));
    let until = Instant::now() + Duration::from_secs(9);
    while Instant::now() < until {
        let stolen = b.read().unwrap();
        assert!(stolen.is_empty(), "B took {} entries from a live worker", stolen.len());
    }
    lock.rollback().unwrap();
    let report = writer.join().unwrap();
    assert_eq!((report.read, report.inserted), (50, 50));
    assert!(deliveries(&app).is_empty(), "everything acknowledged");
}

#[test]
fn after_a_lost_connection_a_worker_takes_back_its_own_entries_at_once_without_a_new_delivery() {
    let app = TestApp::spawn_api_with_postgres();
    post_events(&app, 20, "evt_own");
    // A reclaim would take a minute: anything sooner is the worker's own doing.
    let settings = worker_settings(&app, Duration::from_secs(60));
    let mut w = worker(&app, "w", &settings);
    let first = w.read().unwrap();
    assert_eq!(first.len(), 20);
    drop(first); // the reply that never arrived, as far as the step knows

    redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").exec(&mut app.redis.con()).unwrap();
    let started = Instant::now();
    let again = loop {
        // The first read meets the dead connection; the next reconnects.
        match w.read() {
            Ok(entries) if !entries.is_empty() => break entries,
            _ => assert!(started.elapsed() < Duration::from_secs(10), "the entries did not come back"),
        }
    };
    assert_eq!(again.len(), 20);
    assert!(again.iter().all(|e| e.deliveries == 1), "taking them back is not a delivery");
    assert!(deliveries(&app).iter().all(|(_, n)| *n == 1));
    let stored = w.store(again).unwrap();
    w.finalize(stored).unwrap();
    assert_eq!((app.rows(), app.stream_len(), deliveries(&app).len()), (20, 0, 0));
}

#[test]
fn redis_restarted_while_a_worker_holds_a_batch_loses_the_batch_nowhere() {
    let mut app = TestApp::spawn_api_with_postgres();
    app.redis.set_appendfsync("always"); // the PEL must survive the restart
    post_events(&app, 20, "evt_restart");
    let settings = worker_settings(&app, Duration::from_secs(60));
    let mut w = worker(&app, "w", &settings);
    let batch = w.read().unwrap();
    assert_eq!(batch.len(), 20);

    app.redis.restart();
    // The idempotency check meets the broken connection: the batch is
    // written anyway, and acknowledged once Redis answers again.
    let stored = w.store(batch).expect("a Redis blip does not drop the batch");
    w.finalize(stored).unwrap();
    assert_eq!((app.rows(), app.stream_len(), deliveries(&app).len()), (20, 0, 0));
}

#[test]
fn a_worker_started_while_postgres_is_down_takes_nothing_until_it_is_back() {
    let api = TestApp::spawn_api_with_postgres();
    post_events(&api, 50, "evt_pgdown");
    let (redis, mut pg) = api.into_servers();
    pg.as_mut().unwrap().stop();
    // Down far longer than RECLAIM_IDLE_MS × MAX_ATTEMPTS.
    let workers = TestApp::start(Role::Worker, redis, pg, |c| {
        c.worker.reclaim_idle = Duration::from_millis(200);
        c.worker.max_attempts = 2;
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(deliveries(&workers).is_empty(), "entries were taken while nothing could store them");
    let mut workers = workers;
    workers.postgres.as_mut().unwrap().launch();
    wait_until(Duration::from_secs(30), "50 rows", || workers.rows() == 50);
    wait_until(Duration::from_secs(10), "the stream drained", || {
        workers.stream_len() == 0 && workers.pending() == 0
    });
    assert_eq!(workers.dead_letters(), 0);
}

#[test]
fn a_statement_stuck_behind_a_lock_times_out_and_the_socket_has_short_keepalives() {
    let app = TestApp::spawn_full(|c| {
        c.store.timeouts.statement = Duration::from_millis(500);
        c.store.timeouts.socket = Duration::from_secs(6);
        c.worker.threads = 1;
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_warm")).status, 202);
    wait_until(Duration::from_secs(30), "the first row", || app.rows() == 1);

    let mut locker = app.pg();
    let mut lock = locker.transaction().unwrap();
    lock.batch_execute("LOCK TABLE webhook_events IN ACCESS EXCLUSIVE MODE").unwrap();
    post_events(&app, 5, "evt_locked");
    // Without a statement timeout the worker would wait on the lock for as
    // long as it is held, saying nothing.
    wait_until(Duration::from_secs(10), "the worker's statement to time out", || {
        crate::ops::scrape(&app).get("webhook_postgres_errors_total").copied().unwrap_or(0.0) > 0.0
    });
    // Its connections probe a silent peer within seconds, not two hours.
    let port = app.postgres.as_ref().unwrap().port;
    let ss = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established", "dport", "=", &format!(":{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&ss.stdout);
    let short = text.lines().filter_map(keepalive_secs).any(|s| s <= 6.0);
    assert!(short, "no connection to PostgreSQL with a short keepalive timer:\n{text}");
    lock.rollback().unwrap();
    wait_until(Duration::from_secs(30), "the rows once the lock is gone", || app.rows() == 6);
}

/// The seconds left on a socket's keepalive timer in an `ss -o` line.
fn keepalive_secs(line: &str) -> Option<f64> {
    let rest = &line[line.find("timer:(keepalive,")? + "timer:(keepalive,".len()..];
    let t = &rest[..rest.find(',')?];
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    let t = t.strip_suffix("sec")?;
    match t.split_once("min") {
        Some((m, s)) => Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().unwrap_or(0.0)),
        None => t.parse().ok(),
    }
}
