//! The slot map of a Redis Cluster: which master holds each of its 16384
//! slots (`CLUSTER SLOTS`), and the slot of a key (the cluster
//! specification's CRC16 of the key's hash tag). Read by the enqueue's
//! topology ([`super::topology`]) and by every other stage's cluster
//! connection ([`super::routed`]).

use std::time::Duration;

use redis::{ConnectionAddr, ConnectionInfo, RedisResult, Value};

/// Slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// The slot of `key`: CRC16 (XMODEM) of its hash tag, if it has one, else
/// of the whole key, modulo the cluster's slots (the cluster specification).
pub(super) fn slot_of(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let close = key[open + 1..].iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &key[open + 1..open + 1 + close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tagged.unwrap_or(key)) % SLOTS
}

fn seed_host(seed: &ConnectionInfo) -> String {
    match seed.addr() {
        ConnectionAddr::Tcp(h, _) => h.clone(),
        other => other.to_string(),
    }
}

/// A plain connection to `node` whose every step gives up after `timeout`.
fn connect(node: &ConnectionInfo, timeout: Duration) -> RedisResult<redis::Connection> {
    let con = redis::Client::open(node.clone())?.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// `CLUSTER SLOTS` of `node`, each master's host written out (a node may
/// name itself with an empty host: the one it was reached at).
///
/// # Errors
/// `node` did not answer within `timeout`, or not with a slot map.
pub(super) fn slot_ranges(
    node: &ConnectionInfo,
    timeout: Duration,
) -> RedisResult<Vec<(u16, u16, ConnectionAddr)>> {
    let mut con = connect(node, timeout)?;
    let reply: Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con)?;
    Ok(parse_slots(reply)?
        .into_iter()
        .map(|(a, b, host, port)| {
            let host = if host.is_empty() { seed_host(node) } else { host };
            (a, b, ConnectionAddr::Tcp(host, port))
        })
        .collect())
}

fn parse_slots(reply: Value) -> RedisResult<Vec<(u16, u16, String, u16)>> {
    let Value::Array(ranges) = reply else {
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_cluster_specification() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"webhooks:{3}"), slot_of(b"3"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"), "an empty tag: the whole key");
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
    }
}
