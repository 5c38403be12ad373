//! The backfill: every document of every container, from a source into PostgreSQL.
//!
//! Containers are copied in dependency order (`Accounts` before `UserProfiles`, whose
//! `AccountId` must find its account; then `PendingSignups`). Each container is read page by
//! page; each page is decoded, validated and mapped (`mystira_copy::mapping`), written in batches
//! through the idempotent, version-guarded bulk writer, and its position is checkpointed after
//! the write. A `kill -9` at any moment loses at most the page in flight, which the re-run reads
//! again and writes as `unchanged` where it had already landed: the final state is the same.
//!
//! Every document read is accounted for: `read = written + unchanged + quarantined + skipped`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mystira_postgres::bookkeeping;
use mystira_postgres::leases;
use mystira_postgres::read_budget;
use serde::Serialize;
use sqlx::PgPool;

pub use mystira_copy::{CONTAINERS, ContainerCounts, local_owner};

use crate::initial::{self, InitialLoadSummary, LoadMode, LoadPath};
use mystira_copy::apply::{Retries, write_page};
use mystira_copy::source::{DocumentSource, SourceError};
use mystira_postgres::initial_load::{self, Stage};

const JOB: &str = "backfill";

/// How the backfill batches, paces and shares its work.
#[derive(Debug, Clone)]
pub struct BackfillConfig {
    /// Documents per write transaction (and per source page).
    pub batch_rows: usize,
    /// Maximum source documents read per second by the whole run (a Cosmos RU budget), shared
    /// by every process of the run through `migration.rate_budgets`; `None` = unlimited.
    /// Give every process of a run the same value.
    pub max_docs_per_second: Option<u32>,
    /// Ignore an unfinished earlier run and start over.
    pub restart: bool,
    /// Concurrent workers in this process. Each takes key ranges as leases; other processes
    /// running the same job take the rest.
    pub workers: usize,
    /// Ranges each container is split into (when a run starts; later joiners use them).
    pub ranges_per_container: usize,
    /// How long a range stays leased without progress before another worker may take it over.
    pub lease: Duration,
    /// Names this process's workers in the lease table (`<owner>/<n>`).
    pub owner: String,
    /// Which path loads: the initial load's COPY into empty tables, or the upserts.
    pub load_mode: LoadMode,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            batch_rows: 1000,
            max_docs_per_second: None,
            restart: false,
            workers: 2,
            ranges_per_container: 16,
            lease: Duration::from_secs(30),
            owner: local_owner(std::process::id()),
            load_mode: LoadMode::Auto,
        }
    }
}

/// The result of a backfill run.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillReport {
    pub run_id: uuid::Uuid,
    pub source: String,
    /// Whether this process joined a run that was already under way (resumed or shared).
    pub joined: bool,
    /// What this process did.
    pub containers: BTreeMap<String, ContainerCounts>,
    /// What the whole job did, over every process and every resumed attempt.
    pub job_totals: BTreeMap<String, ContainerCounts>,
    pub elapsed_seconds: f64,
    /// Which path this process loaded by.
    pub load_path: LoadPath,
    /// What finishing the initial load did, when this process finished it.
    pub initial_load: Option<InitialLoadSummary>,
}

