//! The router's lifecycle in a long-running process (`serve`, `loadgen`): the Cosmos
//! containers, the local journal directory, the router over the phase watcher, and its
//! background work (journal replay, outbox relay) running beside it until told to stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mystira_cosmos_store::{CosmosRepositories, CosmosStore};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::journal::{FileJournal, FileJournalError};
use crate::phase::PhaseWatcher;
use crate::router::{
    BackgroundConfig, BackgroundReport, DualWriteRouter, RouterConfig, run_background,
};

/// Why a router could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostingError {
    #[error("cannot open (or create) the Cosmos containers")]
    Containers(#[source] mystira_cosmos_store::Error),
    /// No journal directory was given and this user has no default one (no home directory).
    #[error("no default journal directory: pass --journal-dir")]
    NoJournalDir,
    #[error("cannot open the journal directory")]
    JournalDir(#[source] FileJournalError),
}

/// A router and its background work.
#[derive(Debug)]
pub struct HostedRouter {
    pub router: DualWriteRouter,
    pub files: FileJournal,
    pub journal_dir: PathBuf,
    stop: watch::Sender<bool>,
    background: JoinHandle<BackgroundReport>,
}

impl HostedRouter {
    /// Opens (or creates) the Cosmos containers and the journal directory (`journal_dir`, or
    /// the default one `journal` uses) and starts the background work.
    pub async fn start(
        pool: &PgPool,
        store: &CosmosStore,
        journal_dir: Option<&Path>,
        watcher: PhaseWatcher,
        config: RouterConfig,
    ) -> Result<Self, HostingError> {
        let repos = CosmosRepositories::ensure(store)
            .await
            .map_err(HostingError::Containers)?;
        let journal_dir = match journal_dir {
            Some(d) => d.to_owned(),
            None => FileJournal::default_dir().ok_or(HostingError::NoJournalDir)?,
        };
        let files = FileJournal::open(&journal_dir).map_err(HostingError::JournalDir)?;
        let router = DualWriteRouter::new(
            pool.clone(),
            repos,
            Arc::new(watcher),
            files.clone(),
            config,
        );
        let (stop, stop_rx) = watch::channel(false);
        let background = {
            let router = router.clone();
            tokio::spawn(async move {
                let mut rx = stop_rx;
                run_background(&router, &BackgroundConfig::default(), async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
            })
        };
        Ok(Self {
            router,
            files,
            journal_dir,
            stop,
            background,
        })
    }

    /// Stops the background work after its current pass, seals the journal file and returns
    /// what the background work did.
    pub async fn stop(self) -> BackgroundReport {
        let _ = self.stop.send(true);
        let report = self.background.await.unwrap_or_default();
        self.files.seal();
        report
    }

    /// [`Self::stop`], waiting at most `deadline` for the current pass: a pass stuck on a
    /// store that does not answer (a Cosmos that hangs holds a delivery, and the aggregate's
    /// lock with it) is dropped at the deadline. Nothing is lost by that: an outbox row is
    /// removed only after its delivery, and a journal entry only after its replay, so the
    /// next relay or replay does the work again. `None` when the pass was dropped.
    pub async fn stop_within(self, deadline: Duration) -> Option<BackgroundReport> {
        let _ = self.stop.send(true);
        let mut background = self.background;
        let report = match tokio::time::timeout(deadline, &mut background).await {
            Ok(joined) => Some(joined.unwrap_or_default()),
            Err(_) => {
                background.abort();
                None
            }
        };
        self.files.seal();
        report
    }
}
