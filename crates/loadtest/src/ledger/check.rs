//! The check: the ledger's expectations against both stores, once the journal and the outbox
//! have drained.

use std::path::Path;

use mystira_cosmos_store::CosmosRepositories;
use mystira_postgres::{
    PgAccountRepository, PgBadgeRepository, PgCompletedScenarioRepository,
    PgPendingSignupRepository, PgProfileRepository, PgSubscriptionRepository,
};
use sqlx::PgPool;
use uuid::Uuid;

use super::expectations::{AckedWrite, Expectation, read_ledger};
use super::held::{Reader, pg_document_duplicates, raw_duplicates};
use super::record::LedgerError;
use super::report::{Backlog, Duplicate, LedgerReport, LostWrite, Store, Verdict};

/// The local journal files waiting in `dir` (none when it does not exist: it is not created).
pub(super) fn local_journal(
    dir: &Path,
) -> Result<mystira_dual_write::journal::FileDepth, LedgerError> {
    if !dir.is_dir() {
        return Ok(mystira_dual_write::journal::FileDepth::default());
    }
    Ok(mystira_dual_write::journal::FileJournal::open(dir)?.pending()?)
}

/// Compares the ledger at `ledger` with both stores (see the module docs). `journal_dir` is
/// this machine's local journal directory (the routers' `--journal-dir`). Run it after
/// recovery, once the retry journal (table and files) and the outbox are empty: the verdict is
/// [`Verdict::NotDrained`] before, and [`Verdict::NothingToCheck`] for a ledger without an
/// acknowledged write.
pub async fn check(
    ledger: &Path,
    pool: &PgPool,
    cosmos: &CosmosRepositories,
    journal_dir: &Path,
) -> Result<LedgerReport, LedgerError> {
    let journal = mystira_postgres::journal::depth(pool).await?;
    let outbox = mystira_postgres::outbox::depth(pool).await?;
    let files = local_journal(journal_dir)?;
    let (expectations, mut report) = read_ledger(ledger)?;
    report.backlog = Backlog {
        journal_entries: journal.entries,
        outbox_rows: outbox.rows,
        journal_dir: journal_dir.to_owned(),
        journal_files: files.files,
        journal_file_records: files.records,
    };
    report.drained = report.backlog.is_empty();
    report.aggregates = expectations.len() as u64;

    let pg_accounts = PgAccountRepository::new(pool.clone());
    let pg_subscriptions = PgSubscriptionRepository::new(pool.clone());
    let pg_completed = PgCompletedScenarioRepository::new(pool.clone());
    let pg_profiles = PgProfileRepository::new(pool.clone());
    let pg_badges = PgBadgeRepository::new(pool.clone());
    let pg_signups = PgPendingSignupRepository::new(pool.clone());
    let readers = [
        (
            Store::Postgres,
            Reader {
                accounts: &pg_accounts,
                subscriptions: &pg_subscriptions,
                completed: &pg_completed,
                profiles: &pg_profiles,
                badges: &pg_badges,
                signups: &pg_signups,
            },
        ),
        (
            Store::Cosmos,
            Reader {
                accounts: &cosmos.accounts,
                subscriptions: &cosmos.subscriptions,
                completed: &cosmos.completed_scenarios,
                profiles: &cosmos.profiles,
                badges: &cosmos.badges,
                signups: &cosmos.pending_signups,
            },
        ),
    ];

    for ((container, key), groups) in &expectations {
        let checked = groups.values().filter(|e| e.last_ack.is_some()).count() as u64;
        report.groups_checked += checked;
        for (store, reader) in &readers {
            let promised: Vec<(&String, &Expectation, &AckedWrite)> = groups
                .iter()
                .filter_map(|(g, e)| e.last_ack.as_ref().map(|a| (g, e, a)))
                .filter(|(_, _, a)| a.promises(*store))
                .collect();
            let mut held = reader.held(container, *key).await?;
            if *store == Store::Cosmos
                && let Some(kind) = mystira_cosmos_codec::codec::Container::from_name(container)
                && let Some(doc) = cosmos.writer.read(kind, *key).await?
            {
                for (what, n) in raw_duplicates(container, &doc) {
                    if !held.duplicated.iter().any(|(w, _)| *w == what) {
                        held.duplicated.push((what, n));
                    }
                }
            }
            for (what, count) in held.duplicated {
                report.duplicates.push(Duplicate {
                    store: *store,
                    container: container.clone(),
                    key: *key,
                    what,
                    count,
                });
            }
            for (group, e, ack) in promised {
                report.promises_checked += 1;
                let found = held.groups.get(group);
                if found == Some(&ack.digest) {
                    continue;
                }
                if found.is_some_and(|d| e.later_unacked.contains(d)) {
                    report.met_by_unacknowledged += 1;
                    continue;
                }
                report.lost.push(LostWrite {
                    store: *store,
                    container: container.clone(),
                    key: *key,
                    group: group.clone(),
                    ack_seq: ack.seq,
                    op: ack.op.clone(),
                    phase: ack.phase,
                    reason: if found.is_some() {
                        "differs"
                    } else {
                        "missing"
                    },
                });
            }
        }
    }

    let keys: Vec<Uuid> = expectations.keys().map(|(_, k)| *k).collect();
    for (container, key, count) in pg_document_duplicates(pool, &keys).await? {
        report.duplicates.push(Duplicate {
            store: Store::Postgres,
            container,
            key,
            what: "document_id".into(),
            count: count as u64,
        });
    }
    report.verdict = if report.groups_checked == 0 {
        Verdict::NothingToCheck
    } else if !report.drained {
        Verdict::NotDrained
    } else if report.lost.is_empty() && report.duplicates.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    report.passed = report.verdict == Verdict::Pass;
    Ok(report)
}
