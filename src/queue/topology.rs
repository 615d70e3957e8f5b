//! Which master holds each partition, for the enqueue pipeline.
//!
//! redis-rs's `ClusterPipeline` fails a whole pipeline when one node fails,
//! so one dead master would turn every job of a batch into a 503. The
//! pipeline thread therefore keeps one plain connection per master and
//! sends each master its own part of the batch; this module says who the
//! masters are: `CLUSTER SLOTS` from any reachable node, and the slot of
//! each partition's stream from `CLUSTER KEYSLOT` (Redis's own hash, so it
//! cannot disagree with the server's). A single node is one master holding
//! every partition.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, RedisResult, Value};

use super::target::{Queue, Target};

/// Masters and, per partition, the index of the master serving it
/// (`None`: no master covers its slot now).
#[derive(Debug, Clone)]
pub struct Topology {
    /// Each master's connection settings (credentials from the seeds).
    pub masters: Vec<ConnectionInfo>,
    /// `route[p]`: the index in `masters` of partition `p`'s master.
    pub route: Vec<Option<usize>>,
}

impl Topology {
    /// The topology of a single node; `None` for a cluster (discover it).
    pub fn fixed(queue: &Queue) -> Option<Self> {
        match queue.target() {
            Target::Node(info) => {
                Some(Self { masters: vec![info.clone()], route: vec![Some(0); queue.partitions() as usize] })
            }
            Target::Cluster(_) => None,
        }
    }

    /// Asks the cluster, trying each seed (and each master known from
    /// `known`, since seeds may be the nodes that died) until one answers.
    ///
    /// # Errors
    /// No node answered `CLUSTER SLOTS`.
    pub fn discover(queue: &Queue, known: &[ConnectionInfo], timeout: Duration) -> RedisResult<Self> {
        let Target::Cluster(seeds) = queue.target() else {
            return Ok(Self::fixed(queue).expect("a node"));
        };
        let streams = queue.streams();
        let mut last = None;
        for seed in seeds.iter().chain(known) {
            match ask(seed, &streams, timeout) {
                Ok((ranges, slots)) => return Ok(Self::from_slots(seed, &ranges, &slots)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no cluster node given"))))
    }

    fn from_slots(seed: &ConnectionInfo, ranges: &[(u16, u16, String, u16)], slots: &[u16]) -> Self {
        let mut masters: Vec<ConnectionInfo> = Vec::new();
        let route = slots
            .iter()
            .map(|&slot| {
                let (_, _, host, port) = ranges.iter().find(|(a, b, _, _)| (*a..=*b).contains(&slot))?;
                let host = if host.is_empty() { seed_host(seed) } else { host.clone() };
                let addr = ConnectionAddr::Tcp(host, *port);
                Some(match masters.iter().position(|m| m.addr() == &addr) {
                    Some(i) => i,
                    None => {
                        masters.push(seed.clone().set_addr(addr));
                        masters.len() - 1
                    }
                })
            })
            .collect();
        Self { masters, route }
    }
}

fn seed_host(seed: &ConnectionInfo) -> String {
    match seed.addr() {
        ConnectionAddr::Tcp(h, _) => h.clone(),
        other => other.to_string(),
    }
}

/// `(first slot, last slot, master host, master port)` per range, and the
/// slot of each stream.
type Answer = (Vec<(u16, u16, String, u16)>, Vec<u16>);

fn ask(node: &ConnectionInfo, streams: &[String], timeout: Duration) -> RedisResult<Answer> {
    let mut con = redis::Client::open(node.clone())?.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    let mut pipe = redis::pipe();
    pipe.cmd("CLUSTER").arg("SLOTS");
    for s in streams {
        pipe.cmd("CLUSTER").arg("KEYSLOT").arg(s);
    }
    let mut replies: Vec<Value> = pipe.query(&mut con)?;
    let slots: Vec<u16> = replies.drain(1..).map(redis::from_redis_value).collect::<Result<_, _>>()?;
    let Some(Value::Array(ranges)) = replies.pop() else {
        return Err((redis::ErrorKind::Parse, "CLUSTER SLOTS is not an array").into());
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else { continue };
        let (Some(a), Some(b), Some(Value::Array(master))) = (fields.first(), fields.get(1), fields.get(2))
        else {
            continue;
        };
        let (Some(host), Some(port)) = (master.first(), master.get(1)) else { continue };
        let host: String = redis::from_redis_value(host.clone())?;
        out.push((
            redis::from_redis_value(a.clone())?,
            redis::from_redis_value(b.clone())?,
            host,
            redis::from_redis_value(port.clone())?,
        ));
    }
    Ok((out, slots))
}
