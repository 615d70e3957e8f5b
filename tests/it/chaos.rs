//! Faults under load, each against real processes: the gateway binary,
//! `redis-server` with AOF (`appendfsync everysec`, or `always` where a
//! Redis crash is the fault) and `postgres`. Every scenario ends in
//! [`settle`]: each 202'd event is one row, nothing else.

use std::time::{Duration, Instant};

use crate::fault::{pending, servers, settle, settle_within, stored, Gateway, Load};
use crate::harness::{free_port, wait_until, PostgresServer, RedisServer};

/// Four clients, each with a 5 ms pause: a few hundred events a second, a
/// few thousand per scenario, light enough for two shared cores.
const CLIENTS: usize = 4;
const PACE: Duration = Duration::from_millis(5);
/// A reclaim timeout no scenario may wait for: entries held when a process
/// or Redis died must come back by other means.
const SLOW_RECLAIM: (&str, &str) = ("RECLAIM_IDLE_MS", "60000");
/// How long such a scenario may take to drain after its load stops: well
/// before a 60 s reclaim, far beyond the seconds it takes.
const BEFORE_A_RECLAIM: Duration = Duration::from_secs(30);

/// A Redis, a PostgreSQL and the gateway (`--role all`, with `extra`
/// settings) under the standard load, returned once `warm` events got 202.
fn loaded_gateway(
    tag: &str,
    extra: &[(&str, &str)],
    warm: u64,
) -> (RedisServer, PostgresServer, Gateway, Load) {
    let (redis, pg) = servers();
    let gateway = Gateway::spawn(free_port(), &redis, Some(&pg), "all", extra);
    let load = Load::start(gateway.addr(), CLIENTS, PACE, tag);
    load.wait_for_more(warm, Duration::from_secs(20));
    (redis, pg, gateway, load)
}

#[test]
fn gateway_killed_with_sigkill_mid_load_then_restarted() {
    // A reclaim would take a minute: the restarted process must take over
    // its dead predecessor's entries itself, at once.
    let (redis, pg, mut gateway, load) = loaded_gateway("kill9gw", &[SLOW_RECLAIM], 500);

    // Left unreaped: a zombie keeps its pid's `/proc` entry, and must
    // still count as gone (scripts/start --background under an init that
    // reaps late made one; its entries then waited for the reclaim).
    gateway.kill9_unreaped();
    std::thread::sleep(Duration::from_millis(500));
    gateway.restart();
    load.wait_for_more(500, Duration::from_secs(20));
    let ledger = load.stop();

    let report = settle_within("gateway_kill9", &ledger, &redis, &pg, BEFORE_A_RECLAIM);
    assert!(report.other > 0 || report.sent > report.accepted, "the crash was felt: {report:?}");
}

#[test]
fn a_worker_killed_mid_batch_has_its_entries_taken_over_by_the_other() {
    let (redis, pg) = servers();
    let api = Gateway::spawn(free_port(), &redis, Some(&pg), "api", &[]);
    // Big, slowly filled batches keep entries pending long enough to be caught.
    let slow = [("WORKER_LINGER_MS", "200"), ("WORKER_THREADS", "1")];
    let mut doomed = Gateway::spawn(free_port(), &redis, Some(&pg), "worker", &slow);
    let survivor = Gateway::spawn(free_port(), &redis, Some(&pg), "worker", &slow);
    let load = Load::start(api.addr(), CLIENTS, PACE, "kill9worker");
    load.wait_for_more(300, Duration::from_secs(20));

    // Kill it the moment it holds delivered, unacknowledged entries.
    let marker = format!("-{}-", doomed.pid());
    let mut orphaned = 0;
    wait_until(Duration::from_secs(20), "the doomed worker to hold a batch", || {
        orphaned = pending(&redis).1.iter().filter(|(name, _)| name.contains(&marker)).map(|(_, n)| *n).sum();
        orphaned > 0
    });
    doomed.kill9();
    load.wait_for_more(300, Duration::from_secs(20));
    let ledger = load.stop();

    let report = settle("worker_kill9", &ledger, &redis, &pg);
    let left: u64 = pending(&redis).1.iter().filter(|(n, _)| n.contains(&marker)).map(|(_, n)| *n).sum();
    assert_eq!(left, 0, "the survivor claimed the {orphaned} entries the dead worker held");
    eprintln!("orphaned at the kill: {orphaned}; {report:?}");
    drop(survivor);
}

