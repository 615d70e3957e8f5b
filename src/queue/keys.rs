//! Every Redis key spelling the system uses, in one place. With one
//! partition on one node (the default) the stream is `QUEUE_NAME` itself;
//! with `PARTITIONS` = N > 1, or on a Redis Cluster whatever `PARTITIONS`
//! is, partition `p` is the stream `QUEUE_NAME:{p}`.
//! Everything else (the dead-letter fallback stream) is derived from a
//! partition's stream name, so it carries the same hash tag and lives in the
//! same Redis Cluster slot: a partition's commands never span slots.

/// The stream of partition `p` of `partitions` of the queue `name`. On a
/// cluster (`tagged`) it always carries its hash tag, even alone: its
/// dead-letter stream must share its slot.
pub fn stream(name: &str, p: u16, partitions: u16, tagged: bool) -> String {
    if partitions <= 1 && !tagged {
        name.to_string()
    } else {
        format!("{name}:{{{p}}}")
    }
}

/// The partition of `(provider, event_id)`: FNV-1a over both (a `0` byte
/// between), so it is the same in every process and every build, unlike
/// std's randomly keyed hasher.
pub fn partition(provider: &str, event_id: &str, partitions: u16) -> u16 {
    if partitions <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in provider.bytes().chain(std::iter::once(0)).chain(event_id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(partitions)) as u16
}

/// The dead-letter stream of `stream`: entries that could not be stored.
pub fn dead_letters(stream: &str) -> String {
    format!("{stream}:dead")
}

/// The attempts against the entries of `stream` that PostgreSQL refused
/// (a hash, entry id → attempts): only failures the entry caused count, not
/// deliveries. Shares the stream's slot, so it goes in the same pipelines.
pub fn attempts(stream: &str) -> String {
    format!("{stream}:attempts")
}

/// What the workers of queue `name` hold back and why (a hash, condition →
/// description, expiring when nobody refreshes it): read by `/health` and
/// `stats`.
pub fn held(name: &str) -> String {
    format!("{name}:held")
}

/// The liveness mark of worker process `pid` on `host` in `stream`: a key
/// its claim keeper keeps setting with a short expiry. A consumer whose
/// process has no mark is gone, and others take over its entries. One per
/// partition, in the partition's slot: whether a consumer of a partition
/// is alive is read from the partition's own master, so a master that
/// stops answering hides no mark of the others.
pub fn alive(stream: &str, host: &str, pid: u32) -> String {
    format!("{stream}:alive:{host}-{pid}")
}

/// The consumer name of worker thread `n` of process `pid` on `host`.
pub fn consumer(host: &str, pid: u32, n: usize) -> String {
    format!("{host}-{pid}-{n}")
}

/// The host and pid a [`consumer`] name was made from (host names may hold `-`).
pub fn consumer_origin(name: &str) -> Option<(&str, u32)> {
    let mut parts = name.rsplitn(3, '-');
    let _n: usize = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    Some((parts.next()?, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values: a change here moves retries away from their first copy.
        // Computed by hand (FNV-1a 64 over "stripe\0evt_1", mod 16).
        assert_eq!(partition("stripe", "evt_1", 16), 1);
        assert_eq!(partition("github", "abc", 16), 2);
        assert_eq!(partition("stripe", "evt_2", 16), 8);
        assert_eq!(partition("a", "b", 1), 0);
        let mut seen = [0u32; 16];
        for i in 0..16_000 {
            seen[partition("stripe", &format!("evt_{i}"), 16) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(stream("webhooks", 3, 16, false), "webhooks:{3}");
        assert_eq!(slot_tag(&dead_letters(&stream("webhooks", 3, 16, true))), "3");
        assert_eq!(stream("webhooks", 0, 1, false), "webhooks", "one node, one partition: the stream of old");
        assert_eq!(slot_tag(&dead_letters(&stream("webhooks", 0, 1, true))), "0", "a cluster tags even one");
        assert_eq!(slot_tag(&attempts(&stream("webhooks", 5, 16, true))), "5");
        assert_eq!(slot_tag(&alive(&stream("webhooks", 6, 16, true), "h", 1)), "6");
    }

    fn slot_tag(key: &str) -> &str {
        let open = key.find('{').unwrap();
        let close = key[open..].find('}').unwrap() + open;
        &key[open + 1..close]
    }

    #[test]
    fn consumer_names_give_back_their_host_and_pid() {
        let name = consumer("web-01.example", 4242, 3);
        assert_eq!(name, "web-01.example-4242-3");
        assert_eq!(consumer_origin(&name), Some(("web-01.example", 4242)));
        assert_eq!(consumer_origin("a"), None);
        assert_eq!(consumer_origin("host-x-1"), None);
    }
}
