//! `mystira-users cosmos export|import`: export files in and out of a Cosmos account.

use anyhow::Context as _;
use mystira_cosmos_store::{export_dir, import_dir};
use serde_json::json;

use super::{Outcome, source};
use crate::cli::CosmosCommand;
use crate::config::Settings;
use crate::exit::Exit;

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
