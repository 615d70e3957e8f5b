//! One batch of jobs as both enqueue paths (the pipeline thread's links,
//! [`super::link`], and the per-core flushers, [`super::per_core`]) plan,
//! send and answer it: the pipeline a batch becomes ([`Batch::plan`]: the
//! `XADD`s, the `WAIT`, the `XLEN`s and `INFO memory` that admission needs),
//! what each reply means for its job ([`Batch::answer`]), and the delivery
//! of every answer ([`Batch::close`]). The two paths differ only in how the
//! bytes reach Redis; keeping the rest here keeps them one contract: a
//! job's answer is its stream id only once Redis acknowledged its `XADD`
//! and, with `REDIS_WAIT_REPLICAS`, the `WAIT` after it.

use std::time::Instant;

use redis::{ConnectionAddr, Value};

use super::admission::{Depth, Memory};
use super::resp::Commands;
use super::settings::PipelineSettings;
use super::{EnqueueError, Hop, Pending, Queue, StreamId, Unavailable};
use crate::telemetry::metrics::PipelineMetrics;

/// What one reply in a batch's pipeline answers.
#[derive(Clone, Copy)]
pub(super) enum Slot {
    /// The `OK` of an `ASKING` (a cluster's redirect).
    Asking,
    /// The `XADD` of the batch's job `i`.
    Job(usize),
    /// The `WAIT` after the `XADD`s.
    Wait,
    /// The `XLEN` of partition `p`.
    Depth(u16),
    /// `INFO memory`.
    Memory,
}

/// A batch's pipeline: its commands and what each reply answers. Kept from
/// batch to batch.
#[derive(Default)]
pub(super) struct Round {
    pub(super) commands: Commands,
    pub(super) slots: Vec<Slot>,
}

/// Where a batch goes: what [`Batch::plan`] and [`Batch::answer`] read.
pub(super) struct Master<'a> {
    pub(super) settings: &'a PipelineSettings,
    /// `streams[p]`: partition `p`'s stream key.
    pub(super) streams: &'a [String],
    /// `host:port`, as errors and the memory gauge name it.
    pub(super) name: &'a str,
}

/// What a batch's replies said beside its jobs' answers.
#[derive(Default)]
pub(super) struct Heard {
    /// The slot map may have changed (`CLUSTERDOWN`, `TRYAGAIN`).
    pub(super) stale: bool,
    /// `INFO memory` was read: the gauge is due.
    pub(super) memory: bool,
}

/// A job's answer while its batch is in flight (`None`: not decided yet).
type Answer = Option<Result<StreamId, EnqueueError>>;

/// The jobs of one batch, each one's partition and, once decided, its
/// answer, indexed alike. The buffers keep their capacity from batch to batch.
pub(super) struct Batch {
    pub(super) jobs: Vec<Pending>,
    pub(super) partition: Vec<u16>,
    pub(super) answer: Vec<Answer>,
    /// Jobs redirected by `MOVED` or `ASK` (a cluster): `(job, master,
    /// how)`. Almost always empty, so a batch pays nothing for it.
    redirects: Vec<(usize, ConnectionAddr, Hop)>,
    /// Redirected jobs, taken out at [`Batch::close`] unanswered: the
    /// caller hands them on to their master.
    pub(super) redirected: Vec<(Pending, ConnectionAddr)>,
    /// When it was opened: the start of its round trip.
    opened: Instant,
}

