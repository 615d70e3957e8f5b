//! The way a job's answer gets back to the core that took it.
//!
//! A job's caller awaits a `futures` oneshot. Were the pipeline thread to
//! complete that oneshot itself, each answer would wake the caller's task
//! from another thread: monoio sends the waker over a channel and writes the
//! core's eventfd, about one `write(2)` and one extra turn of the core's
//! loop per request (`perf stat` on `bench-http`, tuning.md §28). Instead
//! each core has one [`Mailbox`]: the pipeline thread appends the answers of
//! a batch to it and wakes the core's dispatcher task only when that task
//! was idle, so a batch costs each core one cross-thread wake-up however
//! many of its jobs it holds. The dispatcher completes the oneshots on the
//! core, where waking a task is a push onto the core's own run queue.
//!
//! Once a core's runtime is gone, answers still on their way complete their
//! oneshots directly (their callers are gone too; nothing waits forever).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};

use futures_channel::oneshot;

use super::{EnqueueError, StreamId};

/// A job's outcome.
pub type Outcome = Result<StreamId, EnqueueError>;

/// Where one job's answer goes.
pub struct Reply {
    tx: oneshot::Sender<Outcome>,
    home: Option<Arc<Mailbox>>,
}

impl Reply {
    /// A reply whose answer comes through this core's mailbox, and the
    /// receiver its caller awaits. Only inside a monoio runtime (a core).
    pub fn on_this_core() -> (Self, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        (Self { tx, home: Some(home()) }, rx)
    }

    /// Whether the caller has stopped waiting (timed out, or its connection
    /// is gone): such a job is not sent.
    pub fn is_canceled(&self) -> bool {
        self.tx.is_canceled()
    }

    /// Answers the job. Of the answers a core gets from one batch, only the
    /// first one wakes it.
    pub fn send(self, outcome: Outcome) {
        match self.home {
            Some(home) if home.alive.load(Ordering::Acquire) => home.post(self.tx, outcome),
            _ => {
                let _ = self.tx.send(outcome);
            }
        }
    }
}

/// One core's answers not yet handed to their callers.
pub(super) struct Mailbox {
    inbox: Mutex<Inbox>,
    /// False once the core's dispatcher is gone (its runtime dropped):
    /// answers then complete their oneshots directly.
    alive: AtomicBool,
}

#[derive(Default)]
struct Inbox {
    answers: Vec<(oneshot::Sender<Outcome>, Outcome)>,
    /// The dispatcher's waker, there only while it waits on an empty inbox.
    waker: Option<Waker>,
}

impl Mailbox {
    fn post(&self, tx: oneshot::Sender<Outcome>, outcome: Outcome) {
        let waker = {
            let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
            inbox.answers.push((tx, outcome));
            inbox.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

thread_local! {
    /// This core's mailbox, made (and its dispatcher spawned) by the first
    /// job the core enqueues.
    static HOME: RefCell<Option<Arc<Mailbox>>> = const { RefCell::new(None) };
}

/// This core's mailbox: the one its dispatcher serves, or a new one (and
/// its dispatcher) when there is none yet or the runtime that served it is
/// gone (a thread may run runtimes one after another).
fn home() -> Arc<Mailbox> {
    HOME.with(|h| {
        let mut h = h.borrow_mut();
        if let Some(m) = &*h {
            if m.alive.load(Ordering::Acquire) {
                return m.clone();
            }
        }
        let m = Arc::new(Mailbox { inbox: Mutex::default(), alive: AtomicBool::new(true) });
        monoio::spawn(dispatch(m.clone()));
        *h = Some(m.clone());
        m
    })
}

/// Marks the mailbox dead when the dispatcher's task is dropped, and hands
/// whatever it still holds to the oneshots.
struct Gone(Arc<Mailbox>);

impl Drop for Gone {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Release);
        let left = std::mem::take(&mut self.0.inbox.lock().unwrap_or_else(PoisonError::into_inner).answers);
        for (tx, outcome) in left {
            let _ = tx.send(outcome);
        }
    }
}

/// The core's dispatcher: hands each answer to its caller, on the core.
async fn dispatch(mailbox: Arc<Mailbox>) {
    let gone = Gone(mailbox);
    let mut taken = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            let mut inbox = gone.0.inbox.lock().unwrap_or_else(PoisonError::into_inner);
            if inbox.answers.is_empty() {
                inbox.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                std::mem::swap(&mut inbox.answers, &mut taken);
                Poll::Ready(())
            }
        })
        .await;
        for (tx, outcome) in taken.drain(..) {
            let _ = tx.send(outcome);
        }
    }
}
