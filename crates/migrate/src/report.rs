//! The sign-off sheet (`mystira-users report`): what the backfill did and what PostgreSQL holds
//! now, for an operator to attach to the cutover decision.
//!
//! Every figure comes from PostgreSQL: the latest backfill run's counts (`migration.runs`, or the
//! job's live range counts while that run has none), rows per table, the open quarantine by
//! reason, the notes by code, and one derived check (accounts whose `UserProfileIds` list
//! disagrees with the profiles' `AccountId`). Only codes, counts and document ids are reported,
//! never values: the quarantined documents and the notes' `original` column hold personal data,
//! and the sheet is meant to be attached to tickets and mails. A document id that looks like an
//! email address is withheld too.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use mystira_copy::{CONTAINERS, ContainerCounts};

/// What the backfill counted for a container; `superseded` is 0 in runs that predate it.
pub type Counts = ContainerCounts;

/// The note whose `original` is an account's `UserProfileIds` list as stored (a comma-joined
/// string or an array), as the codec records it (`crates/cosmos-codec/src/codec/account.rs`).
pub const USER_PROFILE_IDS_NOTE: &str = "user_profile_ids_dropped";

/// The backfill's job name in `migration.runs` and `migration.work_ranges`.
const JOB: &str = "backfill";

/// The domain tables of each container's documents.
const TABLES: [(&str, &[&str]); 3] = [
    (
        "Accounts",
        &["accounts", "subscriptions", "completed_scenarios"],
    ),
    ("UserProfiles", &["user_profiles", "user_badges"]),
    ("PendingSignups", &["pending_signups"]),
];

/// The whole sheet. Field names are stable: scripts read the `--json` form.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub generated_at: DateTime<Utc>,
    /// The latest backfill run (by start time), if there was one.
    pub run: Option<RunSummary>,
    /// Per container (every container of the user domain, in copy order).
    pub containers: BTreeMap<String, ContainerReport>,
    /// Sums over the containers.
    pub totals: Counts,
    /// Open quarantine entries: container → reason code → count and examples.
    pub quarantine: BTreeMap<String, BTreeMap<String, Group>>,
    /// Notes (`migration.document_notes`): container → code → count and examples.
    pub notes: BTreeMap<String, BTreeMap<String, NoteGroup>>,
    /// Derived checks that no single note states.
    pub checks: Checks,
    /// How many example document ids each group lists at most.
    pub examples_per_group: usize,
}

/// The latest backfill run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunSummary {
    pub id: uuid::Uuid,
    /// `running`, `succeeded`, `failed`, `interrupted` or `abandoned`.
    pub status: String,
    pub source: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Where the counts come from: `run` (the run's recorded job totals, set when it ended) or
    /// `work_ranges` (the job's live range counts: the run has not recorded any, because it is
    /// still running or its process died).
    pub counts_from: String,
    /// Unfinished ranges of the job whose lease is live: some process is working on it now.
    pub live_leases: i64,
}

/// One container: the run's counts and the live state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContainerReport {
    /// The backfill's counts (zero when no run counted this container).
    pub counts: Counts,
    pub skipped_total: u64,
    pub reconciles: bool,
    /// Documents of the container in PostgreSQL now (`migration.document_versions`).
    pub documents_in_postgres: i64,
    /// Open quarantine entries of the container now.
    pub open_quarantine: i64,
    /// Rows per domain table filled from this container's documents, now.
    pub rows: BTreeMap<String, i64>,
}

/// A count with up to N example document ids.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Group {
    pub count: i64,
    pub examples: Vec<String>,
}

/// Notes of one code: how many, on how many documents, and example document ids.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NoteGroup {
    pub notes: i64,
    pub documents: i64,
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Checks {
    pub user_profile_ids: UserProfileIdsCheck,
}

