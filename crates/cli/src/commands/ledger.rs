//! `mystira-users ledger check`: compares a load generator's ledger with both stores (the
//! logic is in `mystira_migrate::ledger`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use mystira_cosmos_client::CosmosRepositories;
use mystira_migrate::ledger::check;

use super::{Outcome, db, source};
use crate::cli::CosmosArgs;
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users ledger`
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Check that every acknowledged write of the ledger is in the store(s) its phase promised
    /// (0: Cosmos, 1 and 2: both, 3: PostgreSQL) and that nothing is duplicated (badges per
    /// profile and configuration, completions per account and scenario, accounts per auth0
    /// id, rows per document).
    ///
    /// Run it after recovery: once the retry journal is replayed and the outbox drained (it
    /// reports their depth first; a write still waiting there is reported as lost). Lost and
    /// duplicated writes are named by container, key and field group, never by value. Exit
    /// code 0 when nothing is lost or duplicated, 1 otherwise.
    Check {
        /// The ledger file `loadgen --ledger` wrote
        #[arg(value_name = "LEDGER")]
        ledger: PathBuf,

        #[command(flatten)]
        cosmos: CosmosArgs,

        /// Lost or duplicated writes printed at most (the JSON output has all of them)
        #[arg(long, default_value_t = 50)]
        max_items: usize,
    },
}

pub async fn run(command: &LedgerCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    let LedgerCommand::Check {
        ledger,
        cosmos,
        max_items,
    } = command;
    let pool = db::prepared_pool(settings, 4).await?;
    let store = source::connect_cosmos(cosmos, settings).await?;
    let repos = CosmosRepositories::open(&store)
        .await
        .context("cannot open the Cosmos containers")?;
    let report = check(ledger, &pool, &repos)
        .await
        .context("the ledger check could not run")?;
    Ok(Outcome {
        exit: if report.passed {
            Exit::Ok
        } else {
            Exit::Failure
        },
        human: report.summary(*max_items),
        json: serde_json::to_value(&report).context("cannot encode the report")?,
    })
}
