//! Redis failures: never a 202 for a job Redis does not have, never a hang,
//! and recovery without restarting the gateway.

use std::time::{Duration, Instant};

use webhook_ingestor::queue::EnqueueMode;

use crate::harness::{event, TestApp};

const ENQUEUE_TIMEOUT: Duration = Duration::from_millis(500);

fn post_until_status(app: &TestApp, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        let resp = app.post("stripe", &event("stripe", &format!("evt_probe_{i}")));
        if resp.status == status {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "no {status} within {within:?}; last was {}", resp.status);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn redis_down_gives_503_with_retry_after_and_recovers_without_a_restart() {
    redis_down_gives_503_with_retry_after_and_recovers_without_a_restart_in(EnqueueMode::Thread);
}

/// Both enqueue modes hold this (`per_core.rs` runs it with `core`).
pub(crate) fn redis_down_gives_503_with_retry_after_and_recovers_without_a_restart_in(mode: EnqueueMode) {
    let mut app = TestApp::spawn_with(|c| {
        c.queue.enqueue_timeout = ENQUEUE_TIMEOUT;
        c.queue.enqueue_mode = mode;
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_before")).status, 202);

    app.redis.kill();
    let started = Instant::now();
    let resp = app.post("stripe", &event("stripe", "evt_during"));
    let took = started.elapsed();
    assert_eq!(resp.status, 503, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(resp.json()["statusCode"], 503);
    assert!(took < ENQUEUE_TIMEOUT + Duration::from_secs(1), "503 took {took:?}");
    // Later requests fail fast too (no reconnect storm, no hang).
    for i in 0..20 {
        assert_eq!(app.post("stripe", &event("stripe", &format!("evt_down_{i}"))).status, 503);
    }

    app.redis.restart();
    post_until_status(&app, 202, Duration::from_secs(5));
    let entries = app.stream_entries();
    let ids: Vec<String> = entries
        .iter()
        .map(|(_, f)| webhook_ingestor::job::WebhookJob::from_stream_fields(f.clone()).unwrap().event_id)
        .collect();
    assert!(
        ids.iter().all(|id| !id.starts_with("evt_down_") && id != "evt_during"),
        "a 503'd job was stored: {ids:?}"
    );
}

#[test]
fn a_frozen_redis_gives_503_in_time_and_recovers_when_thawed() {
    a_frozen_redis_gives_503_in_time_and_recovers_when_thawed_in(EnqueueMode::Thread);
}

/// Both enqueue modes hold this (`per_core.rs` runs it with `core`).
pub(crate) fn a_frozen_redis_gives_503_in_time_and_recovers_when_thawed_in(mode: EnqueueMode) {
    let app = TestApp::spawn_with(|c| {
        c.queue.enqueue_timeout = ENQUEUE_TIMEOUT;
        c.queue.enqueue_mode = mode;
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_before")).status, 202);

    app.redis.pause();
    let started = Instant::now();
    let resp = app.post("stripe", &event("stripe", "evt_frozen"));
    let took = started.elapsed();
    assert_eq!(resp.status, 503);
    assert!(resp.header("retry-after").is_some());
    assert!(
        took >= ENQUEUE_TIMEOUT / 2 && took < ENQUEUE_TIMEOUT + Duration::from_secs(1),
        "503 took {took:?}"
    );

    app.redis.resume();
    post_until_status(&app, 202, Duration::from_secs(10));
}

#[test]
fn a_full_hand_off_channel_answers_503_at_once() {
    let app = TestApp::spawn_with(|c| {
        c.queue.channel_capacity = 1;
        c.queue.batch_max = 1;
        c.queue.enqueue_timeout = Duration::from_secs(3);
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_link_up")).status, 202);
    app.redis.pause();
    // One job blocks the pipeline thread on the frozen Redis, one fills the
    // channel; from then on, requests must be refused without waiting. Jobs
    // are added until the channel has stayed full for a while, which proves
    // the pipeline thread is stuck on Redis rather than about to take it.
    let addr = app.addr;
    let mut waiting = Vec::new();
    let mut full_since: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "the channel never stayed full");
        if app.queue_backlog() >= 1 {
            if full_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_millis(200) {
                break;
            }
        } else {
            full_since = None;
            let i = waiting.len();
            waiting.push(std::thread::spawn(move || {
                crate::harness::Client::connect(addr)
                    .post("stripe", &event("stripe", &format!("evt_wait_{i}")))
            }));
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let started = Instant::now();
    let resp = app.post("stripe", &event("stripe", "evt_overflow"));
    assert_eq!(resp.status, 503);
    assert!(started.elapsed() < Duration::from_secs(1), "a full channel must not wait for Redis");
    assert!(resp.json()["message"].as_str().unwrap().contains("saturated"));
    app.redis.resume();
    for w in waiting {
        let status = w.join().unwrap().status;
        assert!(status == 202 || status == 503, "{status}");
    }
}

#[test]
fn a_queue_at_max_queue_depth_answers_503_and_accepts_again_once_the_workers_catch_up() {
    a_queue_at_max_queue_depth_answers_503_and_accepts_again_once_the_workers_catch_up_in(
        EnqueueMode::Thread,
    );
}

/// Both enqueue modes hold this (`per_core.rs` runs it with `core`).
pub(crate) fn a_queue_at_max_queue_depth_answers_503_and_accepts_again_once_the_workers_catch_up_in(
    mode: EnqueueMode,
) {
    // No workers: the stream only grows, one job per batch (one client).
    let app = TestApp::spawn_with(|c| {
        c.queue.max_queue_depth = 300;
        c.queue.enqueue_mode = mode;
    });
    let mut client = app.client();
    let mut accepted = 0;
    let refused = loop {
        let resp = client.post("stripe", &event("stripe", &format!("evt_fill_{accepted}")));
        match resp.status {
            202 => accepted += 1,
            503 => break resp,
            other => panic!("unexpected {other}"),
        }
        assert!(accepted <= 1000, "no 503 after {accepted} jobs with MAX_QUEUE_DEPTH 300");
    };
    // The length is counted from the acknowledgements between readings, so
    // the limit holds to the job, not to the last XLEN.
    assert_eq!(accepted, 300, "202s before the first 503");
    assert_eq!(app.stream_len(), 300);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["message"], "queue is full, retry later");
    for i in 0..10 {
        assert_eq!(client.post("stripe", &event("stripe", &format!("evt_over_{i}"))).status, 503);
    }
    assert_eq!(app.stream_len(), 300, "nothing refused was stored");

    // The workers catch up (entries deleted as after their commit): 202s again.
    let ids: Vec<String> = app.stream_entries().into_iter().map(|(id, _)| id).collect();
    let _: u64 = redis::cmd("XDEL").arg("webhooks").arg(&ids[..200]).query(&mut app.redis.con()).unwrap();
    post_until_status(&app, 202, Duration::from_secs(5));
}