/// Accounts whose `UserProfileIds` list (kept as the original of a `user_profile_ids` note)
/// disagrees with the profiles whose `AccountId` points at the account. `UserProfile.AccountId`
/// is the truth the migration keeps; a disagreement is a list the app let drift.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserProfileIdsCheck {
    /// The note code the check reads.
    pub note_code: String,
    /// Accounts in PostgreSQL whose document has the note (those are compared).
    pub accounts_checked: i64,
    /// Accounts in PostgreSQL whose document has no such note (not compared).
    pub accounts_without_note: i64,
    /// Accounts whose list and whose profiles differ.
    pub accounts_disagreeing: i64,
    /// (account, listed id) pairs where no profile with that id points at the account (it does
    /// not exist, or points at another account, or at none).
    pub listed_not_pointing: i64,
    /// Profiles pointing at an account whose list does not name them.
    pub pointing_not_listed: i64,
    /// Document ids of disagreeing accounts.
    pub examples: Vec<String>,
}

/// Builds the sheet from PostgreSQL. `examples` caps the example ids per group.
pub async fn build(pool: &PgPool, examples: usize) -> Result<Report, sqlx::Error> {
    let limit = i64::try_from(examples).unwrap_or(i64::MAX);
    let (run, run_counts) = latest_run(pool).await?;

    let mut containers = BTreeMap::new();
    let mut totals = Counts::default();
    for container in CONTAINERS {
        let counts = run_counts.get(container).cloned().unwrap_or_default();
        totals.add(&counts);
        let documents_in_postgres: i64 = sqlx::query_scalar(
            "select count(*) from migration.document_versions where container = $1",
        )
        .bind(container)
        .fetch_one(pool)
        .await?;
        let open_quarantine: i64 = sqlx::query_scalar(
            "select count(*) from migration.quarantine
             where container = $1 and resolved_at is null",
        )
        .bind(container)
        .fetch_one(pool)
        .await?;
        let mut rows = BTreeMap::new();
        for (c, tables) in TABLES {
            if c != container {
                continue;
            }
            for table in tables {
                // table names come from the constant above, never from input
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "select count(*) from {table}"
                )))
                .fetch_one(pool)
                .await?;
                rows.insert((*table).to_owned(), n);
            }
        }
        containers.insert(
            container.to_owned(),
            ContainerReport {
                skipped_total: counts.skipped.values().sum(),
                reconciles: counts.reconciles(),
                counts,
                documents_in_postgres,
                open_quarantine,
                rows,
            },
        );
    }

    Ok(Report {
        generated_at: Utc::now(),
        run,
        containers,
        totals,
        quarantine: quarantine_groups(pool, limit).await?,
        notes: note_groups(pool, limit).await?,
        checks: Checks {
            user_profile_ids: user_profile_ids_check(pool, limit).await?,
        },
        examples_per_group: examples,
    })
}

/// The latest backfill run and its per-container job totals.
async fn latest_run(
    pool: &PgPool,
) -> Result<(Option<RunSummary>, BTreeMap<String, Counts>), sqlx::Error> {
    type Row = (
        uuid::Uuid,
        String,
        String,
        DateTime<Utc>,
        Option<DateTime<Utc>>,
        serde_json::Value,
    );
    let row: Option<Row> = sqlx::query_as(
        "select id, status, source, started_at, finished_at, counts from migration.runs
         where job = $1 order by started_at desc, id desc limit 1",
    )
    .bind(JOB)
    .fetch_optional(pool)
    .await?;
    let Some((id, status, source, started_at, finished_at, counts)) = row else {
        return Ok((None, BTreeMap::new()));
    };
    let live_leases: i64 = sqlx::query_scalar(
        "select count(*) from migration.work_ranges
         where job = $1 and not done and lease_until > now()",
    )
    .bind(JOB)
    .fetch_one(pool)
    .await?;
    // the run records `{"process": .., "job": ..}` when it ends; "job" covers every process
    // and resumed attempt of the job
    let recorded: BTreeMap<String, Counts> = counts
        .get("job")
        .and_then(|j| serde_json::from_value(j.clone()).ok())
        .unwrap_or_default();
    let (counts_from, by_container) = if recorded.is_empty() {
        ("work_ranges", range_counts(pool).await?)
    } else {
        ("run", recorded)
    };
    Ok((
        Some(RunSummary {
            id,
            status,
            source,
            started_at,
            finished_at,
            counts_from: counts_from.to_owned(),
            live_leases,
        }),
        by_container,
    ))
}

