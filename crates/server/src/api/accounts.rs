//! Accounts, their subscription and their completed scenarios. An account's email is one its
//! owner proved ([`require_proof`]), at creation and when a PATCH changes it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use mystira_domain::{Email, Role};
use uuid::Uuid;

use super::wire::{
    AccountOut, AccountPatch, CompletedOut, Completion, EmailSearch, Me, NewAccount,
    SubscriptionIn, SubscriptionOut,
};
use super::{Body, access, invalid, no_content_if, not_found, parse_id, repo};
use crate::auth::Caller;
use crate::{AppState, Problem};

fn role_not_allowed() -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "role_not_allowed",
        "only Admin and SuperAdmin may give a role above User",
    )
}

/// How long after its code expired a completed sign-up still proves its address: the client
/// verifies the code, then signs in and creates the account, within minutes.
pub const SIGNUP_PROOF_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Refuses an email the caller has not proven (issue 30, item 6): an account may take only an
/// address that the token's `email` claim names with `email_verified: true`, or that a
/// completed (used) sign-up, `signup_id`, was for, its code expiring at most
/// [`SIGNUP_PROOF_WINDOW`] ago. Both compare ignoring case. Admins are not asked: they act on
/// every account anyway (support, the purchase service), and their tokens are the provider's.
/// The refusal is the same whatever failed (no sign-up, another address's, not completed), so
/// that it tells nothing about a sign-up, and it never names the address.
async fn require_proof(
    state: &AppState,
    caller: &Caller,
    email: &Email,
    signup_id: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<(), Problem> {
    if caller.is_admin() {
        return Ok(());
    }
    let wanted = email.normalized();
    if caller
        .verified_email
        .as_ref()
        .is_some_and(|e| e.normalized() == wanted)
    {
        return Ok(());
    }
    if let Some(id) = signup_id {
        let signup = state.domain.signups.get(id).await.map_err(repo)?;
        let completed = signup.is_some_and(|s| {
            s.is_used && s.email.normalized() == wanted && s.expires_at + SIGNUP_PROOF_WINDOW > now
        });
        if completed {
            return Ok(());
        }
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        "email_not_proven",
        "the email is not one the caller proved: send a token whose `email` claim is this \
         address with `email_verified: true`, or the `signup_id` of a sign-up completed for it \
         within the last hour",
    )
    .with("field", "email"))
}

/// Who the caller is, and their account if they have one.
#[utoipa::path(get, path = "/v1/me", tag = "accounts",
    responses((status = 200, body = Me), (status = 401, description = "no valid token")),
    security(("bearer" = [])))]
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<Me>, Problem> {
    let account = state
        .domain
        .accounts
        .get_by_auth0_id(&caller.user_id)
        .await
        .map_err(repo)?;
    Ok(Json(Me {
        user_id: caller.user_id,
        role: caller.role.as_str().to_owned(),
        account_id: account.map(|a| a.id),
    }))
}

/// Creates an account: the caller's own (its `auth0_user_id` is the token's `sub`), or, for
/// admins, anyone's.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", operation_id = "create_account", request_body = NewAccount,
    responses((status = 201, body = AccountOut), (status = 403, description = "another user's id, a role above User, or an email not proven (email_not_proven)"),
        (status = 409, description = "the id or the external user id exists"), (status = 422, description = "a field breaks a rule")),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Body(new): Body<NewAccount>,
) -> Result<impl IntoResponse, Problem> {
    if !caller.is_admin() {
        if new
            .auth0_user_id
            .as_deref()
            .is_some_and(|id| id != caller.user_id)
        {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                "not_your_account",
                "a user can create only their own account (auth0_user_id = the token's sub)",
            ));
        }
        let role = new.role.as_deref().map(Role::parse).transpose();
        if matches!(role, Ok(Some(Role::Admin | Role::SuperAdmin))) {
            return Err(role_not_allowed());
        }
    }
    let signup_id = new.signup_id;
    let now = Utc::now();
    let account = new
        .into_account(&caller.user_id, now)
        .map_err(|e| invalid(&e))?;
    require_proof(&state, &caller, &account.email, signup_id, now).await?;
    state.domain.accounts.create(&account).await.map_err(repo)?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/accounts/{}", account.id))],
        Json(AccountOut::from(&account)),
    ))
}

