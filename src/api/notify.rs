//! Wake-ups for long polls: one `LISTEN webhook_events` connection per
//! process, fed by the one `NOTIFY` each worker transaction that stores
//! rows sends with its commit ([`crate::store`]); never one per row, since
//! every notifying commit takes a global lock.
//!
//! A waiter notes the [`Notifier::generation`] before it reads, and after an
//! empty page waits for it to move. Without a listening connection (the
//! database is away, or it just started) waiters poll every
//! [`POLL_WITHOUT_LISTEN`]; with one they still read again every
//! [`POLL_ANYWAY`], because the horizon also moves when a transaction that
//! stores nothing (someone else's, elsewhere in the database) ends.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use postgres::fallible_iterator::FallibleIterator;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::store::Session;

const POLL_WITHOUT_LISTEN: Duration = Duration::from_millis(100);
const POLL_ANYWAY: Duration = Duration::from_secs(1);
/// How long the listener waits for a notification before looking at the
/// shutdown flag again.
const TICK: Duration = Duration::from_millis(250);

/// The notification count, and whether a connection is listening.
#[derive(Default)]
pub struct Notifier {
    state: Mutex<(u64, bool)>,
    moved: Condvar,
}

impl Notifier {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, bool)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notifications seen so far.
    pub fn generation(&self) -> u64 {
        self.lock().0
    }

    /// Waits until a notification after `seen` arrives, `until` passes, or
    /// it is time to poll anyway (see the module docs).
    pub fn wait(&self, seen: u64, until: Instant) {
        let guard = self.lock();
        let poll = if guard.1 { POLL_ANYWAY } else { POLL_WITHOUT_LISTEN };
        let left = until.saturating_duration_since(Instant::now()).min(poll);
        let _ = self.moved.wait_timeout_while(guard, left, |s| s.0 == seen);
    }

    fn bump(&self) {
        self.lock().0 += 1;
        self.moved.notify_all();
    }

    fn listening(&self, on: bool) {
        self.lock().1 = on;
        // Waiters that poll at the other pace take it up now.
        self.moved.notify_all();
    }
}

/// Starts the listener thread; it stops with `shutdown`.
///
/// # Errors
/// The thread cannot start.
pub fn spawn(
    database_url: String,
    session: Session,
    notifier: Arc<Notifier>,
    shutdown: CancellationToken,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new().name("api-listen".into()).spawn(move || {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut failing = false;
        while !shutdown.is_cancelled() {
            let listened = crate::store::connect_config(&database_url, session)
                .and_then(|c| c.connect(postgres::NoTls).map_err(Into::into))
                .and_then(|mut client| {
                    client.batch_execute(&format!("LISTEN {}", crate::store::EVENTS_CHANNEL))?;
                    Ok(client)
                });
            let mut client = match listened {
                Ok(c) => c,
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cannot listen for stored events; long polls poll meanwhile");
                        failing = true;
                    }
                    sleep_unless(&shutdown, backoff.step());
                    continue;
                }
            };
            if failing {
                info!("listening for stored events again");
                failing = false;
            }
            backoff.reset();
            notifier.listening(true);
            // A notification missed while not listening is made up for: the
            // waiters read again.
            notifier.bump();
            while !shutdown.is_cancelled() {
                let arrived = client.notifications().timeout_iter(TICK).next().map(|n| n.is_some());
                match arrived {
                    Ok(true) => {
                        // The rest that are already here count as one.
                        while let Ok(Some(_)) = client.notifications().iter().next() {}
                        notifier.bump();
                    }
                    Ok(false) => {}
                    Err(e) => {
                        warn!(error = %e, "the connection listening for stored events broke; reconnecting");
                        failing = true;
                        break;
                    }
                }
            }
            notifier.listening(false);
        }
    })
}

fn sleep_unless(shutdown: &CancellationToken, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until && !shutdown.is_cancelled() {
        thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
}
