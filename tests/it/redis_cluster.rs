//! A private Redis Cluster on loopback: `redis-server` processes in
//! cluster mode (random ports whose cluster bus port, +10000, is free too),
//! joined with `redis-cli --cluster create`, each stopped by pid. The
//! ledger sees it through [`QueueRedis`], summed over every partition.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use webhook_ingestor::queue::DEFAULT_STREAM;

use crate::fault::{pending_in, QueueRedis};
use crate::harness::{wait_until, RedisServer};

/// The cluster's `PARTITIONS` (the cluster default).
pub const PARTITIONS: u16 = 16;
/// Short, so a failover is seconds, not the 15 s default.
const NODE_TIMEOUT_MS: &str = "2000";

/// How a cluster is built.
pub struct Shape {
    pub masters: usize,
    pub replicas_per_master: usize,
    /// `cluster-require-full-coverage`: `no` lets the other masters serve
    /// while one with no replica is down.
    pub full_coverage: bool,
    /// `appendfsync` of every node: `always` where a node's crash is the
    /// fault and no replica takes over.
    pub appendfsync: &'static str,
}

/// One node as `CLUSTER NODES` lists it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    /// A replica's master (its id).
    pub replica_of: Option<String>,
    /// Slot ranges it serves (masters).
    pub slots: Vec<(u16, u16)>,
}

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// A port whose cluster bus port (+10000) is free as well.
fn cluster_port() -> u16 {
    loop {
        let port = crate::harness::free_port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    pub fn start(shape: Shape) -> Self {
        let count = shape.masters * (1 + shape.replicas_per_master);
        let coverage = if shape.full_coverage { "yes" } else { "no" };
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| {
                RedisServer::start_with(
                    cluster_port(),
                    shape.appendfsync,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        NODE_TIMEOUT_MS,
                        "--cluster-require-full-coverage",
                        coverage,
                        "--maxmemory",
                        "512mb",
                    ],
                )
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", &shape.replicas_per_master.to_string(), "--cluster-yes"]);
        let out = create.output().expect("redis-cli not found on PATH: run scripts/test, which installs it");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = Self { nodes };
        cluster.wait_healthy(shape.masters, count);
        cluster
    }

    /// Until every live node says `cluster_state:ok`, sees `masters`
    /// masters holding every slot and `nodes` nodes, and every replica's
    /// link to its master is up.
    pub fn wait_healthy(&self, masters: usize, nodes: usize) {
        wait_until(Duration::from_secs(60), "the cluster to be whole", || {
            self.nodes.iter().filter(|n| n.pid().is_some()).all(|n| {
                let Ok(mut con) = redis::Client::open(n.url()).unwrap().get_connection() else {
                    return false;
                };
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con).unwrap_or_default();
                let repl: String = redis::cmd("INFO").arg("replication").query(&mut con).unwrap_or_default();
                let seen = Self::parse_nodes(&mut con);
                info.contains("cluster_state:ok")
                    && seen.len() == nodes
                    && seen.iter().filter(|s| s.master && !s.failed && !s.slots.is_empty()).count() == masters
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            })
        });
    }

    fn parse_nodes(con: &mut redis::Connection) -> Vec<NodeInfo> {
        let text: String = redis::cmd("CLUSTER").arg("NODES").query(con).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                let port = f.get(1)?.split('@').next()?.rsplit(':').next()?.parse().ok()?;
                let flags = f.get(2)?;
                let slots = f
                    .iter()
                    .skip(8)
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| {
                        let (a, b) = s.split_once('-').unwrap_or((s, s));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                Some(NodeInfo {
                    id: f[0].to_string(),
                    port,
                    master: flags.contains("master"),
                    failed: flags.contains("fail") && !flags.contains("fail?"),
                    replica_of: f.get(3).filter(|m| **m != "-").map(|m| m.to_string()),
                    slots,
                })
            })
            .collect()
    }

    /// The cluster as a live node sees it.
    pub fn topology(&self) -> Vec<NodeInfo> {
        let node = self.nodes.iter().find(|n| n.pid().is_some()).expect("a live node");
        Self::parse_nodes(&mut node.con())
    }

    /// Index in `nodes` of the master serving partition `p` now.
    pub fn master_of(&self, p: u16) -> usize {
        self.try_master_of(p).expect("a master serves the partition")
    }

    /// [`Self::master_of`], `None` while no live master serves it.
    pub fn try_master_of(&self, p: u16) -> Option<usize> {
        let slot = self.slot(p);
        let port = self
            .topology()
            .into_iter()
            .find(|n| n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))?
            .port;
        self.nodes.iter().position(|n| n.port == port)
    }

    /// Indexes in `nodes` of node `i`'s replicas.
    pub fn replicas_of(&self, i: usize) -> Vec<usize> {
        let nodes = self.topology();
        let id = nodes.iter().find(|n| n.port == self.nodes[i].port).expect("listed").id.clone();
        nodes
            .iter()
            .filter(|n| n.replica_of.as_deref() == Some(id.as_str()))
            .filter_map(|n| self.nodes.iter().position(|s| s.port == n.port))
            .collect()
    }

    /// The slot of partition `p`'s stream.
    pub fn slot(&self, p: u16) -> u16 {
        let node = self.nodes.iter().find(|n| n.pid().is_some()).expect("a live node");
        redis::cmd("CLUSTER").arg("KEYSLOT").arg(stream(p)).query(&mut node.con()).unwrap()
    }

    /// Partitions whose master is node `i`.
    pub fn partitions_of(&self, i: usize) -> Vec<u16> {
        (0..PARTITIONS).filter(|&p| self.master_of(p) == i).collect()
    }

    /// A cluster connection through the live nodes.
    pub fn con(&self) -> redis::cluster::ClusterConnection {
        let urls: Vec<String> = self.nodes.iter().filter(|n| n.pid().is_some()).map(|n| n.url()).collect();
        redis::cluster::ClusterClient::builder(urls)
            .response_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// Per partition: entries ever added to its stream (`XINFO STREAM`).
    pub fn entries_added(&self) -> Vec<u64> {
        let mut con = self.con();
        (0..PARTITIONS)
            .map(|p| {
                let info: HashMap<String, redis::Value> =
                    redis::cmd("XINFO").arg("STREAM").arg(stream(p)).query(&mut con).unwrap_or_default();
                info.get("entries-added").and_then(|v| redis::from_redis_value(v.clone()).ok()).unwrap_or(0)
            })
            .collect()
    }

    fn sum(&self, f: impl Fn(&mut redis::cluster::ClusterConnection, u16) -> u64) -> u64 {
        let mut con = self.con();
        (0..PARTITIONS).map(|p| f(&mut con, p)).sum()
    }
}

