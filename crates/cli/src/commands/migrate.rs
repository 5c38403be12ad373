//! `mystira-users migrate`: the backfill, with progress bars on a terminal, log lines
//! otherwise, and a summary (human or `--json`).

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use mystira_migrate::backfill::CONTAINERS;
use mystira_migrate::{BackfillConfig, BackfillReport, ContainerCounts, run_backfill};
use serde_json::json;

use super::source::SourceArgs;
use super::{Outcome, database, source};
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users migrate`
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Documents per write transaction and per source page [default: 1000]
    #[arg(long, value_name = "ROWS")]
    pub batch_rows: Option<usize>,

    /// Concurrent workers in this process (each holds one key range at a time) [default: 2]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Ranges each container is split into when a run starts [default: 16]: byte ranges of an
    /// export file; for a live account, the container's feed ranges, each split further by
    /// `_ts` when there are fewer feed ranges than N (see docs/backfill.md)
    #[arg(long, value_name = "N")]
    pub ranges: Option<usize>,

    /// At most this many documents read per second by the whole run, every process together
    /// (a Cosmos RU budget kept in PostgreSQL; give each process of a run the same value)
    #[arg(long, value_name = "DOCS_PER_SECOND")]
    pub max_rps: Option<u32>,

    /// Seconds a range stays leased without progress before another worker takes it over
    /// [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub lease_seconds: Option<u64>,

    /// Start over instead of resuming or joining an unfinished run
    #[arg(long)]
    pub restart: bool,

    /// How rows are loaded [default: auto]. `initial`: binary COPY into the tables stripped of
    /// their keys, indexes, foreign keys and triggers, which are built again at the end (as
    /// pg_restore does); needs PostgreSQL to hold nothing of the domain, phase cosmos-only.
    /// `upsert`: version-guarded batched upserts, for any state. `auto`: `initial` when it can
    /// run, `upsert` otherwise. The summary says which ran (docs/initial-load.md)
    #[arg(long, env = "MYSTIRA_LOAD_MODE", value_name = "MODE")]
    pub load_mode: Option<mystira_migrate::LoadMode>,
}

pub async fn run(args: &MigrateArgs, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    let file = settings.file.migrate.clone().unwrap_or_default();
    let defaults = BackfillConfig::default();
    let config = BackfillConfig {
        batch_rows: args
            .batch_rows
            .or(file.batch_rows)
            .unwrap_or(defaults.batch_rows)
            .max(1),
        workers: args
            .workers
            .or(file.workers)
            .unwrap_or(defaults.workers)
            .max(1),
        ranges_per_container: args
            .ranges
            .or(file.ranges_per_container)
            .unwrap_or(defaults.ranges_per_container)
            .max(1),
        max_docs_per_second: args.max_rps.or(file.max_rps),
        lease: args
            .lease_seconds
            .or(file.lease_seconds)
            .map_or(defaults.lease, Duration::from_secs),
        restart: args.restart,
        load_mode: args
            .load_mode
            .or(file.load_mode)
            .unwrap_or(defaults.load_mode),
        ..defaults
    };
    let source = source::document_source(&args.source, settings).await?;
    let pool = database::prepared_pool(settings, config.workers as u32 * 2 + 2).await?;

    let progress = Reporter::new(!json && std::io::stderr().is_terminal(), source.as_ref()).await;
    let report = run_backfill(&pool, source.as_ref(), &config, &|c, counts| {
        progress.update(c, counts)
    })
    .await
    .context("the backfill stopped")?;
    progress.finish();
    pool.close().await;
    Ok(outcome(&report))
}

fn outcome(report: &BackfillReport) -> Outcome {
    let reconciled = report.reconciles();
    let mut human = format!(
        "migrated {} in {:.1} s{}\n",
        report.source,
        report.elapsed_seconds,
        if report.joined {
            " (joined an unfinished run)"
        } else {
            ""
        }
    );
    human.push_str(&format!("  loaded by: {}\n", load_path_line(report)));
    human.push_str(&format!(
        "  {:<15} {:>9} {:>9} {:>9} {:>11} {:>8}\n",
        "container", "read", "written", "unchanged", "quarantined", "skipped"
    ));
    for (container, c) in &report.job_totals {
        human.push_str(&format!(
            "  {:<15} {:>9} {:>9} {:>9} {:>11} {:>8}\n",
            container,
            c.read,
            c.written,
            c.unchanged,
            c.quarantined,
            c.skipped.values().sum::<u64>()
        ));
    }
    human.push_str(if reconciled {
        "every document is accounted for: read = written + unchanged + quarantined + skipped\n"
    } else {
        "COUNTS DO NOT RECONCILE: some documents are not accounted for\n"
    });
    if report.quarantined() > 0 {
        human.push_str(&format!(
            "{} documents are in quarantine: `mystira-users quarantine list` shows why\n",
            report.quarantined()
        ));
    }
    Outcome {
        exit: if reconciled { Exit::Ok } else { Exit::Failure },
        human,
        json: json!({
            "run_id": report.run_id,
            "source": report.source,
            "joined": report.joined,
            "load_path": report.load_path,
            "initial_load": report.initial_load,
            "elapsed_seconds": report.elapsed_seconds,
            "reconciled": reconciled,
            "process": report.containers,
            "job": report.job_totals,
            "peak_rss_bytes": peak_rss_bytes(),
        }),
    }
}

fn load_path_line(report: &BackfillReport) -> String {
    match (report.load_path, &report.initial_load) {
        (mystira_migrate::LoadPath::Upsert, _) => "version-guarded upserts".to_owned(),
        (mystira_migrate::LoadPath::Initial, Some(s)) => format!(
            "initial load (COPY into stripped tables; keys rebuilt in {:.1} s; {} documents \
             set aside and applied by upserts in {:.1} s)",
            s.rebuild_seconds,
            s.set_aside.documents.values().sum::<u64>(),
            s.redo_seconds
        ),
        (mystira_migrate::LoadPath::Initial, None) => {
            "initial load (finished by another process)".to_owned()
        }
    }
}

/// The process's peak resident memory (VmHWM), for benchmarks.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

type Bars = (MultiProgress, BTreeMap<&'static str, ProgressBar>);

/// Progress: one bar per container on a terminal, a log line every few seconds otherwise.
struct Reporter {
    bars: Option<Bars>,
    last_log: Mutex<Instant>,
}

impl Reporter {
    async fn new(terminal: bool, source: &dyn mystira_migrate::DocumentSource) -> Self {
        let bars: Option<Bars> = terminal.then(|| {
            let multi = MultiProgress::new();
            let style = ProgressStyle::with_template(
                "{prefix:>15} {bar:30} {pos:>9}/{len:<9} {per_sec:>12} eta {eta:>4}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            let bars = CONTAINERS
                .iter()
                .map(|c| {
                    let bar = multi.add(ProgressBar::no_length());
                    bar.set_style(style.clone());
                    bar.set_prefix(*c);
                    (*c, bar)
                })
                .collect();
            (multi, bars)
        });
        if let Some((_, bars)) = &bars {
            for (container, bar) in bars {
                if let Some(total) = source.estimate_documents(container).await {
                    bar.set_length(total);
                }
            }
        }
        Self {
            bars,
            last_log: Mutex::new(Instant::now()),
        }
    }

    fn update(&self, container: &str, counts: &ContainerCounts) {
        if let Some((_, bars)) = &self.bars {
            if let Some(bar) = bars.get(container) {
                bar.set_position(counts.read);
                bar.set_message(format!("{} quarantined", counts.quarantined));
            }
            return;
        }
        let mut last = self
            .last_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.elapsed() >= Duration::from_secs(5) {
            *last = Instant::now();
            tracing::info!(
                container,
                read = counts.read,
                written = counts.written,
                unchanged = counts.unchanged,
                quarantined = counts.quarantined,
                "backfill progress"
            );
        }
    }

    fn finish(&self) {
        if let Some((_, bars)) = &self.bars {
            for bar in bars.values() {
                bar.finish();
            }
        }
    }
}
