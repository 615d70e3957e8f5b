//! The enqueue on a Redis Cluster: one link thread per master
//! ([`super::link`]), and the routes each core hands its jobs over by.
//!
//! Each partition lives on one master ([`Topology`]). A core computes its
//! job's partition and puts the job straight on the channel of that
//! master's link ([`Routes::submit`]): one hand-over and one wake-up per
//! job, as on one node, and a master that stops answering blocks only its
//! own link. While a link is down its partitions get 503 at once, and the
//! other masters' jobs go on at their usual pace (`tests/it/cluster.rs`,
//! one master frozen by `SIGSTOP`).
//!
//! The router thread keeps the routes: it reads the slot map (on a thread
//! of its own, since asking a frozen node takes the whole timeout) at
//! start, every few seconds, and soon after a link fails or a partition
//! has no master (a failover); it starts a link for each new master, and
//! sends a job that met `MOVED` or `ASK` to the master named, once (a
//! resharding).

use std::sync::{Arc, PoisonError, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use redis::{ConnectionAddr, ConnectionInfo, RedisResult};
use tracing::{error, info, warn};

use super::admission::Depth;
use super::link::{Feedback, Link, MasterState, Shared};
use super::settings::PipelineSettings;
use super::topology::Topology;
use super::{EnqueueError, Hop, Pending, Queue, Unavailable};

/// How often the slot map is read again when nothing went wrong (masters
/// added by hand, a failover no link saw fail).
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(5);
/// Soonest a failed or suspect slot map is read again.
const TOPOLOGY_RETRY: Duration = Duration::from_millis(100);

/// Where each partition's jobs go: read by every core for every job,
/// written by the router when the slot map changes.
pub(super) struct Routes {
    queue: Queue,
    /// Per partition: its master's link (`None`: no master serves it now).
    table: RwLock<Vec<Option<Route>>>,
}

#[derive(Clone)]
struct Route {
    jobs: Sender<Pending>,
    state: Arc<MasterState>,
    master: Arc<str>,
}

impl Routes {
    /// Hands `p` to its partition's link, or says why it cannot: no master
    /// serves the partition now, its master is down, or its link is behind.
    ///
    /// # Errors
    /// [`EnqueueError`], for a 503 at once.
    pub(super) fn submit(&self, p: Pending) -> Result<(), EnqueueError> {
        let part = self.queue.partition_of(&p.job.provider, &p.job.event_id) as usize;
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let route = match table.get(part) {
            Some(Some(route)) => route,
            Some(None) => return Err(EnqueueError::Unavailable(Unavailable::NoMaster)),
            // Emptied: the pipeline has stopped.
            None => return Err(EnqueueError::Closed),
        };
        if !route.state.is_up() {
            return Err(EnqueueError::Unavailable(Unavailable::Down {
                master: route.master.to_string(),
                reason: route.state.reason(),
            }));
        }
        route.jobs.try_send(p).map_err(|e| match e {
            TrySendError::Full(_) => EnqueueError::Saturated,
            TrySendError::Disconnected(_) => EnqueueError::Unavailable(Unavailable::MasterChanged),
        })
    }

    /// Jobs waiting for a link now, all links together.
    pub(super) fn backlog(&self) -> usize {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        let mut seen: Vec<&Arc<MasterState>> = Vec::new();
        let mut n = 0;
        for route in table.iter().flatten() {
            if !seen.iter().any(|s| Arc::ptr_eq(s, &route.state)) {
                seen.push(&route.state);
                n += route.jobs.len();
            }
        }
        n
    }

    fn publish(&self, table: Vec<Option<Route>>) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = table;
    }
}

/// A master's link as the router holds it.
struct Master {
    info: ConnectionInfo,
    jobs: Sender<Pending>,
    state: Arc<MasterState>,
    thread: Option<JoinHandle<()>>,
}

struct Router {
    shared: Arc<Shared>,
    routes: Arc<Routes>,
    /// Where each link's view of the queue's length comes from.
    depth: Depth,
    /// Connection settings (credentials) for masters learned from a redirect.
    template: ConnectionInfo,
    masters: Vec<Master>,
    /// Links of masters gone from the slot map: they finish their jobs.
    retired: Vec<JoinHandle<()>>,
    /// `route[p]`: partition `p`'s master in `masters`.
    route: Vec<Option<usize>>,
    /// The slot-map thread: what it is asked, and whether a question is out.
    ask: Sender<Vec<ConnectionInfo>>,
    asked: bool,
    /// When the slot map may be read next, and whether it must be.
    topology_at: Instant,
    topology_stale: bool,
}

