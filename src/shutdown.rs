//! Shutdown: one process signal fanned out to every stage.
//!
//! SIGTERM or SIGINT cancels one [`CancellationToken`]; each core's runtime
//! stops accepting and drains its connections, the pipeline thread answers
//! what is queued and exits when the last core lets go of it. A second
//! signal exits at once. The token is a value passed down, never a global, so
//! tests run many servers in one process.

use std::thread;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Exit code when a second signal cuts the drain short (128 + SIGTERM).
const FORCED_EXIT_CODE: i32 = 143;

/// Installs the SIGTERM/SIGINT handlers: the first cancels `token`, the
/// second exits the process at once.
///
/// # Errors
/// The signal handlers could not be registered.
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    thread::Builder::new().name("signals".into()).spawn(move || {
        let mut seen = 0;
        for signal in signals.forever() {
            seen += 1;
            if seen == 1 {
                info!(signal, "shutdown requested: draining (send again to exit at once)");
                token.cancel();
            } else {
                warn!(signal, "second signal: exiting without draining");
                std::process::exit(FORCED_EXIT_CODE);
            }
        }
    })?;
    Ok(())
}
