//! `mystira-users quarantine list|show|retry`: what could not be migrated, and why.

use anyhow::Context as _;
use clap::Subcommand;
use mystira_postgres::bookkeeping::{self, QuarantineEntry};
use serde_json::json;

use super::{Outcome, database};
use crate::config::Settings;
use crate::exit::Exit;

/// `mystira-users quarantine ...`
#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined documents: container, id, reason code and message (never values).
    List {
        /// Only this container (Accounts, UserProfiles, PendingSignups)
        #[arg(long)]
        container: Option<String>,
        /// Only this reason code (e.g. invalid_email)
        #[arg(long)]
        reason: Option<String>,
        /// Include entries already resolved by a later migration or retry
        #[arg(long)]
        all: bool,
        /// At most this many entries
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Show one quarantined document's entry; with --show-document, the raw document too
    /// (personal data: print it only where that is allowed).
    Show {
        container: String,
        document_id: String,
        #[arg(long)]
        show_document: bool,
    },
    /// Map the quarantined documents again with the current code and write the ones that now
    /// pass; the rest stay quarantined with their new reason.
    Retry {
        #[arg(long)]
        container: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn run(command: &QuarantineCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    let pool = database::prepared_pool(settings, 4).await?;
    let outcome = match command {
        QuarantineCommand::List {
            container,
            reason,
            all,
            limit,
        } => {
            let entries = bookkeeping::list_quarantine(
                &pool,
                container.as_deref(),
                reason.as_deref(),
                *all,
                *limit,
            )
            .await
            .context("cannot read the quarantine")?;
            list(&entries)
        }
        QuarantineCommand::Show {
            container,
            document_id,
            show_document,
        } => {
            let found = bookkeeping::quarantined_document(&pool, container, document_id)
                .await
                .context("cannot read the quarantine")?;
            match found {
                None => Outcome {
                    exit: Exit::Failure,
                    human: format!("no quarantine entry for {container}/{document_id}\n"),
                    json: json!({ "found": false }),
                },
                Some((entry, document)) => {
                    let mut human = describe(&entry);
                    if *show_document {
                        human
                            .push_str(&serde_json::to_string_pretty(&document).unwrap_or_default());
                        human.push('\n');
                    } else {
                        human.push_str(
                            "(the document holds personal data: --show-document prints it)\n",
                        );
                    }
                    let document = show_document.then_some(document);
                    Outcome {
                        exit: Exit::Ok,
                        human,
                        json: json!({ "found": true, "entry": entry, "document": document }),
                    }
                }
            }
        }
        QuarantineCommand::Retry { container, reason } => {
            let report = mystira_copy::quarantine::retry_quarantined(
                &pool,
                container.as_deref(),
                reason.as_deref(),
            )
            .await
            .context("the retry stopped")?;
            Outcome {
                exit: if report.still_quarantined + report.not_retryable == 0 {
                    Exit::Ok
                } else {
                    Exit::Attention
                },
                human: format!(
                    "retried {}: {} now migrated, {} still quarantined, {} malformed lines to fix in their files\n",
                    report.retried, report.resolved, report.still_quarantined, report.not_retryable
                ),
                json: json!(report),
            }
        }
    };
    pool.close().await;
    Ok(outcome)
}

fn list(entries: &[QuarantineEntry]) -> Outcome {
    let mut human = format!("{} quarantined documents\n", entries.len());
    for e in entries {
        human.push_str(&format!(
            "  {:<15} {:<40} {:<24} {}\n",
            e.container, e.document_id, e.reason_code, e.message
        ));
    }
    Outcome {
        // quarantined documents are accounted for, but someone should look at them
        exit: if entries.iter().any(|e| e.resolved_at.is_none()) {
            Exit::Attention
        } else {
            Exit::Ok
        },
        human,
        json: json!({ "entries": entries }),
    }
}

fn describe(e: &QuarantineEntry) -> String {
    format!(
        "container:   {}\ndocument id: {}\nreason:      {}\nmessage:     {}\nfirst seen:  {}\nlast seen:   {}\nattempts:    {}\nresolved:    {}\n",
        e.container,
        e.document_id,
        e.reason_code,
        e.message,
        e.first_seen_at,
        e.last_seen_at,
        e.attempts,
        e.resolved_at
            .map_or_else(|| "no".to_owned(), |t| t.to_string()),
    )
}
