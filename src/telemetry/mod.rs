//! Logs: `tracing` events as JSON lines on stdout, one object per line,
//! with the thread name (each core's runtime is `core-N`), so a log shipper
//! can parse them without configuration. Nothing is logged per request at
//! the default level.

mod exposition;
mod gauges;
pub mod metrics;
pub mod process;
pub mod redact;
pub mod rejections;
pub mod sources;
pub mod store;

use tracing_subscriber::EnvFilter;

/// Installs the JSON subscriber with `filter` (the `LOG_LEVEL` syntax).
/// Does nothing if a subscriber is already installed (tests, embedding).
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_thread_names(true)
        .with_current_span(false)
        .with_writer(std::io::stdout)
        .try_init();
}
