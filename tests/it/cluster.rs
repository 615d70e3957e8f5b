//! The system on a Redis Cluster: two `--role api` and two `--role worker`
//! processes on one loopback cluster, under the fault ledger's load, through
//! failovers, a resharding, a worker's death and a master's outage. Each
//! ends in the ledger: every 202'd event is one row, nothing else (the
//! failover without `WAIT` reports its losses instead: that window is the
//! figure the README documents).

use std::collections::HashSet;
use std::process::Command;
use std::time::{Duration, Instant};

use webhook_ingestor::queue::keys;

use crate::fault::{measure, settle, Gateway, Ledger, Load, QueueRedis, Timed};
use crate::harness::{free_port, wait_until, PostgresServer, DB};
use crate::redis_cluster::{RedisCluster, Shape, PARTITIONS};

/// Two clients per api process, each with a 5 ms pause.
const CLIENTS: usize = 2;
const PACE: Duration = Duration::from_millis(5);

/// The four processes and their load.
struct System {
    pg: PostgresServer,
    apis: Vec<Gateway>,
    workers: Vec<Gateway>,
    loads: Vec<Load>,
}

impl System {
    fn start(cluster: &RedisCluster, tag: &str, extra: &[(&str, &str)]) -> Self {
        let pg = PostgresServer::start();
        pg.create_database(DB);
        let apis: Vec<Gateway> =
            (0..2).map(|_| Gateway::spawn(free_port(), cluster, Some(&pg), "api", extra)).collect();
        let workers: Vec<Gateway> =
            (0..2).map(|_| Gateway::spawn(free_port(), cluster, Some(&pg), "worker", extra)).collect();
        let loads = start_loads(&apis, tag);
        Self { pg, apis, workers, loads }
    }

    fn accepted(&self) -> u64 {
        self.loads.iter().map(Load::accepted).sum()
    }

    fn wait_for_more(&self, n: u64, within: Duration) {
        let target = self.accepted() + n;
        wait_until(within, "the load to get 202s", || self.accepted() >= target);
    }

    /// Stops the load and returns what it saw.
    fn stop_load(&mut self) -> Ledger {
        let mut ledger = Ledger::default();
        for load in self.loads.drain(..) {
            ledger.merge(load.stop());
        }
        ledger
    }

    /// A fresh load (ids tagged `tag`) until `n` more 202s, then its ledger.
    fn load_again(&mut self, tag: &str, n: u64) -> Ledger {
        self.loads = start_loads(&self.apis, tag);
        self.wait_for_more(n, Duration::from_secs(30));
        self.stop_load()
    }
}

fn start_loads(apis: &[Gateway], tag: &str) -> Vec<Load> {
    apis.iter()
        .enumerate()
        .map(|(i, api)| Load::start(api.addr(), CLIENTS, PACE, &format!("{tag}{i}")))
        .collect()
}

/// The partition the gateway puts a load event in.
fn partition_of(id: &str) -> u16 {
    keys::partition("stripe", id, PARTITIONS)
}

/// 202'd ids of `ledger` in these partitions.
fn accepted_in(ledger: &Ledger, partitions: &[u16]) -> usize {
    ledger.accepted.iter().filter(|id| partitions.contains(&partition_of(id))).count()
}

fn three_masters(replicas_per_master: usize) -> Shape {
    Shape { masters: 3, replicas_per_master, full_coverage: true, appendfsync: "everysec" }
}

#[test]
fn cluster_no_fault_every_partition_used_nothing_lost() {
    let cluster = RedisCluster::start(three_masters(1));
    let mut system = System::start(&cluster, "clbase", &[]);
    system.wait_for_more(1500, Duration::from_secs(60));
    let ledger = system.stop_load();

    let report = settle("cluster_baseline", &ledger, &cluster, &system.pg);
    assert_eq!(report.accepted, report.sent, "no fault, every request 202: {report:?}");
    let added = cluster.entries_added();
    assert!(added.iter().all(|&n| n > 0), "every partition got entries: {added:?}");
    let masters: HashSet<usize> = (0..PARTITIONS).map(|p| cluster.master_of(p)).collect();
    assert_eq!(masters.len(), 3, "the partitions span all three masters");
    assert_eq!(added.iter().sum::<u64>() as usize, report.accepted, "each 202 is one entry: {added:?}");
}

