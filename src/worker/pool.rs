//! The worker threads of a process: starting them (with the partition
//! maintenance thread beside them), and waiting for them at shutdown.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use std::sync::atomic::AtomicBool;

use super::{assigned_partitions, Claims, Worker, WorkerError, WorkerSettings};
use crate::job::now_us;
use crate::store::{self, Pool, StoreError};

/// The partition maintenance of [`store::partitions`], every
/// `maintenance_every()` until shutdown. Every process runs it; one at a
/// time does the work. Failures are logged once per change and retried.
fn maintain_partitions(settings: Arc<WorkerSettings>, pool: Pool, shutdown: CancellationToken) {
    let every = settings.retention.maintenance_every();
    let mut last_error: Option<String> = None;
    loop {
        let until = Instant::now() + every;
        while Instant::now() < until && !shutdown.is_cancelled() {
            thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        if shutdown.is_cancelled() {
            return;
        }
        let run = pool.get().map_err(StoreError::from).and_then(|mut c| {
            store::partitions::maintain(&mut c, &settings.retention, now_us())?;
            record_partitions(&settings.metrics, &mut c)
        });
        settings.metrics.store.set_up(run.is_ok());
        match run {
            Ok(()) => {
                if last_error.take().is_some() {
                    info!("partition maintenance recovered");
                }
            }
            Err(e) => {
                settings.metrics.workers.record_postgres_error();
                let msg = e.to_string();
                if last_error.as_deref() != Some(&msg) {
                    warn!(error = %msg, "partition maintenance failed; tried again next run");
                    last_error = Some(msg);
                }
            }
        }
    }
}

/// Reads the event partitions into the store gauges (the oldest one's
/// start, for the alert on a retention that stopped dropping).
pub(super) fn record_partitions(
    metrics: &crate::telemetry::metrics::Metrics,
    client: &mut postgres::Client,
) -> Result<(), StoreError> {
    let kept = store::partitions::partitions(client)?;
    if let Some(start) = kept.iter().filter_map(|p| p.from).min() {
        metrics.store.set_oldest_partition(start);
    }
    metrics.store.set_up(true);
    Ok(())
}

/// Handles to the running worker threads.
pub struct WorkerPool {
    threads: Vec<thread::JoinHandle<()>>,
}

impl WorkerPool {
    /// Waits for every worker to finish its batch in hand and stop.
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                error!("a worker thread panicked");
            }
        }
    }

    /// The same, but no later than `deadline`: a worker still blocked then
    /// (a `COPY` to a frozen server, a reply from a black-holed Redis) is
    /// left to end with the process. Its entries stay pending, whole: a
    /// batch is acknowledged only after its commit, so at worst it is redone.
    pub fn join_until(self, deadline: Instant) {
        while Instant::now() < deadline && !self.threads.iter().all(thread::JoinHandle::is_finished) {
            thread::sleep(Duration::from_millis(20));
        }
        let (done, stuck): (Vec<_>, Vec<_>) =
            self.threads.into_iter().partition(thread::JoinHandle::is_finished);
        for t in done {
            if t.join().is_err() {
                error!("a worker thread panicked");
            }
        }
        if !stuck.is_empty() {
            warn!(threads = stuck.len(),
                  "worker threads still blocked at the shutdown deadline; their entries stay pending for the next start");
        }
    }
}

/// Starts `count` worker threads sharing one claim keeper, each reading its
/// [`assigned_partitions`]; the first thread of each partition also takes
/// over what dead consumers of this host left in it.
///
/// # Errors
/// A thread could not be spawned, or `REDIS_URL` is invalid.
pub fn spawn_workers(
    count: usize,
    settings: WorkerSettings,
    pool: Pool,
    shutdown: CancellationToken,
) -> Result<WorkerPool, WorkerError> {
    let settings = Arc::new(settings);
    let migrated = Arc::new(AtomicBool::new(!settings.migrate));
    let host = settings.host.clone();
    let pid = std::process::id();
    let claims = Claims::start(&settings)?;
    let mut threads = Vec::with_capacity(count);
    for n in 0..count {
        let name = crate::queue::keys::consumer(&host, pid, n);
        let mut worker =
            Worker::with_claims(name, settings.clone(), pool.clone(), shutdown.clone(), claims.clone())?;
        worker.migrated = migrated.clone();
        let partitions = settings.queue.partitions();
        worker = worker.reading(&assigned_partitions(n, count, partitions));
        if n < usize::from(partitions) {
            worker = worker.adopting_orphans();
        }
        let t = thread::Builder::new()
            .name(format!("worker-{n}"))
            .spawn(move || worker.run())
            .map_err(|e| WorkerError::Redis(redis::RedisError::from(e)))?;
        threads.push(t);
    }
    if count > 0 {
        let (settings, pool, shutdown) = (settings.clone(), pool.clone(), shutdown.clone());
        let t = thread::Builder::new()
            .name("pg-maintenance".into())
            .spawn(move || maintain_partitions(settings, pool, shutdown))
            .map_err(|e| WorkerError::Redis(redis::RedisError::from(e)))?;
        threads.push(t);
    }
    Ok(WorkerPool { threads })
}

/// The kernel's host name: `CONSUMER_HOST`'s default, as consumer names carry it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}
