//! The Redis pipeline thread: batches `XADD`s and answers each job.
//! See the module docs of [`crate::queue`] for the contract.
//!
//! On one node the thread is that node's link ([`super::link`]), reading
//! the cores' channel itself. On a cluster each master has a link thread
//! of its own, which the cores hand their jobs to by partition, and this
//! thread keeps their routes ([`super::router`]), so one master that stops
//! answering costs only its own partitions.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crossbeam_channel::Receiver;
use tracing::{error, info};

use super::admission::Depth;
use super::link::{check_durability, Link, MasterState, Shared};
use super::router::{self, Routes};
use super::settings::PipelineSettings;
use super::{Enqueuer, Pending, Target};

/// The running pipeline thread.
pub struct PipelineHandle {
    thread: thread::JoinHandle<()>,
    backlog: Backlog,
}

/// Where the jobs not yet taken by a link wait.
enum Backlog {
    /// A second receiver of the cores' channel, only for reading its
    /// length; receivers do not keep the channel open, so it does not delay
    /// the thread's exit.
    Channel(Receiver<Pending>),
    /// Each master's link's channel (a cluster).
    Links(Arc<Routes>),
}

impl PipelineHandle {
    /// Jobs waiting for Redis now, not counting batches in flight.
    pub fn backlog(&self) -> usize {
        match &self.backlog {
            Backlog::Channel(rx) => rx.len(),
            Backlog::Links(routes) => routes.backlog(),
        }
    }

    /// Waits for the thread. It exits once every [`Enqueuer`] is dropped and
    /// the jobs already queued have been answered.
    pub fn join(self) {
        if self.thread.join().is_err() {
            error!("redis pipeline thread panicked");
        }
    }
}

/// Starts the pipeline thread and returns the handle cores enqueue through.
///
/// # Errors
/// The thread cannot be spawned.
pub fn spawn_pipeline(settings: PipelineSettings) -> std::io::Result<(Enqueuer, PipelineHandle)> {
    let queue = &settings.queue;
    info!(queue = %queue.name(), partitions = queue.partitions(), cluster = queue.is_cluster(),
          wait_replicas = settings.wait_replicas, batch_max = settings.batch_max,
          linger_us = settings.batch_linger.as_micros() as u64, "redis pipeline thread started");
    let name = thread::Builder::new().name("redis-pipeline".into());
    match queue.target().clone() {
        Target::Cluster(_) => {
            let routes = router::routes(queue);
            let (life, alive) = crossbeam_channel::bounded(0);
            let enqueuer = Enqueuer::routed(routes.clone(), life, settings.enqueue_timeout);
            let backlog = Backlog::Links(routes.clone());
            let first_map = settings.enqueue_timeout * 2 + Duration::from_secs(1);
            let (ready, routed) = crossbeam_channel::bounded(1);
            let thread = name.spawn(move || {
                router::run(settings, routes, alive, ready);
                info!("redis pipeline thread stopped: every core has let go of the queue");
            })?;
            // Until the first slot map is in (or could not be had), the
            // cores would find no route and answer 503: the gateway starts
            // serving after it, as it did when one thread read it inline.
            let _ = routed.recv_timeout(first_map);
            Ok((enqueuer, PipelineHandle { thread, backlog }))
        }
        Target::Node(info) => {
            let (enqueuer, rx) = Enqueuer::bounded(settings.channel_capacity, settings.enqueue_timeout);
            let backlog = Backlog::Channel(rx.clone());
            let thread = name.spawn(move || {
                let queue = &settings.queue;
                let every: Vec<u16> = (0..queue.partitions()).collect();
                let depth = Depth::new(queue.partitions(), settings.max_queue_depth);
                Link::new(Shared::new(settings, None), Arc::new(MasterState::new(every)), info, depth)
                    .run(rx);
                info!("redis pipeline thread stopped: every core has let go of the queue");
            })?;
            Ok((enqueuer, PipelineHandle { thread, backlog }))
        }
    }
}

/// Reads Redis's durability settings once and warns about any that could
/// lose an acknowledged job (the per-core enqueue's check at start; the
/// pipeline's links check on every connect). Redis unreachable: nothing.
pub fn warn_about_durability(settings: &PipelineSettings) {
    if let Target::Node(info) = settings.queue.target() {
        let timeout = settings.enqueue_timeout.min(Duration::from_secs(1));
        if let Ok(mut con) =
            redis::Client::open(info.clone()).and_then(|c| c.get_connection_with_timeout(timeout))
        {
            check_durability(&mut con);
        }
    }
}
