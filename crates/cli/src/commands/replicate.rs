//! `mystira-users replicate`: flags to a [`ReplicateConfig`], SIGINT/SIGTERM to a stop signal,
//! progress as log lines, and a summary (human or `--json`). The logic is in
//! `mystira_dual_write::replicate`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use mystira_cosmos_store::FeedMode;
use mystira_dual_write::heartbeat::{Heartbeat, this_process};
use mystira_dual_write::replicate::{
    ReplicateConfig, ReplicateReport, ReplicationMode, StartAt, run_replication,
};
use mystira_postgres::heartbeats::WorkerKind;
use serde_json::json;
use tokio::sync::watch;

use super::source::CosmosArgs;
use super::{Outcome, database, source, stop};
use crate::config::{ConfigError, Settings};
use crate::exit::Exit;

/// `mystira-users replicate`
#[derive(Debug, Args)]
pub struct ReplicateArgs {
    #[command(flatten)]
    pub cosmos: CosmosArgs,

    /// Catch up to now, then exit (otherwise run until SIGINT/SIGTERM)
    #[arg(long)]
    pub once: bool,

    /// How changes are found: `auto` reads each feed range's change feed, cross-checks it
    /// against `_ts` probes of the same range, and reads a range whose feed disagrees (or
    /// cannot be read here) from the `_ts` watermark instead; `change-feed` cross-checks the
    /// same way but only reports a disagreement (exit code 3); `watermark` queries `_ts` only
    /// (for servers without a change feed)
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,

    /// Where a range without a checkpoint starts: `beginning` (every document once: nothing
    /// can be missed), `now`, or a time (RFC 3339, e.g. when the backfill started: documents
    /// changed since then) [default: beginning]
    #[arg(long, value_name = "WHEN", value_parser = parse_start)]
    pub start: Option<StartAt>,

    /// Read the all-versions-and-deletes change feed (accounts with continuous backup only;
    /// starts from now, never from the beginning) instead of the latest-version feed
    #[arg(long)]
    pub all_versions_and_deletes: bool,

    /// Apply deletes (documents PostgreSQL holds that Cosmos no longer has); without it they
    /// are only reported
    #[arg(long)]
    pub apply_deletes: bool,

    /// Pause between polls once caught up, in milliseconds [default: 1000]
    #[arg(long, value_name = "N")]
    pub poll_ms: Option<u64>,

    /// Concurrent workers in this process [default: 2]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Documents per page read and per write transaction [default: 1000]
    #[arg(long, value_name = "N")]
    pub page_size: Option<u32>,

    /// A range whose lease is not renewed for this long is taken over by another replicator
    /// [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub lease_seconds: Option<u64>,

    /// Watermark mode: how far below the newest `_ts` applied each pass reads again; also the
    /// margin for the clock skew between this host and Cosmos [default: 5]
    #[arg(long, value_name = "SECONDS")]
    pub overlap_seconds: Option<u64>,

    /// Change-feed and auto modes: how often a caught-up range's feed is cross-checked against
    /// a `_ts` probe of the same range, in seconds (0: never); `--once` checks each range once
    /// [default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub probe_seconds: Option<u64>,

    /// How often a continuous run compares key sets to find deletes, in seconds (0: never);
    /// `--once` compares once, at the end [default: 300]
    #[arg(long, value_name = "SECONDS")]
    pub delete_check_seconds: Option<u64>,

    /// Rows written to PostgreSQL more recently than this are left out of the key-set
    /// comparison [default: 60]
    #[arg(long, value_name = "SECONDS")]
    pub delete_grace_seconds: Option<u64>,

    /// A continuous run waits out a store outage, never giving up: this is the longest wait
    /// between two attempts (the wait starts at a second and doubles up to it) [default: 30]
    #[arg(long, value_name = "SECONDS")]
    pub max_retry_wait_seconds: Option<u64>,
}

