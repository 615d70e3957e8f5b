//! One reading of the queue and of what PostgreSQL keeps: what the CLI's
//! `stats` prints and the API's `GET /v1/stats` answers (one code for both).

use serde::Serialize;

use crate::queue::{Conn, Queue};
use crate::store::{self, dead_letters, StoreError};
use crate::telemetry::metrics::{age_seconds, QueueGauges};

/// The reading.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// The queue's name.
    pub stream: String,
    /// Its partitions.
    pub partitions: u16,
    /// What Redis holds (`None`: no partition's master answered).
    pub queue: Option<QueueReport>,
    /// Conditions the workers hold entries for (`condition`, description).
    pub held: Vec<(String, String)>,
    /// The workers' consumers, per partition (Redis's view of the group).
    pub workers: Vec<WorkerReport>,
    /// What PostgreSQL keeps (`None`: not configured).
    pub store: Option<StoreReport>,
}

/// What Redis holds.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueReport {
    /// Entries in the streams.
    pub length: u64,
    /// Delivered and not acknowledged.
    pub pending: u64,
    /// Not yet delivered.
    pub lag: u64,
    /// Age of the oldest entry not yet acknowledged, seconds (0: none waits).
    pub oldest_unacked_seconds: f64,
    /// Dead letters waiting in the Redis fallback streams.
    pub dead_letters_in_redis: u64,
    /// Per partition (`None`: its master did not answer).
    pub partitions: Vec<Option<PartitionReport>>,
}

/// One partition.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionReport {
    /// Entries in its stream.
    pub length: u64,
    /// Delivered and not acknowledged.
    pub pending: u64,
    /// Not yet delivered.
    pub lag: u64,
    /// Age of its oldest entry not yet acknowledged, seconds.
    pub oldest_unacked_seconds: f64,
    /// Dead letters in its Redis fallback stream.
    pub dead_letters_in_redis: u64,
}

/// One worker thread's consumer in one partition's group.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerReport {
    /// The consumer (`<host>-<pid>-<thread>`).
    pub name: String,
    /// The partition.
    pub partition: usize,
    /// Entries delivered to it and not yet acknowledged.
    pub pending: u64,
    /// Since it last read or claimed, ms.
    pub idle_ms: u64,
}

/// What PostgreSQL keeps.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreReport {
    /// Rows of `webhook_events` (estimated past a million).
    pub rows_stored: i64,
    /// Rows of `webhook_dead_letters`.
    pub dead_letters: i64,
    /// Deliveries of a stored id with another body, kept apart.
    pub conflicts: i64,
    /// Heap bytes of the event partitions.
    pub table_bytes: i64,
    /// Their index bytes.
    pub index_bytes: i64,
    /// Bytes of the dedupe keys.
    pub key_bytes: i64,
    /// Dedupe generations inside the window.
    pub dedupe_generations: i64,
    /// The event partitions, oldest first.
    pub event_partitions: Vec<String>,
}

fn queue_report(g: QueueGauges) -> QueueReport {
    QueueReport {
        length: g.length,
        pending: g.pending,
        lag: g.lag,
        oldest_unacked_seconds: age_seconds(g.oldest_ms),
        dead_letters_in_redis: g.dead_letters,
        partitions: g
            .partitions
            .iter()
            .map(|p| {
                p.map(|p| PartitionReport {
                    length: p.length,
                    pending: p.pending,
                    lag: p.lag,
                    oldest_unacked_seconds: age_seconds(p.oldest_ms),
                    dead_letters_in_redis: p.dead_letters,
                })
            })
            .collect(),
    }
}

/// Reads the report: the queue through `con` (when there is one), the
/// store through `client` (when configured).
///
/// # Errors
/// [`StoreError`] when PostgreSQL fails (Redis failing is `queue: None`).
pub fn read(
    queue: &Queue,
    con: Option<&mut Conn>,
    client: Option<&mut postgres::Client>,
) -> Result<Report, StoreError> {
    let (gauges, held, workers) = match con {
        Some(con) => (
            crate::health::read_queue_gauges(queue, con),
            crate::health::read_held(queue, con),
            consumers(queue, con),
        ),
        None => (None, Vec::new(), Vec::new()),
    };
    let store = match client {
        Some(client) => {
            let kept = store::kept::kept(client)?;
            Some(StoreReport {
                rows_stored: kept.rows,
                dead_letters: dead_letters::count(client)?,
                conflicts: store::count_conflicts(client)?,
                table_bytes: kept.table_bytes,
                index_bytes: kept.index_bytes,
                key_bytes: kept.key_bytes,
                dedupe_generations: kept.generations,
                event_partitions: kept.partitions.into_iter().map(|p| p.name).collect(),
            })
        }
        None => None,
    };
    Ok(Report {
        stream: queue.name().to_string(),
        partitions: queue.partitions(),
        queue: gauges.map(queue_report),
        held,
        workers,
        store,
    })
}

/// Every partition's consumers (`XINFO CONSUMERS`); a partition whose
/// master does not answer lists none.
fn consumers(queue: &Queue, con: &mut Conn) -> Vec<WorkerReport> {
    type Info = Vec<std::collections::HashMap<String, redis::Value>>;
    let mut out = Vec::new();
    for (partition, stream) in queue.streams().iter().enumerate() {
        let Ok(infos) =
            redis::cmd("XINFO").arg("CONSUMERS").arg(stream).arg(crate::queue::GROUP).query::<Info>(con)
        else {
            continue;
        };
        for info in infos {
            let text = |k: &str| info.get(k).and_then(|v| redis::from_redis_value::<String>(v.clone()).ok());
            let number = |k: &str| info.get(k).and_then(|v| redis::from_redis_value::<u64>(v.clone()).ok());
            out.push(WorkerReport {
                name: text("name").unwrap_or_default(),
                partition,
                pending: number("pending").unwrap_or(0),
                idle_ms: number("idle").unwrap_or(0),
            });
        }
    }
    out
}