impl Batch {
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            jobs: Vec::with_capacity(n),
            partition: Vec::new(),
            answer: Vec::new(),
            redirects: Vec::new(),
            redirected: Vec::new(),
            opened: Instant::now(),
        }
    }

    /// Readies the jobs taken for sending: drops those whose caller gave up
    /// (it already answered 503, and storing the job now would only make a
    /// duplicate for the sender's retry to collide with), notes each one's
    /// partition, and leaves every answer undecided. False when none is left.
    pub(super) fn open(&mut self, queue: &Queue) -> bool {
        self.jobs.retain(|p| !p.reply.is_canceled());
        self.partition.clear();
        self.partition.extend(self.jobs.iter().map(|p| queue.partition_of(&p.job.provider, &p.job.event_id)));
        self.answer.clear();
        self.answer.resize(self.jobs.len(), None);
        self.redirects.clear();
        self.opened = Instant::now();
        !self.jobs.is_empty()
    }

    /// Job `job` gets 503 (or whatever `e` says) for this.
    pub(super) fn refuse(&mut self, job: usize, e: EnqueueError) {
        self.answer[job] = Some(Err(e));
    }

    /// Job `job` is to be sent again, to `addr` (`hop`: how), unless a
    /// redirect brought it here already: a slot moves only once per job.
    pub(super) fn redirect(&mut self, job: usize, addr: ConnectionAddr, hop: Hop) {
        if self.jobs[job].hop == Hop::Routed {
            self.redirects.push((job, addr, hop));
        } else {
            self.refuse(job, EnqueueError::Unavailable(Unavailable::SlotMoving));
        }
    }

    /// Writes the pipeline for the open batch into `round`: the `XADD`s
    /// (none while the queue or Redis's memory is full: every job is then
    /// refused here), the `WAIT`, the `XLEN`s due of the partitions touched
    /// (of all of `own()`, this master's partitions, while the queue is
    /// full, so the refusal ends as soon as the workers have caught up) and,
    /// when due, `INFO memory`.
    pub(super) fn plan(
        &mut self,
        round: &mut Round,
        to: &Master<'_>,
        depth: &mut Depth,
        memory: &Memory,
        own: impl FnOnce() -> Vec<u16>,
    ) {
        let Round { commands, slots } = round;
        commands.clear();
        slots.clear();
        let full = depth.full();
        let refusal = if full {
            Some(EnqueueError::QueueFull)
        } else if memory.full() {
            Some(EnqueueError::MemoryFull)
        } else {
            None
        };
        let mut touched: Vec<u16> = Vec::new();
        match refusal {
            Some(e) => self.refuse_the_rest(&e),
            None => {
                for job in 0..self.jobs.len() {
                    let p = self.partition[job];
                    // A job sent after an ASK belongs to another master's
                    // partition: its length is not this master's to read.
                    let asking = self.jobs[job].hop == Hop::Asked;
                    if asking {
                        commands.command(&[b"ASKING"]);
                        slots.push(Slot::Asking);
                    }
                    commands.xadd(&to.streams[p as usize], &self.jobs[job].job);
                    slots.push(Slot::Job(job));
                    if !asking && !touched.contains(&p) {
                        touched.push(p);
                    }
                }
                let s = to.settings;
                if s.wait_replicas > 0 {
                    let (mut n, mut ms) = (itoa::Buffer::new(), itoa::Buffer::new());
                    let timeout = ms.format(s.wait_timeout.as_millis() as u64);
                    commands.command(&[b"WAIT", n.format(s.wait_replicas).as_bytes(), timeout.as_bytes()]);
                    slots.push(Slot::Wait);
                }
            }
        }
        if full {
            touched = own();
        }
        // One clock read for the batch, not one per partition.
        let now = Instant::now();
        for p in touched {
            if depth.due(p, now, full) {
                commands.command(&[b"XLEN", to.streams[p as usize].as_bytes()]);
                slots.push(Slot::Depth(p));
            }
        }
        if memory.due(now) {
            commands.command(&[b"INFO", b"memory"]);
            slots.push(Slot::Memory);
        }
    }

    /// Takes the replies to the pipeline of `slots`, in order. With
    /// `broken`, the connection failed after these replies: the jobs whose
    /// `XADD` got no reply get 503, and so do the acknowledged ones while a
    /// `WAIT` was still due.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn answer(
        &mut self,
        slots: &[Slot],
        replies: Vec<Value>,
        broken: Option<&str>,
        to: &Master<'_>,
        depth: &mut Depth,
        memory: &mut Memory,
    ) -> Heard {
        let s = to.settings;
        let wait_unread = slots[replies.len()..].iter().any(|s| matches!(s, Slot::Wait));
        let mut acks = Acks::default();
        let mut heard = Heard::default();
        for (slot, reply) in slots.iter().zip(replies) {
            match (*slot, reply) {
                (Slot::Asking, _) => {}
                (Slot::Job(job), Value::ServerError(e)) => {
                    let hop = match e.code() {
                        "MOVED" => Some(Hop::Moved),
                        "ASK" => Some(Hop::Asked),
                        _ => None,
                    };
                    let target = e.details().and_then(|d| d.split_whitespace().nth(1)).and_then(parse_addr);
                    match (hop, target) {
                        (Some(hop), Some(addr)) => self.redirect(job, addr, hop),
                        _ => {
                            heard.stale |= e.code() == "CLUSTERDOWN" || e.code() == "TRYAGAIN";
                            acks.xadd(job, Value::ServerError(e), depth, self);
                        }
                    }
                }
                (Slot::Job(job), v) => acks.xadd(job, v, depth, self),
                (Slot::Wait, v) => acks.wait(v, s.wait_replicas, &s.metrics.pipeline, self),
                (Slot::Depth(p), v) => depth.read(p, v),
                (Slot::Memory, v) => {
                    memory.note_reply(v, s.max_memory_percent, &to.name);
                    heard.memory = true;
                }
            }
        }
        acks.finish(self, broken, wait_unread);
        if let Some(why) = broken {
            let e = EnqueueError::Unavailable(Unavailable::Down {
                master: to.name.to_string(),
                reason: why.to_string(),
            });
            for slot in slots {
                if let Slot::Job(job) = slot {
                    if !self.redirects.iter().any(|r| r.0 == *job) {
                        self.answer[*job].get_or_insert_with(|| Err(e.clone()));
                    }
                }
            }
        }
        heard
    }

    /// Every job not answered yet gets `e`.
    pub(super) fn refuse_the_rest(&mut self, e: &EnqueueError) {
        for a in &mut self.answer {
            a.get_or_insert_with(|| Err(e.clone()));
        }
    }

    /// Sends every job its answer (none would be a bug: its caller still
    /// gets 503) or moves it to [`Batch::redirected`], publishes the
    /// queue's depth and the batch's figures, and empties the batch for the
    /// next one.
    pub(super) fn close(&mut self, depth: &mut Depth, metrics: &PipelineMetrics) {
        depth.settle(metrics);
        let size = self.jobs.len();
        let mut enqueued = 0;
        for (job, (mut p, answer)) in self.jobs.drain(..).zip(self.answer.drain(..)).enumerate() {
            if answer.is_none() {
                if let Some(k) = self.redirects.iter().position(|r| r.0 == job) {
                    let (_, addr, hop) = self.redirects.swap_remove(k);
                    p.hop = hop;
                    self.redirected.push((p, addr));
                    continue;
                }
            }
            let answer = answer.unwrap_or(Err(EnqueueError::Unavailable(Unavailable::NoReply)));
            enqueued += usize::from(answer.is_ok());
            p.reply.send(answer);
        }
        metrics.record_batch(size, self.opened.elapsed(), enqueued);
    }
}

