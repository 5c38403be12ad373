//! `mystira-users bench`: its flags, and the call into the load-test kit
//! ([`mystira_loadtest::bench`]), which measures the backfill against PostgreSQL's own COPY of
//! the same rows.

use clap::Args;
use mystira_loadtest::bench::{BenchOptions, run_bench};
use mystira_migrate::backfill::BackfillConfig;

use super::{Outcome, database};
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Accounts to generate (about 15 rows each: 100000 gives ~1.5 million rows)
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub accounts: u64,

    /// Also migrate data sets of these sizes (accounts, comma-separated) and report the peak
    /// memory of each
    #[arg(long, value_delimiter = ',', value_name = "N,N")]
    pub memory_sizes: Vec<u64>,

    /// Passed to `migrate`
    #[arg(long, value_name = "ROWS")]
    pub batch_rows: Option<usize>,

    /// Passed to `migrate`; the COPY baselines use as many parallel streams
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Times each measure is taken, each run in fresh databases
    #[arg(long, default_value_t = 3, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,

    /// Keep the benchmark databases and files instead of dropping them
    #[arg(long)]
    pub keep: bool,
}

pub async fn run(args: &BenchArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let (server, _) = database::database_url(settings).await?;
    // the baselines get as many parallel streams as `migrate` has workers, found the way the
    // `migrate` child finds them (flag, then config file, then its default)
    let streams = args
        .workers
        .or(settings.file.migrate.as_ref().and_then(|m| m.workers))
        .unwrap_or(BackfillConfig::default().workers)
        .max(1);
    let options = BenchOptions {
        accounts: args.accounts,
        memory_sizes: args.memory_sizes.clone(),
        batch_rows: args.batch_rows,
        workers: args.workers,
        streams,
        runs: args.runs,
        keep: args.keep,
        exe: std::env::current_exe()?,
    };
    let report = run_bench(&server, &options).await?;
    Ok(Outcome {
        exit: Exit::Ok,
        human: report.human,
        json: report.json,
    })
}
