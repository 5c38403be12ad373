//! Who may touch what. A token's `sub` is an account's external user id
//! (`accounts.auth0_user_id`): a caller reads and writes the account with their `sub`, and
//! that account's profiles (and so their badges) and completed scenarios; Admin and SuperAdmin
//! may act on anyone's. A profile whose account was deleted belongs to no user any more, so
//! only admins reach it.
//!
//! The order is: the row is looked up (404 if there is none), then the caller is checked
//! (403 if it is another user's). Ids are random UUIDs, so a 403 tells a caller only that
//! someone's row has an id they already hold; answering 404 instead would make an operator's
//! "why can't I see it" harder to answer, for no secrecy gained.

use axum::http::StatusCode;
use mystira_domain::{Account, UserProfile};
use uuid::Uuid;

use super::{not_found, repo};
use crate::auth::Caller;
use crate::{AppState, Problem};

fn forbidden(code: &str, detail: &str) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, code, detail)
}

/// Whether `caller` may act on `account`.
pub(crate) fn authorize_account(caller: &Caller, account: &Account) -> Result<(), Problem> {
    if caller.is_admin() || account.auth0_user_id.as_deref() == Some(caller.user_id.as_str()) {
        Ok(())
    } else {
        Err(forbidden(
            "not_your_account",
            "this account belongs to another user",
        ))
    }
}

/// The account `id`, if it exists and `caller` may act on it.
pub(crate) async fn account(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<Account, Problem> {
    let account = state
        .domain
        .accounts
        .get(id)
        .await
        .map_err(repo)?
        .ok_or_else(|| not_found("account"))?;
    authorize_account(caller, &account)?;
    Ok(account)
}

/// The profile `id`, if it exists and `caller` may act on it (it belongs to their account).
pub(crate) async fn profile(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<UserProfile, Problem> {
    let profile = state
        .domain
        .profiles
        .get(id)
        .await
        .map_err(repo)?
        .ok_or_else(|| not_found("profile"))?;
    if caller.is_admin() {
        return Ok(profile);
    }
    let denied = || forbidden("not_your_profile", "this profile belongs to another user");
    let owner = match profile.account_id {
        Some(account_id) => state.domain.accounts.get(account_id).await.map_err(repo)?,
        None => None,
    };
    match owner {
        Some(owner) if authorize_account(caller, &owner).is_ok() => Ok(profile),
        _ => Err(denied()),
    }
}
