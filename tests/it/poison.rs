//! Bodies PostgreSQL cannot take, against a real PostgreSQL: refused at the
//! door where the gateway can know, isolated by the worker where it cannot,
//! and never allowed to hold back the events around them.

use std::time::Duration;

use crate::harness::{event, post_together, wait_until, TestApp};

/// A seed-shaped body with `data` as given.
fn with_data(id: &str, data: &str) -> String {
    format!(r#"{{"provider":"stripe","eventId":"{id}","timestamp":"2026-11-22T21:35:25Z","data":{data}}}"#)
}

/// `data` nested `depth` levels deep (so the body is `depth + 1` deep).
fn nested(depth: usize) -> String {
    format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth))
}

/// Inserts the dedupe key of `stripe`/`event_id` in `tx`, left open: its
/// lock is held as an abandoned session would hold it.
fn lock_key(tx: &mut postgres::Transaction<'_>, event_id: &str) {
    tx.execute(
        "INSERT INTO webhook_event_keys (gen, provider, event_id)
         SELECT max(gen), 'stripe', $1 FROM webhook_dedupe_generations",
        &[&event_id],
    )
    .unwrap();
}

/// One worker that batches what arrives together, retries a bad entry after
/// 300 ms and dead-letters it on its second delivery; migrated and warm.
fn quick_retries(tweak: impl FnOnce(&mut webhook_ingestor::config::Config)) -> TestApp {
    let app = TestApp::spawn_full(|c| {
        c.worker.max_attempts = 2;
        c.worker.reclaim_idle = Duration::from_millis(300);
        c.worker.threads = 1;
        c.worker.linger = Duration::from_millis(300);
        tweak(c);
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_warm")).status, 202);
    wait_until(Duration::from_secs(30), "migrations and a first row", || app.rows() == 1);
    app
}

/// `(event id, error, SQLSTATE)` of every row of `webhook_dead_letters`.
fn dead_letters(app: &TestApp) -> Vec<(String, String, Option<String>)> {
    app.dead_letter_rows()
        .into_iter()
        .map(|d| (d.event_id.unwrap_or_default(), d.error, d.sqlstate))
        .collect()
}

#[test]
fn the_depth_limit_is_far_inside_what_postgresql_stores_and_deeper_gets_400() {
    let app = TestApp::spawn_full(|_| {});
    // Body level 1, `data` level 2: 998 more objects make 1000 levels.
    assert_eq!(app.post("stripe", &with_data("evt_deep", &nested(999))).status, 202);
    let refused = app.post("stripe", &with_data("evt_deeper", &nested(1000)));
    assert_eq!(refused.status, 400);
    assert!(refused.messages()[0].contains("deeper than 1000 levels"), "{:?}", refused.messages());
    wait_until(Duration::from_secs(30), "the deep row", || app.rows() == 1);
    // The margin is real: PostgreSQL takes ten times deeper, and refuses the
    // depth that used to stall a batch.
    let pg = &mut app.pg();
    assert!(pg.query_one("SELECT $1::text::jsonb", &[&nested(10_000)]).is_ok());
    let err = pg.query_one("SELECT $1::text::jsonb", &[&nested(100_000)]).unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("54001"), "{err}");
}

#[test]
fn a_nesting_poison_that_passed_the_door_is_isolated_dead_lettered_and_holds_back_nothing() {
    // The door check off: only the worker stands between the poison and a stall.
    let app = quick_retries(|c| c.ingest.max_json_depth = 0);

    let bodies: Vec<String> = (0..20)
        .map(|i| {
            if i == 10 {
                with_data("evt_poison", &nested(100_000))
            } else {
                event("stripe", &format!("evt_{i}"))
            }
        })
        .collect();
    post_together(&app, &bodies);
    // Before the fix PostgreSQL's 54001 counted as an outage: the batch was
    // retried forever and none of the 19 arrived.
    wait_until(Duration::from_secs(20), "the 19 good events stored", || app.rows() == 20);
    wait_until(Duration::from_secs(20), "the poison in the dead-letter stream", || app.dead_letters() == 1);
    wait_until(Duration::from_secs(10), "the stream drained", || app.stream_len() == 0 && app.pending() == 0);
    let dead = dead_letters(&app);
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "evt_poison");
    assert!(dead[0].1.contains("54001"), "the dead letter carries PostgreSQL's error: {}", dead[0].1);
    assert_eq!(dead[0].2.as_deref(), Some("54001"));
    assert_eq!(app.dead_letters_in_redis(), 0, "in PostgreSQL, not in Redis");
}

