//! Where the queue lives: one Redis node (`REDIS_URL`, the default) or a
//! Redis Cluster (`REDIS_CLUSTER_NODES`), and how it is cut into partitions.
//!
//! A [`Queue`] is what every stage is given instead of a URL: the gateway's
//! pipeline thread, the workers, the claim keeper, `/health` and the
//! commands. [`Queue::connect`] gives a [`Conn`] that works the same on both
//! targets as long as each command or plain pipeline stays within one
//! partition (all of a partition's keys share a hash tag, see
//! [`super::keys`]): on a cluster, [`super::routed`] sends it to the master
//! of its first key's slot, with a time limit on every step, so a master
//! that stops answering costs only its own partitions. The one caller that
//! spans partitions in one round trip, the enqueue pipeline, routes per
//! master itself ([`super::topology`]).

use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionInfo, ConnectionLike, IntoConnectionInfo, RedisResult, Value};

use super::keys;
use super::routed::{ClusterState, Routed};

/// Most partitions `PARTITIONS` may name.
pub const MAX_PARTITIONS: u16 = 1024;

/// Where Redis is.
#[derive(Clone)]
pub enum Target {
    /// One node (`REDIS_URL`).
    Node(ConnectionInfo),
    /// A cluster: the seed nodes given (any one reachable is enough), each
    /// carrying the credentials used for every node discovered.
    Cluster(Vec<ConnectionInfo>),
}

/// The queue: its Redis, its name and its partitions.
#[derive(Clone)]
pub struct Queue {
    target: Target,
    name: String,
    partitions: u16,
    /// What this process's cluster connections know (slot map, masters not
    /// answering), shared by every clone.
    cluster: Arc<ClusterState>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Node(i) => format!("node {}", i.addr()),
            Target::Cluster(seeds) => {
                format!(
                    "cluster {}",
                    seeds.iter().map(|s| s.addr().to_string()).collect::<Vec<_>>().join(",")
                )
            }
        };
        f.debug_struct("Queue")
            .field("target", &target)
            .field("name", &self.name)
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl Queue {
    /// A queue named `name` in `partitions` streams on `target`.
    ///
    /// # Panics
    /// `partitions` is 0 or above [`MAX_PARTITIONS`] (configuration checks this first).
    pub fn new(target: Target, name: impl Into<String>, partitions: u16) -> Self {
        assert!((1..=MAX_PARTITIONS).contains(&partitions), "partitions out of range");
        Self { target, name: name.into(), partitions, cluster: Arc::default() }
    }

    /// One node at `url`, one stream named `name`: the embedded default.
    ///
    /// # Errors
    /// `url` is not a Redis URL.
    pub fn single(url: &str, name: impl Into<String>) -> RedisResult<Self> {
        Ok(Self::new(Target::Node(url.into_connection_info()?), name, 1))
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// `QUEUE_NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `PARTITIONS`.
    pub fn partitions(&self) -> u16 {
        self.partitions
    }

    /// The stream of partition `p`.
    pub fn stream(&self, p: u16) -> String {
        keys::stream(&self.name, p, self.partitions, self.is_cluster())
    }

    /// Every partition's stream, in partition order.
    pub fn streams(&self) -> Vec<String> {
        (0..self.partitions).map(|p| self.stream(p)).collect()
    }

    /// The partition a job of `(provider, event_id)` goes to: always the
    /// same one for the same pair, so a sender's retry meets its first copy.
    pub fn partition_of(&self, provider: &str, event_id: &str) -> u16 {
        keys::partition(provider, event_id, self.partitions)
    }

    /// A connection whose socket reads give up after `read_timeout` (keep it
    /// above any `XREADGROUP … BLOCK`) and connects after `connect_timeout`.
    ///
    /// # Errors
    /// No node could be reached (on a cluster: no seed, or no slot map).
    pub fn connect(&self, connect_timeout: Duration, read_timeout: Duration) -> RedisResult<Conn> {
        match &self.target {
            Target::Node(info) => {
                let con = redis::Client::open(info.clone())?.get_connection_with_timeout(connect_timeout)?;
                con.set_read_timeout(Some(read_timeout))?;
                con.set_write_timeout(Some(connect_timeout.max(Duration::from_secs(1))))?;
                Ok(Conn::Node(con))
            }
            Target::Cluster(seeds) => {
                let routed = Routed::new(seeds.clone(), self.cluster.clone(), connect_timeout, read_timeout)?;
                Ok(Conn::Cluster(Box::new(routed)))
            }
        }
    }
}

/// A connection to the queue's Redis: see the module docs for what it may carry.
pub enum Conn {
    /// To the one node.
    Node(redis::Connection),
    /// To the cluster (one socket per master, opened as needed).
    Cluster(Box<Routed>),
}

impl Conn {
    /// Whether this is a cluster connection, which drops the link of a
    /// master that failed by itself and keeps the others: after an error
    /// it is kept, not reopened.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands(&mut self, cmd: &[u8], offset: usize, count: usize) -> RedisResult<Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn req_command(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        match self {
            Self::Node(c) => c.req_command(cmd),
            Self::Cluster(c) => c.req_command(cmd),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }

    fn supports_pipelining(&self) -> bool {
        match self {
            Self::Node(c) => c.supports_pipelining(),
            // Plain pipelines within one slot: sent whole to its master.
            Self::Cluster(_) => true,
        }
    }

    fn check_connection(&mut self) -> bool {
        match self {
            Self::Node(c) => c.check_connection(),
            Self::Cluster(c) => c.check_connection(),
        }
    }

    fn is_open(&self) -> bool {
        match self {
            Self::Node(c) => c.is_open(),
            Self::Cluster(c) => c.is_open(),
        }
    }
}