/// The job's counts summed over its ranges, per container (what the run would record).
async fn range_counts(pool: &PgPool) -> Result<BTreeMap<String, Counts>, sqlx::Error> {
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "select unit, counts from migration.work_ranges where job = $1 order by unit, range_no",
    )
    .bind(JOB)
    .fetch_all(pool)
    .await?;
    let mut out: BTreeMap<String, Counts> = BTreeMap::new();
    for (unit, counts) in rows {
        let counts: Counts = serde_json::from_value(counts).unwrap_or_default();
        out.entry(unit).or_default().add(&counts);
    }
    Ok(out)
}

async fn quarantine_groups(
    pool: &PgPool,
    limit: i64,
) -> Result<BTreeMap<String, BTreeMap<String, Group>>, sqlx::Error> {
    let rows: Vec<(String, String, i64, Vec<String>)> = sqlx::query_as(
        "with ranked as (
             select container, reason_code, document_id,
                    row_number() over (partition by container, reason_code
                                       order by document_id) as n
             from migration.quarantine where resolved_at is null)
         select container, reason_code, count(*),
                coalesce(array_agg(document_id order by document_id)
                         filter (where n <= $1), '{}')
         from ranked group by container, reason_code order by container, reason_code",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out: BTreeMap<String, BTreeMap<String, Group>> = BTreeMap::new();
    for (container, reason, count, ids) in rows {
        out.entry(container).or_default().insert(
            reason,
            Group {
                count,
                examples: shown_ids(ids),
            },
        );
    }
    Ok(out)
}

async fn note_groups(
    pool: &PgPool,
    limit: i64,
) -> Result<BTreeMap<String, BTreeMap<String, NoteGroup>>, sqlx::Error> {
    // only codes and document ids: `detail`, `subject` and `original` are never read here
    let rows: Vec<(String, String, i64, i64, Vec<String>)> = sqlx::query_as(
        "with docs as (
             select container, code, document_id, count(*) as notes
             from migration.document_notes group by container, code, document_id),
         ranked as (
             select *, row_number() over (partition by container, code order by document_id) as n
             from docs)
         select container, code, sum(notes)::bigint, count(*),
                coalesce(array_agg(document_id order by document_id)
                         filter (where n <= $1), '{}')
         from ranked group by container, code order by container, code",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out: BTreeMap<String, BTreeMap<String, NoteGroup>> = BTreeMap::new();
    for (container, code, notes, documents, ids) in rows {
        out.entry(container).or_default().insert(
            code,
            NoteGroup {
                notes,
                documents,
                examples: shown_ids(ids),
            },
        );
    }
    Ok(out)
}

