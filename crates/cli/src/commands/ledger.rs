//! `mystira-users ledger check`: compares a load generator's ledger with both stores (the
//! logic is in `mystira_loadtest::ledger`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use mystira_cosmos_store::CosmosRepositories;
use mystira_dual_write::journal::FileJournal;
use mystira_loadtest::ledger::{Verdict, check};

use super::source::CosmosArgs;
use super::{Outcome, database, source};
use crate::config::{ConfigError, Settings};
use crate::exit::Exit;

/// `mystira-users ledger`
#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Check that every acknowledged write of the ledger is in the store(s) its phase promised
    /// (0: Cosmos, 1 and 2: both, 3: PostgreSQL) and that nothing is duplicated (badges per
    /// profile and configuration, completions per account and scenario, accounts per auth0
    /// id, rows per document).
    ///
    /// Run it after recovery, once the retry journal is replayed and the outbox drained: it
    /// reports the depth of the journal table (migration.retry_journal), of the outbox
    /// (migration.outbox) and of this machine's local journal files (--journal-dir) first.
    /// Local journal files on other machines are not visible: run `journal status` there. Lost
    /// and duplicated writes are named by container, key and field group, never by value.
    ///
    /// Exit code 0 when every acknowledged write is where it belongs and nothing is
    /// duplicated; 4 when the ledger holds no acknowledged write (empty, or every call failed:
    /// nothing to check); else 3 when the journal table, the outbox or the local journal files
    /// still hold entries (the check proves nothing until they drain); else 1 when a write is
    /// lost or duplicated (also when the check could not run).
    Check {
        /// The ledger file `loadgen --ledger` wrote
        #[arg(value_name = "LEDGER")]
        ledger: PathBuf,

        /// This machine's local journal directory, as the routers use it [default:
        /// /var/lib/mystira-users/journal as root, else ~/.local/share/mystira-users/journal]
        #[arg(long, env = "MYSTIRA_JOURNAL_DIR", value_name = "DIR")]
        journal_dir: Option<PathBuf>,

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
        journal_dir,
        cosmos,
        max_items,
    } = command;
    let journal_dir = match journal_dir {
        Some(dir) => dir.clone(),
        None => FileJournal::default_dir().ok_or_else(|| {
            ConfigError::Usage(
                "no default journal directory (neither XDG_DATA_HOME nor HOME is set): pass \
                 --journal-dir"
                    .into(),
            )
        })?,
    };
    let pool = database::prepared_pool(settings, 4).await?;
    let store = source::connect_cosmos(cosmos, settings).await?;
    let repos = CosmosRepositories::open(&store)
        .await
        .context("cannot open the Cosmos containers")?;
    let report = check(ledger, &pool, &repos, &journal_dir)
        .await
        .context("the ledger check could not run")?;
    Ok(Outcome {
        exit: match report.verdict {
            Verdict::Pass => Exit::Ok,
            Verdict::Fail => Exit::Failure,
            Verdict::NotDrained => Exit::Attention,
            Verdict::NothingToCheck => Exit::NothingToCheck,
        },
        human: report.summary(*max_items),
        json: serde_json::to_value(&report).context("cannot encode the report")?,
    })
}
