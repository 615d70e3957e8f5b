//! Redis out of memory under `noeviction`: the gateway answers 503 before
//! Redis refuses writes, and the workers' acknowledgements (which Redis
//! accepts at `maxmemory`) drain and free it. Redis holds only work in
//! flight: no per-event state outlives its entry, so a small `maxmemory`
//! takes any number of events as long as the workers keep up.

use std::time::Duration;

use crate::harness::{event, wait_until, TestApp};

fn used_memory(app: &TestApp) -> u64 {
    let info: String = redis::cmd("INFO").arg("memory").query(&mut app.redis.con()).unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap()
}

fn set_maxmemory(app: &TestApp, bytes: u64) {
    redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(bytes).exec(&mut app.redis.con()).unwrap();
}

#[test]
fn a_nearly_full_redis_gets_503s_and_the_workers_drain_it_even_at_maxmemory() {
    let mut app = TestApp::spawn_full(|c| c.worker.threads = 1);
    assert_eq!(app.post("stripe", &event("stripe", "evt_warm")).status, 202);
    wait_until(Duration::from_secs(30), "migrations and a first row", || app.rows() == 1);

    // PostgreSQL down: the queue absorbs 4 MB of events.
    app.postgres.as_mut().unwrap().stop();
    let padding = "x".repeat(20_000);
    let big = |id: &str| {
        format!(
            r#"{{"provider":"stripe","eventId":"{id}","timestamp":"2026-11-22T21:35:25Z","data":{{"p":"{padding}"}}}}"#
        )
    };
    let mut client = app.client();
    for i in 0..200 {
        assert_eq!(client.post("stripe", &big(&format!("evt_{i}"))).status, 202);
    }

    // At 95 % of maxmemory Redis would still take writes; the gateway stops first.
    let used = used_memory(&app);
    set_maxmemory(&app, used * 100 / 95);
    // Until the next reading (at most 100 ms), a request may still get in.
    let mut accepted = 201;
    let mut n = 0;
    wait_until(Duration::from_secs(5), "the gateway to notice", || {
        n += 1;
        let resp = client.post("stripe", &event("stripe", &format!("evt_late_{n}")));
        accepted += usize::from(resp.status == 202);
        resp.status == 503 && resp.json()["message"] == "queue is full (redis memory), retry later"
    });
    let resp = client.post("stripe", &event("stripe", "evt_refused"));
    assert_eq!((resp.status, resp.header("retry-after")), (503, Some("1")));

    // Now past maxmemory, and staying past it: Redis refuses XADD.
    // Acknowledging must not depend on any write: XACK and XDEL free.
    set_maxmemory(&app, 256 * 1024);
    app.postgres.as_mut().unwrap().start_again();
    wait_until(Duration::from_secs(60), "every accepted event stored", || app.rows() == accepted as i64);
    wait_until(Duration::from_secs(10), "the stream drained", || app.stream_len() == 0 && app.pending() == 0);
    assert_eq!(app.dead_letters(), 0);

    // The acknowledgements freed the stream's memory.
    let after = used_memory(&app);
    assert!(after + 3_000_000 < used, "used_memory {used} before the drain, {after} after");
    // With room again, 202s again, stored as usual.
    set_maxmemory(&app, used * 4);
    wait_until(Duration::from_secs(10), "202s again", || {
        client.post("stripe", &event("stripe", "evt_after")).status == 202
    });
    wait_until(Duration::from_secs(30), "the new row", || app.rows() == accepted as i64 + 1);
}

/// Posts `count` events on `clients` connections, each retried after a
/// 503 as a sender would; returns how many 503s were met.
fn post_all_retrying(app: &TestApp, clients: usize, count: usize) -> usize {
    let addr = app.addr;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = crate::harness::Client::connect(addr);
                let mut refused = 0;
                for i in (c..count).step_by(clients) {
                    let body = event("stripe", &format!("evt_{i}"));
                    loop {
                        match client.post("stripe", &body).status {
                            202 => break,
                            503 => {
                                refused += 1;
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            other => panic!("status {other}"),
                        }
                    }
                }
                refused
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).sum()
}

#[test]
fn a_small_redis_takes_many_times_its_size_in_events_and_never_refuses_once_drained() {
    // 3 MiB: the idempotency keys of old (~137 bytes an event, kept a day)
    // filled its 90 % after ~20,000 events and refused every request
    // after, with the stream empty, until they expired.
    let app = TestApp::spawn_full(|c| c.worker.threads = 2);
    assert_eq!(app.post("stripe", &event("stripe", "evt_warm")).status, 202);
    wait_until(Duration::from_secs(30), "migrations and a first row", || app.rows() == 1);
    let budget: u64 = 3 << 20;
    let base = used_memory(&app);
    set_maxmemory(&app, base + budget);

    const EVENTS: usize = 40_000;
    let refused = post_all_retrying(&app, 8, EVENTS);
    wait_until(Duration::from_secs(120), "every event stored", || app.rows() == EVENTS as i64 + 1);
    wait_until(Duration::from_secs(10), "the stream drained", || app.stream_len() == 0 && app.pending() == 0);

    // Drained: Redis is back near where it started, far below its budget,
    // and takes new events at once.
    let after = used_memory(&app);
    assert!(after < base + budget / 4, "used_memory {after} after the drain, {base} before the load");
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut app.redis.con()).unwrap();
    // The worker process's liveness mark is one key per process, not per event.
    keys.retain(|k| !k.contains(":alive:"));
    assert_eq!(keys, ["webhooks"], "nothing per event is kept");
    let mut client = app.client();
    for i in 0..200 {
        assert_eq!(client.post("stripe", &event("stripe", &format!("evt_after_{i}"))).status, 202);
    }
    // 503s during the load are the queue's own backpressure (workers behind
    // a burst), never a refusal after the drain; say how many there were.
    eprintln!("503s met (and retried) during the load: {refused}");
}