/// Partition `p`'s stream.
pub fn stream(p: u16) -> String {
    webhook_ingestor::queue::keys::stream(DEFAULT_STREAM, p, PARTITIONS, true)
}

impl QueueRedis for RedisCluster {
    fn env(&self) -> Vec<(String, String)> {
        let nodes: Vec<String> = self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        vec![("REDIS_CLUSTER_NODES".into(), nodes.join(",")), ("PARTITIONS".into(), PARTITIONS.to_string())]
    }

    fn pending(&self) -> (u64, HashMap<String, u64>) {
        let mut con = self.con();
        let mut total = 0;
        let mut by_consumer: HashMap<String, u64> = HashMap::new();
        for p in 0..PARTITIONS {
            let (n, consumers) = pending_in(&mut con, &stream(p));
            total += n;
            for (c, k) in consumers {
                *by_consumer.entry(c).or_default() += k;
            }
        }
        (total, by_consumer)
    }

    fn queue_length(&self) -> usize {
        self.sum(|con, p| redis::cmd("XLEN").arg(stream(p)).query(con).unwrap()) as usize
    }

    fn dead_letters(&self) -> usize {
        self.sum(|con, p| redis::cmd("XLEN").arg(format!("{}:dead", stream(p))).query(con).unwrap()) as usize
    }
}
