//! Which master holds each partition, for the enqueue pipeline.
//!
//! redis-rs's `ClusterPipeline` fails a whole pipeline when one node fails,
//! so one dead master would turn every job of a batch into a 503. The
//! pipeline therefore keeps one plain connection per master and sends each
//! master its own part of the batch; this module says who the masters are:
//! `CLUSTER SLOTS` from any reachable node ([`super::slots`]) and the slot
//! of each partition's stream. A single node is one master holding every
//! partition.

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, RedisResult};

use super::slots::{slot_of, slot_ranges};
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
        let slots: Vec<u16> = queue.streams().iter().map(|s| slot_of(s.as_bytes())).collect();
        let mut last = None;
        for seed in seeds.iter().chain(known) {
            match slot_ranges(seed, timeout) {
                Ok(ranges) => return Ok(Self::from_slots(seed, &ranges, &slots)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| redis::RedisError::from((redis::ErrorKind::Io, "no cluster node given"))))
    }

    fn from_slots(seed: &ConnectionInfo, ranges: &[(u16, u16, ConnectionAddr)], slots: &[u16]) -> Self {
        let mut masters: Vec<ConnectionInfo> = Vec::new();
        let route = slots
            .iter()
            .map(|&slot| {
                let (_, _, addr) = ranges.iter().find(|(a, b, _)| (*a..=*b).contains(&slot))?;
                Some(match masters.iter().position(|m| m.addr() == addr) {
                    Some(i) => i,
                    None => {
                        masters.push(seed.clone().set_addr(addr.clone()));
                        masters.len() - 1
                    }
                })
            })
            .collect();
        Self { masters, route }
    }
}