impl Batch {
    /// One node: nobody follows a redirect, so each redirected job gets 503.
    pub(super) fn refuse_redirected(&mut self) {
        for (p, addr) in self.redirected.drain(..) {
            p.reply.send(Err(EnqueueError::Unavailable(Unavailable::Redirected(addr.to_string()))));
        }
    }
}

/// `host:port` of a redirect.
fn parse_addr(s: &str) -> Option<ConnectionAddr> {
    let (host, port) = s.rsplit_once(':')?;
    Some(ConnectionAddr::Tcp(host.to_string(), port.parse().ok()?))
}

/// The `XADD` of `job` to `stream`, as redis-rs spells it (the tests
/// compare [`Commands::xadd`] with it).
#[cfg(test)]
pub(super) fn xadd(stream: &str, job: &crate::job::WebhookJob) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    job.stream_fields(&mut cmd);
    cmd
}

/// An `XADD`'s reply (a redirect already followed): the job's stream id,
/// or why Redis refused it.
fn xadd_outcome(reply: Value) -> Result<StreamId, EnqueueError> {
    match reply {
        Value::ServerError(e) => Err(EnqueueError::Unavailable(Unavailable::Refused {
            code: e.code().to_string(),
            detail: e.details().unwrap_or_default().to_string(),
        })),
        v => redis::from_redis_value::<StreamId>(v)
            .map_err(|e| EnqueueError::Unavailable(Unavailable::BadReply(e.to_string()))),
    }
}

