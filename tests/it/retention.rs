//! What PostgreSQL keeps, and for how long, against a real PostgreSQL:
//! partitions made ahead and dropped whole after `EVENT_RETENTION` while
//! events keep arriving, exact dedupe within `DEDUPE_WINDOW` across
//! generation switches and concurrent writers, the body byte for byte, dead
//! letters in PostgreSQL (Redis only while it is down), and the upgrade of
//! a database made by the migrations before partitioning.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use webhook_ingestor::job::WebhookJob;
use webhook_ingestor::store::{self, partitions, Retention};

use crate::harness::{add_unstorable_entry, event, wait_until, PostgresServer, TestApp, DB};

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as i64
}

fn spawn(retention: Retention) -> TestApp {
    let app = TestApp::spawn_full(|c| {
        c.store.retention = retention;
        c.worker.linger = Duration::from_millis(10);
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_warm")).status, 202);
    wait_until(Duration::from_secs(30), "migrations and a first row", || app.rows() == 1);
    app
}

fn rows_of(app: &TestApp, event_id: &str) -> i64 {
    app.pg()
        .query_one("SELECT count(*) FROM webhook_events WHERE event_id = $1", &[&event_id])
        .unwrap()
        .get(0)
}

fn drained(app: &TestApp) {
    wait_until(Duration::from_secs(30), "the stream drained", || app.stream_len() == 0 && app.pending() == 0);
}

#[test]
fn partitions_are_made_ahead_and_dropped_whole_after_the_retention_while_events_keep_arriving() {
    let interval = Duration::from_secs(2);
    let app = spawn(Retention {
        interval,
        events: Some(Duration::from_secs(4)),
        dedupe_window: Duration::from_secs(3600),
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_early")).status, 202);
    wait_until(Duration::from_secs(10), "the early row", || rows_of(&app, "evt_early") == 1);

    // Made ahead: each run makes the next two intervals; the last run was
    // at most half an interval ago, so the next interval exists already.
    let ahead = now_us() + interval.as_micros() as i64;
    let parts = partitions::partitions(&mut app.pg()).unwrap();
    assert!(
        parts.iter().any(|p| p.from.unwrap_or(i64::MIN) <= ahead && ahead < p.to),
        "a partition for the next interval: {parts:?}"
    );

    // Events keep coming while old partitions are dropped: every one 202,
    // stored, and the early one gone once its partition lies past 4 s.
    let started = Instant::now();
    let mut client = app.client();
    let mut sent = Vec::new();
    let mut dropped_at = None;
    while started.elapsed() < Duration::from_secs(20) {
        let id = format!("evt_during_{}", sent.len());
        assert_eq!(client.post("stripe", &event("stripe", &id)).status, 202);
        sent.push(id);
        std::thread::sleep(Duration::from_millis(50));
        if dropped_at.is_none() && rows_of(&app, "evt_early") == 0 {
            dropped_at = Some(started.elapsed());
        }
        if dropped_at.is_some_and(|d| started.elapsed() > d + Duration::from_secs(3)) {
            break;
        }
    }
    let dropped_at = dropped_at.expect("the early row's partition was dropped within 20 s");
    drained(&app);
    // The newest events are all there (the oldest of them may be past the
    // retention already: that is the point).
    let last: Vec<&String> = sent.iter().rev().take(20).collect();
    for id in &last {
        assert_eq!(rows_of(&app, id), 1, "{id}");
    }
    let parts = partitions::partitions(&mut app.pg()).unwrap();
    let horizon = now_us() - 4_000_000 - 2 * interval.as_micros() as i64;
    assert!(parts.iter().all(|p| p.to > horizon), "nothing past the retention is kept: {parts:?}");
    assert!(parts.len() <= 8, "bounded: retention / interval + premade + the edges: {parts:?}");
    assert_eq!(app.dead_letters(), 0);

    // The dedupe window outlives the body: a copy of the dropped event is
    // still recognised, not stored again.
    assert_eq!(app.post("stripe", &event("stripe", "evt_early")).status, 202);
    drained(&app);
    assert_eq!(rows_of(&app, "evt_early"), 0, "a copy within DEDUPE_WINDOW is a copy");
    eprintln!("the early row's partition was dropped {dropped_at:?} into the load");
}

#[test]
fn a_copy_after_a_generation_boundary_is_one_row_and_after_the_window_is_stored_again() {
    let app = spawn(Retention {
        interval: Duration::from_secs(1),
        events: None,
        dedupe_window: Duration::from_secs(3),
    });
    let generation = |app: &TestApp| -> i32 {
        app.pg().query_one("SELECT max(gen) FROM webhook_dedupe_generations", &[]).unwrap().get(0)
    };
    let key_generation = |app: &TestApp| -> Option<i32> {
        app.pg()
            .query_opt("SELECT gen FROM webhook_event_keys WHERE event_id = 'evt_x'", &[])
            .unwrap()
            .map(|r| r.get(0))
    };
    assert_eq!(app.post("stripe", &event("stripe", "evt_x")).status, 202);
    wait_until(Duration::from_secs(10), "the row", || rows_of(&app, "evt_x") == 1);
    let first = key_generation(&app).expect("its key");

    // Two generations later, well inside the 3 s window: still a copy.
    wait_until(Duration::from_secs(10), "two generation switches", || generation(&app) >= first + 2);
    assert_eq!(key_generation(&app), Some(first), "the key is still kept");
    assert_eq!(app.post("stripe", &event("stripe", "evt_x")).status, 202);
    drained(&app);
    assert_eq!(rows_of(&app, "evt_x"), 1, "a copy across the boundary stays one row");

    // Past the window its generation is dropped whole, and a copy then is
    // a new event: the window is a bound, not forever.
    wait_until(Duration::from_secs(20), "the key's generation dropped", || key_generation(&app).is_none());
    let kept: i64 =
        app.pg().query_one("SELECT count(*) FROM webhook_dedupe_generations", &[]).unwrap().get(0);
    assert!(kept <= 6, "generations are bounded by the window: {kept}");
    assert_eq!(app.post("stripe", &event("stripe", "evt_x")).status, 202);
    wait_until(Duration::from_secs(10), "stored again", || rows_of(&app, "evt_x") == 2);
}

fn job(id: &str, received_at_us: i64) -> WebhookJob {
    WebhookJob {
        provider: "stripe".into(),
        event_id: id.into(),
        event_type: String::new(),
        event_timestamp_us: received_at_us,
        received_at_us,
        verified_by: None,
        payload: format!(r#"{{"id":"{id}"}}"#).into_bytes(),
        raw_body: None,
        unsigned_fields: String::new(),
        replay_of: None,
    }
}

#[test]
fn writers_racing_on_the_same_keys_across_generation_switches_store_each_once() {
    let pg = PostgresServer::start();
    pg.create_database(DB);
    store::migrate(&mut pg.client(DB)).unwrap();
    // A switch every 50 ms: many boundaries fall inside the race.
    let retention = Retention {
        interval: Duration::from_millis(50),
        events: None,
        dedupe_window: Duration::from_secs(3600),
    };
    let at = now_us();
    partitions::cover(&mut pg.client(DB), &retention, at, at).unwrap();
    const WRITERS: usize = 4;
    const ROUNDS: usize = 150;
    let barrier = Arc::new(Barrier::new(WRITERS));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let switcher = {
        let (mut client, stop) = (pg.client(DB), stop.clone());
        std::thread::spawn(move || {
            let mut switches = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let done = partitions::maintain(&mut client, &retention, now_us()).unwrap();
                switches += usize::from(done.is_some_and(|d| d.switched_to.is_some()));
                std::thread::sleep(Duration::from_millis(10));
            }
            switches
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (mut client, barrier) = (pg.client(DB), barrier.clone());
            std::thread::spawn(move || {
                let mut inserted = 0;
                for round in 0..ROUNDS {
                    // Each round: the same two keys from every writer at
                    // once, in both of the writer's ways, plus one of its own.
                    let (a, b) = (job(&format!("k{round}a"), at), job(&format!("k{round}b"), at));
                    let own = job(&format!("k{round}w{w}"), at);
                    barrier.wait();
                    let direct = store::write_batch(&mut client, &[&a, &own], true, &retention).unwrap();
                    let staged = store::write_batch(&mut client, &[&b], false, &retention).unwrap();
                    inserted += direct.inserted + staged.inserted;
                }
                inserted
            })
        })
        .collect();
    let inserted: u64 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let switches = switcher.join().unwrap();
    assert!(switches >= 5, "the race spanned generation switches: {switches}");
    let per_key: HashMap<String, i64> = pg
        .client(DB)
        .query("SELECT event_id, count(*) FROM webhook_events GROUP BY 1", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want = ROUNDS * (2 + WRITERS);
    assert_eq!(per_key.len(), want, "every key stored");
    let twice: Vec<_> = per_key.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "stored more than once: {twice:?}");
    assert_eq!(inserted, want as u64, "the writers' own counts agree");
}

#[test]
fn the_body_is_stored_byte_for_byte_beside_the_queryable_payload() {
    let app = spawn(Retention::default());
    // Whitespace, escapes, a duplicate key, a number jsonb respells: all
    // rewritten by jsonb, all kept by raw_body.
    let body = "{ \"provider\" : \"stripe\",\n\t\"eventId\":\"evt_raw\", \"timestamp\":\"2026-11-22T21:35:25Z\",\
                \"data\":{\"name\":\"Jos\\u00e9\",\"n\":1.50000000000000000001e1,\"big\":12345678901234567890123,\
                \"dup\":1,\"dup\":2}  }\n";
    let resp = app.post("stripe", body);
    assert_eq!(resp.status, 202, "{}", String::from_utf8_lossy(&resp.body));
    wait_until(Duration::from_secs(10), "the row", || rows_of(&app, "evt_raw") == 1);
    let row = app
        .pg()
        .query_one("SELECT raw_body, payload::text FROM webhook_events WHERE event_id = 'evt_raw'", &[])
        .unwrap();
    let (raw, payload): (Vec<u8>, String) = (row.get(0), row.get(1));
    assert_eq!(raw, body.as_bytes(), "byte for byte");
    assert_ne!(payload.as_bytes(), body.as_bytes(), "jsonb rewrites it");
    assert!(payload.contains("\"José\"") && payload.contains("\"dup\": 2"), "{payload}");
}

#[test]
fn dead_letters_go_to_postgresql_and_wait_in_redis_only_while_it_is_down() {
    let mut app = spawn(Retention::default());
    // A job without its provider: it cannot be stored, now or later.
    let malformed = |app: &TestApp, id: &str| add_unstorable_entry(&mut app.redis.con(), "webhooks", id);
    malformed(&app, "dl_1");
    wait_until(Duration::from_secs(10), "the first dead letter in the table", || {
        app.dead_letter_rows().len() == 1
    });
    drained(&app);
    assert_eq!(app.dead_letters_in_redis(), 0, "Redis holds only work in flight");
    let first = &app.dead_letter_rows()[0];
    assert!(first.error.contains("no `p` field"), "{}", first.error);
    let fields = first.fields.as_ref().expect("an undecodable entry keeps its fields");
    assert_eq!(fields["b"], "eyL/IjoxfQ==", "byte for byte, as base64");

    // PostgreSQL down: the next one waits in the Redis fallback stream.
    app.postgres.as_mut().unwrap().stop();
    malformed(&app, "dl_2");
    wait_until(Duration::from_secs(30), "the fallback dead letter", || app.dead_letters_in_redis() == 1);
    wait_until(Duration::from_secs(10), "its entry acknowledged", || {
        app.stream_len() == 0 && app.pending() == 0
    });

    // Back: it moves into the table, and Redis is empty of it again.
    app.postgres.as_mut().unwrap().start_again();
    wait_until(Duration::from_secs(30), "the move into the table", || {
        app.dead_letters_in_redis() == 0 && app.dead_letter_rows().len() == 2
    });
    let rows = app.dead_letter_rows();
    let second = rows.iter().find(|d| d.stream_id != first.stream_id).unwrap();
    assert_eq!(second.fields.as_ref().unwrap()["e"], "ZGxfMg==", "dl_2, moved whole");
    assert_eq!(second.attempts, 1);
    let metrics = crate::ops::scrape(&app);
    assert_eq!(metrics["webhook_dead_letters_moved_total"], 1.0);
}

#[test]
fn an_upgrade_keeps_every_row_and_its_dedupe() {
    let pg = PostgresServer::start();
    pg.create_database(DB);
    let mut client = pg.client(DB);
    // The database as the migrations before partitioning left it.
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, name text NOT NULL,
                                             applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .unwrap();
    for (version, name, sql) in &store::MIGRATIONS[..2] {
        client.batch_execute(sql).unwrap();
        client
            .execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name])
            .unwrap();
    }
    client
        .batch_execute(
            "INSERT INTO webhook_events (provider, event_id, event_type, verified_by, event_timestamp, received_at, payload)
             SELECT 'stripe', 'old_' || g, 'invoice.paid', 'stripe', now(), now() - g * interval '1 hour',
                    jsonb_build_object('n', g, 's', 'Jos' || chr(233))
               FROM generate_series(1, 2000) g",
        )
        .unwrap();
    let before: Vec<(i64, String, String)> = client
        .query("SELECT id, event_id, payload::text FROM webhook_events ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();

    assert_eq!(store::migrate(&mut client).unwrap(), store::MIGRATIONS.len() - 2);
    let after: Vec<(i64, String, String, Vec<u8>)> = client
        .query("SELECT id, event_id, payload::text, raw_body FROM webhook_events ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(after.len(), before.len(), "every row kept");
    for ((id, event_id, payload), (id2, event_id2, payload2, raw)) in before.iter().zip(&after) {
        assert_eq!((id, event_id, payload), (id2, event_id2, payload2));
        assert_eq!(raw, payload.as_bytes(), "older rows get their jsonb text");
    }
    // Their dedupe too: a copy of an old event is a duplicate; a new event
    // gets an id past the old ones.
    let retention = Retention::default();
    let w = store::write_batch(&mut client, &[&job("old_7", now_us())], true, &retention).unwrap();
    assert_eq!((w.inserted, w.duplicates), (0, 1));
    let w = store::write_batch(&mut client, &[&job("new_1", now_us())], true, &retention).unwrap();
    assert_eq!((w.inserted, w.duplicates), (1, 0));
    let new_id: i64 =
        client.query_one("SELECT id FROM webhook_events WHERE event_id = 'new_1'", &[]).unwrap().get(0);
    assert!(new_id > before.last().unwrap().0, "{new_id}");
    let parts = partitions::partitions(&mut client).unwrap();
    assert_eq!(parts[0].name, "webhook_events_legacy");
    assert_eq!(parts[0].from, None, "the old rows' partition reaches back to the start");
}

/// `webhook-ingestor <args>` against `app`'s Redis and PostgreSQL: its stdout.
pub fn cli(app: &TestApp, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webhook-ingestor"))
        .args(args)
        .env("REDIS_URL", app.redis.url())
        .env("DATABASE_URL", app.postgres.as_ref().unwrap().url(DB))
        .output()
        .expect("the binary runs");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn stats_and_replay_read_the_dead_letter_table() {
    let app = TestApp::spawn_full(|c| {
        c.worker.max_attempts = 1;
        c.worker.threads = 1;
    });
    assert_eq!(app.post("stripe", &event("stripe", "evt_warm")).status, 202);
    wait_until(Duration::from_secs(30), "migrations and a first row", || app.rows() == 1);
    app.pg()
        .batch_execute("ALTER TABLE webhook_events ADD CONSTRAINT no_poison CHECK (event_id <> 'evt_poison')")
        .unwrap();
    assert_eq!(app.post("stripe", &event("stripe", "evt_poison")).status, 202);
    wait_until(Duration::from_secs(30), "the dead letter", || app.dead_letter_rows().len() == 1);
    drained(&app);
    // Dead-lettered on its first delivery: its attempt count leaves with it.
    let counts: HashMap<String, u64> =
        redis::cmd("HGETALL").arg("webhooks:attempts").query(&mut app.redis.con()).unwrap();
    assert!(counts.is_empty(), "nothing kept per dead entry: {counts:?}");

    let stats = cli(&app, &["stats"]);
    for line in [
        "rows_stored:  1",
        "dead_letters: 1",
        "dead_letters_in_redis: 0",
        "event_partitions:",
        "  webhook_events_p",
    ] {
        assert!(stats.contains(line), "{line:?} in:\n{stats}");
    }
    app.pg().batch_execute("ALTER TABLE webhook_events DROP CONSTRAINT no_poison").unwrap();
    let id = app.dead_letter_rows()[0].id.to_string();
    assert!(
        cli(&app, &["replay", "--id", "999999"]).starts_with("replayed 0 "),
        "an unknown id replays nothing"
    );
    assert!(cli(&app, &["replay", "--id", &id]).starts_with("replayed 1 "));
    wait_until(Duration::from_secs(30), "the replayed row", || rows_of(&app, "evt_poison") == 1);
    assert!(app.dead_letter_rows().is_empty(), "replayed letters leave the table");
}

#[test]
fn the_dedupe_probe_descends_an_older_generations_index_and_never_scans_it() {
    // The soak with a two-minute interval stalled at its first switch: the
    // probe was `gen >= oldest AND gen < current`, a range on the leading
    // column of the keys' primary key, so each row read all of the older
    // generation. Written as `gen = ANY(…)` it is one index descent.
    let app = spawn(Retention::default());
    let mut pg = app.pg();
    pg.batch_execute(
        "INSERT INTO webhook_event_keys (gen, provider, event_id)
           SELECT max(g.gen), 'stripe', 'k' || i FROM webhook_dedupe_generations g, generate_series(1, 200000) i
           GROUP BY i;
         ANALYZE webhook_event_keys;",
    )
    .unwrap();
    let older: i32 = pg.query_one("SELECT max(gen) FROM webhook_dedupe_generations", &[]).unwrap().get(0);
    let current = older + 1;
    pg.batch_execute(&format!(
        "CREATE TABLE webhook_event_keys_probe_test PARTITION OF webhook_event_keys FOR VALUES IN ({current});
         PREPARE probe(int4, text[], text[], int4[], bytea[]) AS {};
         SET plan_cache_mode = force_custom_plan;",
        store::INSERT_KEYS
    ))
    .unwrap();
    let plan: Vec<String> = pg
        .query(
            &format!("EXPLAIN EXECUTE probe({current}, '{{stripe}}', '{{k5}}', '{{{older}}}', '{{NULL}}')"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan on webhook_event_keys"), "{plan}");
    assert!(plan.contains("Index Only Scan") || plan.contains("Index Scan"), "{plan}");
}