/// The routes the cores submit through, empty until the router has read
/// the first slot map.
pub(super) fn routes(queue: &Queue) -> Arc<Routes> {
    Arc::new(Routes { queue: queue.clone(), table: RwLock::new(vec![None; queue.partitions() as usize]) })
}

/// Keeps `routes` until `life` is closed (every core's handle dropped),
/// then lets every link answer what it holds.
/// `ready` is told once the first slot map was read (or could not be).
pub(super) fn run(settings: PipelineSettings, routes: Arc<Routes>, life: Receiver<()>, ready: Sender<()>) {
    let queue = settings.queue.clone();
    let (feedback_tx, feedback) = crossbeam_channel::unbounded();
    let (ask, questions) = crossbeam_channel::unbounded::<Vec<ConnectionInfo>>();
    let (answer, answers) = crossbeam_channel::unbounded();
    let slot_map = spawn_slot_map(queue.clone(), settings.enqueue_timeout, questions, answer);
    let template = match queue.target() {
        super::Target::Node(i) => i.clone(),
        super::Target::Cluster(seeds) => seeds[0].clone(),
    };
    let depth = Depth::new(queue.partitions(), settings.max_queue_depth);
    let shared = Shared::new(settings, Some(feedback_tx));
    let mut router = Router {
        shared,
        routes,
        depth,
        template,
        masters: Vec::new(),
        retired: Vec::new(),
        route: vec![None; queue.partitions() as usize],
        ask,
        asked: false,
        topology_at: Instant::now(),
        topology_stale: true,
    };
    // The first slot map at once, so that the first jobs find routes (a
    // stalled node delays only this).
    router.ask_for_slot_map();
    if let Ok(t) = answers.recv_timeout(router.shared.settings.enqueue_timeout * 2) {
        router.apply(t);
    }
    let _ = ready.send(());
    loop {
        router.ask_for_slot_map();
        let wait = router.next_slot_map().saturating_duration_since(Instant::now()).max(TOPOLOGY_RETRY);
        crossbeam_channel::select! {
            // Nothing is ever sent on it: it closes when the cores let go.
            recv(life) -> _ => break,
            recv(feedback) -> f => if let Ok(f) = f { router.on_feedback(f) },
            recv(answers) -> t => if let Ok(t) = t { router.apply(t) },
            default(wait) => {}
        }
    }
    // Jobs redirected from now on get 503: nobody routes them any more.
    drop(feedback);
    router.finish();
    drop(slot_map);
}

impl Router {
    fn on_feedback(&mut self, f: Feedback) {
        match f {
            Feedback::Stale => self.topology_stale = true,
            Feedback::Redirect(redirect) => {
                let (p, addr) = *redirect;
                let m = self.master_at(&addr);
                if p.hop == Hop::Moved {
                    // The partition lives there now; the slot map says so
                    // soon, and is asked.
                    let part = self.shared.settings.queue.partition_of(&p.job.provider, &p.job.event_id);
                    self.route[part as usize] = Some(m);
                    self.topology_stale = true;
                    self.publish();
                }
                let e = match self.masters[m].jobs.try_send(p) {
                    Ok(()) => return,
                    Err(TrySendError::Full(p)) => (p, EnqueueError::Saturated),
                    Err(TrySendError::Disconnected(p)) => (p, EnqueueError::Closed),
                };
                e.0.reply.send(Err(e.1));
            }
        }
    }

    /// The master at `addr`, started if it is new.
    fn master_at(&mut self, addr: &ConnectionAddr) -> usize {
        if let Some(i) = self.masters.iter().position(|m| m.info.addr() == addr) {
            return i;
        }
        let info = self.template.clone().set_addr(addr.clone());
        self.masters.push(self.start(info, Vec::new()));
        self.masters.len() - 1
    }

