//! The stop signal of long-running commands (`replicate`, `relay`, `loadgen`): SIGINT or
//! SIGTERM, after which they finish the unit of work in hand, release what they hold and
//! print their summary.

/// Resolves on SIGINT or SIGTERM.
pub async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // no signal handlers: only Ctrl-C through tokio's portable handler
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