#[test]
fn a_worker_killed_on_another_host_has_its_entries_taken_over_in_seconds_not_a_reclaim() {
    // Two hosts as consumer names see them, and a reclaim of a minute: only
    // the dead process's missing liveness mark explains a takeover sooner.
    // Before the marks it took RECLAIM_IDLE_MS (32.5 s with the default).
    let (redis, pg) = servers();
    let api = Gateway::spawn(free_port(), &redis, Some(&pg), "api", &[]);
    let slow = [("WORKER_LINGER_MS", "200"), ("WORKER_THREADS", "1"), SLOW_RECLAIM];
    let on = |host: &'static str| -> Vec<(&str, &str)> {
        slow.iter().copied().chain([("CONSUMER_HOST", host)]).collect()
    };
    let mut doomed = Gateway::spawn(free_port(), &redis, Some(&pg), "worker", &on("host-a"));
    let survivor = Gateway::spawn(free_port(), &redis, Some(&pg), "worker", &on("host-b"));
    let load = Load::start(api.addr(), CLIENTS, PACE, "remotekill");
    load.wait_for_more(300, Duration::from_secs(20));

    let marker = format!("host-a-{}-", doomed.pid());
    let held =
        || -> u64 { pending(&redis).1.iter().filter(|(n, _)| n.contains(&marker)).map(|(_, n)| *n).sum() };
    let mut orphaned = 0;
    wait_until(Duration::from_secs(20), "the doomed worker to hold a batch", || {
        orphaned = held();
        orphaned > 0
    });
    doomed.kill9();
    let killed = Instant::now();
    wait_until(BEFORE_A_RECLAIM, "the survivor to take over the dead one's entries", || held() == 0);
    let took = killed.elapsed();
    load.wait_for_more(300, Duration::from_secs(20));
    let ledger = load.stop();

    let report = settle("remote_worker_kill9", &ledger, &redis, &pg);
    eprintln!("orphaned at the kill: {orphaned}, taken over after {took:?} (reclaim 60 s); {report:?}");
    wait_until(Duration::from_secs(10), "the dead consumer removed from the group", || {
        let names: Vec<(String, u64)> = consumer_names(&redis);
        !names.iter().any(|(n, _)| n.contains(&marker))
    });
    drop(survivor);
}

/// Every consumer of the group and its pending count.
fn consumer_names(redis: &RedisServer) -> Vec<(String, u64)> {
    let reply: redis::streams::StreamInfoConsumersReply =
        redis::cmd("XINFO").arg("CONSUMERS").arg("webhooks").arg("ingest").query(&mut redis.con()).unwrap();
    reply.consumers.into_iter().map(|c| (c.name, c.pending as u64)).collect()
}

#[test]
fn redis_killed_with_sigkill_mid_load_restarts_from_its_aof() {
    // The workers take back what they held when Redis died, without the
    // minute-long reclaim.
    let (mut redis, pg, _gateway, load) = loaded_gateway("kill9redis", &[SLOW_RECLAIM], 500);

    // `always`, the policy that promises this: with `everysec` Redis may
    // postpone its AOF write for up to 2 s while a slow background fsync
    // runs, and still reply (DESIGN.md §4). CI met that window once, under
    // the parallel suite's disk load: 2 of 1,016 acknowledged jobs lost.
    redis.set_appendfsync("always");
    load.wait_for_more(200, Duration::from_secs(20));
    redis.kill();
    std::thread::sleep(Duration::from_secs(1));
    redis.launch();
    load.wait_for_more(500, Duration::from_secs(30));
    let ledger = load.stop();

    let report = settle_within("redis_kill9", &ledger, &redis, &pg, BEFORE_A_RECLAIM);
    assert!(report.unavailable + report.other > 0, "Redis being down was felt: {report:?}");
}

#[test]
fn a_frozen_redis_gets_503s_in_time_and_everything_recovers_after_sigcont() {
    let (redis, pg, _gateway, load) = loaded_gateway("sigstopredis", &[], 300);

    redis.pause();
    std::thread::sleep(Duration::from_secs(10));
    redis.resume();
    load.wait_for_more(300, Duration::from_secs(30));
    let ledger = load.stop();

    let report = settle("redis_sigstop_10s", &ledger, &redis, &pg);
    assert!(report.unavailable > 0, "requests during the freeze got 503: {report:?}");
    // ENQUEUE_TIMEOUT_MS is 1 s: no request may hang for the 10 s freeze.
    assert!(ledger.max_latency < Duration::from_secs(3), "a request hung: {report:?}");
}

#[test]
fn postgres_restarted_mid_load() {
    let (redis, mut pg, _gateway, load) = loaded_gateway("pgrestart", &[], 500);
    pg.stop();
    pg.launch();
    load.wait_for_more(500, Duration::from_secs(20));
    let ledger = load.stop();
    settle("postgres_restart", &ledger, &redis, &pg);
}

#[test]
fn postgres_down_for_30_s_mid_load_the_queue_absorbs_and_workers_catch_up() {
    let (redis, mut pg, _gateway, load) = loaded_gateway("pgdown", &[], 300);

    pg.stop();
    let before = load.accepted();
    std::thread::sleep(Duration::from_secs(30));
    let during = load.accepted() - before;
    pg.launch();
    load.wait_for_more(300, Duration::from_secs(30));
    let ledger = load.stop();

    let report = settle("postgres_down_30s", &ledger, &redis, &pg);
    assert!(during > 1000, "the gateway kept accepting while PostgreSQL was down: {during}");
    eprintln!("accepted during the outage: {during}; {report:?}");
}