/// An account, by its id.
#[utoipa::path(get, path = "/v1/accounts/{id}", tag = "accounts", operation_id = "get_account",
    params(("id" = uuid::Uuid, Path, description = "the account's id")),
    responses((status = 200, body = AccountOut), (status = 403, description = "another user's account"), (status = 404)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<AccountOut>, Problem> {
    let account = access::account(&state, &caller, parse_id("account", &id)?).await?;
    Ok(Json(AccountOut::from(&account)))
}

/// Changes an account (absent fields are kept). Only admins change roles.
#[utoipa::path(patch, path = "/v1/accounts/{id}", tag = "accounts", operation_id = "update_account", request_body = AccountPatch,
    params(("id" = uuid::Uuid, Path, description = "the account's id")),
    responses((status = 200, body = AccountOut), (status = 403), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(patch): Body<AccountPatch>,
) -> Result<Json<AccountOut>, Problem> {
    let current = access::account(&state, &caller, parse_id("account", &id)?).await?;
    let role = patch.role().map_err(|e| invalid(&e))?;
    if role.is_some_and(|r| r != current.role) && !caller.is_admin() {
        return Err(role_not_allowed());
    }
    let signup_id = patch.signup_id;
    let had = current.email.normalized();
    let account = patch.apply(current).map_err(|e| invalid(&e))?;
    // the same address in another case is the same mailbox: nothing new to prove
    if account.email.normalized() != had {
        require_proof(&state, &caller, &account.email, signup_id, Utc::now()).await?;
    }
    if !state.domain.accounts.update(&account).await.map_err(repo)? {
        return Err(not_found("account"));
    }
    Ok(Json(AccountOut::from(&account)))
}

/// Deletes the account, its subscription and its completed scenarios; its profiles stay,
/// detached. Idempotent in effect: a second call is a 404.
#[utoipa::path(delete, path = "/v1/accounts/{id}", tag = "accounts", operation_id = "delete_account",
    params(("id" = uuid::Uuid, Path, description = "the account's id")),
    responses((status = 204), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let account = access::account(&state, &caller, parse_id("account", &id)?).await?;
    let found = state
        .domain
        .accounts
        .delete(account.id)
        .await
        .map_err(repo)?;
    no_content_if(found, "account")
}

/// The account with this external user id (a user may look up only their own).
#[utoipa::path(get, path = "/v1/external-users/{external_user_id}/account", tag = "accounts", operation_id = "account_by_external_id",
    params(("external_user_id" = String, Path, description = "an auth0_user_id")),
    responses((status = 200, body = AccountOut), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn by_external_id(
    State(state): State<AppState>,
    caller: Caller,
    Path(external_user_id): Path<String>,
) -> Result<Json<AccountOut>, Problem> {
    if !caller.is_admin() && external_user_id != caller.user_id {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "not_your_account",
            "a user can look up only their own external user id",
        ));
    }
    let account = state
        .domain
        .accounts
        .get_by_auth0_id(&external_user_id)
        .await
        .map_err(repo)?
        .ok_or_else(|| not_found("account"))?;
    Ok(Json(AccountOut::from(&account)))
}

/// Accounts whose email matches, ignoring case (admins only; Cosmos holds duplicates that
/// differ only by case, so there may be several). A POST, so that the email is never in a URL
/// (and so never in an access log).
#[utoipa::path(post, path = "/v1/accounts/search", tag = "accounts", request_body = EmailSearch,
    responses((status = 200, body = Vec<AccountOut>), (status = 403), (status = 422)),
    security(("bearer" = [])))]