/// What one connection's replies say of a batch's jobs, taken in reply
/// order. A job whose `XADD` was acknowledged is in the stream, but its
/// answer waits for the `WAIT` after it, if one was sent.
#[derive(Default)]
pub(super) struct Acks {
    /// Jobs acknowledged and not yet answered.
    ids: Vec<(usize, StreamId)>,
}

impl Acks {
    /// Job `job`'s `XADD` answered `reply`.
    pub(super) fn xadd(&mut self, job: usize, reply: Value, depth: &mut Depth, batch: &mut Batch) {
        match xadd_outcome(reply) {
            Ok(id) => {
                // In the stream now, whatever a WAIT says; an XLEN later in
                // the same reply replaces the count.
                depth.acked(batch.partition[job]);
                self.ids.push((job, id));
            }
            Err(e) => batch.refuse(job, e),
        }
    }

    /// The `WAIT` for `want` replicas answered `reply`: short of them, every
    /// job acknowledged so far gets 503 (counted as a Redis error).
    pub(super) fn wait(&mut self, reply: Value, want: u16, metrics: &PipelineMetrics, batch: &mut Batch) {
        let have = redis::from_redis_value::<u64>(reply).unwrap_or(0);
        if have >= u64::from(want) {
            return;
        }
        metrics.record_redis_error();
        let e = EnqueueError::Unavailable(Unavailable::ShortOfReplicas { have, want });
        for (job, _) in self.ids.drain(..) {
            batch.refuse(job, e.clone());
        }
    }

    /// The replies ended. Every acknowledged job gets its id, unless the
    /// connection broke (`broken`, why) while a `WAIT` was still unread
    /// (`wait_unread`): then nobody can say a replica has it.
    pub(super) fn finish(self, batch: &mut Batch, broken: Option<&str>, wait_unread: bool) {
        for (job, id) in self.ids {
            batch.answer[job] = Some(match broken {
                Some(why) if wait_unread => {
                    Err(EnqueueError::Unavailable(Unavailable::WaitUnanswered(why.to_string())))
                }
                _ => Ok(id),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of `n` undecided jobs in partition 0 (the replies are what
    /// is tested; no caller waits).
    fn undecided(n: usize) -> Batch {
        let mut b = Batch::with_capacity(n);
        b.partition = vec![0; n];
        b.answer = vec![None; n];
        b
    }

    fn id(b: &Batch, job: usize) -> Option<&str> {
        b.answer[job].as_ref().and_then(|a| a.as_deref().ok())
    }

    #[test]
    fn an_acknowledged_job_waits_for_its_wait_and_a_short_wait_refuses_it() {
        let metrics = crate::telemetry::metrics::Metrics::with_sources(1, Vec::new());
        let mut depth = Depth::new(1, 100);
        let mut b = undecided(3);
        let mut acks = Acks::default();
        acks.xadd(0, Value::BulkString(b"1-0".to_vec()), &mut depth, &mut b);
        acks.xadd(1, Value::Nil, &mut depth, &mut b);
        assert!(b.answer[0].is_none(), "acknowledged, but the WAIT is still to come");
        assert!(matches!(b.answer[1], Some(Err(_))), "no stream id: refused at once");
        acks.wait(Value::Int(0), 1, &metrics.pipeline, &mut b);
        assert!(matches!(b.answer[0], Some(Err(EnqueueError::Unavailable(_)))), "short of replicas");
        acks.xadd(2, Value::BulkString(b"2-0".to_vec()), &mut depth, &mut b);
        acks.finish(&mut b, None, false);
        assert_eq!(id(&b, 2), Some("2-0"));
    }

    #[test]
    fn a_connection_lost_before_a_due_wait_answers_no_acknowledged_job_with_an_id() {
        let mut depth = Depth::new(1, 100);
        for (wait_unread, stored) in [(true, None), (false, Some("1-0"))] {
            let mut b = undecided(1);
            let mut acks = Acks::default();
            acks.xadd(0, Value::BulkString(b"1-0".to_vec()), &mut depth, &mut b);
            acks.finish(&mut b, Some("reset"), wait_unread);
            assert_eq!(id(&b, 0), stored, "WAIT unread: {wait_unread}");
            assert!(b.answer[0].is_some());
        }
    }
}