/// Kills the master of partition 0 mid-load and waits until a replica has
/// taken its slots. With `lag`, its replicas and the workers are frozen
/// (SIGSTOP) and its replication links cut that long first, and thawed
/// only once it is dead: whatever it acknowledged meanwhile never reached a
/// replica nor PostgreSQL. Returns the dead master's partitions.
fn fail_over(cluster: &mut RedisCluster, system: &System, lag: Option<Duration>) -> Vec<u16> {
    system.wait_for_more(300, Duration::from_secs(60));
    let victim = cluster.master_of(0);
    let partitions = cluster.partitions_of(victim);
    let replicas = cluster.replicas_of(victim);
    assert!(!replicas.is_empty(), "the victim has a replica");
    if let Some(lag) = lag {
        // The workers too, as when they are behind: what they already
        // stored would otherwise hide what the replicas never got.
        for w in &system.workers {
            w.signal("-STOP");
        }
        for &r in &replicas {
            cluster.nodes[r].pause();
        }
        // Frozen replicas would still find the writes in their sockets'
        // buffers; cut the links so the master keeps them to itself.
        let _: redis::RedisResult<u64> = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("replica")
            .query(&mut cluster.nodes[victim].con());
        std::thread::sleep(lag);
    }
    cluster.nodes[victim].kill();
    if lag.is_some() {
        for &r in &replicas {
            cluster.nodes[r].resume();
        }
        for w in &system.workers {
            w.signal("-CONT");
        }
    }
    wait_until(Duration::from_secs(30), "a replica to take over", || {
        cluster.try_master_of(0).is_some_and(|m| m != victim)
    });
    partitions
}

/// The failover scenario: load, [`fail_over`], a load after it that must
/// get 202s in the dead master's partitions, and the ledger of both.
fn failover_ledger(
    cluster: &mut RedisCluster,
    system: &mut System,
    tag: &str,
    lag: Option<Duration>,
) -> Ledger {
    let moved = fail_over(cluster, system, lag);
    let mut ledger = system.stop_load();
    let after = system.load_again(&format!("{tag}after"), 600);
    assert!(accepted_in(&after, &moved) > 0, "its partitions {moved:?} take 202s again");
    ledger.merge(after);
    ledger
}

/// `REDIS_WAIT_REPLICAS=1`, two replicas per master (so the promoted one
/// still has a replica to WAIT for, and 202s come back without restarting
/// anything).
fn waiting_cluster(tag: &str) -> (RedisCluster, System) {
    let cluster = RedisCluster::start(three_masters(2));
    let wait = [("REDIS_WAIT_REPLICAS", "1"), ("REDIS_WAIT_TIMEOUT_MS", "500")];
    let system = System::start(&cluster, tag, &wait);
    (cluster, system)
}

#[test]
fn cluster_master_killed_with_wait_fails_over_and_loses_nothing() {
    let (mut cluster, mut system) = waiting_cluster("clwait");
    let ledger = failover_ledger(&mut cluster, &mut system, "clwait", None);
    assert!(ledger.unavailable > 0, "the dead master's partitions got 503s meanwhile");
    settle("cluster_failover_wait", &ledger, &cluster, &system.pg);
}

#[test]
fn cluster_master_killed_with_wait_while_its_replicas_lag_loses_nothing() {
    // The window WAIT closes: the replicas frozen for a second, then the
    // master killed. What it acknowledged meanwhile is gone, but none of it
    // got a 202: WAIT timed out, those requests got 503.
    let (mut cluster, mut system) = waiting_cluster("clwaitlag");
    let ledger = failover_ledger(&mut cluster, &mut system, "clwaitlag", Some(Duration::from_secs(1)));
    settle("cluster_failover_wait_lagging_replica", &ledger, &cluster, &system.pg);
}

#[test]
fn cluster_master_killed_without_wait_reports_what_the_failover_lost() {
    let mut cluster = RedisCluster::start(three_masters(1));
    let mut system = System::start(&cluster, "clnowait", &[]);
    let ledger = failover_ledger(&mut cluster, &mut system, "clnowait", None);
    // Replication is asynchronous: what the master acknowledged in its
    // last moments may never have reached the replica. Counted, not hidden.
    let report = measure("cluster_failover_no_wait", &ledger, &cluster, &system.pg, Duration::from_secs(120));
    eprintln!("failover without WAIT lost {} of {} 202'd events", report.lost, report.accepted);
}

