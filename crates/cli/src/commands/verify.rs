//! `mystira-users verify [--repair]`: does PostgreSQL hold what the source holds?

use clap::Args;
use mystira_cosmos_store::CosmosRepositories;
use mystira_migrate::verify::towards_cosmos::repair_towards_cosmos;
use mystira_migrate::{DocumentSource, Outcome as VerifyOutcome, RepairOptions, VerifyOptions};
use serde_json::json;

use super::source::SourceArgs;
use super::{Outcome, database, source};
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    /// Print the differing values too (personal data: only where that is allowed)
    #[arg(long)]
    pub show_values: bool,

    /// Re-copy drifted documents from the source, then verify again
    #[arg(long)]
    pub repair: bool,

    /// With --repair: also delete rows the source does not have
    #[arg(long, requires = "repair")]
    pub delete_extra: bool,

    /// Also encode every PostgreSQL aggregate back into the app's document shape and compare
    /// it field by field with its source document (differences a note or a documented
    /// normalisation does not excuse are drift of kind round_trip)
    #[arg(long)]
    pub round_trip: bool,

    /// Only this slice of the key space (first byte of the key, 0-255), e.g. 0-127: lets
    /// several processes split one verification
    #[arg(long, value_name = "FIRST-LAST", value_parser = parse_buckets)]
    pub buckets: Option<(u8, u8)>,

    /// Against a live Cosmos source: how many times a document found differing is read again
    /// from both sides (with a short pause) before it is reported; what compares equal was a
    /// write in flight. 0 disables the rechecks
    #[arg(long, default_value_t = 3)]
    pub recheck_rounds: u32,

    /// Drift items printed at most (the JSON output has all of them)
    #[arg(long, default_value_t = 50)]
    pub max_items: usize,

    /// cosmos-to-pg: PostgreSQL must hold what the source holds (repairs re-copy from the
    /// source). pg-to-cosmos: a live Cosmos account must hold what PostgreSQL holds (before a
    /// rollback from phase 2; repairs deliver PostgreSQL's state through the outbox relay, and
    /// --delete-extra removes documents PostgreSQL does not have)
    #[arg(long, value_enum, default_value_t = VerifyDirection::CosmosToPg)]
    pub direction: VerifyDirection,
}

/// Which store is the reference in `verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyDirection {
    CosmosToPg,
    PgToCosmos,
}

fn parse_buckets(raw: &str) -> Result<(u8, u8), String> {
    let (a, b) = raw
        .split_once('-')
        .ok_or("expected FIRST-LAST, e.g. 0-127")?;
    let first: u8 = a.trim().parse().map_err(|_| "FIRST must be 0-255")?;
    let last: u8 = b.trim().parse().map_err(|_| "LAST must be 0-255")?;
    if first > last {
        return Err("FIRST must not be after LAST".into());
    }
    Ok((first, last))
}

pub async fn run(args: &VerifyArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    // an unreachable source or database is "could not verify" (2), not "drift" (1)
    let source = match source::document_source(&args.source, settings).await {
        Ok(s) => s,
        Err(e) => return Ok(could_not_verify(&format!("{e:#}"))),
    };
    let pool = match database::prepared_pool(settings, 8).await {
        Ok(p) => p,
        Err(e) => return Ok(could_not_verify(&format!("{e:#}"))),
    };
    let (first_bucket, last_bucket) = args.buckets.unwrap_or((0, 255));
    let options = VerifyOptions {
        show_values: args.show_values,
        round_trip: args.round_trip,
        recheck_rounds: args.recheck_rounds,
        first_bucket,
        last_bucket,
        // recorded in the run: the phase gates tell the directions apart by it
        direction: match args.direction {
            VerifyDirection::CosmosToPg => mystira_postgres::phase::VerifyDirection::CosmosToPg,
            VerifyDirection::PgToCosmos => mystira_postgres::phase::VerifyDirection::PgToCosmos,
        },
        ..VerifyOptions::default()
    };
    if args.direction == VerifyDirection::PgToCosmos {
        let outcome = towards_cosmos(args, settings, source.as_ref(), &pool, &options).await;
        pool.close().await;
        return Ok(outcome);
    }
    let outcome = if args.repair {
        let repair = RepairOptions {
            delete_extra: args.delete_extra,
            ..RepairOptions::default()
        };
        match mystira_migrate::repair(&pool, source.as_ref(), &options, &repair).await {
            Ok(report) => Outcome {
                exit: exit_for(report.after.outcome),
                human: report.summary(args.max_items),
                json: json!(report),
            },
            Err(e) => could_not_verify(&e.to_string()),
        }
    } else {
        match mystira_migrate::run_verify(&pool, source.as_ref(), &options).await {
            Ok(report) => Outcome {
                exit: exit_for(report.outcome),
                human: report.summary(args.max_items),
                json: json!(report),
            },
            Err(e) => could_not_verify(&e.to_string()),
        }
    };
    pool.close().await;
    Ok(outcome)
}

