//! The per-source counts sampled over the last hour, so that `GET
//! /v1/sources` can say what each source's requests became over the last 5
//! minutes and the last hour: a window's counts are the totals now less the
//! totals at its start. One thread samples every [`SAMPLE_EVERY`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::telemetry::metrics::Metrics;
use crate::telemetry::sources::SourceTotals;

/// How often the per-source counts are sampled for the windows.
pub(super) const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// The windows `GET /v1/sources` reports, `(name, length)`.
pub(super) const WINDOWS: [(&str, Duration); 2] =
    [("last5m", Duration::from_secs(300)), ("last1h", Duration::from_secs(3600))];

/// The per-source counts sampled over the last hour, so a window's counts
/// are the totals now less the totals at its start.
pub(super) struct Windows {
    metrics: Arc<Metrics>,
    samples: Mutex<VecDeque<(Instant, Vec<SourceTotals>)>>,
}

impl Windows {
    /// Starts sampling (one sample now); the thread ends with `shutdown`.
    pub(super) fn spawn(
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> std::io::Result<(Arc<Self>, JoinHandle<()>)> {
        let windows = Arc::new(Self { metrics, samples: Mutex::new(VecDeque::new()) });
        windows.sample();
        let w = windows.clone();
        let thread = std::thread::Builder::new().name("api-windows".into()).spawn(move || {
            let mut next = Instant::now() + SAMPLE_EVERY;
            while !shutdown.is_cancelled() {
                std::thread::sleep(Duration::from_millis(100));
                if Instant::now() >= next {
                    w.sample();
                    next += SAMPLE_EVERY;
                }
            }
        })?;
        Ok((windows, thread))
    }

    fn sample(&self) {
        let totals = self.metrics.source_totals();
        let mut s = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        s.push_back((now, totals));
        let longest = WINDOWS[WINDOWS.len() - 1].1 + SAMPLE_EVERY;
        while s.front().is_some_and(|(t, _)| now.duration_since(*t) > longest) {
            s.pop_front();
        }
    }

    /// The totals at the start of a window of `length` (the oldest sample
    /// inside it), and how long it really covers (less while the process
    /// is younger than the window).
    pub(super) fn start_of(&self, length: Duration) -> Option<(Vec<SourceTotals>, Duration)> {
        let s = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        s.iter()
            .find(|(t, _)| now.duration_since(*t) <= length)
            .map(|(t, totals)| (totals.clone(), now.duration_since(*t)))
    }
}