#[test]
fn cluster_master_killed_without_wait_while_its_replica_lags_loses_what_it_acknowledged() {
    // The same lag as above without WAIT: the window is real. Every 202
    // the master gave while its replica was frozen is lost (in its
    // partitions only), and the ledger sees it.
    let mut cluster = RedisCluster::start(three_masters(1));
    let mut system = System::start(&cluster, "clnowaitlag", &[]);
    let ledger = failover_ledger(&mut cluster, &mut system, "clnowaitlag", Some(Duration::from_secs(1)));
    let report = measure(
        "cluster_failover_no_wait_lagging_replica",
        &ledger,
        &cluster,
        &system.pg,
        Duration::from_secs(120),
    );
    eprintln!(
        "failover without WAIT, replica lagging 1 s: lost {} of {} 202'd events",
        report.lost, report.accepted
    );
    assert!(report.lost > 0, "without WAIT the lagging replica's window loses 202'd events: {report:?}");
}

#[test]
fn cluster_slots_resharded_mid_load_lose_nothing() {
    let cluster = RedisCluster::start(three_masters(0));
    let mut system = System::start(&cluster, "clreshard", &[]);
    system.wait_for_more(300, Duration::from_secs(60));

    // Move the lowest slots of partition 0's master, enough to carry two of
    // its partitions, to another master, while the load goes on.
    let from = cluster.master_of(0);
    let nodes = cluster.topology();
    let source = nodes.iter().find(|n| n.port == cluster.nodes[from].port).unwrap().clone();
    let target = nodes.iter().find(|n| n.master && n.port != source.port).unwrap().clone();
    let first = source.slots[0].0;
    let mut slots: Vec<(u16, u16)> =
        cluster.partitions_of(from).into_iter().map(|p| (cluster.slot(p), p)).collect();
    slots.sort();
    let count = slots[1].0 - first + 1;
    let moving: Vec<u16> = slots.iter().filter(|(s, _)| *s < first + count).map(|(_, p)| *p).collect();
    let out = Command::new("redis-cli")
        .args(["--cluster", "reshard", &format!("127.0.0.1:{}", source.port)])
        .args(["--cluster-from", &source.id, "--cluster-to", &target.id])
        .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "reshard: {}", String::from_utf8_lossy(&out.stdout));
    for &p in &moving {
        assert_ne!(cluster.master_of(p), from, "partition {p} moved");
    }
    system.wait_for_more(300, Duration::from_secs(30));
    let ledger = system.stop_load();

    let report = settle("cluster_reshard", &ledger, &cluster, &system.pg);
    eprintln!("resharded partitions {moving:?} ({count} slots) mid-load: {report:?}");
}

#[test]
fn cluster_worker_killed_mid_batch_has_its_entries_taken_over() {
    let cluster = RedisCluster::start(three_masters(0));
    let slow = [("WORKER_LINGER_MS", "200"), ("WORKER_THREADS", "1")];
    let mut system = System::start(&cluster, "clkill", &slow);
    system.wait_for_more(300, Duration::from_secs(60));

    let marker = format!("-{}-", system.workers[0].pid());
    let mut orphaned = 0;
    wait_until(Duration::from_secs(20), "the doomed worker to hold a batch", || {
        orphaned =
            cluster.pending().1.iter().filter(|(name, _)| name.contains(&marker)).map(|(_, n)| *n).sum();
        orphaned > 0
    });
    system.workers[0].kill9();
    system.wait_for_more(300, Duration::from_secs(30));
    let ledger = system.stop_load();

    let report = settle("cluster_worker_kill9", &ledger, &cluster, &system.pg);
    let left: u64 = cluster.pending().1.iter().filter(|(n, _)| n.contains(&marker)).map(|(_, n)| *n).sum();
    assert_eq!(left, 0, "the survivor claimed the {orphaned} entries the dead worker held");
    eprintln!("orphaned at the kill: {orphaned}; {report:?}");
}

