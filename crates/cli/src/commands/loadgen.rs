//! `mystira-users loadgen`: hosts a dual-write router (the phase from PostgreSQL through a
//! `PhaseWatcher`, its journal replay and outbox relay beside it) and drives it with
//! `mystira_loadtest::loadgen`, which keeps the ledger.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use mystira_dual_write::hosting::HostedRouter;
use mystira_dual_write::journal::FileJournal;
use mystira_dual_write::phase::PhaseWatcher;
use mystira_dual_write::router::{Phase1Copy, Phase2Delivery, RouterConfig};
use mystira_dual_write::status::MigrationState;
use mystira_loadtest::loadgen::{LoadConfig, LoadError, run_load};
use serde_json::json;
use sqlx::PgPool;

use super::source::CosmosArgs;
use super::{Outcome, database, source, stop};
use crate::config::ConfigError;
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users loadgen`
#[derive(Debug, Args)]
pub struct LoadgenArgs {
    #[command(flatten)]
    pub cosmos: CosmosArgs,

    /// Calls started per second (open loop: a slow store shows as latency, not as a lower
    /// rate, up to --concurrency calls in flight)
    #[arg(long, value_name = "N")]
    pub rate: f64,

    /// How long to run, e.g. 30s, 5m
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Duration,

    /// The ledger file (JSON lines), appended to: every call's intent and every acknowledged
    /// write; check it with `mystira-users ledger check FILE`
    #[arg(long, value_name = "FILE")]
    pub ledger: PathBuf,

    /// Calls in flight at most
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub concurrency: usize,

    /// Seed of the generated users and values (a restart on the same ledger starts a new run
    /// with new users)
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seed: u64,

    /// Where the router journals writes when PostgreSQL is down [default: as `journal`]
    #[arg(long, env = "MYSTIRA_JOURNAL_DIR", value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,

    /// How a phase-1 write reaches PostgreSQL: copied in the call (`inline`), or appended to
    /// the retry journal and applied by the background work (`journal`)
    #[arg(long, value_enum, default_value_t = CopyMode::Inline)]
    pub phase1_copy: CopyMode,

    /// How a phase-2 write reaches Cosmos: delivered in the call (`inline`), or by the
    /// background work and the relay after the commit (`background`)
    #[arg(long, value_enum, default_value_t = DeliveryMode::Inline)]
    pub phase2_delivery: DeliveryMode,

    /// After the load, keep replaying the journal and relaying the outbox until both are
    /// empty, at most this many seconds (0: stop at once)
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    pub drain_timeout: u64,
}

/// `--phase1-copy`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CopyMode {
    Inline,
    Journal,
}

/// `--phase2-delivery`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeliveryMode {
    Inline,
    Background,
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    mystira_dual_write::phase::parse_duration(raw)
}

/// How many writes still wait in the journal (table and this machine's files) and the outbox.
async fn backlog(pool: &PgPool, files: &FileJournal) -> anyhow::Result<(i64, u64, i64)> {
    let state = MigrationState::read(pool)
        .await
        .context("cannot read the migration state")?;
    let files = files
        .pending()
        .context("cannot read the journal directory")?;
    Ok((state.journal.entries, files.records, state.outbox.rows))
}

pub async fn run(args: &LoadgenArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(ConfigError::Usage("--rate must be a positive number".into()).into());
    }
    let pool = database::prepared_pool(settings, (args.concurrency as u32 + 6).max(8)).await?;
    let store = source::connect_cosmos(&args.cosmos, settings).await?;
    let watcher = PhaseWatcher::start(pool.clone(), Duration::from_secs(1))
        .await
        .context("cannot read the phase")?;
    let hosted = HostedRouter::start(
        &pool,
        &store,
        args.journal_dir.as_deref(),
        watcher,
        RouterConfig {
            phase1_copy: match args.phase1_copy {
                CopyMode::Inline => Phase1Copy::Inline,
                CopyMode::Journal => Phase1Copy::Journal,
            },
            phase2_delivery: match args.phase2_delivery {
                DeliveryMode::Inline => Phase2Delivery::Inline,
                DeliveryMode::Background => Phase2Delivery::Background,
            },
            ..RouterConfig::default()
        },
    )
    .await?;
    let router = hosted.router.clone();
    let files = hosted.files.clone();
    let dir = hosted.journal_dir.clone();

    let mut config = LoadConfig::new(args.rate, args.duration, args.ledger.clone());
    config.concurrency = args.concurrency.max(1);
    config.seed = args.seed;
    let report = match run_load(&router, &config, stop::stop_signal()).await {
        Ok(report) => report,
        // the ledger cannot be written: stop at once (no draining), say what was done
        Err(LoadError::LedgerWrite { source, report }) => {
            let background = hosted.stop().await;
            let error = format!(
                "the ledger {} could not be written ({source}): the run was stopped at once; the \
                 ledger holds the calls up to the failure",
                args.ledger.display()
            );
            return Ok(Outcome {
                exit: Exit::Failure,
                human: format!("{}error: {error}\n", report.summary()),
                json: json!({
                    "error": error,
                    "report": report,
                    "background": background,
                    "journal_dir": dir,
                }),
            });
        }
        Err(e) => {
            hosted.stop().await;
            return Err(anyhow::Error::new(e).context("the load generator stopped"));
        }
    };

    // the journal and outbox this run filled, drained by the background work (bounded)
    let drain_started = Instant::now();
    let deadline = drain_started + Duration::from_secs(args.drain_timeout);
    let mut left = backlog(&pool, &files).await.ok();
    while Instant::now() < deadline && left.is_none_or(|(t, f, o)| t + f as i64 + o > 0) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = backlog(&pool, &files).await.ok();
    }
    let background = hosted.stop().await;

    let mut human = report.summary();
    match left {
        Some((table, file_records, outbox)) => human.push_str(&format!(
            "after {:.1} s of draining: retry journal {table} entries, local journal files \
             {file_records} records, outbox {outbox} rows\n",
            drain_started.elapsed().as_secs_f64()
        )),
        None => human.push_str("backlog unknown: PostgreSQL could not be read\n"),
    }
    Ok(Outcome {
        exit: Exit::Ok,
        human,
        json: json!({
            "report": report,
            "background": background,
            "backlog": left.map(|(t, f, o)| json!({
                "journal_entries": t, "journal_file_records": f, "outbox_rows": o
            })),
            "journal_dir": dir,
        }),
    })
}