#[test]
fn sigterm_mid_load_exits_0_drained_and_loses_nothing() {
    let (redis, pg, mut gateway, load) = loaded_gateway("sigterm", &[], 500);

    let signalled = Instant::now();
    gateway.signal("-TERM");
    let status = gateway.wait_exit(Duration::from_secs(10));
    let took = signalled.elapsed();
    let ledger = load.stop();
    assert_eq!(status.code(), Some(0), "a drained shutdown exits 0");
    assert!(took < Duration::from_secs(6), "within SHUTDOWN_TIMEOUT_MS + slack: {took:?}");

    // Whatever the stopped process had not yet written is waiting in Redis;
    // a worker started afterwards stores it.
    let _worker = Gateway::spawn(free_port(), &redis, Some(&pg), "worker", &[]);
    settle("sigterm", &ledger, &redis, &pg);
}

#[test]
fn sigterm_with_a_black_holed_redis_ends_within_the_shutdown_timeout_and_loses_nothing() {
    let timeout = [("SHUTDOWN_TIMEOUT_MS", "2000"), ("WORKER_LINGER_MS", "200")];
    let (redis, pg, mut gateway, load) = loaded_gateway("blackhole", &timeout, 500);
    // Frozen, not gone: its kernel still accepts connections, nothing answers.
    redis.pause();
    std::thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    gateway.signal("-TERM");
    let status = gateway.wait_exit(Duration::from_secs(30));
    let took = signalled.elapsed();
    let ledger = load.stop();
    assert!(status.success(), "{status:?}");
    // The cores drain within the timeout, the workers get it plus a second;
    // before, a worker retried a frozen Redis for far longer.
    assert!(took < Duration::from_secs(5), "SHUTDOWN_TIMEOUT_MS (2 s) + slack, took {took:?}");
    redis.resume();
    // What the stopped process held stays pending, whole: a new start stores it.
    let _worker = Gateway::spawn(free_port(), &redis, Some(&pg), "worker", &[]);
    let report = settle("sigterm_blackholed_redis", &ledger, &redis, &pg);
    eprintln!("exited {took:?} after SIGTERM; {report:?}");
}

#[test]
fn a_read_only_postgres_makes_workers_wait_without_acking_anything() {
    let (redis, pg, _gateway, load) = loaded_gateway("readonly", &[("MAX_ATTEMPTS", "2")], 300);

    // Every session, pooled ones included, turns read-only at the reload.
    let mut admin = pg.client("postgres");
    admin.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let rows_frozen: i64 = stored(&pg).values().sum();
    load.wait_for_more(500, Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(2));
    let rows_later: i64 = stored(&pg).values().sum();
    let (held, _) = pending(&redis);
    assert_eq!(rows_frozen, rows_later, "nothing can be written to a read-only database");
    assert!(held > 0, "the workers hold their batches pending instead of acking them");

    admin.batch_execute("ALTER SYSTEM RESET default_transaction_read_only").unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").unwrap();
    load.wait_for_more(300, Duration::from_secs(20));
    let ledger = load.stop();
    // MAX_ATTEMPTS=2 and several reclaim periods read-only: a worker that
    // counted the outage as failed deliveries would have dead-lettered them.
    settle("postgres_read_only", &ledger, &redis, &pg);
}

/// Not a fault but the baseline row of the table: the same load, no fault.
#[test]
fn no_fault_baseline() {
    let (redis, pg, _gateway, load) = loaded_gateway("baseline", &[], 1000);
    let ledger = load.stop();
    let report = settle("baseline", &ledger, &redis, &pg);
    assert_eq!(report.accepted, report.sent, "no fault, every request 202: {report:?}");
    assert_eq!(report.rows, report.accepted);
}

/// The ledger itself can fail: `sabotage` changes one 202'd event's row
/// behind its back, and settle must report `expected`.
fn ledger_catches(tag: &str, sabotage: &str, expected: &str) {
    let (redis, pg) = servers();
    let gateway = Gateway::spawn(free_port(), &redis, Some(&pg), "all", &[]);
    let load = Load::start(gateway.addr(), 1, PACE, tag);
    load.wait_for_more(20, Duration::from_secs(20));
    let ledger = load.stop();
    wait_until(Duration::from_secs(30), "the rows", || stored(&pg).len() >= ledger.accepted.len());
    let victim = &ledger.accepted[ledger.accepted.len() / 2];
    pg.client(crate::harness::DB).execute(sabotage, &[victim]).unwrap();
    let caught =
        std::panic::catch_unwind(|| settle(&format!("ledger_self_check_{tag}"), &ledger, &redis, &pg));
    let message = caught.expect_err("settle must fail after the sabotage");
    let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(text.contains(expected), "{text}");
}

#[test]
fn the_ledger_catches_a_lost_event() {
    ledger_catches("lost", "DELETE FROM webhook_events WHERE event_id = $1", "lost: 1");
}

#[test]
fn the_ledger_catches_a_changed_row() {
    // The substitution this project once made: a timestamp replaced by the epoch.
    ledger_catches(
        "corrupt",
        "UPDATE webhook_events SET event_timestamp = 'epoch' WHERE event_id = $1",
        "corrupt: 1",
    );
}