impl BackfillReport {
    /// Whether every document the job read is accounted for.
    pub fn reconciles(&self) -> bool {
        self.job_totals
            .values()
            .chain(self.containers.values())
            .all(ContainerCounts::reconciles)
    }
    pub fn quarantined(&self) -> u64 {
        self.job_totals.values().map(|c| c.quarantined).sum()
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackfillError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("postgresql: {0}")]
    Store(#[from] mystira_domain::RepoError),
    /// The load mode asked for cannot run (a usage error).
    #[error("{0}")]
    LoadMode(String),
}

/// Called after every batch with the container and this process's counts so far.
pub type Progress<'a> = &'a (dyn Fn(&str, &ContainerCounts) + Send + Sync);

/// Runs the backfill to the end, or joins (resumes) the unfinished run in progress.
pub async fn run_backfill(
    pool: &PgPool,
    source: &dyn DocumentSource,
    config: &BackfillConfig,
    progress: Progress<'_>,
) -> Result<BackfillReport, BackfillError> {
    let started = Instant::now();
    let mut plans = Vec::new();
    for container in CONTAINERS {
        if source.has_container(container).await? {
            let ranges = source
                .plan_ranges(container, config.ranges_per_container)
                .await?;
            plans.push((container.to_owned(), ranges));
        } else {
            tracing::info!(container, "container not in source, skipped");
        }
    }
    let (joined, load_path, copying) = start(pool, config, &plans).await?;
    if joined {
        tracing::info!("joining the unfinished backfill run");
        release_dead_local_owners(pool).await?;
    }
    let scope = serde_json::json!({
        "batch_rows": config.batch_rows,
        "workers": config.workers,
        "joined": joined,
        // the lease owner of this process's workers: how a later run tells this one is dead
        "owner": config.owner,
        "load_path": load_path,
    });
    let run_id = bookkeeping::start_run(pool, JOB, &source.describe(), &scope).await?;
    let abandoned = bookkeeping::abandon_dead_runs(pool, JOB, config.lease).await?;
    if abandoned > 0 {
        tracing::info!(abandoned, "closed runs whose process is gone as abandoned");
    }
    let shared = Shared {
        pool,
        source,
        config,
        progress,
        counts: Mutex::new(BTreeMap::new()),
        load_path,
    };
    let result = async {
        if copying {
            let workers = (0..config.workers.max(1)).map(|n| shared.worker(n));
            futures::future::try_join_all(workers).await?;
        }
        match load_path {
            LoadPath::Initial => {
                initial::finish(pool, source, JOB, config.workers, config.batch_rows).await
            }
            LoadPath::Upsert => Ok(None),
        }
    }
    .await;
    let (result, initial_load) = match result {
        Ok(summary) => (Ok(()), summary),
        Err(e) => (Err(e), None),
    };
    let mut containers = shared.counts.into_inner().unwrap_or_default();
    if let Some(summary) = &initial_load {
        initial::correct_process_counts(&mut containers, summary);
    }
    let report = BackfillReport {
        run_id,
        source: source.describe(),
        joined,
        containers,
        job_totals: job_totals(pool).await.unwrap_or_default(),
        elapsed_seconds: started.elapsed().as_secs_f64(),
        load_path,
        initial_load,
    };
    let status = match &result {
        Ok(()) if report.reconciles() => "succeeded",
        Ok(()) => "failed",
        Err(_) => "interrupted",
    };
    let counts = serde_json::json!({ "process": report.containers, "job": report.job_totals });
    bookkeeping::finish_run(pool, run_id, status, &counts).await?;
    result.map(|()| report)
}

/// Starts or joins the run and chooses its path, under a lock that makes processes starting at
/// the same moment agree (the first strips the schema before another can join and copy).
/// Returns (joined, path, whether there are ranges left to copy).
async fn start(
    pool: &PgPool,
    config: &BackfillConfig,
    plans: &[(String, Vec<leases::RangePlan>)],
) -> Result<(bool, LoadPath, bool), BackfillError> {
    let _lock = leases::SessionLock::acquire(pool, "mystira.backfill/start").await?;
    let stage = initial_load::stage(pool).await?;
    if stage.is_some() {
        if config.restart {
            return Err(BackfillError::LoadMode(
                "an initial load is under way; run migrate again without --restart to \
                 finish it first"
                    .to_owned(),
            ));
        }
        if config.load_mode == LoadMode::Upsert {
            return Err(BackfillError::LoadMode(
                "an initial load is under way; run with --load-mode auto or initial to \
                 finish it"
                    .to_owned(),
            ));
        }
    }
    // every range copied (killed while setting aside, rebuilding or redoing, or just before):
    // finish the load without starting a new run
    let copied = match stage {
        None => false,
        Some(Stage::Loading) => leases::job_state(pool, JOB).await? == Some(true),
        Some(Stage::Rebuilding | Stage::Redoing) => true,
    };
    if copied {
        return Ok((true, LoadPath::Initial, false));
    }
    let joined = leases::start_or_join(pool, JOB, config.restart, plans).await?;
    let path = initial::choose_path(pool, config.load_mode, joined, stage).await?;
    Ok((joined, path, true))
}

/// Leases held by processes of this host that no longer exist (killed) are released at once,
/// so a re-run on the same machine resumes without waiting for them to expire. Leases of other
/// hosts' processes are left to expire: their liveness cannot be checked from here.
async fn release_dead_local_owners(pool: &PgPool) -> Result<(), BackfillError> {
    let here = local_owner(0);
    let host_prefix = here.trim_end_matches('0');
    for owner in leases::owners(pool, JOB).await? {
        let Some(rest) = owner.strip_prefix(host_prefix) else {
            continue;
        };
        let pid = rest.split('/').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let released = leases::release(pool, JOB, &owner).await?;
            tracing::info!(
                owner,
                released,
                "released the ranges of a dead local worker"
            );
        }
    }
    Ok(())
}

async fn job_totals(pool: &PgPool) -> Result<BTreeMap<String, ContainerCounts>, BackfillError> {
    let mut totals = BTreeMap::new();
    for (unit, ranges) in leases::counts_by_unit(pool, JOB).await? {
        let ranges: Vec<ContainerCounts> = serde_json::from_value(ranges).unwrap_or_default();
        let total: &mut ContainerCounts = totals.entry(unit).or_default();
        for r in &ranges {
            total.add(r);
        }
    }
    Ok(totals)
}

/// What the workers of one process share.
struct Shared<'a> {
    pool: &'a PgPool,
    source: &'a dyn DocumentSource,
    config: &'a BackfillConfig,
    progress: Progress<'a>,
    counts: Mutex<BTreeMap<String, ContainerCounts>>,
    load_path: LoadPath,
}

