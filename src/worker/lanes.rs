//! The partitions a worker consumes: which ones each thread takes, and a
//! lane per partition that remembers where the worker stands in it and
//! rests it alone while its master fails, so the others go on.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::settings::{MAX_ACK_BACKOFF, MIN_BACKOFF};
use super::Worker;
use crate::backoff::Backoff;

/// One partition a worker consumes, and where it stands in it.
pub(super) struct Lane {
    pub(super) stream: String,
    /// Where the scan of this consumer's own pending entries resumes after
    /// a (re)connect; `None` once it has passed them all.
    pub(super) own_cursor: Option<String>,
    /// Take over what dead consumers of this host left (at start).
    pub(super) adopt_orphans: bool,
    /// When to look next for consumers whose process is gone.
    pub(super) next_adopt: Instant,
    pub(super) next_reclaim: Instant,
    /// After its master failed: no read before `retry_at`.
    pub(super) retry_at: Instant,
    pub(super) backoff: Backoff,
    /// The failure last logged, so each is logged once.
    pub(super) failed: Option<String>,
}

impl Lane {
    pub(super) fn new(stream: String) -> Self {
        let now = Instant::now();
        Self {
            stream,
            own_cursor: None,
            adopt_orphans: false,
            next_adopt: now,
            next_reclaim: now,
            retry_at: now,
            backoff: Backoff::new(MIN_BACKOFF, MAX_ACK_BACKOFF * 2),
            failed: None,
        }
    }

    pub(super) fn resting(&self) -> bool {
        Instant::now() < self.retry_at
    }
}

/// The partitions worker thread `n` of `threads` consumes: `p % threads ==
/// n`, so each partition has one thread per process; with more threads
/// than partitions, thread `n` shares partition `n % partitions`. Other
/// processes consume the same partitions in the same group (Redis hands
/// each entry to one consumer), so a process joining or dying needs no
/// hand-over: what a dead one held is reclaimed by idle time.
pub fn assigned_partitions(n: usize, threads: usize, partitions: u16) -> Vec<u16> {
    let partitions = usize::from(partitions);
    if threads >= partitions {
        vec![(n % partitions) as u16]
    } else {
        (0..partitions).filter(|p| p % threads == n).map(|p| p as u16).collect()
    }
}

impl Worker {
    /// The stream of the current step's partition.
    pub(super) fn stream(&self) -> String {
        self.lanes[self.lane].stream.clone()
    }

    pub(super) fn current(&mut self) -> &mut Lane {
        &mut self.lanes[self.lane]
    }

    /// The current partition answered.
    pub(super) fn lane_ok(&mut self) {
        let name = self.name.clone();
        let lane = self.current();
        lane.backoff.reset();
        if lane.failed.take().is_some() {
            info!(consumer = %name, stream = %lane.stream, "partition reachable again");
        }
    }

    /// The current partition's master failed: rest it, the others go on.
    pub(super) fn lane_failed(&mut self, e: &redis::RedisError) {
        self.settings.metrics.workers.record_redis_error();
        let name = self.name.clone();
        let lane = self.current();
        let msg = e.to_string();
        if lane.failed.as_deref() != Some(&msg) {
            warn!(consumer = %name, stream = %lane.stream, error = %msg,
                  "partition unreachable; reading the others meanwhile");
            lane.failed = Some(msg);
        }
        lane.retry_at = Instant::now() + lane.backoff.step_jittered();
    }

    /// How long a read of new entries may block: the whole `WORKER_BLOCK_MS`
    /// on a single partition; with several, a short wait on each in turn
    /// while the step holds nothing yet, so an idle partition delays a busy
    /// one by at most this.
    pub(super) fn lane_block(&self) -> Duration {
        match self.lanes.len() {
            1 => self.settings.block,
            n => (self.settings.block / n as u32).clamp(Duration::from_millis(2), Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::assigned_partitions;

    #[test]
    fn every_partition_has_a_thread_and_threads_share_evenly() {
        assert_eq!(assigned_partitions(0, 2, 1), vec![0]);
        assert_eq!(assigned_partitions(1, 2, 1), vec![0]);
        assert_eq!(assigned_partitions(1, 2, 5), vec![1, 3]);
        assert_eq!(assigned_partitions(3, 4, 2), vec![1]);
        for (threads, partitions) in [(1, 16), (2, 16), (3, 16), (16, 16), (20, 16)] {
            let mut seen = vec![0; 16];
            for n in 0..threads {
                for p in assigned_partitions(n, threads, partitions) {
                    seen[p as usize] += 1;
                }
            }
            assert!(seen.iter().all(|&k| k >= 1), "{threads} threads: {seen:?}");
        }
    }
}
