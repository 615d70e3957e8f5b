//! The way a job's answer gets back to the core that took it.
//!
//! A job's caller awaits a `futures` oneshot. Were the pipeline thread to
//! complete that oneshot itself, each answer would wake the caller's task
//! from another thread: monoio sends the waker over a channel and writes the
//! core's eventfd, about one `write(2)` and one extra turn of the core's
//! loop per request (`perf stat` on `bench-http`, tuning.md §28.1). Instead
//! each core has one mailbox ([`CoreAnswers`]): the pipeline thread appends
//! the answers of a batch to it and wakes the core's dispatcher task only
//! when that task was idle, so a batch costs each core one cross-thread
//! wake-up however many of its jobs it holds. The dispatcher completes the
//! oneshots on the core, where waking a task is a push onto the core's own
//! run queue.
//!
//! # Lifecycle
//! The core makes its [`CoreAnswers`], spawns [`CoreAnswers::dispatch`] on
//! its runtime and [`CoreAnswers::close`]s it once the runtime has stopped:
//! from then on answers complete their oneshots directly, and what the
//! mailbox still held is handed over, so no answer waits on a dispatcher that
//! will never run again. (A monoio runtime does not drop a task parked on a
//! waker held elsewhere; close also drops the dispatcher's waker.)
//! A job enqueued without a mailbox (benchmarks, embedders, the per-core
//! enqueue, which answers on its own core) completes its oneshot directly.

use std::future::Future;
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
    /// A reply answered through `home` (a core's mailbox) or, without one,
    /// directly, and the receiver its caller awaits.
    pub(super) fn new(home: Option<Arc<Mailbox>>) -> (Self, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        (Self { tx, home }, rx)
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
            Some(home) => home.post(self.tx, outcome),
            None => {
                let _ = self.tx.send(outcome);
            }
        }
    }
}

/// One core's answers not yet handed to their callers.
pub(super) struct Mailbox {
    inbox: Mutex<Inbox>,
}

struct Inbox {
    answers: Vec<(oneshot::Sender<Outcome>, Outcome)>,
    /// The dispatcher's waker, there only while it waits on an empty inbox.
    waker: Option<Waker>,
    /// False once the core has stopped: answers go straight to their oneshots.
    open: bool,
}

impl Mailbox {
    fn post(&self, tx: oneshot::Sender<Outcome>, outcome: Outcome) {
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        if !inbox.open {
            drop(inbox);
            let _ = tx.send(outcome);
            return;
        }
        inbox.answers.push((tx, outcome));
        let waker = inbox.waker.take();
        drop(inbox);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A core's mailbox, as the core holds it: see the module's lifecycle.
pub struct CoreAnswers(Arc<Mailbox>);

impl Default for CoreAnswers {
    fn default() -> Self {
        Self::new()
    }
}

impl CoreAnswers {
    /// An open mailbox; nothing is dispatched until [`Self::dispatch`] runs.
    pub fn new() -> Self {
        let inbox = Inbox { answers: Vec::new(), waker: None, open: true };
        Self(Arc::new(Mailbox { inbox: Mutex::new(inbox) }))
    }

    pub(super) fn mailbox(&self) -> Arc<Mailbox> {
        self.0.clone()
    }

    /// The core's dispatcher, to spawn on its runtime: hands each answer to
    /// its caller, on the core, until the mailbox is closed.
    pub fn dispatch(&self) -> impl Future<Output = ()> + 'static {
        let mailbox = self.0.clone();
        async move {
            let mut taken = Vec::new();
            loop {
                let open = std::future::poll_fn(|cx| {
                    let mut inbox = mailbox.inbox.lock().unwrap_or_else(PoisonError::into_inner);
                    if !inbox.answers.is_empty() {
                        std::mem::swap(&mut inbox.answers, &mut taken);
                        Poll::Ready(true)
                    } else if !inbox.open {
                        Poll::Ready(false)
                    } else {
                        inbox.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                })
                .await;
                for (tx, outcome) in taken.drain(..) {
                    let _ = tx.send(outcome);
                }
                if !open {
                    return;
                }
            }
        }
    }

    /// The core's runtime has stopped: answers from now on go straight to
    /// their oneshots, and those still held are handed over now.
    pub fn close(&self) {
        let (left, waker) = {
            let mut inbox = self.0.inbox.lock().unwrap_or_else(PoisonError::into_inner);
            inbox.open = false;
            (std::mem::take(&mut inbox.answers), inbox.waker.take())
        };
        for (tx, outcome) in left {
            let _ = tx.send(outcome);
        }
        drop(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_posted_from_another_thread_reach_their_callers_through_the_dispatcher_and_close_hands_over_the_rest(
    ) {
        let answers = CoreAnswers::new();
        let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().enable_timer().build().unwrap();
        let (ids, late) = rt.block_on(async {
            monoio::spawn(answers.dispatch());
            let mut rxs = Vec::new();
            let mut replies = Vec::new();
            for _ in 0..3 {
                let (reply, rx) = Reply::new(Some(answers.mailbox()));
                replies.push(reply);
                rxs.push(rx);
            }
            // Let the dispatcher park on the empty inbox.
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            let t = std::thread::spawn(move || {
                for (i, r) in replies.into_iter().enumerate() {
                    r.send(Ok(format!("{i}-0")));
                }
            });
            t.join().unwrap();
            let mut ids = Vec::new();
            for rx in rxs {
                ids.push(rx.await.unwrap().unwrap());
            }
            let (late, rx) = Reply::new(Some(answers.mailbox()));
            (ids, (late, rx))
        });
        assert_eq!(ids, ["0-0", "1-0", "2-0"]);
        drop(rt);
        // The runtime is gone: an answer posted now must not wait on it.
        let (late, mut rx) = late;
        answers.close();
        late.send(Ok("9-0".into()));
        assert_eq!(rx.try_recv().unwrap(), Some(Ok("9-0".to_string())));
    }
}