impl Shared<'_> {
    /// One worker: container by container (accounts before the profiles that point at them),
    /// take a range, copy it, repeat; wait while other workers finish the container's last
    /// ranges (or their leases expire).
    async fn worker(&self, n: usize) -> Result<(), BackfillError> {
        let owner = format!("{}/{n}", self.config.owner);
        for container in CONTAINERS {
            loop {
                let lease =
                    leases::take(self.pool, JOB, container, &owner, self.config.lease).await?;
                match lease {
                    Some(lease) => self.copy_range(container, &owner, lease).await?,
                    None => {
                        let (total, done) =
                            leases::unit_progress(self.pool, JOB, container).await?;
                        if done >= total {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn copy_range(
        &self,
        container: &str,
        owner: &str,
        lease: leases::Lease,
    ) -> Result<(), BackfillError> {
        let range = leases::RangePlan {
            start: lease.range_start.clone(),
            end: lease.range_end.clone(),
        };
        let mut range_counts: ContainerCounts =
            serde_json::from_value(lease.counts.clone()).unwrap_or_default();
        let mut position = lease.position.clone();
        loop {
            if self.source.awaits_bounded_ranges(&range, position.as_ref())
                && !self
                    .await_bounded_ranges(
                        container,
                        owner,
                        &lease,
                        &range_counts,
                        position.as_ref(),
                    )
                    .await?
            {
                return Ok(());
            }
            let page = self
                .source
                .read_range_page(container, &range, position.as_ref(), self.config.batch_rows)
                .await?;
            self.pace(page.documents.len()).await?;
            let mut page_counts = ContainerCounts::default();
            let done = page.next.is_none();
            if let Some(next) = page.next {
                position = Some(next);
            }
            let kept = match self.load_path {
                LoadPath::Upsert => {
                    write_page(
                        self.pool,
                        container,
                        page.documents,
                        &mut page_counts,
                        Retries::Backoff,
                    )
                    .await?;
                    range_counts.add(&page_counts);
                    let counts = serde_json::to_value(&range_counts).unwrap_or_default();
                    leases::advance(
                        self.pool,
                        JOB,
                        &lease,
                        owner,
                        position.as_ref(),
                        &counts,
                        done,
                        self.config.lease,
                    )
                    .await?
                }
                LoadPath::Initial => {
                    // the COPY and the checkpoint commit together: a COPY is not idempotent
                    let checkpoint = initial::Checkpoint {
                        job: JOB,
                        lease: &lease,
                        owner,
                        position: position.as_ref(),
                        counts: &range_counts,
                        done,
                        extend: self.config.lease,
                    };
                    let kept = initial::copy_page(
                        self.pool,
                        container,
                        page.documents,
                        &mut page_counts,
                        checkpoint,
                    )
                    .await?;
                    range_counts.add(&page_counts);
                    kept
                }
            };
            let mine = {
                let mut all = self
                    .counts
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let mine = all.entry(container.to_owned()).or_default();
                mine.add(&page_counts);
                mine.clone()
            };
            (self.progress)(container, &mine);
            if !kept {
                tracing::warn!(
                    container,
                    range = lease.range_no,
                    "lease lost to another worker"
                );
                return Ok(());
            }
            if done {
                return Ok(());
            }
        }
    }
}

impl Shared<'_> {
    /// Waits until the run's rate budget has paid for `documents` just read.
    async fn pace(&self, documents: usize) -> Result<(), BackfillError> {
        let Some(rate) = self.config.max_docs_per_second.filter(|r| *r > 0) else {
            return Ok(());
        };
        let wait = read_budget::reserve(self.pool, JOB, documents as u64, rate).await?;
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Holds `lease` (extending it) until every bounded range of `container` is done, so that
    /// the open range's final pass comes after every write that moved a document out of a
    /// bounded range. Returns `false` when this worker should give the range up instead: the
    /// lease was lost, or a bounded range is waiting for a worker (its holder died), which this
    /// worker then takes (bounded ranges have the lower numbers).
    async fn await_bounded_ranges(
        &self,
        container: &str,
        owner: &str,
        lease: &leases::Lease,
        counts: &ContainerCounts,
        position: Option<&serde_json::Value>,
    ) -> Result<bool, BackfillError> {
        let counts = serde_json::to_value(counts).unwrap_or_default();
        loop {
            let (open, unheld) = leases::bounded_open(self.pool, JOB, container).await?;
            if open == 0 {
                return Ok(true);
            }
            if unheld > 0 {
                leases::give_back(self.pool, JOB, lease, owner).await?;
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let kept = leases::advance(
                self.pool,
                JOB,
                lease,
                owner,
                position,
                &counts,
                false,
                self.config.lease,
            )
            .await?;
            if !kept {
                return Ok(false);
            }
        }
    }
}
