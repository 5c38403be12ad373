//! `mystira-users generate`: a deterministic synthetic data set, as export files or straight
//! into a Cosmos account.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use mystira_cosmos_codec::generate::{GenerateOptions, write_export};
use serde_json::json;

use super::source::CosmosArgs;
use super::{Outcome, source};
use crate::config::{ConfigError, Settings};
use crate::exit::Exit;

/// `mystira-users generate`
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of accounts (each with 1-4 profiles, 0-10 badges per profile, ...)
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub accounts: u64,

    /// Seed: the same seed gives byte-identical files
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Share of documents (0.0-1.0) carrying a known problem (bad emails, legacy age groups,
    /// duplicate badges, orphan profiles, foreign types, ...)
    #[arg(long, default_value_t = 0.02, value_name = "SHARE")]
    pub dirty: f64,

    /// Directory to write the export files to (created)
    #[arg(long, value_name = "DIR", required_unless_present = "cosmos_endpoint")]
    pub out: Option<PathBuf>,

    /// Write straight into this Cosmos account instead (also `COSMOS_KEY`, ...)
    #[command(flatten)]
    pub cosmos: CosmosArgs,
}

pub async fn run(args: &GenerateArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    if !(0.0..=1.0).contains(&args.dirty) {
        anyhow::bail!(ConfigError::Usage(
            "--dirty must be between 0.0 and 1.0".into()
        ));
    }
    let started = std::time::Instant::now();
    let options = GenerateOptions {
        accounts: args.accounts,
        seed: args.seed,
        dirty: args.dirty,
    };
    // into an account: generate into a scratch directory, then import it
    let scratch = tempfile::Builder::new()
        .prefix("mystira-generate-")
        .tempdir()?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| scratch.path().to_path_buf());
    let summary = write_export(&out, &options)
        .with_context(|| format!("cannot write the data set to {}", out.display()))?;
    // documents the account cannot take (no value for the partition key) are listed, not lost
    let mut not_imported: Vec<String> = Vec::new();
    let imported_into = match (&args.out, &args.cosmos.cosmos_endpoint) {
        (None, Some(_)) => {
            let store = source::connect_cosmos(&args.cosmos, settings).await?;
            let counts = mystira_cosmos_store::import_dir(&store, &out, 16)
                .await
                .context("the import failed")?;
            not_imported = counts.into_iter().flat_map(|(_, c)| c.rejected).collect();
            Some(store.database_name().to_owned())
        }
        _ => None,
    };
    let seconds = started.elapsed().as_secs_f64();
    let per_container: serde_json::Map<String, serde_json::Value> = summary
        .documents
        .iter()
        .map(|(c, n)| (c.name().to_owned(), json!(n)))
        .collect();
    let target = imported_into.as_deref().map_or_else(
        || out.display().to_string(),
        |db| format!("Cosmos database {db}"),
    );
    let mut human = format!(
        "wrote {} documents ({} with a planted problem) for {} accounts to {target} in {seconds:.1} s\n",
        summary.total_documents, summary.dirty_documents, args.accounts,
    );
    for (container, n) in &summary.documents {
        human.push_str(&format!("  {:<15} {n:>10}\n", container.name()));
    }
    for line in &not_imported {
        human.push_str(&format!("not imported: {line}\n"));
    }
    Ok(Outcome {
        exit: if not_imported.is_empty() {
            Exit::Ok
        } else {
            Exit::Attention
        },
        human,
        json: json!({
            "out": args.out,
            "cosmos_database": imported_into,
            "accounts": args.accounts,
            "seed": args.seed,
            "dirty": args.dirty,
            "documents": per_container,
            "total_documents": summary.total_documents,
            "dirty_documents": summary.dirty_documents,
            "seconds": seconds,
            "not_imported": not_imported,
        }),
    })
}
