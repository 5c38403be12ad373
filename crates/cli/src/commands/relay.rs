//! `mystira-users relay`: delivers the outbox to Cosmos (the logic is in
//! `mystira_migrate::relay`).

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use mystira_cosmos_client::CosmosRepositories;
use mystira_migrate::heartbeat::{Heartbeat, this_process};
use mystira_migrate::relay::{RelayConfig, drain, run_relay};
use mystira_postgres::heartbeats::WorkerKind;
use mystira_postgres::outbox;
use serde_json::json;

use super::{Outcome, db, source, stop};
use crate::cli::CosmosArgs;
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users relay`
#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub cosmos: CosmosArgs,

    /// Deliver until the outbox is empty, then exit (0 when empty, 3 when rows are left at
    /// --timeout); otherwise run until SIGINT/SIGTERM
    #[arg(long)]
    pub drain: bool,

    /// With --drain: give up after this many seconds
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub timeout: u64,

    /// Deliveries in flight at once
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub concurrency: usize,

    /// Aggregates taken per pass
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub batch: i64,

    /// While PostgreSQL is out, the longest wait between two attempts (the wait starts at a
    /// second and doubles up to this; the relay never gives up)
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub max_retry_wait_seconds: u64,
}

pub async fn run(args: &RelayArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let pool = db::prepared_pool(settings, (args.concurrency as u32 + 2).max(4)).await?;
    let store = source::connect_cosmos(&args.cosmos, settings).await?;
    let repos = CosmosRepositories::open(&store)
        .await
        .context("cannot open the Cosmos containers")?;
    let config = RelayConfig {
        batch_aggregates: args.batch.max(1),
        concurrency: args.concurrency.max(1),
        outage_backoff_cap: Duration::from_secs(args.max_retry_wait_seconds.max(1)),
        ..RelayConfig::default()
    };
    let started = Instant::now();
    let (report, left) = if args.drain {
        drain(
            &pool,
            &repos.writer,
            &config,
            Duration::from_secs(args.timeout),
        )
        .await
        .map(|(report, left)| (report, Some(left)))
        .context("a relay pass failed")?
    } else {
        // a continuous relay keeps a heartbeat (a drain is a one-off, like `replicate --once`)
        let heartbeat = Heartbeat::start(&pool, this_process(WorkerKind::Relay, None)).await;
        let report = run_relay(
            &pool,
            &repos.writer,
            &config,
            &heartbeat.health(),
            stop::stop_signal(),
        )
        .await;
        heartbeat.stop().await;
        let report = report.context("the relay stopped")?;
        // stopped during an outage: the depth is not known, which is no reason to fail
        let left = tokio::time::timeout(Duration::from_secs(5), outbox::depth(&pool))
            .await
            .ok()
            .and_then(Result::ok);
        if left.is_none() {
            tracing::warn!("cannot read the outbox's depth at the stop");
        }
        (report, left)
    };
    let exit = if args.drain && left.as_ref().is_none_or(|l| l.rows > 0) {
        Exit::Attention
    } else {
        Exit::Ok
    };
    let left_text = left.as_ref().map_or_else(
        || "unknown (PostgreSQL did not answer)".to_owned(),
        |l| format!("{} rows for {} aggregates left", l.rows, l.aggregates),
    );
    Ok(Outcome {
        exit,
        human: format!(
            "relay: {} delivered ({} put, {} removed), {} deferred, in {:.1} s; outbox: {}\n",
            report.delivered(),
            report.put,
            report.removed,
            report.deferred,
            started.elapsed().as_secs_f64(),
            left_text,
        ),
        json: json!({ "report": report, "outbox": left, "elapsed_seconds": started.elapsed().as_secs_f64() }),
    })
}
