//! `mystira-users cosmos export|import`: export files in and out of a Cosmos account.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use mystira_cosmos_store::{export_dir, import_dir};
use serde_json::json;

use super::source::CosmosArgs;
use super::{Outcome, source};
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users cosmos ...`
#[derive(Debug, Subcommand)]
pub enum CosmosCommand {
    /// Dump the Accounts, UserProfiles and PendingSignups containers into export files.
    Export {
        #[command(flatten)]
        cosmos: CosmosArgs,
        /// Directory to write <Container>.jsonl and manifest.json to (created)
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Load export files into a Cosmos account, creating the database and containers (with
    /// their partition keys) when missing; a malformed line is reported and skipped.
    Import {
        #[command(flatten)]
        cosmos: CosmosArgs,
        /// Directory of export files
        #[arg(long, value_name = "DIR")]
        export_dir: PathBuf,
        /// Documents written concurrently
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

pub async fn run(command: &CosmosCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    match command {
        CosmosCommand::Export { cosmos, out } => {
            let store = source::connect_cosmos(cosmos, settings).await?;
            let counts = export_dir(&store, out).await.context("the export failed")?;
            let mut human = format!("exported to {}\n", out.display());
            for (container, n) in &counts {
                human.push_str(&format!("  {container:<15} {n:>10}\n"));
            }
            Ok(Outcome {
                exit: Exit::Ok,
                human,
                json: json!({ "out": out, "documents": counts }),
            })
        }
        CosmosCommand::Import {
            cosmos,
            export_dir: dir,
            concurrency,
        } => {
            let store = source::connect_cosmos(cosmos, settings).await?;
            let counts = import_dir(&store, dir, *concurrency)
                .await
                .context("the import failed")?;
            let rejected: usize = counts.iter().map(|(_, c)| c.rejected.len()).sum();
            let mut human = format!(
                "imported {} into {}\n",
                dir.display(),
                store.database_name()
            );
            for (container, c) in &counts {
                human.push_str(&format!(
                    "  {container:<15} {:>10} imported {:>6} rejected\n",
                    c.imported,
                    c.rejected.len()
                ));
                for line in &c.rejected {
                    human.push_str(&format!("    {line}\n"));
                }
            }
            Ok(Outcome {
                // a line that could not be imported needs attention, the rest is done
                exit: if rejected == 0 {
                    Exit::Ok
                } else {
                    Exit::Attention
                },
                human,
                json: json!({ "database": store.database_name(), "containers": counts }),
            })
        }
    }
}
