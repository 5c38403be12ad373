//! `mystira-users verify [--repair]`: does PostgreSQL hold what the source holds?

use mystira_migrate::{Outcome as VerifyOutcome, RepairOptions, VerifyOptions};
use serde_json::json;

use super::{Outcome, db, source};
use crate::cli::VerifyArgs;
use crate::config::Settings;
use crate::exit::Exit;

pub async fn run(args: &VerifyArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    // an unreachable source or database is "could not verify" (2), not "drift" (1)
    let source = match source::document_source(&args.source, settings).await {
        Ok(s) => s,
        Err(e) => return Ok(could_not_verify(&format!("{e:#}"))),
    };
    let pool = match db::prepared_pool(settings, 8).await {
        Ok(p) => p,
        Err(e) => return Ok(could_not_verify(&format!("{e:#}"))),
    };
    let (first_bucket, last_bucket) = args.buckets.unwrap_or((0, 255));
    let options = VerifyOptions {
        show_values: args.show_values,
        first_bucket,
        last_bucket,
        ..VerifyOptions::default()
    };
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
