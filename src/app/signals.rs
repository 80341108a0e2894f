//! SIGTERM and SIGINT: the first stops doka gracefully, a second ends it at once.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Cancels `stop` at the first signal; returns at the second (nothing uncommitted is lost: records
/// in flight are sent again after a restart). Never returns when the handlers cannot be installed.
pub async fn watch(stop: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        return std::future::pending().await;
    };
    for n in 0.. {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if n == 0 {
            info!("signal received: stopping (send it again to exit at once)");
            stop.cancel();
        } else {
            warn!("second signal: exiting without waiting; uncommitted records will be sent again");
            return;
        }
    }
}