/// Parses `REDIS_CLUSTER_NODES`: `host:port` or `redis://…` entries,
/// comma-separated. Credentials written on any entry (else on `fallback`,
/// `REDIS_URL`) are used for every node.
///
/// # Errors
/// An entry is neither; the message names it (credentials redacted).
pub fn parse_cluster_nodes(list: &str, fallback: Option<&str>) -> Result<Vec<ConnectionInfo>, String> {
    let mut infos = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = if raw.contains("://") { raw.to_string() } else { format!("redis://{raw}/") };
        let info = url.as_str().into_connection_info().map_err(|e| {
            format!("{} is not host:port or a redis:// URL ({e})", crate::telemetry::redact::redact(raw))
        })?;
        infos.push(info);
    }
    if infos.is_empty() {
        return Err("at least one host:port".into());
    }
    let with_auth = infos
        .iter()
        .find(|i| i.redis_settings().password().is_some())
        .map(|i| i.redis_settings().clone())
        .or_else(|| {
            fallback
                .and_then(|u| u.into_connection_info().ok())
                .map(|i| i.redis_settings().clone())
                .filter(|r| r.password().is_some())
        });
    if let Some(auth) = with_auth {
        infos = infos.into_iter().map(|i| i.set_redis_settings(auth.clone())).collect();
    }
    Ok(infos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_take_host_port_or_urls_and_share_credentials() {
        let nodes = parse_cluster_nodes("127.0.0.1:7000, redis://:pw@127.0.0.1:7001/", None).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].addr().to_string(), "127.0.0.1:7000");
        assert_eq!(nodes[0].redis_settings().password(), Some("pw"));
        let nodes = parse_cluster_nodes("h:1", Some("redis://:s@x:2/")).unwrap();
        assert_eq!(nodes[0].redis_settings().password(), Some("s"));
        assert!(parse_cluster_nodes(" , ", None).is_err());
        let e = parse_cluster_nodes("redis://:secret@h:notaport/", None).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn one_partition_keeps_the_queue_name_as_its_stream() {
        let q = Queue::single("redis://127.0.0.1:1/", "webhooks").unwrap();
        assert_eq!(q.streams(), vec!["webhooks".to_string()]);
        assert_eq!(q.partition_of("stripe", "evt_1"), 0);
        let q = Queue::new(q.target().clone(), "webhooks", 16);
        assert_eq!(q.stream(3), "webhooks:{3}");
        assert!(q.streams().len() == 16);
    }
}