/// Compares, in SQL, each account's `UserProfileIds` (the original of its `user_profile_ids`
/// note: a JSON array of ids or the comma-joined string) with the profiles whose `account_id`
/// is the account. Listed ids map to keys like every reference (a `UserProfile|` prefix
/// dropped, then `mystira_key_for_cosmos_id`), so case and EF Core 8 prefixes do not count as
/// disagreement. The account document that lost its row to a newer duplicate (open in the
/// quarantine) is left out: its row is the other document's.
async fn user_profile_ids_check(
    pool: &PgPool,
    limit: i64,
) -> Result<UserProfileIdsCheck, sqlx::Error> {
    let (checked, without, disagreeing, listed_only, pointing_only, examples): (
        i64,
        i64,
        i64,
        i64,
        i64,
        Vec<String>,
    ) = sqlx::query_as(
        r"with account_docs as (
             select v.document_id, v.key as account_id
             from migration.document_versions v
             join accounts a on a.id = v.key
             where v.container = 'Accounts'
               and not exists (
                   select 1 from migration.quarantine q
                   where q.container = v.container and q.document_id = v.document_id
                     and q.resolved_at is null)),
         checked as (
             select d.* from account_docs d
             where exists (
                 select 1 from migration.document_notes n
                 where n.container = 'Accounts' and n.document_id = d.document_id
                   and n.code = $1)),
         listed as (
             select distinct c.document_id,
                    mystira_key_for_cosmos_id(regexp_replace(btrim(item), '^UserProfile\|', ''))
                        as profile_id
             from checked c
             join migration.document_notes n
               on n.container = 'Accounts' and n.document_id = c.document_id and n.code = $1
             cross join lateral (
                 select e from jsonb_array_elements_text(
                     case when jsonb_typeof(n.original) = 'array' then n.original
                          else '[]'::jsonb end) e
                 union all
                 select s from regexp_split_to_table(
                     case when jsonb_typeof(n.original) = 'string' then n.original #>> '{}'
                          else '' end, ',') s
             ) items(item)
             where btrim(item) <> ''),
         pointing as (
             select c.document_id, p.id as profile_id
             from checked c join user_profiles p on p.account_id = c.account_id),
         listed_only as (select * from listed except select * from pointing),
         pointing_only as (select * from pointing except select * from listed),
         disagreeing as (
             select document_id from listed_only union select document_id from pointing_only)
         select (select count(*) from checked),
                (select count(*) from account_docs) - (select count(*) from checked),
                (select count(*) from disagreeing),
                (select count(*) from listed_only),
                (select count(*) from pointing_only),
                coalesce((select array_agg(document_id order by document_id)
                          from (select document_id from disagreeing
                                order by document_id limit $2) e), '{}')",
    )
    .bind(USER_PROFILE_IDS_NOTE)
    .bind(limit)
    .fetch_one(pool)
    .await?;
    Ok(UserProfileIdsCheck {
        note_code: USER_PROFILE_IDS_NOTE.to_owned(),
        accounts_checked: checked,
        accounts_without_note: without,
        accounts_disagreeing: disagreeing,
        listed_not_pointing: listed_only,
        pointing_not_listed: pointing_only,
        examples: shown_ids(examples),
    })
}

/// Document ids as the sheet shows them: an id that looks like an email address (some old
/// documents were keyed by one) is withheld, so the sheet never carries one.
fn shown_ids(ids: Vec<String>) -> Vec<String> {
    ids.into_iter()
        .map(|id| {
            if id.contains('@') {
                "(withheld: the id looks like an email address)".to_owned()
            } else {
                id
            }
        })
        .collect()
}

