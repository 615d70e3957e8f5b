//! The worker path against a real Redis and a real PostgreSQL: every 202
//! becomes exactly one row, through duplicates, outages, crashes and poison.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use webhook_ingestor::app::Role;
use webhook_ingestor::store;
use webhook_ingestor::worker::{self, ReplayScope, Worker, WorkerSettings};

use crate::harness::{event, wait_until, Client, TestApp, DB};

const DRAIN: Duration = Duration::from_secs(30);

fn assert_drained(app: &TestApp) {
    wait_until(DRAIN, "the stream to drain", || app.stream_len() == 0 && app.pending() == 0);
}

#[test]
fn a_posted_event_becomes_one_row_with_its_payload_and_timestamps() {
    let app = TestApp::spawn_full(|_| {});
    let body = event("stripe", "evt_row");
    assert_eq!(app.post("stripe", &body).status, 202);

    wait_until(DRAIN, "the row", || app.rows() == 1);
    let row = app
        .pg()
        .query_one(
            "SELECT provider, event_id, payload->'data'->>'amount', payload::text,
                    extract(epoch FROM event_timestamp)::float8, received_at, stored_at
               FROM webhook_events",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "stripe");
    assert_eq!(row.get::<_, String>(1), "evt_row");
    assert_eq!(row.get::<_, String>(2), "4200");
    let stored: serde_json::Value = serde_json::from_str(&row.get::<_, String>(3)).unwrap();
    assert_eq!(stored, serde_json::from_str::<serde_json::Value>(&body).unwrap());
    assert_eq!(row.get::<_, f64>(4), 1_795_383_325.123);
    let received: std::time::SystemTime = row.get(5);
    let stored_at: std::time::SystemTime = row.get(6);
    assert!(received <= stored_at);
    assert_drained(&app);
}

/// Whatever the gateway accepts, jsonb can hold: the edge cases the fuzzer
/// met (surrogate pairs, numbers beyond 64 bits and beyond a double) and
/// numbers at `numeric`'s limits are stored, and the escapes and numbers
/// jsonb refuses never get a 202.
#[test]
fn edge_case_json_that_gets_202_is_storable_and_what_jsonb_refuses_gets_400() {
    let app = TestApp::spawn_full(|_| {});
    let body = |id: &str, data: &str| {
        format!(
            r#"{{"provider":"stripe","eventId":"{id}","timestamp":"2026-01-01T00:00:00Z","data":{data}}}"#
        )
    };
    let accepted = [
        r#"{"emoji":"\ud83d\ude00","e":"\u00e9"}"#.to_string(),
        r#"{"wei":4208888888888888888888888888888888888888888880}"#.into(),
        r#"{"big":1e400,"tiny":-1.5e-320,"x":123456789012345678901234567890.5}"#.into(),
        r#"{"literal":"\\ud800 and \\u0000 are just text here"}"#.into(),
        // numeric's limits, just inside.
        r#"{"top":1e131071,"scale":-1e-16383,"zero":0e1073741822,"s":"1e99999999"}"#.into(),
        format!(r#"{{"fraction":0.{}}}"#, "7".repeat(16_383)),
    ];
    for (i, data) in accepted.iter().enumerate() {
        assert_eq!(app.post("stripe", &body(&format!("evt_edge_{i}"), data)).status, 202, "{data:.80}");
    }
    let refused = [
        r#"{"x":"\ud800"}"#.to_string(),
        r#"{"x":"\udc00\ud800"}"#.into(),
        r#"{"x":"a\u0000"}"#.into(),
        // numeric's limits, just outside.
        r#"{"x":1e131072}"#.into(),
        r#"{"x":1e-16384}"#.into(),
        r#"{"x":0e1073741823}"#.into(),
        format!(r#"{{"fraction":0.{}}}"#, "7".repeat(16_384)),
    ];
    for data in &refused {
        assert_eq!(app.post("stripe", &body("evt_refused", data)).status, 400, "{data:.80}");
        // The gateway's line is PostgreSQL's: what it refuses, jsonb refuses too.
        assert!(app.pg().query_one("SELECT $1::text::jsonb", &[data]).is_err(), "jsonb takes {data:.80}");
    }
    wait_until(DRAIN, "the rows", || app.rows() == accepted.len() as i64);
    assert_drained(&app);
    assert_eq!(app.dead_letters(), 0, "nothing accepted was unstorable");
    let emoji: String = app
        .pg()
        .query_one("SELECT payload->'data'->>'emoji' FROM webhook_events WHERE event_id = 'evt_edge_0'", &[])
        .unwrap()
        .get(0);
    assert_eq!(emoji, "\u{1F600}");
}

#[test]
fn the_same_event_five_times_is_one_row_and_providers_are_kept_apart() {
    let app = TestApp::spawn_full(|_| {});
    let mut client = app.client();
    for _ in 0..5 {
        assert_eq!(client.post("stripe", &event("stripe", "evt_dup")).status, 202);
    }
    let addr = app.addr;
    let concurrent: Vec<_> = (0..5)
        .map(|_| {
            std::thread::spawn(move || Client::connect(addr).post("stripe", &event("stripe", "evt_dup2")))
        })
        .collect();
    for c in concurrent {
        assert_eq!(c.join().unwrap().status, 202);
    }
    assert_eq!(app.post("github", &event("github", "evt_dup")).status, 202);

    wait_until(DRAIN, "three rows", || app.rows() == 3);
    assert_drained(&app);
    let per_key: Vec<(String, String, i64)> = app
        .pg()
        .query("SELECT provider, event_id, count(*) FROM webhook_events GROUP BY 1, 2 ORDER BY 1, 2", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        per_key,
        [
            ("github".to_string(), "evt_dup".to_string(), 1),
            ("stripe".to_string(), "evt_dup".to_string(), 1),
            ("stripe".to_string(), "evt_dup2".to_string(), 1)
        ]
    );
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut app.redis.con()).unwrap();
    assert_eq!(keys, ["webhooks"], "the dedupe is PostgreSQL's: Redis keeps no key per event");
}

#[test]
fn jobs_wait_in_redis_while_no_worker_runs_and_are_stored_when_one_starts() {
    // The seed's persistence check: only the API role runs.
    let api = TestApp::spawn_api_with_postgres();
    let mut client = api.client();
    for i in 0..500 {
        assert_eq!(client.post("stripe", &event("stripe", &format!("evt_{i}"))).status, 202);
    }
    let (redis, pg) = api.into_servers();
    let held: usize = redis::cmd("XLEN").arg("webhooks").query(&mut redis.con()).unwrap();
    assert_eq!(held, 500, "the stream holds every accepted job while nothing consumes it");

    let workers = TestApp::start(Role::Worker, redis, pg, |_| {});
    wait_until(DRAIN, "500 rows", || workers.rows() == 500);
    assert_drained(&workers);
}

#[test]
fn postgres_down_while_events_arrive_loses_nothing_and_dead_letters_nothing() {
    // Reclaim faster than the outage lasts and allow a single attempt: if the
    // outage were counted as failed deliveries, entries would be dead-lettered.
    let mut app = TestApp::spawn_full(|c| {
        c.worker.reclaim_idle = Duration::from_millis(300);
        c.worker.max_attempts = 1;
        c.worker.threads = 2;
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_warm")).status, 202);
    wait_until(DRAIN, "the first row", || app.rows() == 1);

    app.postgres.as_mut().unwrap().stop();
    let addr = app.addr;
    let senders: Vec<_> = (0..10)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                (0..200)
                    .all(|i| client.post("stripe", &event("stripe", &format!("evt_{c}_{i}"))).status == 202)
            })
        })
        .collect();
    assert!(
        senders.into_iter().all(|s| s.join().unwrap()),
        "every request is accepted while postgres is down"
    );
    std::thread::sleep(Duration::from_secs(1)); // longer than RECLAIM_IDLE_MS
    app.postgres.as_mut().unwrap().start_again();

    wait_until(DRAIN, "2,001 rows", || app.rows() == 2001);
    assert_drained(&app);
    let distinct: i64 = app
        .pg()
        .query_one("SELECT count(DISTINCT (provider, event_id)) FROM webhook_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(distinct, 2001);
    assert_eq!(app.dead_letters(), 0, "an outage is not a poison entry");
}

/// Redis keys less the liveness marks (one per live worker process, not
/// per event).
fn per_event(mut keys: Vec<String>) -> Vec<String> {
    keys.retain(|k| !k.contains(":alive:"));
    keys
}

pub fn worker_settings(app: &TestApp, reclaim_idle: Duration) -> Arc<WorkerSettings> {
    Arc::new(WorkerSettings {
        queue: app.config.queue.queue(),
        batch_max: 1000,
        batch_max_bytes: 64 << 20,
        // Small bodies: one read can take the whole test batch.
        max_body_bytes: 64 << 10,
        pg_timeouts: store::Timeouts::default(),
        block: Duration::from_millis(100),
        linger: Duration::from_millis(20),
        dead_letter_redis_max_bytes: 64 << 20,
        retention: Default::default(),
        max_attempts: 5,
        reclaim_idle,
        host: webhook_ingestor::worker::hostname(),
        shutdown_timeout: Duration::from_secs(5),
        migrate: true,
        metrics: webhook_ingestor::telemetry::metrics::Metrics::new(0),
    })
}

#[test]
fn a_worker_dying_between_commit_and_ack_causes_a_redo_not_a_duplicate() {
    // Gateway only: the test drives the workers itself.
    let app = TestApp::spawn_api_with_postgres();
    let mut client = app.client();
    for i in 0..100 {
        assert_eq!(client.post("stripe", &event("stripe", &format!("evt_{i}"))).status, 202);
    }
    let pool = store::pool(&app.postgres.as_ref().unwrap().url(DB), 2, store::Timeouts::default()).unwrap();
    let settings = worker_settings(&app, Duration::from_millis(200));

    // Worker A reads and commits, then "dies": no keys, no XACK.
    let mut a = Worker::new("a".into(), settings.clone(), pool.clone(), CancellationToken::new()).unwrap();
    a.run_once_until_commit();
    drop(a);
    assert_eq!(app.rows(), 100, "A committed");
    assert_eq!(app.pending(), 100, "but acknowledged nothing");

    // Worker B takes the abandoned entries over once they are idle long enough.
    std::thread::sleep(Duration::from_millis(300));
    let mut b = Worker::new("b".into(), settings, pool, CancellationToken::new()).unwrap();
    let report = b.run_once().unwrap();
    assert_eq!(report.read, 100, "B reclaimed A's entries");
    assert_eq!((report.inserted, report.duplicates), (0, 100), "the redo inserted nothing");
    assert_eq!(app.rows(), 100);
    assert_eq!((app.stream_len(), app.pending()), (0, 0));
}

#[test]
fn sender_retries_and_redeliveries_are_absorbed_by_the_dedupe_generations_without_redis_keys() {
    let app = TestApp::spawn_api_with_postgres();
    let pool = store::pool(&app.postgres.as_ref().unwrap().url(DB), 2, store::Timeouts::default()).unwrap();
    let settings = worker_settings(&app, Duration::from_millis(200));
    let worker = |name: &str| {
        Worker::new(name.into(), settings.clone(), pool.clone(), CancellationToken::new()).unwrap()
    };
    let mut w = worker("w");
    assert_eq!(app.post("stripe", &event("stripe", "evt_once")).status, 202);
    assert_eq!(w.run_once().unwrap().inserted, 1);

    // A sender's retry is a first delivery: written, and the dedupe drops it.
    assert_eq!(app.post("stripe", &event("stripe", "evt_once")).status, 202);
    let entries = w.read().unwrap();
    let stored = w.store(entries).unwrap();
    assert_eq!((stored.inserted, stored.duplicates, stored.skipped.len()), (0, 1, 0));
    w.finalize(stored).unwrap();

    // A redelivery (read by a worker that died before acknowledging) is
    // written again as well, and is a duplicate too.
    assert_eq!(app.post("stripe", &event("stripe", "evt_once")).status, 202);
    let mut gone = worker("gone");
    assert_eq!(gone.read().unwrap().len(), 1);
    drop(gone);
    std::thread::sleep(Duration::from_millis(300));
    let mut b = worker("b");
    let entries = b.read().unwrap();
    assert_eq!(entries.len(), 1, "b reclaimed the entry");
    assert!(entries[0].deliveries > 1);
    let stored = b.store(entries).unwrap();
    assert_eq!((stored.inserted, stored.duplicates), (0, 1));
    b.finalize(stored).unwrap();
    assert_eq!(app.rows(), 1);
    assert_eq!((app.stream_len(), app.pending()), (0, 0));
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut app.redis.con()).unwrap();
    assert_eq!(per_event(keys), ["webhooks"], "no idempotency key was set");
}

