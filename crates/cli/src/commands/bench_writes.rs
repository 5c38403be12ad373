//! `mystira-users bench-writes`: write latency per phase against phase 0, and the relay's
//! throughput, in one run (the logic is in `mystira_loadtest::write_bench`).

use anyhow::Context as _;
use clap::Args;
use mystira_cosmos_store::CosmosRepositories;
use mystira_loadtest::bench::databases::{database, drop_database, prepared};
use mystira_loadtest::write_bench::{WriteBenchConfig, WriteBenchReport, run_write_bench};
use serde_json::json;

use super::source::CosmosArgs;
use super::{Outcome, database, source};
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users bench-writes`
#[derive(Debug, Args)]
pub struct BenchWritesArgs {
    /// The Cosmos account to measure against (a database of its own is created and deleted;
    /// --cosmos-database names it)
    #[command(flatten)]
    pub cosmos: CosmosArgs,

    /// Write calls per phase and run
    #[arg(long, default_value_t = 700, value_name = "N")]
    pub calls: usize,

    /// Runs (each measures every phase, interleaved); median and spread are reported
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub runs: usize,

    /// Aggregates put in the outbox for the relay measure, per run
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub relay_aggregates: usize,

    /// Keep the benchmark databases instead of dropping them
    #[arg(long)]
    pub keep: bool,
}

pub async fn run(args: &BenchWritesArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let (server, _) = database::database_url(settings).await?;
    let tag = std::process::id();
    let url = database(&server, &format!("bench_{tag}_writes"));
    let pool = prepared(&url).await?;
    let mut cosmos_args = args.cosmos.clone();
    if cosmos_args.cosmos_database.is_none() {
        cosmos_args.cosmos_database = Some(format!("bench-writes-{tag}"));
    }
    let store = source::connect_cosmos(&cosmos_args, settings).await?;
    let repos = CosmosRepositories::ensure(&store)
        .await
        .context("cannot create the benchmark's Cosmos containers")?;
    let journal = tempfile::Builder::new()
        .prefix("mystira-bench-journal-")
        .tempdir()?;
    let config = WriteBenchConfig {
        calls: args.calls.max(10),
        runs: args.runs.max(1),
        relay_aggregates: args.relay_aggregates.max(1),
    };
    let report = run_write_bench(&pool, &store, &repos, journal.path(), &config)
        .await
        .context("the write benchmark failed")?;
    pool.close().await;
    if !args.keep {
        drop_database(&server, &url, false).await;
        if let Err(e) = store.delete_database().await {
            tracing::warn!(error = %e, "could not delete the benchmark's Cosmos database");
        }
    }
    Ok(Outcome {
        exit: Exit::Ok,
        human: human(&report),
        json: json!(report),
    })
}

fn human(r: &WriteBenchReport) -> String {
    let mut out = format!(
        "write latency, {} calls per phase, {} runs (median of runs; spread = lowest..highest run)\n",
        r.calls_per_phase, r.runs
    );
    for (label, rt) in [
        ("postgresql round trip (select 1)", &r.postgres_round_trip),
        (
            "postgresql committed write (1 row)",
            &r.postgres_write_round_trip,
        ),
    ] {
        out.push_str(&format!(
            "  {:<42} p50 {:>7.2} ms  p99 {:>7.2} ms  (p99 {:.2}..{:.2})\n",
            label, rt.median.p50_ms, rt.median.p99_ms, rt.min.p99_ms, rt.max.p99_ms
        ));
    }
    for p in &r.phases {
        let l = &p.latency;
        let label = match p.mode {
            Some(mode) => format!("{} ({mode})", p.phase.name()),
            None => p.phase.name().to_owned(),
        };
        out.push_str(&format!(
            "  phase {} {:<34} p50 {:>7.2} ms  p99 {:>7.2} ms  (p99 {:.2}..{:.2})  \
             over phase 0: {:+.1} committed writes at p50, {:+.1} at p99\n",
            p.phase.number(),
            label,
            l.median.p50_ms,
            l.median.p99_ms,
            l.min.p99_ms,
            l.max.p99_ms,
            p.added_p50_write_round_trips,
            p.added_p99_write_round_trips,
        ));
    }
    let rates: Vec<String> = r
        .relay_aggregates_per_second
        .iter()
        .map(|x| format!("{x:.0}"))
        .collect();
    out.push_str(&format!(
        "relay: {} aggregates per run delivered at {} aggregates/s\n",
        r.relay_aggregates,
        rates.join(", ")
    ));
    let rates: Vec<String> = r
        .replicate_documents_per_second
        .iter()
        .map(|x| format!("{x:.0}"))
        .collect();
    out.push_str(&format!(
        "replicate --once: {} documents per run written at {} documents/s\n",
        r.replicate_documents,
        rates.join(", ")
    ));
    out
}