#[test]
fn cluster_master_without_replica_down_only_its_partitions_refuse() {
    let mut cluster = RedisCluster::start(Shape {
        masters: 3,
        replicas_per_master: 0,
        full_coverage: false,
        // No replica takes over: the node's own AOF is all there is.
        appendfsync: "always",
    });
    let mut system = System::start(&cluster, "clnorep", &[]);
    system.wait_for_more(300, Duration::from_secs(60));
    let victim = cluster.master_of(0);
    let down = cluster.partitions_of(victim);
    let up: Vec<u16> = (0..PARTITIONS).filter(|p| !down.contains(p)).collect();
    let mut ledger = system.stop_load();

    cluster.nodes[victim].kill();
    let during = system.load_again("clnorepdown", 600);
    assert_eq!(accepted_in(&during, &down), 0, "no 202 for partitions {down:?} of the dead master");
    assert!(accepted_in(&during, &up) >= 600, "the other partitions kept serving: {during:?}");
    assert!(during.unavailable > 0, "its partitions got 503s: {during:?}");
    ledger.merge(during);

    cluster.nodes[victim].launch();
    cluster.wait_healthy(3, 3);
    let after = system.load_again("clnorepback", 300);
    assert!(accepted_in(&after, &down) > 0, "its partitions take 202s again once it is back");
    ledger.merge(after);

    let report = settle("cluster_master_down_no_replica", &ledger, &cluster, &system.pg);
    eprintln!("a master without replica down: {report:?}");
}

/// The requests of a ledger in some partitions and a time window.
#[derive(Debug)]
struct Window {
    sent: usize,
    accepted: usize,
    /// 503s, other answers and no answer.
    refused: usize,
    p50_ms: f64,
    p99_ms: f64,
}