pub async fn find_by_email(
    State(state): State<AppState>,
    caller: Caller,
    Body(search): Body<EmailSearch>,
) -> Result<Json<Vec<AccountOut>>, Problem> {
    caller.require_admin()?;
    let email = mystira_domain::Email::parse(&search.email).map_err(|e| invalid(&e))?;
    let accounts = state
        .domain
        .accounts
        .find_by_email(&email)
        .await
        .map_err(repo)?;
    Ok(Json(accounts.iter().map(AccountOut::from).collect()))
}

/// Records a sign-in now.
#[utoipa::path(post, path = "/v1/accounts/{id}/login", tag = "accounts",
    params(("id" = uuid::Uuid, Path, description = "the account's id")),
    responses((status = 204), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn record_login(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let account = access::account(&state, &caller, parse_id("account", &id)?).await?;
    let found = state
        .domain
        .accounts
        .record_login(account.id, Utc::now())
        .await
        .map_err(repo)?;
    no_content_if(found, "account")
}

/// The account's subscription.
#[utoipa::path(get, path = "/v1/accounts/{id}/subscription", tag = "accounts",
    params(("id" = uuid::Uuid, Path, description = "the account's id")),
    responses((status = 200, body = SubscriptionOut), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn subscription(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionOut>, Problem> {
    let account = access::account(&state, &caller, parse_id("account", &id)?).await?;
    let subscription = state
        .domain
        .subscriptions
        .get_for_account(account.id)
        .await
        .map_err(repo)?
        .ok_or_else(|| not_found("subscription"))?;
    Ok(Json(SubscriptionOut::new(&subscription, Utc::now())))
}

/// Creates or replaces the account's subscription. Admins only: a subscription is written by
/// the purchase verification (a service holding an Admin token), never by the user it grants
/// access to.
#[utoipa::path(put, path = "/v1/accounts/{id}/subscription", tag = "accounts", request_body = SubscriptionIn,
    params(("id" = uuid::Uuid, Path, description = "the account's id")),
    responses((status = 200, body = SubscriptionOut), (status = 403), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn set_subscription(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(new): Body<SubscriptionIn>,
) -> Result<Json<SubscriptionOut>, Problem> {
    caller.require_admin()?;
    let account = access::account(&state, &caller, parse_id("account", &id)?).await?;
    let now = Utc::now();
    let subscription = new
        .into_subscription(account.id, now)
        .map_err(|e| invalid(&e))?;
    let stored = state
        .domain
        .subscriptions
        .upsert_for_account(&subscription)
        .await
        .map_err(repo)?;
    Ok(Json(SubscriptionOut::new(&stored, now)))
}

/// The scenarios the account completed.
#[utoipa::path(get, path = "/v1/accounts/{id}/completed-scenarios", tag = "accounts",
    params(("id" = uuid::Uuid, Path, description = "the account's id")),
    responses((status = 200, body = Vec<CompletedOut>), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn completed(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<CompletedOut>>, Problem> {
    let account = access::account(&state, &caller, parse_id("account", &id)?).await?;
    let rows = state
        .domain
        .completed
        .list_by_account(account.id)
        .await
        .map_err(repo)?;
    Ok(Json(rows.iter().map(CompletedOut::from).collect()))
}

/// Records a completed scenario (idempotent: completing again returns the first completion).
#[utoipa::path(post, path = "/v1/accounts/{id}/completed-scenarios", tag = "accounts", request_body = Completion,
    params(("id" = uuid::Uuid, Path, description = "the account's id")),
    responses((status = 200, body = CompletedOut), (status = 403), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn complete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(completion): Body<Completion>,
) -> Result<Json<CompletedOut>, Problem> {
    let account = access::account(&state, &caller, parse_id("account", &id)?).await?;
    let row = state
        .domain
        .completed
        .mark_completed(
            account.id,
            &completion.scenario_id,
            completion.completed_at.unwrap_or_else(Utc::now),
        )
        .await
        .map_err(repo)?;
    Ok(Json(CompletedOut::from(&row)))
}