#[test]
fn first_deliveries_are_copied_straight_into_the_table_and_a_conflict_falls_back_to_staging() {
    let app = TestApp::spawn_api_with_postgres();
    let mut pg = app.pg();
    store::migrate(&mut pg).unwrap();
    let job = |id: &str| webhook_ingestor::job::WebhookJob {
        provider: "stripe".into(),
        event_id: id.into(),
        event_type: "invoice.paid".into(),
        event_timestamp_us: 1_700_000_000_000_000,
        received_at_us: 1_700_000_000_000_001,
        verified_by: None,
        payload: format!(r#"{{"id":"{id}"}}"#).into_bytes(),
        raw_body: None,
        unsigned_fields: String::new(),
        replay_of: None,
    };
    let staged = |pg: &mut postgres::Client| -> bool {
        pg.query_one("SELECT to_regclass('pg_temp.webhook_staging_v5') IS NOT NULL", &[]).unwrap().get(0)
    };
    let (a, b, c) = (job("evt_a"), job("evt_b"), job("evt_c"));
    let retention = store::Retention::default();

    // New rows, expected new: straight into the table, no staging table
    // made. Their day (2023-11-14) has no partition yet: it is made.
    let w = store::write_batch(&mut pg, &[&a, &b], true, &retention).unwrap();
    assert_eq!((w.inserted, w.duplicates), (2, 0));
    assert!(!staged(&mut pg), "the direct COPY needs no staging table");
    let partitions: Vec<String> =
        store::partitions::partitions(&mut pg).unwrap().into_iter().map(|p| p.name).collect();
    assert!(partitions.contains(&"webhook_events_p20231114".to_string()), "{partitions:?}");

    // One of them again beside a new one: the direct insert of the keys
    // meets the current generation's index, is rolled back whole, and the
    // staging way stores the new one.
    let w = store::write_batch(&mut pg, &[&b, &c], true, &retention).unwrap();
    assert_eq!((w.inserted, w.duplicates), (1, 1));
    assert!(staged(&mut pg), "the conflict took the staging way");

    // Not expected new (a redelivery): staging at once, every row a duplicate.
    let w = store::write_batch(&mut pg, &[&a, &b, &c], false, &retention).unwrap();
    assert_eq!((w.inserted, w.duplicates), (0, 3));
    let rows: Vec<(String, String)> = pg
        .query("SELECT event_id, payload::text FROM webhook_events ORDER BY event_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(String, String)> = ["evt_a", "evt_b", "evt_c"]
        .iter()
        .map(|id| (id.to_string(), format!(r#"{{"id": "{id}"}}"#)))
        .collect();
    assert_eq!(rows, want, "each row once, with its own payload");
}

/// Extension for the crash test: the first two steps of `run_once`.
trait UntilCommit {
    fn run_once_until_commit(&mut self);
}

impl UntilCommit for Worker {
    fn run_once_until_commit(&mut self) {
        let entries = self.read().unwrap();
        assert!(!entries.is_empty());
        let stored = self.store(entries).unwrap();
        assert_eq!(stored.committed.len(), 100);
    }
}

#[test]
fn a_poison_entry_is_dead_lettered_alone_and_replay_stores_it_once_fixed() {
    let app = TestApp::spawn_full(|c| {
        c.worker.max_attempts = 2;
        c.worker.reclaim_idle = Duration::from_millis(200);
        c.worker.threads = 1;
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_first")).status, 202);
    wait_until(DRAIN, "migrations and a first row", || app.rows() == 1);
    // Sabotage: PostgreSQL now rejects exactly one event.
    app.pg()
        .batch_execute("ALTER TABLE webhook_events ADD CONSTRAINT no_poison CHECK (event_id <> 'evt_poison')")
        .unwrap();

    let bodies: Vec<String> = (0..20)
        .map(|i| event("stripe", &if i == 7 { "evt_poison".to_string() } else { format!("evt_{i}") }))
        .collect();
    crate::harness::post_together(&app, &bodies);

    wait_until(DRAIN, "the poison entry in webhook_dead_letters", || app.dead_letters() == 1);
    assert_drained(&app);
    assert_eq!(app.rows(), 20, "every other entry is stored");
    let dead = app.dead_letter_rows();
    assert_eq!(dead[0].event_id.as_deref(), Some("evt_poison"));
    assert!(dead[0].error.contains("no_poison"), "{}", dead[0].error);
    assert_eq!(dead[0].sqlstate.as_deref(), Some("23514"));
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(
        dead[0].raw_body.as_deref(),
        Some(event("stripe", "evt_poison").as_bytes()),
        "the body as sent"
    );
    assert_eq!(app.dead_letters_in_redis(), 0, "Redis holds only work in flight");

    // Replayed before the cause is fixed, it dies again: the same row takes
    // the new error (no second row), no longer marked as being replayed.
    let streams = ["webhooks".to_string()];
    let first = dead[0].id;
    let done =
        worker::replay(&mut app.redis.con(), &mut app.pg(), &streams, &ReplayScope::All, false).unwrap();
    assert_eq!((done.matched, done.replayed), (1, 1));
    wait_until(DRAIN, "the replay dead again", || {
        let rows = app.dead_letter_rows();
        rows.len() == 1 && rows[0].replayed_at_us.is_none() && rows[0].replays == 1
    });
    assert_eq!(app.dead_letter_rows()[0].id, first, "the same row");
    assert_drained(&app);

    // The cause is fixed; replay brings it back and it is stored, and the
    // dead letter leaves the table with that commit.
    app.pg().batch_execute("ALTER TABLE webhook_events DROP CONSTRAINT no_poison").unwrap();
    let dry = worker::replay(&mut app.redis.con(), &mut app.pg(), &streams, &ReplayScope::All, true).unwrap();
    assert_eq!((dry.matched, dry.replayed), (1, 0), "a dry run counts");
    assert_eq!(app.dead_letters(), 1);
    let done =
        worker::replay(&mut app.redis.con(), &mut app.pg(), &streams, &ReplayScope::All, false).unwrap();
    assert_eq!((done.matched, done.replayed), (1, 1));
    wait_until(DRAIN, "the replayed row", || app.rows() == 21);
    assert_drained(&app);
    assert_eq!(app.dead_letters(), 0);
}

#[test]
fn after_draining_ten_thousand_events_redis_holds_nothing_but_the_empty_stream() {
    let app = TestApp::spawn_full(|_| {});
    let addr = app.addr;
    let clients: Vec<_> = (0..20)
        .map(|c| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                for i in 0..500 {
                    assert_eq!(client.post("stripe", &event("stripe", &format!("evt_{c}_{i}"))).status, 202);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    wait_until(DRAIN, "10,000 rows", || app.rows() == 10_000);
    assert_drained(&app);

    let mut con = app.redis.con();
    let all: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    assert!(all.len() <= 2, "the stream and at most this process's liveness mark: {all:?}");
    assert_eq!(per_event(all), ["webhooks"], "no key per event, nothing left behind");
}

#[test]
fn an_id_delivered_again_with_another_body_is_kept_apart_as_a_conflict_never_merged() {
    let app = TestApp::spawn_full(|c| c.worker.linger = Duration::from_millis(200));
    let body = |id: &str, amount: u32| {
        format!(
            r#"{{"provider":"stripe","eventId":"{id}","timestamp":"2026-11-22T21:35:25Z","data":{{"amount":{amount}}}}}"#
        )
    };
    let sha = |b: &str| -> Vec<u8> {
        use sha2::Digest as _;
        sha2::Sha256::digest(b.as_bytes()).to_vec()
    };
    assert_eq!(app.post("stripe", &body("evt_1", 100)).status, 202);
    wait_until(DRAIN, "the first body stored", || app.rows() == 1);
    // The same id, another body (a replayed signature over a chosen id, or
    // a sender that changed an event): kept apart, once per body.
    for _ in 0..2 {
        assert_eq!(app.post("stripe", &body("evt_1", 999)).status, 202);
    }
    // The same body again: an ordinary duplicate.
    assert_eq!(app.post("stripe", &body("evt_1", 100)).status, 202);
    // Two bodies for one new id in one batch.
    crate::harness::post_together(&app, &[body("evt_2", 1), body("evt_2", 2)]);
    assert_drained(&app);

    let mut pg = app.pg();
    let rows: Vec<(String, Vec<u8>, Vec<u8>)> = pg
        .query("SELECT event_id, raw_body, body_sha256 FROM webhook_events ORDER BY event_id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(rows.len(), 2, "one row per id: {rows:?}");
    assert_eq!(rows[0].1, body("evt_1", 100).as_bytes(), "the stored row is never replaced");
    assert_eq!(rows[0].2, sha(&body("evt_1", 100)), "a digest of the body as received");
    // (event_id, raw_body, body_sha256, stored_sha256)
    type Conflict = (String, Vec<u8>, Vec<u8>, Vec<u8>);
    let conflicts: Vec<Conflict> = pg
        .query(
            "SELECT event_id, raw_body, body_sha256, stored_sha256 FROM webhook_event_conflicts ORDER BY event_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(conflicts.len(), 2, "{conflicts:?}");
    assert_eq!(conflicts[0].0, "evt_1");
    assert_eq!(conflicts[0].1, body("evt_1", 999).as_bytes());
    assert_eq!(conflicts[0].2, sha(&body("evt_1", 999)));
    assert_eq!(conflicts[0].3, sha(&body("evt_1", 100)), "and which body it differs from");
    assert_eq!(conflicts[1].0, "evt_2");
    assert_ne!(conflicts[1].2, rows[1].2, "the batch's other body");
    let metrics = crate::ops::scrape(&app);
    assert_eq!(metrics["webhook_event_conflicts_total"], 2.0);
    let stats = crate::retention::cli(&app, &["stats"]);
    assert!(stats.contains("conflicts:    2"), "{stats}");
}