    /// Starts a link thread for `info`, holding `partitions`.
    fn start(&self, info: ConnectionInfo, partitions: Vec<u16>) -> Master {
        let (jobs, rx) = crossbeam_channel::bounded(self.shared.settings.channel_capacity);
        let state = Arc::new(MasterState::new(partitions));
        let link = Link::new(self.shared.clone(), state.clone(), info.clone(), self.depth.view());
        let thread = thread::Builder::new().name("redis-link".into()).spawn(move || link.run(rx));
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                // Its jobs find the channel closed: 503, and the slot map is
                // asked again, which tries again.
                error!(error = %e, master = %info.addr(), "cannot start a redis link thread");
                None
            }
        };
        Master { info, jobs, state, thread }
    }

    /// The routes as the cores see them, from `route`.
    fn publish(&self) {
        let table = self
            .route
            .iter()
            .map(|r| {
                r.map(|m| {
                    let master = &self.masters[m];
                    Route {
                        jobs: master.jobs.clone(),
                        state: master.state.clone(),
                        master: master.info.addr().to_string().into(),
                    }
                })
            })
            .collect();
        self.routes.publish(table);
    }

    /// When the slot map is due: soon after anything suggested it changed,
    /// else every [`TOPOLOGY_REFRESH`].
    fn next_slot_map(&self) -> Instant {
        if self.topology_stale {
            self.topology_at
        } else {
            self.topology_at + TOPOLOGY_REFRESH
        }
    }

    fn ask_for_slot_map(&mut self) {
        // A master that is down may have been replaced (a failover): the
        // slot map is read every TOPOLOGY_RETRY until it is back or gone.
        if self.masters.iter().any(|m| !m.state.is_up()) {
            self.topology_stale = true;
        }
        if self.asked || Instant::now() < self.next_slot_map() {
            return;
        }
        let known = self.masters.iter().map(|m| m.info.clone()).collect();
        self.asked = self.ask.send(known).is_ok();
        self.topology_at = Instant::now() + TOPOLOGY_RETRY;
    }

    /// Takes a new slot map: links are kept by address, started for new
    /// masters, and retired (after their last jobs) for masters gone.
    fn apply(&mut self, t: RedisResult<Topology>) {
        self.asked = false;
        let t = match t {
            Ok(t) => t,
            Err(e) => {
                self.topology_stale = true;
                warn!(error = %e, "no redis cluster node answered CLUSTER SLOTS; retrying");
                return;
            }
        };
        let mut old = std::mem::take(&mut self.masters);
        for (i, info) in t.masters.iter().enumerate() {
            let mine: Vec<u16> =
                (0..t.route.len() as u16).filter(|&p| t.route[p as usize] == Some(i)).collect();
            let master = match old.iter().position(|m| m.info.addr() == info.addr()) {
                Some(k) => {
                    let m = old.swap_remove(k);
                    m.state.set_partitions(mine);
                    m
                }
                None => self.start(info.clone(), mine),
            };
            self.masters.push(master);
        }
        // Those that have finished need no join: one failover after
        // another must not pile up handles.
        self.retired.retain(|t| !t.is_finished());
        self.retired.extend(old.into_iter().filter_map(|m| m.thread));
        if t.route != self.route {
            info!(
                masters = self.masters.len(),
                unserved = t.route.iter().filter(|r| r.is_none()).count(),
                "redis cluster slot map read"
            );
        }
        self.route = t.route;
        self.publish();
        self.topology_stale = self.route.iter().any(Option::is_none);
        self.topology_at = Instant::now();
    }

    /// Closes every link's channel and waits until each has answered its jobs.
    fn finish(self) {
        self.routes.publish(Vec::new());
        let threads: Vec<JoinHandle<()>> =
            self.masters.into_iter().filter_map(|m| m.thread).chain(self.retired).collect();
        for t in threads {
            if t.join().is_err() {
                error!("a redis link thread panicked");
            }
        }
    }
}

/// The thread that reads the slot map when asked (each question lists the
/// masters known besides the seeds), so that a node that accepts but never
/// answers delays only the next slot map.
fn spawn_slot_map(
    queue: Queue,
    timeout: Duration,
    questions: Receiver<Vec<ConnectionInfo>>,
    answers: Sender<RedisResult<Topology>>,
) -> Option<JoinHandle<()>> {
    let timeout = timeout.min(Duration::from_secs(1));
    let spawned = thread::Builder::new().name("redis-slots".into()).spawn(move || {
        for known in questions {
            if answers.send(Topology::discover(&queue, &known, timeout)).is_err() {
                break;
            }
        }
    });
    match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            error!(error = %e, "cannot start the slot map thread; no partition can be routed");
            None
        }
    }
}