impl Report {
    /// The sheet as Markdown, for a terminal or a ticket.
    pub fn to_markdown(&self) -> String {
        let mut out = String::from("# Migration sign-off sheet\n\n");
        out.push_str(&format!(
            "Generated {}.\n\n",
            self.generated_at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
        match &self.run {
            None => out.push_str("No backfill run is recorded: run `mystira-users migrate`.\n\n"),
            Some(r) => {
                out.push_str(&format!(
                    "Latest backfill run `{}`: **{}**, from {}, started {}{}.",
                    r.id,
                    r.status,
                    r.source,
                    r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    r.finished_at.map_or_else(String::new, |f| format!(
                        ", ended {}",
                        f.format("%Y-%m-%d %H:%M:%S UTC")
                    )),
                ));
                if r.counts_from == "work_ranges" {
                    out.push_str(
                        " It recorded no counts (still running, or its process died): the \
                         counts are the job's ranges so far.",
                    );
                }
                if r.status == "running" && r.live_leases == 0 {
                    out.push_str(
                        " No range holds a live lease: no process is working on it (it is \
                         closed as `abandoned` when the next run starts).",
                    );
                }
                out.push_str("\n\n");
            }
        }

        out.push_str("## Documents per container\n\n");
        out.push_str(
            "| container | read | written | unchanged | quarantined | skipped | superseded | \
             reconciles | in PostgreSQL | open quarantine | rows |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|\n");
        for (name, c) in &self.containers {
            let rows: Vec<String> = c.rows.iter().map(|(t, n)| format!("{t} {n}")).collect();
            out.push_str(&format!(
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                c.counts.read,
                c.counts.written,
                c.counts.unchanged,
                c.counts.quarantined,
                c.skipped_total,
                c.counts.superseded,
                if c.reconciles { "yes" } else { "**no**" },
                c.documents_in_postgres,
                c.open_quarantine,
                rows.join(", "),
            ));
        }
        let t = &self.totals;
        out.push_str(&format!(
            "| **total** | {} | {} | {} | {} | {} | {} | {} | | | |\n\n",
            t.read,
            t.written,
            t.unchanged,
            t.quarantined,
            t.skipped.values().sum::<u64>(),
            t.superseded,
            if t.reconciles() { "yes" } else { "**no**" },
        ));
        out.push_str(
            "`read = written + unchanged + quarantined + skipped`; `superseded` counts documents \
             written and later displaced by a newer document of the same row or a newer \
             account of the same login (now in the quarantine as `superseded_duplicate` or \
             `duplicate_auth0_user_id`).\n\n",
        );
        for (name, c) in &self.containers {
            for (reason, n) in &c.counts.skipped {
                out.push_str(&format!("- {name}: {n} skipped ({reason})\n"));
            }
        }

        out.push_str("## Open quarantine by reason\n\n");
        if self.quarantine.is_empty() {
            out.push_str("The quarantine has no open entry.\n\n");
        } else {
            out.push_str("| container | reason | documents | examples (document ids) |\n");
            out.push_str("|---|---|---:|---|\n");
            for (container, reasons) in &self.quarantine {
                for (reason, g) in reasons {
                    out.push_str(&format!(
                        "| {container} | `{reason}` | {} | {} |\n",
                        g.count,
                        examples(&g.examples, g.count)
                    ));
                }
            }
            out.push_str(
                "\n`mystira-users quarantine list --reason CODE` lists them; `quarantine show` \
                 explains one.\n\n",
            );
        }

        out.push_str("## Notes by code\n\n");
        if self.notes.is_empty() {
            out.push_str("No document carries a note.\n\n");
        } else {
            out.push_str("| container | code | notes | documents | examples (document ids) |\n");
            out.push_str("|---|---|---:|---:|---|\n");
            for (container, codes) in &self.notes {
                for (code, g) in codes {
                    out.push_str(&format!(
                        "| {container} | `{code}` | {} | {} | {} |\n",
                        g.notes,
                        g.documents,
                        examples(&g.examples, g.documents)
                    ));
                }
            }
            out.push_str(
                "\nEach note keeps the value it is about in `migration.document_notes.original` \
                 (personal data: not printed here). The codes are explained in \
                 docs/cosmos-mapping.md.\n\n",
            );
        }

        let u = &self.checks.user_profile_ids;
        out.push_str("## Derived checks\n\n");
        out.push_str(&format!(
            "**`UserProfileIds` against the profiles' `AccountId`** (from the `{}` notes): \
             {} accounts compared, {} disagree ({} listed ids whose profile does not point at \
             the account, {} profiles pointing at an account that does not list them)",
            u.note_code,
            u.accounts_checked,
            u.accounts_disagreeing,
            u.listed_not_pointing,
            u.pointing_not_listed,
        ));
        if u.accounts_without_note > 0 {
            out.push_str(&format!(
                "; {} accounts have no such note and were not compared",
                u.accounts_without_note
            ));
        }
        out.push_str(".\n");
        if !u.examples.is_empty() {
            out.push_str(&format!(
                "Examples: {}.\n",
                examples(&u.examples, u.accounts_disagreeing)
            ));
        }
        out.push_str(
            "The profiles' `AccountId` is what PostgreSQL keeps; the list is the app's copy.\n",
        );
        out
    }
}

fn examples(ids: &[String], total: i64) -> String {
    // an EF Core 8 id (`Account|<guid>`) holds a pipe, which would end a Markdown table cell
    let shown: Vec<String> = ids
        .iter()
        .map(|i| format!("`{}`", i.replace('|', "\\|")))
        .collect();
    let more = total - ids.len() as i64;
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_without_the_newer_fields_still_parse() -> serde_json::Result<()> {
        let c: Counts = serde_json::from_value(serde_json::json!({
            "read": 3, "written": 1, "unchanged": 1, "quarantined": 1
        }))?;
        assert_eq!(c.read, 3);
        assert_eq!(c.superseded, 0);
        assert!(c.reconciles());
        Ok(())
    }

    #[test]
    fn an_id_that_looks_like_an_email_is_withheld() {
        let shown = shown_ids(vec!["abc".into(), "someone@example.com".into()]);
        assert_eq!(shown[0], "abc");
        assert!(!shown[1].contains("example.com"));
    }
}
