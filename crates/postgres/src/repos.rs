//! Repositories implementing the domain ports on PostgreSQL, one struct per port, each holding a
//! [`sqlx::PgPool`].
//!
//! Conventions shared by every repository here:
//! * statements are runtime `sqlx::query*` calls (no compile-time macros: there is no database at
//!   build time), with lowercase SQL;
//! * rows are read into private `*Row` structs and converted into domain entities explicitly; a
//!   stored value the domain rejects (dirty data written by some other path) is a
//!   [`RepoError::Store`] naming the table and column, never the value;
//! * entities are validated before anything is sent, so a bad value is [`RepoError::Invalid`]
//!   without a round trip, and what PostgreSQL still refuses comes back through
//!   [`crate::map_sqlx_error`];
//! * the single-statement writes are also public functions generic over the executor, so that
//!   the bulk backfill can run them inside its own transactions.

use std::fmt;
use std::pin::Pin;

use mystira_domain::error::RepoError;
use mystira_domain::ports::{Page, PageRequest};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Executor, FromRow, Postgres};
use uuid::Uuid;

use crate::map_sqlx_error;

pub mod accounts;
pub mod badges;
pub mod completed_scenarios;
pub mod pending_signups;
pub mod profiles;
pub mod subscriptions;

pub use accounts::PgAccountRepository;
pub use badges::PgBadgeRepository;
pub use completed_scenarios::PgCompletedScenarioRepository;
pub use pending_signups::PgPendingSignupRepository;
pub use profiles::PgProfileRepository;
pub use subscriptions::PgSubscriptionRepository;

/// A stored value that the domain refuses on read. Names the table, the column and the rule
/// (the domain's errors carry no values), so the message is safe to log.
pub(crate) fn column_error(
    table: &'static str,
    column: &'static str,
    rule: impl fmt::Display,
) -> RepoError {
    RepoError::Store(format!(
        "column `{table}.{column}` holds a value the domain rejects: {rule}"
    ))
}

/// A `select` whose rows are read into a private `*Row` struct.
pub(crate) type RowQuery<'q, R> = sqlx::query::QueryAs<'q, Postgres, R, PgArguments>;

/// Runs `query` on `exec` (a pool or a connection) and converts the row, if any, into its domain entity.
pub(crate) async fn fetch_optional<'c, R, T>(
    exec: impl Executor<'c, Database = Postgres>,
    table: &'static str,
    query: RowQuery<'_, R>,
) -> Result<Option<T>, RepoError>
where
    R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    T: TryFrom<R, Error = RepoError>,
{
    query
        .fetch_optional(exec)
        .await
        .map_err(|e| map_sqlx_error(table, e))?
        .map(T::try_from)
        .transpose()
}

/// Runs `query` on `exec` and converts every row into its domain entity.
pub(crate) async fn fetch_all<'c, R, T>(
    exec: impl Executor<'c, Database = Postgres>,
    table: &'static str,
    query: RowQuery<'_, R>,
) -> Result<Vec<T>, RepoError>
where
    R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    T: TryFrom<R, Error = RepoError>,
{
    query
        .fetch_all(exec)
        .await
        .map_err(|e| map_sqlx_error(table, e))?
        .into_iter()
        .map(T::try_from)
        .collect()
}

/// Runs a write through `exec` and says whether it touched any row (whether the row it is
/// keyed by existed).
pub(crate) async fn touched_any<'c, E>(
    exec: E,
    table: &'static str,
    query: sqlx::query::Query<'_, Postgres, PgArguments>,
) -> Result<bool, RepoError>
where
    E: Executor<'c, Database = Postgres>,
{
    let done = query
        .execute(exec)
        .await
        .map_err(|e| map_sqlx_error(table, e))?;
    Ok(done.rows_affected() > 0)
}

/// The `limit` to bind for a keyset page: one row more than asked for, so that a page can tell
/// whether another one follows without a second query.
pub(crate) fn fetch_limit(page: PageRequest) -> i64 {
    i64::from(page.limit) + 1
}

/// Cuts the rows fetched with [`fetch_limit`] down to the page and works out the next request.
/// A limit of zero yields an empty last page rather than a request that never advances.
pub(crate) fn into_page<T>(
    mut rows: Vec<T>,
    page: PageRequest,
    id: impl Fn(&T) -> Uuid,
) -> Page<T> {
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    if limit == 0 {
        return Page {
            items: Vec::new(),
            next: None,
        };
    }
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = match rows.last() {
        Some(last) if more => Some(PageRequest {
            after: Some(id(last)),
            limit: page.limit,
        }),
        _ => None,
    };
    Page { items: rows, next }
}

/// One statement's future that yields at most one row.
pub(crate) type MaybeRow<'a, T> =
    Pin<Box<dyn Future<Output = Result<Option<T>, sqlx::Error>> + Send + 'a>>;

/// Whether an idempotent insert stored the row or found an earlier one.
#[derive(Debug)]
pub(crate) enum Stored<T> {
    Inserted(T),
    Existing(T),
}

/// How often [`insert_or_fetch`] retries when the conflicting row vanished between its two
/// statements (deleted concurrently). One retry settles it: either the insert now succeeds or the
/// parent is gone too and the insert fails on its foreign key.
const INSERT_OR_FETCH_ATTEMPTS: usize = 3;

/// Runs `insert` (an `insert ... on conflict (...) do nothing returning ...`) and, when it stored
/// nothing, `fetch` (the select of the conflicting row).
///
/// Two statements rather than one CTE on purpose: under read committed, `on conflict do nothing`
/// waits for a concurrent insert of the same key to commit, but a select in the same statement
/// would still use the statement's older snapshot and miss that row. The second statement gets a
/// fresh snapshot and sees it.
///
/// The statements are closures returning boxed futures rather than async closures: the futures
/// of async closures do not yet prove `Send` for the `async_trait` methods that call this.
pub(crate) async fn insert_or_fetch<'a, T>(
    entity: &'static str,
    insert: impl Fn() -> MaybeRow<'a, T>,
    fetch: impl Fn() -> MaybeRow<'a, T>,
) -> Result<Stored<T>, RepoError> {
    for _ in 0..INSERT_OR_FETCH_ATTEMPTS {
        match insert().await {
            Ok(Some(row)) => return Ok(Stored::Inserted(row)),
            Ok(None) => {}
            // `on conflict (target)` only arbitrates its own index: a concurrent insert of the same
            // row can still trip another unique index first (the primary key of a derived id) and
            // raise a violation instead of doing nothing. If the conflicting row is the one we
            // meant to insert, it is the earlier completion; otherwise the conflict is real.
            Err(e) => {
                let error = crate::map_sqlx_error(entity, e);
                if !matches!(error, RepoError::Conflict { .. }) {
                    return Err(error);
                }
                return match fetch()
                    .await
                    .map_err(|e| crate::map_sqlx_error(entity, e))?
                {
                    Some(row) => Ok(Stored::Existing(row)),
                    None => Err(error),
                };
            }
        }
        if let Some(row) = fetch()
            .await
            .map_err(|e| crate::map_sqlx_error(entity, e))?
        {
            return Ok(Stored::Existing(row));
        }
    }
    Err(RepoError::Unavailable(format!(
        "a conflicting {entity} row kept disappearing concurrently; retry"
    )))
}
