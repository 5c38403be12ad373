//! Reading whole aggregates (what one Cosmos document holds) out of the domain tables, for the
//! outbox relay and for checks that compare PostgreSQL with Cosmos. Built on the repositories,
//! so a row is read exactly as the rest of the program reads it.

use mystira_domain::aggregate::{AccountAggregate, Aggregate, ProfileAggregate};
use mystira_domain::ports::{
    AccountRepository, BadgeRepository, CompletedScenarioRepository, PendingSignupRepository,
    ProfileRepository, RepoResult, SubscriptionRepository,
};
use mystira_domain::RepoError;
use sqlx::PgPool;
use uuid::Uuid;

use crate::repos::{
    PgAccountRepository, PgBadgeRepository, PgCompletedScenarioRepository,
    PgPendingSignupRepository, PgProfileRepository, PgSubscriptionRepository,
};

/// The aggregate of `container` (`Accounts`, `UserProfiles` or `PendingSignups`) whose main row
/// has key `key`; `None` when PostgreSQL has no such row (it was deleted, or never existed).
pub async fn load(pool: &PgPool, container: &str, key: Uuid) -> RepoResult<Option<Aggregate>> {
    match container {
        "Accounts" => Ok(load_account(pool, key)
            .await?
            .map(|a| Aggregate::Account(Box::new(a)))),
        "UserProfiles" => Ok(load_profile(pool, key)
            .await?
            .map(|p| Aggregate::Profile(Box::new(p)))),
        "PendingSignups" => Ok(PgPendingSignupRepository::new(pool.clone())
            .get(key)
            .await?
            .map(|s| Aggregate::Signup(Box::new(s)))),
        _ => Err(RepoError::Store(format!(
            "container `{container}` is not part of the user domain"
        ))),
    }
}

/// An account with its subscription and completed scenarios.
pub async fn load_account(pool: &PgPool, key: Uuid) -> RepoResult<Option<AccountAggregate>> {
    let Some(account) = PgAccountRepository::new(pool.clone()).get(key).await? else {
        return Ok(None);
    };
    let subscription = PgSubscriptionRepository::new(pool.clone())
        .get_for_account(key)
        .await?;
    let completed_scenarios = PgCompletedScenarioRepository::new(pool.clone())
        .list_by_account(key)
        .await?;
    Ok(Some(AccountAggregate {
        account,
        subscription,
        completed_scenarios,
    }))
}

/// A profile with its badges and its account's Cosmos id.
pub async fn load_profile(pool: &PgPool, key: Uuid) -> RepoResult<Option<ProfileAggregate>> {
    let Some(profile) = PgProfileRepository::new(pool.clone()).get(key).await? else {
        return Ok(None);
    };
    let badges = PgBadgeRepository::new(pool.clone())
        .list_by_profile(key)
        .await?;
    let account_cosmos_id = match profile.account_id {
        Some(account) => sqlx::query_scalar::<_, Option<String>>(
            "select cosmos_id from accounts where id = $1",
        )
        .bind(account)
        .fetch_optional(pool)
        .await
        .map_err(|e| crate::map_sqlx_error("accounts", e))?
        .flatten(),
        None => None,
    };
    Ok(Some(ProfileAggregate {
        profile,
        badges,
        account_cosmos_id,
    }))
}
