//! `ENQUEUE_MODE=core`: each core pipelines its own jobs to Redis. The same
//! contract as the pipeline thread: a 202 only for a job Redis acknowledged,
//! exactly one row per 202, 503 + `Retry-After` for everything else.

use std::collections::HashSet;
use std::time::Duration;

use webhook_ingestor::queue::EnqueueMode;

use crate::harness::{event, post_concurrently, wait_until, Client, TestApp};
use crate::outage;

fn core(c: &mut webhook_ingestor::config::Config) {
    c.queue.enqueue_mode = EnqueueMode::Core;
}

#[test]
fn every_202_of_concurrent_clients_is_one_row_with_the_per_core_enqueue() {
    let app = TestApp::spawn_full(core);
    let ids = post_concurrently(app.addr, 20, 150);
    assert_eq!(ids.len(), 3000);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 3000, "every job has its own stream id");
    wait_until(Duration::from_secs(30), "every 202 stored", || app.rows() == 3000);
    let distinct: i64 =
        app.pg().query_one("SELECT count(DISTINCT event_id) FROM webhook_events", &[]).unwrap().get(0);
    assert_eq!(distinct, 3000);
}

#[test]
fn redis_down_gives_503_with_retry_after_and_recovers_with_the_per_core_enqueue() {
    outage::redis_down_gives_503_with_retry_after_and_recovers_without_a_restart_in(EnqueueMode::Core);
}

#[test]
fn a_frozen_redis_gives_503_in_time_with_the_per_core_enqueue() {
    outage::a_frozen_redis_gives_503_in_time_and_recovers_when_thawed_in(EnqueueMode::Core);
}

#[test]
fn max_queue_depth_holds_with_the_per_core_enqueue() {
    outage::a_queue_at_max_queue_depth_answers_503_and_accepts_again_once_the_workers_catch_up_in(
        EnqueueMode::Core,
    );
}

#[test]
fn a_password_protected_redis_is_authenticated_and_a_wrong_password_is_a_503_that_names_no_secret() {
    let redis = crate::harness::RedisServer::start();
    let port: u16 = redis.url().rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap();
    redis::cmd("CONFIG").arg("SET").arg("requirepass").arg("s3cret-pw").exec(&mut redis.con()).unwrap();
    let app = TestApp::start(webhook_ingestor::app::Role::Api, redis, None, |c| {
        core(c);
        c.queue.redis_url = format!("redis://:s3cret-pw@127.0.0.1:{port}/");
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_auth")).status, 202);
    let mut con = redis::Client::open(format!("redis://:s3cret-pw@127.0.0.1:{port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    let len: u64 = redis::cmd("XLEN").arg("webhooks").query(&mut con).unwrap();
    assert_eq!(len, 1);

    let (redis, _) = app.into_servers();
    let wrong = TestApp::start(webhook_ingestor::app::Role::Api, redis, None, |c| {
        core(c);
        c.queue.redis_url = format!("redis://:not-the-pw@127.0.0.1:{port}/");
    });
    let resp = wrong.post("stripe", &event("stripe", "evt_wrong_pw"));
    assert_eq!(resp.status, 503);
    assert!(resp.header("retry-after").is_some());
    let body = String::from_utf8_lossy(&resp.body);
    assert!(!body.contains("not-the-pw") && !body.contains("s3cret"), "{body}");
    let len: u64 = redis::cmd("XLEN").arg("webhooks").query(&mut con).unwrap();
    assert_eq!(len, 1, "nothing stored without authentication");
}

#[test]
fn batch_linger_gathers_a_cores_jobs_into_fewer_pipelines_with_the_per_core_enqueue() {
    // 200 ms of linger: 40 requests over 200 ms on 40 connections ride in a
    // handful of pipelines per core, not in 40.
    let app = TestApp::spawn_with(|c| {
        core(c);
        c.queue.batch_linger = Duration::from_millis(200);
    });
    // One request every 5 ms: without a linger each is alone in its pipeline.
    let addr = app.addr;
    let posts: Vec<_> = (0..40)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(5));
            std::thread::spawn(move || {
                Client::connect(addr).post("stripe", &event("stripe", &format!("evt_{i}")))
            })
        })
        .collect();
    for p in posts {
        assert_eq!(p.join().unwrap().status, 202);
    }
    assert_eq!(app.stream_len(), 40);
    let metrics = crate::ops::scrape(&app);
    let batches = metrics["webhook_enqueue_batch_size_count"];
    let jobs = metrics["webhook_enqueue_batch_size_sum"];
    assert_eq!(jobs, 40.0, "every job in a batch");
    assert!(batches < 20.0, "{batches} pipelines for 40 jobs: the linger gathered nothing");
}

#[test]
fn the_channel_depth_gauge_counts_the_jobs_waiting_on_every_core() {
    let app = TestApp::spawn_with(|c| {
        core(c);
        c.queue.enqueue_timeout = Duration::from_secs(10);
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_warm")).status, 202);
    app.redis.pause();
    // One job at a time, so each core's first one is the batch in flight
    // (stuck on the frozen Redis) and every later one waits on its core.
    let n = 20;
    let mut clients: Vec<Client> = (0..n)
        .map(|i| {
            let mut c = Client::connect(app.addr);
            c.send(&crate::harness::post_request("stripe", &event("stripe", &format!("evt_{i}"))));
            std::thread::sleep(Duration::from_millis(20));
            c
        })
        .collect();
    // 20 connections land on both cores (SO_REUSEPORT spreads them), so a
    // gauge of only the core that answers the scrape stays near half of this.
    let cores = 2;
    wait_until(Duration::from_secs(5), "every waiting job counted", || {
        crate::ops::scrape(&app)["webhook_enqueue_channel_depth"] >= (n - cores) as f64
    });
    app.redis.resume();
    for c in &mut clients {
        assert_eq!(c.read_response().expect("an answer").status, 202);
    }
    assert_eq!(app.stream_len(), n + 1);
    wait_until(Duration::from_secs(5), "the gauge back at zero", || {
        crate::ops::scrape(&app)["webhook_enqueue_channel_depth"] == 0.0
    });
}

#[test]
fn a_redis_on_a_unix_socket_serves_the_per_core_enqueue_and_a_restart_is_survived() {
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("redis.sock");
    let socket_arg = socket.to_str().unwrap();
    let redis = crate::harness::RedisServer::start_with(
        crate::harness::free_port(),
        "everysec",
        &["--unixsocket", socket_arg, "--unixsocketperm", "700"],
    );
    let mut app = TestApp::start(webhook_ingestor::app::Role::Api, redis, None, |c| {
        core(c);
        c.queue.redis_url = format!("unix://{socket_arg}");
    });
    let ids = post_concurrently(app.addr, 10, 50);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 500);
    assert_eq!(app.stream_len(), 500, "every 202 went over the socket into the stream");

    app.redis.kill();
    let resp = app.post("stripe", &event("stripe", "evt_while_down"));
    assert_eq!(resp.status, 503);
    assert!(resp.header("retry-after").is_some());
    app.redis.restart();
    wait_until(Duration::from_secs(10), "a 202 once redis is back", || {
        app.post("stripe", &event("stripe", "evt_after")).status == 202
    });
    // Redis writes its AOF before it answers, and a killed process loses
    // nothing already written: the 500 are still there.
    assert!(app.stream_len() >= 501);
}