fn parse_start(value: &str) -> Result<StartAt, String> {
    value
        .parse()
        .map_err(|e: mystira_dual_write::replicate::BadStart| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    Auto,
    ChangeFeed,
    Watermark,
}

pub async fn run(args: &ReplicateArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let defaults = ReplicateConfig::default();
    let config = ReplicateConfig {
        mode: match args.mode {
            ModeArg::Auto => ReplicationMode::Auto,
            ModeArg::ChangeFeed => ReplicationMode::ChangeFeed,
            ModeArg::Watermark => ReplicationMode::Watermark,
        },
        feed_mode: if args.all_versions_and_deletes {
            FeedMode::AllVersionsAndDeletes
        } else {
            FeedMode::LatestVersion
        },
        start: args.start.unwrap_or_default(),
        once: args.once,
        apply_deletes: args.apply_deletes,
        poll: args.poll_ms.map_or(defaults.poll, Duration::from_millis),
        workers: args.workers.unwrap_or(defaults.workers).max(1),
        page_size: args.page_size.unwrap_or(defaults.page_size).max(1),
        lease: args
            .lease_seconds
            .map_or(defaults.lease, Duration::from_secs),
        overlap: args
            .overlap_seconds
            .map_or(defaults.overlap, Duration::from_secs),
        probe_every: match args.probe_seconds {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => defaults.probe_every,
        },
        delete_check_every: match args.delete_check_seconds {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => defaults.delete_check_every,
        },
        delete_grace: args
            .delete_grace_seconds
            .map_or(defaults.delete_grace, Duration::from_secs),
        outage_backoff_cap: args
            .max_retry_wait_seconds
            .map_or(defaults.outage_backoff_cap, |s| {
                Duration::from_secs(s.max(1))
            }),
        ..defaults
    };
    if config.feed_mode == FeedMode::AllVersionsAndDeletes && config.start != StartAt::Now {
        // The service refuses it (400); say why before connecting.
        anyhow::bail!(ConfigError::Usage(
            "the all-versions-and-deletes feed cannot start from the beginning or a point in \
             time: pass --start now (right after a backfill)"
                .into()
        ));
    }
    let store = source::connect_cosmos(&args.cosmos, settings).await?;
    let pool = database::prepared_pool(settings, config.workers as u32 * 2 + 2).await?;
    // a continuous run keeps a heartbeat (`--once` is a one-off)
    let heartbeat = if config.once {
        None
    } else {
        let mode = serde_json::to_value(config.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
        let id = this_process(WorkerKind::Replicate, mode.as_deref());
        Some(Heartbeat::start(&pool, id).await)
    };
    let config = ReplicateConfig {
        health: heartbeat
            .as_ref()
            .map(Heartbeat::health)
            .unwrap_or_default(),
        ..config
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let signals = tokio::spawn(async move {
        stop::stop_signal().await;
        tracing::info!("stop requested: finishing the current page and releasing leases");
        let _ = stop_tx.send(true);
    });

    let last_log = Mutex::new(Instant::now());
    let report = run_replication(&pool, &store, &config, stop_rx, &|report| {
        log_progress(&last_log, report);
    })
    .await;
    if let Some(heartbeat) = heartbeat {
        heartbeat.stop().await;
    }
    let report = report.context("replication stopped")?;
    signals.abort();
    pool.close().await;
    Ok(outcome(&report))
}

/// A log line per container every few seconds (and at the end of a `--once` run).
fn log_progress(last: &Mutex<Instant>, report: &ReplicateReport) {
    let mut last = last
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if last.elapsed() < Duration::from_secs(5) && report.cycles > 1 {
        return;
    }
    *last = Instant::now();
    for (container, c) in &report.containers {
        tracing::info!(
            container,
            cycles = report.cycles,
            read = c.counts.read,
            written = c.counts.written,
            unchanged = c.counts.unchanged,
            quarantined = c.counts.quarantined,
            lag_seconds = c.lag_seconds,
            newest_change_age_seconds = c.newest_change_age_seconds,
            "replication progress"
        );
    }
}

fn outcome(report: &ReplicateReport) -> Outcome {
    let reconciled = report.reconciles();
    let mode = match report.mode {
        ReplicationMode::ChangeFeed => match report.feed_mode {
            FeedMode::AllVersionsAndDeletes => "change feed (all versions and deletes)",
            _ => "change feed",
        },
        ReplicationMode::Auto => match report.feed_mode {
            FeedMode::AllVersionsAndDeletes => {
                "change feed (all versions and deletes; auto: _ts watermark where it disagrees)"
            }
            _ => "change feed (auto: _ts watermark where it disagrees)",
        },
        ReplicationMode::Watermark => "_ts watermark",
    };
    let mut human = format!(
        "replicated from the {mode} in {:.1} s ({} cycles{})\n",
        report.elapsed_seconds,
        report.cycles,
        if report.stopped { ", stopped" } else { "" }
    );
    human.push_str(&format!(
        "  {:<15} {:>8} {:>8} {:>9} {:>11} {:>7} {:>9} {:>12}\n",
        "container", "read", "written", "unchanged", "quarantined", "ranges", "lag s", "newest s"
    ));
    let secs = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |s| format!("{s:.0}"));
    for (container, c) in &report.containers {
        human.push_str(&format!(
            "  {:<15} {:>8} {:>8} {:>9} {:>11} {:>7} {:>9} {:>12}\n",
            container,
            c.counts.read,
            c.counts.written,
            c.counts.unchanged,
            c.counts.quarantined,
            c.ranges_served,
            secs(c.lag_seconds),
            secs(c.newest_change_age_seconds),
        ));
    }
    for (container, d) in &report.deletes {
        if d.missing_from_cosmos > 0 {
            human.push_str(&format!(
                "  {container}: {} documents are gone from Cosmos; {}\n",
                d.missing_from_cosmos,
                if report.apply_deletes {
                    format!(
                        "{} deleted, {} kept (newer version)",
                        d.applied, d.superseded
                    )
                } else {
                    "not deleted (pass --apply-deletes)".to_owned()
                }
            ));
        }
    }
    // the cross-check of the change feed against `_ts` probes
    let feed_disagreements = report.feed_disagreements();
    for (container, c) in &report.containers {
        if c.feed_disagreements == 0 && c.fallback_ranges == 0 {
            continue;
        }
        if report.mode == ReplicationMode::Auto {
            human.push_str(&format!(
                "  {container}: the change feed disagreed with a _ts probe ({} documents it \
                 never delivered) or could not be read; {} ranges were read from the _ts \
                 watermark instead\n",
                c.feed_missing, c.fallback_ranges
            ));
        } else {
            human.push_str(&format!(
                "THE CHANGE FEED OF {container} DISAGREES WITH A _ts PROBE: {} documents changed \
                 in Cosmos that it never delivered are not in PostgreSQL (`--mode auto` reads \
                 such ranges from the _ts watermark)\n",
                c.feed_missing
            ));
        }
    }
    if !reconciled {
        human.push_str("COUNTS DO NOT RECONCILE: some documents are not accounted for\n");
    }
    let quarantined: u64 = report
        .containers
        .values()
        .map(|c| c.counts.quarantined)
        .sum();
    if quarantined > 0 {
        human.push_str(&format!(
            "{quarantined} documents are in quarantine: `mystira-users quarantine list` shows why\n"
        ));
    }
    // a disagreement the mode did not work around means documents are missing
    let missed = feed_disagreements > 0 && report.mode == ReplicationMode::ChangeFeed;
    let exit = if !reconciled {
        Exit::Failure
    } else if report.unapplied_deletes() > 0 || missed {
        Exit::Attention
    } else {
        Exit::Ok
    };
    Outcome {
        exit,
        human,
        json: json!({
            "mode": report.mode,
            "feed_mode": report.feed_mode,
            "owner": report.owner,
            "cycles": report.cycles,
            "stopped": report.stopped,
            "elapsed_seconds": report.elapsed_seconds,
            "reconciled": reconciled,
            "containers": report.containers,
            "deletes": report.deletes,
            "apply_deletes": report.apply_deletes,
            "unapplied_deletes": report.unapplied_deletes(),
            "feed_disagreements": feed_disagreements,
            "feed_missing": report.containers.values().map(|c| c.feed_missing).sum::<u64>(),
            "fallback_ranges": report.containers.values().map(|c| c.fallback_ranges).sum::<u64>(),
        }),
    }
}
