//! `mystira-users status`: the whole migration at a glance (see `mystira_dual_write::status`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use mystira_dual_write::journal::FileJournal;
use mystira_dual_write::status;
use serde_json::json;

use super::phase::{GateArgs, gate_config};
use super::{Outcome, database};
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users status`
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// This machine's local journal files' directory [default: /var/lib/mystira-users/journal
    /// as root, else ~/.local/share/mystira-users/journal]
    #[arg(long, env = "MYSTIRA_JOURNAL_DIR", value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,

    #[command(flatten)]
    pub gates: GateArgs,
}

pub async fn run(args: &StatusArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let gates = gate_config(&args.gates, settings)?;
    let dir = match &args.journal_dir {
        Some(dir) => Some(dir.clone()),
        None => FileJournal::default_dir(),
    };
    // a status only reads: a journal directory that does not exist holds nothing, and is not
    // created here
    let files = match dir {
        Some(dir) if dir.is_dir() => {
            Some(FileJournal::open(&dir).context("cannot open the journal directory")?)
        }
        _ => None,
    };
    let pool = database::prepared_pool(settings, 2).await?;
    let report = status::collect(&pool, &gates, files.as_ref())
        .await
        .context("cannot read the migration's status")?;
    pool.close().await;
    Ok(Outcome {
        exit: if report.attention.is_empty() {
            Exit::Ok
        } else {
            Exit::Attention
        },
        human: report.summary(),
        json: json!(report),
    })
}