#[test]
fn instants_are_stored_exactly_and_those_timestamptz_cannot_hold_get_400() {
    let app = TestApp::spawn_full(|_| {});
    let at = |id: &str, ts: &str| {
        format!(r#"{{"provider":"stripe","eventId":"{id}","timestamp":"{ts}","data":{{}}}}"#)
    };
    // Year 10000 in UTC: valid ISO 8601 local time, and PostgreSQL's. It was
    // stored as 1970-01-01 before.
    assert_eq!(app.post("stripe", &at("evt_y10k", "9999-12-31T23:00:00-05:00")).status, 202);
    assert_eq!(app.post("stripe", &at("evt_min", "-004713-11-24T00:00:00Z")).status, 202);
    for (id, ts) in
        [("evt_before", "-005000-01-01T00:00:00Z"), ("evt_just_before", "-004713-11-23T23:59:59.999999Z")]
    {
        let resp = app.post("stripe", &at(id, ts));
        assert_eq!(resp.status, 400, "{ts}");
        assert!(resp.messages()[0].starts_with("timestamp must not be before"), "{:?}", resp.messages());
    }
    // A second 60 is the next minute's first, as PostgreSQL reads it; before,
    // 10:00:60 was stored as that day's midnight.
    assert_eq!(app.post("stripe", &at("evt_leap", "2026-12-03T10:00:60Z")).status, 202);
    assert_eq!(app.post("stripe", &at("evt_leap_day_end", "2026-12-31T23:59:60Z")).status, 202);
    for ts in ["2026-12-31T23:59:60.5Z", "2026-12-03T10:00:61Z", "2026-12-03T25:00:00Z"] {
        let resp = app.post("stripe", &at("evt_refused", ts));
        assert_eq!(resp.status, 400, "{ts}");
        assert_eq!(resp.messages(), ["timestamp must be a valid ISO 8601 date string"], "{ts}");
    }
    wait_until(Duration::from_secs(30), "the four rows", || app.rows() == 4);
    let mut pg = app.pg();
    pg.batch_execute("SET TIME ZONE 'UTC'").unwrap();
    let stored: Vec<(String, String)> = pg
        .query("SELECT event_id, event_timestamp::text FROM webhook_events ORDER BY event_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stored,
        [
            ("evt_leap".to_string(), "2026-12-03 10:01:00+00".to_string()),
            ("evt_leap_day_end".to_string(), "2027-01-01 00:00:00+00".to_string()),
            ("evt_min".to_string(), "4714-11-24 00:00:00+00 BC".to_string()),
            ("evt_y10k".to_string(), "10000-01-01 04:00:00+00".to_string())
        ]
    );
    let differ: i64 = pg
        .query_one(
            "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_leap%' \
             AND event_timestamp <> (payload->>'timestamp')::timestamptz",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(differ, 0, "stored as PostgreSQL itself reads the sender's text");
    assert_eq!(app.dead_letters(), 0);
}

#[test]
fn a_retry_in_the_same_batch_waits_for_its_first_copy_and_is_stored_when_that_one_is_dead() {
    let app = quick_retries(|_| {});
    // PostgreSQL now refuses the first copy's payload, not the sender's retry.
    app.pg()
        .batch_execute(
            "ALTER TABLE webhook_events ADD CONSTRAINT no_bad CHECK (payload->'data'->>'bad' IS NULL)",
        )
        .unwrap();
    post_together(
        &app,
        &[
            with_data("evt_retried", r#"{"bad":1}"#),
            with_data("evt_retried", r#"{"fixed":true}"#),
            event("stripe", "evt_other"),
        ],
    );
    // Before the fix the retry was acknowledged and deleted at once as a
    // duplicate, then the first copy was dead-lettered: the event was gone.
    wait_until(Duration::from_secs(30), "the first copy dead-lettered", || app.dead_letters() == 1);
    wait_until(Duration::from_secs(30), "the stream drained", || app.stream_len() == 0 && app.pending() == 0);
    let data: String = app
        .pg()
        .query_one("SELECT payload->>'data' FROM webhook_events WHERE event_id = 'evt_retried'", &[])
        .expect("the retry is stored")
        .get(0);
    assert_eq!(data, r#"{"fixed": true}"#);
    assert_eq!(app.rows(), 3);
}

#[test]
fn an_entry_of_a_newer_job_format_waits_for_a_newer_worker_and_is_never_dead_lettered() {
    // A rolling upgrade: a newer gateway wrote version 99; this worker has
    // had its two attempts at it several times over (reclaim every 300 ms).
    let app = quick_retries(|_| {});
    redis::cmd("XADD")
        .arg("webhooks")
        .arg("*")
        .arg("v")
        .arg("99")
        .arg("p")
        .arg("stripe")
        .arg("e")
        .arg("evt_future")
        .arg("b")
        .arg("{}")
        .exec(&mut app.redis.con())
        .unwrap();
    for i in 0..5 {
        assert_eq!(app.post("stripe", &event("stripe", &format!("evt_around_{i}"))).status, 202);
    }
    wait_until(Duration::from_secs(20), "the events around it stored", || app.rows() == 6);
    wait_until(Duration::from_secs(20), "several readings of it", || {
        crate::ops::scrape(&app)["webhook_entries_unknown_format_total"] >= 3.0
    });
    assert_eq!(app.dead_letters(), 0, "never dead-lettered");
    assert_eq!((app.stream_len(), app.pending()), (1, 1), "it waits, pending, in the stream");
    let (status, doc) = crate::ops::health(&app);
    assert_eq!(status, 200, "{doc}");
    let held = doc["details"]["redis"]["held"]["unknown_format"].as_str().unwrap_or_default().to_string();
    assert!(held.contains("newer"), "/health tells why it waits: {doc}");
}

#[test]
fn a_key_locked_by_another_session_waits_unjudged_and_is_stored_once_released() {
    // The worker's own session abandoned mid-transaction after a network
    // drop holds its keys' locks like this hand-run one does.
    let app = quick_retries(|c| {
        c.store.timeouts.lock = Duration::from_millis(500);
        c.store.timeouts.statement = Duration::from_secs(3);
    });
    let mut holder = app.pg();
    let mut tx = holder.transaction().unwrap();
    lock_key(&mut tx, "evt_locked");
    let mut bodies = vec![event("stripe", "evt_locked")];
    bodies.extend((0..4).map(|i| event("stripe", &format!("evt_free_{i}"))));
    post_together(&app, &bodies);
    // The others are not held back by the locked key.
    wait_until(Duration::from_secs(20), "the four free events stored", || app.rows() == 5);
    // Several lock waits later (each 0.5 s; two attempts allowed, reclaims
    // every 0.3 s), it is still not blamed: before the fix it was
    // dead-lettered here and never stored.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(app.dead_letters(), 0, "a lock wait is not the row's fault");
    assert_eq!(app.pending(), 1, "it waits, pending");
    tx.rollback().unwrap();
    wait_until(Duration::from_secs(20), "stored once the lock is gone", || app.rows() == 6);
    wait_until(Duration::from_secs(10), "the stream drained", || app.stream_len() == 0 && app.pending() == 0);
    assert_eq!(app.dead_letters(), 0);
}

#[test]
fn the_server_drops_a_session_whose_client_is_gone() {
    // Settings the gateway's sessions carry to the server, so an abandoned
    // one (a client gone mid-COPY or mid-transaction) releases its locks.
    let app = quick_retries(|c| c.store.timeouts.socket = Duration::from_secs(12));
    let url = app.postgres.as_ref().unwrap().url(crate::harness::DB);
    let timeouts = webhook_ingestor::store::Timeouts {
        socket: Duration::from_secs(12),
        lock: Duration::from_secs(7),
        ..Default::default()
    };
    let pool = webhook_ingestor::store::pool(&url, 1, timeouts).unwrap();
    let mut session = pool.get().unwrap();
    let show = |s: &mut postgres::Client, name: &str| -> String {
        s.query_one(&format!("SHOW {name}"), &[]).unwrap().get(0)
    };
    assert_eq!(show(&mut session, "idle_in_transaction_session_timeout"), "12s");
    assert_eq!(show(&mut session, "tcp_keepalives_idle"), "4");
    assert_eq!(show(&mut session, "tcp_keepalives_interval"), "2");
    assert_eq!(show(&mut session, "tcp_keepalives_count"), "4");
    // PostgreSQL shows this one in plain milliseconds.
    assert_eq!(show(&mut session, "tcp_user_timeout"), "12000");
    assert_eq!(show(&mut session, "lock_timeout"), "7s");
    assert_eq!(show(&mut session, "statement_timeout"), "1min");
}

#[test]
fn a_schema_change_that_refuses_every_row_holds_the_entries_unjudged_until_it_is_undone() {
    let app = quick_retries(|_| {});
    // A trigger that refuses every insert: a bad deploy, not ten bad events.
    app.pg()
        .batch_execute(
            "CREATE FUNCTION closed() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'closed for maintenance' USING ERRCODE = 'P0001'; END $$;
             CREATE TRIGGER closed BEFORE INSERT ON webhook_events FOR EACH ROW EXECUTE FUNCTION closed();",
        )
        .unwrap();
    let bodies: Vec<String> = (0..10).map(|i| event("stripe", &format!("evt_held_{i}"))).collect();
    post_together(&app, &bodies);
    // Many reclaims (0.3 s) past MAX_ATTEMPTS = 2: before the fix every
    // one was dead-lettered here.
    wait_until(Duration::from_secs(20), "the entries held and counted", || {
        crate::ops::scrape(&app).get("webhook_entries_held_total").copied().unwrap_or(0.0) >= 20.0
    });
    assert_eq!(app.dead_letters(), 0, "the database's refusal is no entry's fault");
    assert_eq!(app.rows(), 1);
    assert_eq!(app.pending(), 10, "held, pending");
    let (status, doc) = crate::ops::health(&app);
    assert_eq!(status, 200, "held entries are a warning, not an outage: {doc}");
    let held = doc["details"]["redis"]["held"]["refused:P0001"].as_str().unwrap_or_default().to_string();
    assert!(held.contains("closed for maintenance"), "{doc}");
    let stats = crate::retention::cli(&app, &["stats"]);
    assert!(stats.contains("held refused:P0001: postgres refuses every row"), "{stats}");

    app.pg().batch_execute("DROP TRIGGER closed ON webhook_events").unwrap();
    wait_until(Duration::from_secs(20), "all ten stored once it is undone", || app.rows() == 11);
    wait_until(Duration::from_secs(10), "the stream drained", || app.stream_len() == 0 && app.pending() == 0);
    assert_eq!(app.dead_letters(), 0);
}

#[test]
fn only_attempts_that_failed_because_of_the_entry_count_not_deliveries() {
    let app = quick_retries(|c| {
        c.store.timeouts.lock = Duration::from_millis(300);
        c.store.timeouts.statement = Duration::from_secs(3);
    });
    app.pg()
        .batch_execute("ALTER TABLE webhook_events ADD CONSTRAINT no_poison CHECK (event_id <> 'evt_poison')")
        .unwrap();
    // Its key held by another session: it is delivered again and again
    // (reclaims every 0.3 s) without one attempt failing because of it.
    let mut holder = app.pg();
    let mut tx = holder.transaction().unwrap();
    lock_key(&mut tx, "evt_poison");
    assert_eq!(app.post("stripe", &event("stripe", "evt_poison")).status, 202);
    let deliveries = || -> u64 {
        let r: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg("webhooks")
            .arg("ingest")
            .arg("-")
            .arg("+")
            .arg(10)
            .query(&mut app.redis.con())
            .unwrap();
        r.first().map_or(0, |e| e.3)
    };
    wait_until(Duration::from_secs(30), "several deliveries", || deliveries() >= 4);
    tx.rollback().unwrap();
    // Now it fails because of itself: two attempts, whatever the deliveries.
    wait_until(Duration::from_secs(30), "the dead letter", || app.dead_letters() == 1);
    let dead = crate::harness::TestApp::dead_letter_rows(&app);
    assert_eq!(dead[0].attempts, 2, "attempts, not the {}+ deliveries", 4);
    assert_eq!(dead[0].sqlstate.as_deref(), Some("23514"));
    let counts: std::collections::HashMap<String, u64> =
        redis::cmd("HGETALL").arg("webhooks:attempts").query(&mut app.redis.con()).unwrap();
    assert!(counts.is_empty(), "the count leaves with the entry: {counts:?}");
}