fn window(ledger: &Ledger, partitions: &[u16], from: Instant, to: Instant) -> Window {
    let mine: Vec<&Timed> = ledger
        .timed
        .iter()
        .filter(|t| t.at >= from && t.at < to && partitions.contains(&partition_of(&t.id)))
        .collect();
    let mut ms: Vec<f64> = mine.iter().map(|t| t.latency.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at =
        |q: f64| ms.get(((ms.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0.0);
    Window {
        sent: mine.len(),
        accepted: mine.iter().filter(|t| t.status == 202).count(),
        refused: mine.iter().filter(|t| t.status != 202).count(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
    }
}

/// Rows in PostgreSQL now.
fn rows(pg: &PostgresServer) -> i64 {
    pg.client(DB).query_one("SELECT count(*) FROM webhook_events", &[]).map_or(-1, |r| r.get(0))
}

#[test]
fn cluster_master_frozen_for_10_s_costs_only_its_own_partitions() {
    // No replica: nothing fails over, the frozen master's partitions simply
    // wait for it; without full coverage the others keep their slots.
    let cluster = RedisCluster::start(Shape {
        masters: 3,
        replicas_per_master: 0,
        full_coverage: false,
        appendfsync: "everysec",
    });
    let mut system = System::start(&cluster, "clfrozen", &[]);
    system.wait_for_more(300, Duration::from_secs(60));
    let victim = cluster.master_of(0);
    let frozen = cluster.partitions_of(victim);
    let others: Vec<u16> = (0..PARTITIONS).filter(|p| !frozen.contains(p)).collect();

    let calm = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    // After `kill -STOP` has returned: a request sent while it was being
    // spawned may still have been answered.
    cluster.nodes[victim].pause();
    let t0 = Instant::now();
    // The rows the workers store from the other masters meanwhile (a second
    // in, once the reads in flight on the frozen one have had their chance).
    std::thread::sleep(Duration::from_secs(1));
    let rows_early = rows(&system.pg);
    std::thread::sleep(Duration::from_secs(9));
    let rows_late = rows(&system.pg);
    // Before `kill -CONT` is spawned, for the same reason.
    let t1 = Instant::now();
    cluster.nodes[victim].resume();
    std::thread::sleep(Duration::from_secs(5));
    let ledger = system.stop_load();

    let before = window(&ledger, &others, calm, t0);
    let during = window(&ledger, &others, t0, t1);
    let its_own = window(&ledger, &frozen, t0, t1);
    let after = window(&ledger, &frozen, t1 + Duration::from_secs(2), Instant::now());
    eprintln!(
        "one master frozen 10 s: other partitions before {before:?}, during {during:?}; \
         its own during {its_own:?}, after {after:?}; rows stored during the freeze {}",
        rows_late - rows_early
    );
    assert_eq!(during.refused, 0, "no refusal on the healthy partitions: {during:?}");
    assert!(during.accepted > 0, "the healthy partitions kept taking 202s: {during:?}");
    assert_eq!(its_own.accepted, 0, "the frozen master acknowledged nothing: {its_own:?}");
    assert!(rows_late > rows_early, "the workers kept storing the other partitions' events");
    assert!(after.accepted > 0, "its partitions take 202s again once it is thawed: {after:?}");
    let report = settle("cluster_master_frozen", &ledger, &cluster, &system.pg);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("reliability");
    let figures = serde_json::json!({
        "others_before": {"sent": before.sent, "p50_ms": before.p50_ms, "p99_ms": before.p99_ms},
        "others_during": {"sent": during.sent, "refused": during.refused, "p50_ms": during.p50_ms, "p99_ms": during.p99_ms},
        "frozen_during": {"sent": its_own.sent, "refused": its_own.refused},
        "rows_stored_during": rows_late - rows_early,
        "report": report,
    });
    std::fs::write(dir.join("cluster_master_frozen_windows.json"), figures.to_string()).unwrap();
}

/// The cluster seen with `PARTITIONS=1`.
struct OnePartition<'a>(&'a RedisCluster);

impl QueueRedis for OnePartition<'_> {
    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.0.env();
        env.retain(|(k, _)| k != "PARTITIONS");
        env.push(("PARTITIONS".into(), "1".into()));
        env
    }
    fn pending(&self) -> (u64, std::collections::HashMap<String, u64>) {
        crate::fault::pending_in(&mut self.0.con(), &one_stream())
    }
    fn queue_length(&self) -> usize {
        redis::cmd("XLEN").arg(one_stream()).query(&mut self.0.con()).unwrap()
    }
    fn dead_letters(&self) -> usize {
        redis::cmd("XLEN").arg(format!("{}:dead", one_stream())).query(&mut self.0.con()).unwrap()
    }
}

fn one_stream() -> String {
    keys::stream(webhook_ingestor::queue::DEFAULT_STREAM, 0, 1, true)
}

#[test]
fn cluster_with_one_partition_tags_its_keys_so_a_dead_letter_reaches_the_fallback() {
    // Before the fix the one stream was `webhooks` and its fallback
    // `webhooks:dead`: two slots, so the dead letter's MULTI was CROSSSLOT
    // and the entry looped, pending, forever.
    let cluster = RedisCluster::start(three_masters(0));
    let mut pg = PostgresServer::start();
    pg.create_database(DB);
    let one = OnePartition(&cluster);
    let gateway = Gateway::spawn(free_port(), &one, Some(&pg), "all", &[("RECLAIM_IDLE_MS", "300")]);
    let stream = one_stream();
    assert!(stream.contains('{'), "hash-tagged though alone: {stream}");
    let mut con = cluster.con();
    // One event stored: the workers are reading.
    let mut client = crate::harness::Client::connect(gateway.addr());
    assert_eq!(client.post("stripe", &crate::harness::event("stripe", "evt_first")).status, 202);
    let rows = |pg: &PostgresServer| -> i64 {
        pg.client(DB).query_one("SELECT count(*) FROM webhook_events", &[]).map_or(-1, |r| r.get(0))
    };
    wait_until(Duration::from_secs(20), "the first event stored", || rows(&pg) == 1);

    // PostgreSQL down: a dead letter can only go to the Redis fallback.
    pg.stop();
    crate::harness::add_unstorable_entry(&mut con, &stream, "no_provider");
    wait_until(Duration::from_secs(30), "the dead letter in the fallback stream", || one.dead_letters() == 1);
    wait_until(Duration::from_secs(10), "its entry acknowledged", || {
        one.queue_length() == 0 && one.pending().0 == 0
    });

    // PostgreSQL back: it moves into the table, and the fallback empties.
    pg.start_again();
    let count = || -> i64 {
        pg.client(DB).query_one("SELECT count(*) FROM webhook_dead_letters", &[]).map_or(-1, |r| r.get(0))
    };
    wait_until(Duration::from_secs(30), "the move into the table", || {
        one.dead_letters() == 0 && count() == 1
    });
}
