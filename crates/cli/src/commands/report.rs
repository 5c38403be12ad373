//! `mystira-users report`: the sign-off sheet (see `mystira_migrate::report`), Markdown for a
//! terminal or a ticket, `--json` for scripts.

use anyhow::{Context as _, bail};
use clap::Args;

use super::{Outcome, database};
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users report`
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Example document ids listed per reason and per note code at most
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub examples: usize,
}

pub async fn run(args: &ReportArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let (url, source) = database::database_url(settings).await?;
    tracing::debug!(source, "database chosen");
    // a report reads: it never creates the database or applies the schema, so a wrong url is
    // an error instead of an empty sheet
    let unreachable = "cannot connect to the database (if nothing was migrated into it yet, \
                       `mystira-users migrate` creates it)";
    // one direct connection first: it fails at once with the server's reason (refused, no such
    // database, authentication), where a pool retries until its timeout and then only says so
    let probe = mystira_postgres::schema::connect_one(&url)
        .await
        .context(unreachable)?;
    let _ = sqlx::Connection::close(probe).await;
    let pool = mystira_postgres::connect(&url, 2)
        .await
        .context(unreachable)?;
    let migrations = mystira_postgres::status(&pool)
        .await
        .context("cannot read the applied schema migrations")?;
    let pending = migrations.iter().filter(|m| !m.applied).count();
    if pending > 0 {
        pool.close().await;
        bail!(
            "the database is not migrated ({pending} of {} schema migrations pending): \
             run `mystira-users db migrate` or `mystira-users migrate` first",
            migrations.len()
        );
    }
    let report = mystira_migrate::report::build(&pool, args.examples)
        .await
        .context("cannot read the migration records")?;
    pool.close().await;
    Ok(Outcome {
        // the sheet is information: what it shows is for the operator to judge
        exit: Exit::Ok,
        human: report.to_markdown(),
        json: serde_json::to_value(&report).context("cannot encode the report")?,
    })
}
