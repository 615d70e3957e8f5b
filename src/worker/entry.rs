//! One stream entry in a worker's hands: the decoded job (its body held
//! once, moved out of the Redis reply), or the raw fields of an entry that
//! does not decode, kept for the dead-letter stream.

use redis::streams::StreamId;

use crate::job::{Undecodable, WebhookJob};

/// Bytes an entry costs beyond its field values (ids, names, map slots),
/// used when sizing reads to `WORKER_BATCH_MAX_BYTES`.
pub(crate) const ENTRY_OVERHEAD: usize = 512;

/// One stream entry in hand.
#[derive(Debug)]
pub struct Entry {
    /// Stream id.
    pub id: String,
    /// The decoded job, or the entry as found and why it did not decode.
    pub job: Result<WebhookJob, Undecodable>,
    /// How many times the group has delivered it (1 on first read).
    pub deliveries: u64,
    /// `(provider, event_id)` as one string, computed once, to find copies
    /// inside a batch (none when the job did not decode).
    pub(crate) key: Option<String>,
    /// What holding it costs, for the byte budget.
    pub(crate) bytes: usize,
    /// Which of the worker's partitions it came from (its lane).
    pub(crate) lane: usize,
    /// Read with `XREADGROUP … >`: its first delivery, so no worker can
    /// have stored it before. Only a sender posting it twice could have (the
    /// dedupe generations absorb that), so the batch may take the direct way.
    pub(crate) fresh: bool,
}

/// Where an entry is: the worker's lane (partition) and its id in that
/// partition's stream. Ids alone are not unique across partitions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct At {
    /// The lane.
    pub lane: usize,
    /// The stream id.
    pub id: String,
}

/// Splits `items` by lane, lanes in ascending order, each group in its
/// original order: what one partition needs goes to one slot's master.
pub(crate) fn by_lane<T>(
    items: impl IntoIterator<Item = T>,
    lane: impl Fn(&T) -> usize,
) -> Vec<(usize, Vec<T>)> {
    let mut groups: Vec<(usize, Vec<T>)> = Vec::new();
    for item in items {
        let l = lane(&item);
        match groups.binary_search_by_key(&l, |(k, _)| *k) {
            Ok(i) => groups[i].1.push(item),
            Err(i) => groups.insert(i, (l, vec![item])),
        }
    }
    groups
}

impl Entry {
    /// Where it is.
    pub fn at(&self) -> At {
        At { lane: self.lane, id: self.id.clone() }
    }
}

impl Entry {
    pub(crate) fn new(e: StreamId, deliveries: u64) -> Self {
        let bytes = ENTRY_OVERHEAD
            + e.id.len()
            + e.map
                .iter()
                .map(|(k, v)| k.len() + if let redis::Value::BulkString(b) = v { b.len() } else { 16 })
                .sum::<usize>();
        let job = WebhookJob::from_stream_fields(e.map);
        // Providers are `[a-z0-9_-]`: the NUL cannot be part of one.
        let key = job.as_ref().ok().map(|j| format!("{}\0{}", j.provider, j.event_id));
        Self { id: e.id, job, deliveries, key, bytes, lane: 0, fresh: false }
    }
}

#[cfg(test)]
mod tests {
    use super::by_lane;

    #[test]
    fn groups_by_lane_in_lane_order_keeping_each_groups_order() {
        let items = [(2, "a"), (0, "b"), (2, "c"), (1, "d"), (0, "e")];
        let groups = by_lane(items, |(lane, _)| *lane);
        let names: Vec<(usize, Vec<&str>)> =
            groups.into_iter().map(|(l, g)| (l, g.into_iter().map(|(_, n)| n).collect())).collect();
        assert_eq!(names, vec![(0, vec!["b", "e"]), (1, vec!["d"]), (2, vec!["a", "c"])]);
        assert!(by_lane(Vec::<(usize, &str)>::new(), |(l, _)| *l).is_empty());
    }
}
