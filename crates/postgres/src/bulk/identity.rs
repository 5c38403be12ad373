//! Who keeps a unique value that several documents of one container claim (an account's
//! `auth0_user_id`), by the rule of [`super::DUPLICATE_AUTH0_USER_ID`], whatever order the
//! documents arrive in.
//!
//! The decision is made inside the batch's transaction, after the versions are claimed and
//! before any row is written, over the batch's claimants and the rows PostgreSQL already holds:
//! the greatest claimant of each value (by [`identity_rank`]) is matched against the row
//! holding it, if that row belongs to no document of the batch. Claims are serialised by one
//! advisory lock per value, taken after the key locks and in value order, so two processes
//! writing two claimants at once reach the result of one order or the other, never both rows.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::PgConnection;
use uuid::Uuid;

use super::{BulkDocument, Result, SnapshotEntry, column, delete_notes, quarantine_snapshot};
use crate::error::map_sqlx_error;

/// The rank deciding which of several documents claiming one value keeps it (the greatest):
/// the newest by `_ts`, on a tie the greater document id.
fn identity_rank(ts: i64, document_id: &str) -> (i64, &str) {
    (ts, document_id)
}

/// A row that holds one of the claimed values.
#[derive(sqlx::FromRow)]
struct Holder {
    identity: String,
    key: Uuid,
    /// Its source version; `None` for a row no copy may displace.
    document_id: Option<String>,
    source_ts: Option<i64>,
}

/// A claimant that loses its value.
pub(super) struct Loser {
    key: Uuid,
    /// The keeper's document id; `None`: a row with no source version.
    pub keeper: Option<String>,
}

/// A stored row, with its source version, that a claimant of its value outranks.
struct Outranked {
    key: Uuid,
    document_id: String,
    source_ts: i64,
    /// The document id of the claimant that takes the value.
    keeper: String,
}

/// What the batch must do about its identities before it writes.
#[derive(Default)]
pub(super) struct IdentityPlan {
    /// The claimants that lose, by document id (their stored rows go).
    pub losers: BTreeMap<String, Loser>,
    /// Claimants at their stored version that keep their value but have no row: written again.
    pub reinstated: HashSet<String>,
    /// Stored rows a claimant outranks: they are displaced.
    outranked: Vec<Outranked>,
    /// Rows of the batch's own documents holding a value another claimant takes: they are
    /// rewritten below, and must give the value up first.
    release: Vec<Uuid>,
}

