//! Reading whole aggregates (what one Cosmos document holds) out of the domain tables, for the
//! outbox relay and for checks that compare PostgreSQL with Cosmos. Built on the repositories'
//! read functions, so a row is read exactly as the rest of the program reads it, and on one
//! connection: the relay reads inside the transaction that holds the aggregate's lock (reading
//! on a second pooled connection could exhaust the pool with deliveries that each hold one
//! connection and wait for another).

use mystira_domain::RepoError;
use mystira_domain::aggregate::{AccountAggregate, Aggregate, ProfileAggregate};
use mystira_domain::ports::RepoResult;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::repos::accounts::get_account;
use crate::repos::badges::badges_of_profile;
use crate::repos::completed_scenarios::completed_for_account;
use crate::repos::pending_signups::get_signup;
use crate::repos::profiles::get_profile;
use crate::repos::subscriptions::subscription_for_account;

/// The aggregate of `container` (`Accounts`, `UserProfiles` or `PendingSignups`) whose main row
/// has key `key`; `None` when PostgreSQL has no such row (it was deleted, or never existed).
pub async fn load(
    conn: &mut PgConnection,
    container: &str,
    key: Uuid,
) -> RepoResult<Option<Aggregate>> {
    match container {
        "Accounts" => Ok(load_account(conn, key)
            .await?
            .map(|a| Aggregate::Account(Box::new(a)))),
        "UserProfiles" => Ok(load_profile(conn, key)
            .await?
            .map(|p| Aggregate::Profile(Box::new(p)))),
        "PendingSignups" => Ok(get_signup(&mut *conn, key)
            .await?
            .map(|s| Aggregate::Signup(Box::new(s)))),
        _ => Err(RepoError::Store(format!(
            "container `{container}` is not part of the user domain"
        ))),
    }
}

/// An account with its subscription and completed scenarios.
pub async fn load_account(
    conn: &mut PgConnection,
    key: Uuid,
) -> RepoResult<Option<AccountAggregate>> {
    let Some(account) = get_account(&mut *conn, key).await? else {
        return Ok(None);
    };
    let subscription = subscription_for_account(&mut *conn, key).await?;
    let completed_scenarios = completed_for_account(&mut *conn, key).await?;
    Ok(Some(AccountAggregate {
        account,
        subscription,
        completed_scenarios,
    }))
}

/// A profile with its badges and its account's Cosmos id.
pub async fn load_profile(
    conn: &mut PgConnection,
    key: Uuid,
) -> RepoResult<Option<ProfileAggregate>> {
    let Some(profile) = get_profile(&mut *conn, key).await? else {
        return Ok(None);
    };
    let badges = badges_of_profile(&mut *conn, key).await?;
    let account_cosmos_id = match profile.account_id {
        Some(account) => {
            sqlx::query_scalar::<_, Option<String>>("select cosmos_id from accounts where id = $1")
                .bind(account)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| crate::map_sqlx_error("accounts", e))?
                .flatten()
        }
        None => None,
    };
    Ok(Some(ProfileAggregate {
        profile,
        badges,
        account_cosmos_id,
    }))
}
