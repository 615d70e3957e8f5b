//! Redis out of memory under `noeviction`: the gateway answers 503 before
//! Redis refuses writes, and the workers' acknowledgements (which Redis
//! accepts at `maxmemory`) drain and free it, even though the idempotency
//! keys cannot be set meanwhile.

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

    // Now past maxmemory, and staying past it: Redis refuses SET and XADD
    // (as when the keys of a busy day fill it). Acknowledging must not
    // depend on them: before the fix, the refused SETs aborted the whole
    // MULTI, nothing was acknowledged, and nothing was ever freed.
    set_maxmemory(&app, 256 * 1024);
    app.postgres.as_mut().unwrap().start_again();
    wait_until(Duration::from_secs(60), "every accepted event stored", || app.rows() == accepted as i64);
    wait_until(Duration::from_secs(10), "the stream drained", || app.stream_len() == 0 && app.pending() == 0);
    let metrics = crate::ops::scrape(&app);
    assert!(
        metrics["webhook_idempotency_keys_not_set_total"] > 0.0,
        "the keys were refused, and that was all"
    );
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
