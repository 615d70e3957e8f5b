//! Integration tests: the real gateway against a real `redis-server`,
//! one private Redis per test. Files follow the request's path: accepted
//! requests, refused ones, HTTP framing, Redis failures, concurrency.

mod abuse;
mod accept;
mod bounds;
mod catalog;
mod chaos;
mod cluster;
mod concurrency;
mod consume;
mod cores;
mod dashboard;
mod errors;
mod fault;
mod harness;
mod operate;
mod ops;
mod outage;
mod per_core;
mod poison;
mod process;
mod protocol;
mod redis_cluster;
mod redis_memory;
mod retention;
mod security;
mod senders;
mod uring;
mod worker;
mod worker_faults;
