//! The router's companion work: replays the retry journal (table and files) and relays the
//! outbox, woken by the router when a write left work to it.

use std::time::Duration;

use serde::Serialize;

use super::DualWriteRouter;

/// How often [`run_background`] works through the journal and the outbox.
#[derive(Debug, Clone)]
pub struct BackgroundConfig {
    /// Pause between passes when there was nothing to do.
    pub idle_poll: Duration,
    pub relay: crate::relay::RelayConfig,
}

impl Default for BackgroundConfig {
    fn default() -> Self {
        Self {
            idle_poll: Duration::from_millis(250),
            relay: crate::relay::RelayConfig::default(),
        }
    }
}

/// What the background work did since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackgroundReport {
    pub journal: crate::journal::ReplayReport,
    pub relay: crate::relay::RelayReport,
}

/// The router's companion work, until `stop` resolves: replays the retry journal (table, and
/// this machine's journal files, sealing the router's own file first so that it can be taken)
/// and relays the outbox. Every pass is idempotent and shares its work with any other process
/// doing the same (`skip locked`, advisory locks), so every process hosting a router can run
/// it. Failures (PostgreSQL or Cosmos down) are logged without values and retried on the next
/// pass. `stop` is honoured between passes (or while idle), never within one.
pub async fn run_background(
    router: &DualWriteRouter,
    config: &BackgroundConfig,
    stop: impl Future<Output = ()>,
) -> BackgroundReport {
    tokio::pin!(stop);
    let mut report = BackgroundReport::default();
    loop {
        let pass = async {
            let mut busy = false;
            let files = router.file_journal();
            // the router's own file can be replayed only once it is sealed (checked in memory:
            // counting the records on disk every pass would read every file each time)
            if files.has_open_file() {
                files.seal();
            }
            match crate::journal::replay_files(router.pool(), files, Some(&router.cosmos().writer))
                .await
            {
                Ok(r) => {
                    busy |= r.applied > 0;
                    report.journal.add(&r);
                }
                Err(e) => tracing::warn!(error = %e, "journal file replay failed"),
            }
            match crate::journal::replay_table(router.pool(), 200, Some(&router.cosmos().writer))
                .await
            {
                Ok(r) => {
                    busy |= r.applied > 0;
                    report.journal.add(&r);
                }
                Err(e) => tracing::warn!(error = %e, "journal replay failed"),
            }
            match crate::relay::relay_once(router.pool(), &router.cosmos().writer, &config.relay)
                .await
            {
                Ok(r) => {
                    busy |= r.delivered() > 0;
                    report.relay.add(&r);
                }
                Err(e) => {
                    tracing::warn!(class = crate::journal::error_class(&e), "relay pass failed")
                }
            }
            busy
        };
        // a pass is never cancelled midway: one stopped between a delivery and its bookkeeping
        // would leave the work done but unrecorded (the outbox row redelivered later, the
        // report short). A pass is bounded (a batch each), so stop waits for at most one.
        let busy = pass.await;
        tokio::select! {
            biased;
            _ = &mut stop => return report,
            _ = std::future::ready(()) => {}
        }
        if !busy {
            tokio::select! {
                _ = &mut stop => return report,
                _ = tokio::time::sleep(config.idle_poll) => {}
                _ = router.0.wake.notified() => {}
            }
        }
    }
}
