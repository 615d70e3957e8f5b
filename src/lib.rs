//! webhook-ingestor: a thread-per-core webhook gateway.
//!
//! The modules are the pipeline, in the order a webhook travels through them:
//!
//! ```text
//! http/    per-core monoio runtimes: listeners, HTTP/1.1 framing, routing, replies
//! ingest/  body parse (JSON) + validation → WebhookJob, or the 400 messages
//! queue/   bounded channel → one Redis pipeline thread → XADD batches → reply per job
//! worker/  XREADGROUP → dedupe → store/ → XACK, XDEL; reclaim, dead letters, replays
//! store/   PostgreSQL: one transaction per batch (binary COPY → INSERT … ON CONFLICT)
//! api/     the second listener: events, consumers, dead letters, rejections, sources
//! ```
//!
//! Beside them: [`config`] (one typed `Config`, read once), [`job`] (the one data
//! contract that crosses every stage), [`telemetry`] (JSON logs, metrics, the
//! refused requests kept), [`report`] (what `stats` reads), [`shutdown`]
//! (one signal fanned out to every core), and [`app`], which wires them together
//! and is what both the binary and the tests run.
//!
//! The central promise: a `202 Accepted` is written only after Redis has
//! acknowledged the job's `XADD`; anything else is a 4xx or a 503.
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod backoff;
pub mod config;
pub mod health;
pub mod http;
pub mod ingest;
pub mod job;
pub mod queue;
pub mod report;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod worker;
