//! `mystira-users journal status|replay`: the retry journal of phase 1 (writes Cosmos took
//! and PostgreSQL has not yet), in the table and in this machine's local journal files.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use mystira_dual_write::journal::{FileJournal, ReplayReport, replay_files, replay_table};
use mystira_postgres::journal;
use serde_json::json;

use mystira_cosmos_store::CosmosRepositories;

use super::{Outcome, database, source};
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users journal`
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// How many writes wait in the journal table and in the local journal files, and since
    /// when. Exit code 3 when any do.
    Status {
        /// The local journal files' directory [default: /var/lib/mystira-users/journal as
        /// root, else ~/.local/share/mystira-users/journal]
        #[arg(long, env = "MYSTIRA_JOURNAL_DIR", value_name = "DIR")]
        journal_dir: Option<PathBuf>,
    },
    /// Apply every due entry of the journal table and every local journal file no running
    /// process holds, through the backfill's version guard (idempotent; safe beside running
    /// routers). With a Cosmos account configured, each upsert applies the document as Cosmos
    /// holds it now (the newest, even within the same second); without one, the journalled
    /// copy under the version guard alone. Exit code 0 when nothing is left, 3 when entries
    /// wait (deferred after a failure, or held by a running process).
    Replay {
        #[command(flatten)]
        cosmos: super::source::CosmosArgs,
        /// The local journal files' directory [default: /var/lib/mystira-users/journal as
        /// root, else ~/.local/share/mystira-users/journal]
        #[arg(long, env = "MYSTIRA_JOURNAL_DIR", value_name = "DIR")]
        journal_dir: Option<PathBuf>,
    },
}

fn journal_dir(flag: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(dir) => Ok(dir.clone()),
        None => {
            FileJournal::default_dir().context("no default journal directory: pass --journal-dir")
        }
    }
}

pub async fn run(command: &JournalCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    let pool = database::prepared_pool(settings, 4).await?;
    let (dir, replayed) = match command {
        JournalCommand::Status { journal_dir: d } => (journal_dir(d)?, None),
        JournalCommand::Replay {
            journal_dir: d,
            cosmos,
        } => {
            let dir = journal_dir(d)?;
            let files = FileJournal::open(&dir).context("cannot open the journal directory")?;
            let repos = match source::cosmos_endpoint(cosmos, settings) {
                Some(_) => {
                    let store = source::connect_cosmos(cosmos, settings).await?;
                    Some(
                        CosmosRepositories::open(&store)
                            .await
                            .context("cannot open the Cosmos containers")?,
                    )
                }
                None => {
                    tracing::warn!(
                        "no Cosmos account configured: replaying journalled copies as they are"
                    );
                    None
                }
            };
            let current = repos.as_ref().map(|r| &r.writer);
            let mut report = ReplayReport::default();
            report.add(
                &replay_files(&pool, &files, current)
                    .await
                    .context("replaying journal files failed")?,
            );
            report.add(
                &replay_table(&pool, 200, current)
                    .await
                    .context("replaying the journal failed")?,
            );
            (dir, Some(report))
        }
    };
    let table = journal::depth(&pool)
        .await
        .context("cannot read the journal")?;
    let files = FileJournal::open(&dir)
        .and_then(|f| f.pending())
        .context("cannot read the journal directory")?;
    // a file kept as damaged needs an operator: the journal is not empty while one is there
    let left = table.entries as u64 + files.records + files.damaged_files;
    let mut human = String::new();
    if let Some(r) = &replayed {
        human.push_str(&format!(
            "replayed: {} applied, {} deferred, {} files done, {} torn lines skipped, {} files \
             kept as damaged\n",
            r.applied, r.deferred, r.files_done, r.torn_lines, r.damaged_files
        ));
    }
    human.push_str(&format!(
        "journal table: {} entries{}\nlocal files in {}: {} records in {} files, {} kept as \
         damaged (*.jsonl.damaged)\n",
        table.entries,
        table
            .oldest
            .map(|t| format!(", oldest enqueued {t}"))
            .unwrap_or_default(),
        dir.display(),
        files.records,
        files.files,
        files.damaged_files
    ));
    Ok(Outcome {
        exit: if left == 0 { Exit::Ok } else { Exit::Attention },
        human,
        json: json!({ "replayed": replayed, "table": table, "files": files, "dir": dir }),
    })
}