fn exit_for(outcome: VerifyOutcome) -> Exit {
    match outcome {
        VerifyOutcome::Clean => Exit::Ok,
        VerifyOutcome::Drift => Exit::Failure,
        VerifyOutcome::CouldNotVerify => Exit::Usage,
    }
}

/// Exit code 2: the comparison itself could not be made (this is not a statement about drift).
fn could_not_verify(error: &str) -> Outcome {
    tracing::error!(error, "could not verify");
    Outcome {
        exit: Exit::Usage,
        human: format!("could not verify: {error}\n"),
        json: json!({ "outcome": VerifyOutcome::CouldNotVerify, "error": error }),
    }
}

/// `--direction pg-to-cosmos`: the same comparison with a live Cosmos account as the source,
/// read from PostgreSQL's side; repairs go through the outbox relay.
async fn towards_cosmos(
    args: &VerifyArgs,
    settings: &Settings,
    source: &dyn DocumentSource,
    pool: &sqlx::PgPool,
    options: &VerifyOptions,
) -> Outcome {
    if args.source.export_dir.is_some() {
        return could_not_verify(
            "--direction pg-to-cosmos compares with a live Cosmos account, not export files: \
             pass --cosmos-endpoint (or COSMOS_ENDPOINT) instead of --export-dir",
        );
    }
    if !args.repair {
        return match mystira_migrate::run_verify(pool, source, options).await {
            Ok(report) => Outcome {
                exit: exit_for(report.outcome),
                human: format!(
                    "direction: pg-to-cosmos (Cosmos must hold what PostgreSQL holds; \
                                `extra` rows are missing in Cosmos)\n{}",
                    report.summary(args.max_items)
                ),
                json: json!({ "direction": "pg-to-cosmos", "report": report }),
            },
            Err(e) => could_not_verify(&e.to_string()),
        };
    }
    let repos = match source::connect_cosmos(&args.source.cosmos, settings).await {
        Ok(store) => match CosmosRepositories::open(&store).await {
            Ok(repos) => repos,
            Err(e) => return could_not_verify(&e.to_string()),
        },
        Err(e) => return could_not_verify(&format!("{e:#}")),
    };
    let repair = RepairOptions {
        delete_extra: args.delete_extra,
        ..RepairOptions::default()
    };
    let delivery = mystira_dual_write::relay::RelayDelivery {
        pool,
        writer: &repos.writer,
        config: mystira_dual_write::relay::RelayConfig::default(),
    };
    match repair_towards_cosmos(pool, source, &delivery, options, &repair).await {
        Ok(report) => Outcome {
            exit: exit_for(report.after.outcome),
            human: format!(
                "direction: pg-to-cosmos\n{}",
                report.summary(args.max_items)
            ),
            json: json!({ "direction": "pg-to-cosmos", "report": report }),
        },
        Err(e) => could_not_verify(&e.to_string()),
    }
}