/// Decides who keeps each value the `contenders` claim. `fresh` are the contenders whose
/// version was just claimed; a contender at the version already stored (a re-run) claims too,
/// so a loser stays a loser; a stale copy or one held back by the outbox claims nothing.
pub(super) async fn plan<D: BulkDocument>(
    conn: &mut PgConnection,
    contenders: &[&D],
    fresh: &HashSet<String>,
) -> Result<IdentityPlan> {
    let Some(identity) = D::IDENTITY else {
        return Ok(IdentityPlan::default());
    };
    let map = |e| map_sqlx_error(identity.column, e);
    let with_identity: Vec<&D> = contenders
        .iter()
        .copied()
        .filter(|d| d.identity().is_some())
        .collect();
    let rerun: Vec<&D> = with_identity
        .iter()
        .copied()
        .filter(|d| !fresh.contains(&d.version().document_id))
        .collect();
    let at_stored_version: HashSet<String> = if rerun.is_empty() {
        HashSet::new()
    } else {
        // one index probe per document in each check (`offset 0`: never a join, semi- or
        // anti-join that, planned for a batch's 1,000 documents, may hash the whole table;
        // issue 33)
        sqlx::query_scalar(
            "select x.d from unnest($2::text[], $3::uuid[], $4::int8[], $5::text[]) as x(d, k, t, e)
             where exists (select 1 from migration.document_versions v
                           where v.container = $1 and v.document_id = x.d and v.source_ts = x.t
                             and v.source_etag is not distinct from x.e and not v.deleted
                           offset 0)
               and not exists (select 1 from migration.outbox o
                               where o.container = $1 and o.key = x.k offset 0)",
        )
        .bind(D::CONTAINER)
        .bind(column(&rerun, |d| d.version().document_id.clone()))
        .bind(column(&rerun, |d| d.key()))
        .bind(column(&rerun, |d| d.version().ts))
        .bind(column(&rerun, |d| d.version().etag.clone()))
        .fetch_all(&mut *conn)
        .await
        .map_err(map)?
        .into_iter()
        .collect()
    };
    let claimants: Vec<&D> = with_identity
        .into_iter()
        .filter(|d| {
            let id = &d.version().document_id;
            fresh.contains(id) || at_stored_version.contains(id)
        })
        .collect();
    if claimants.is_empty() {
        return Ok(IdentityPlan::default());
    }

    // the greatest claimant of each value, in value order (the order the locks are taken in)
    let mut winner: BTreeMap<&str, &D> = BTreeMap::new();
    for &d in &claimants {
        let value = d.identity().unwrap_or_default();
        let best = winner.entry(value).or_insert(d);
        let (v, b) = (d.version(), best.version());
        if identity_rank(v.ts, &v.document_id) > identity_rank(b.ts, &b.document_id) {
            *best = d;
        }
    }
    let values: Vec<String> = winner.keys().map(|v| (*v).to_owned()).collect();
    sqlx::query(
        "select pg_advisory_xact_lock(hashtextextended('identity:' || $1 || ':' || i, 0))
         from unnest($2::text[]) as i order by i",
    )
    .bind(format!("{}.{}", D::CONTAINER, identity.column))
    .bind(&values)
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    let holders: Vec<Holder> = sqlx::query_as(sqlx::AssertSqlSafe(identity.holders_sql))
        .bind(&values)
        .fetch_all(&mut *conn)
        .await
        .map_err(map)?;

    // rows of keys this batch rewrites (fresh) or decides about (claimants) are not stored
    // holders: what they hold now is about to change
    let batch_keys: HashSet<Uuid> = contenders
        .iter()
        .filter(|d| fresh.contains(&d.version().document_id))
        .chain(&claimants)
        .map(|d| d.key())
        .collect();
    let mut plan = IdentityPlan::default();
    let mut holder_of: HashMap<String, Holder> = holders
        .into_iter()
        .map(|h| (h.identity.clone(), h))
        .collect();
    for (&value, &best) in &winner {
        let best_version = best.version();
        let mut keeper = Some(best_version.document_id.clone());
        let holder = holder_of.remove(value);
        let holds_it = holder.as_ref().is_some_and(|h| h.key == best.key());
        if let Some(h) = holder.filter(|h| h.key != best.key()) {
            if batch_keys.contains(&h.key) {
                plan.release.push(h.key);
            } else {
                match (&h.document_id, h.source_ts) {
                    (Some(id), Some(ts))
                        if identity_rank(ts, id)
                            < identity_rank(best_version.ts, &best_version.document_id) =>
                    {
                        plan.outranked.push(Outranked {
                            key: h.key,
                            document_id: id.clone(),
                            source_ts: ts,
                            keeper: best_version.document_id.clone(),
                        });
                    }
                    _ => keeper = h.document_id.clone(),
                }
            }
        }
        // a copy at its stored version that keeps the value without holding it lost it
        // earlier to a row that has since given it up: it lands now
        if !holds_it
            && keeper.as_deref() == Some(best_version.document_id.as_str())
            && !fresh.contains(&best_version.document_id)
        {
            plan.reinstated.insert(best_version.document_id.clone());
        }
        let keeps = |d: &D| keeper.as_deref() == Some(d.version().document_id.as_str());
        for &d in claimants
            .iter()
            .filter(|d| d.identity() == Some(value) && !keeps(d))
        {
            plan.losers.insert(
                d.version().document_id.clone(),
                Loser {
                    key: d.key(),
                    keeper: keeper.clone(),
                },
            );
        }
    }
    Ok(plan)
}

impl IdentityPlan {
    /// Carries the plan out: outranked stored rows go to the quarantine as a snapshot and out
    /// of the tables (their version record stays, so an older copy of them cannot land later),
    /// the losers' stored rows go, and the batch's rows giving a value up release it. Returns
    /// the document ids of the displaced stored rows.
    pub(super) async fn apply<D: BulkDocument>(
        &self,
        conn: &mut PgConnection,
    ) -> Result<Vec<String>> {
        let Some(identity) = D::IDENTITY else {
            return Ok(Vec::new());
        };
        let mut displaced = Vec::new();
        for o in &self.outranked {
            let message = format!(
                "its {} is also claimed by document `{}`, which keeps it (the newest by _ts; on \
                 a tie, the greater document id); kept here is what PostgreSQL held for this \
                 document (its raw document is still in the source)",
                identity.column, o.keeper
            );
            quarantine_snapshot::<D>(
                conn,
                o.key,
                &SnapshotEntry {
                    document_id: &o.document_id,
                    source_ts: o.source_ts,
                    reason_code: identity.reason_code,
                    message: &message,
                    field: "displaced_copy_from_postgresql",
                },
            )
            .await?;
            super::remove_main_row(conn, D::CONTAINER, o.key).await?;
            delete_notes(conn, D::CONTAINER, &o.document_id).await?;
            displaced.push(o.document_id.clone());
        }
        for (document_id, loser) in &self.losers {
            super::remove_main_row(conn, D::CONTAINER, loser.key).await?;
            delete_notes(conn, D::CONTAINER, document_id).await?;
        }
        if !self.release.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(identity.release_sql))
                .bind(&self.release)
                .execute(&mut *conn)
                .await
                .map_err(|e| map_sqlx_error(identity.column, e))?;
        }
        Ok(displaced)
    }
}
