//! User profiles and their badges.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use chrono::Utc;
use mystira_domain::ports::AwardOutcome;

use super::wire::{BadgeOut, NewBadge, NewProfile, ProfileOut, ProfilePatch};
use super::{Body, access, invalid, no_content_if, not_found, parse_id, repo};
use crate::auth::Caller;
use crate::{AppState, Problem};

/// The account's profiles, oldest first.
#[utoipa::path(get, path = "/v1/accounts/{id}/profiles", tag = "profiles", operation_id = "list_profiles",
    params(("id" = uuid::Uuid, Path, description = "the account's id")),
    responses((status = 200, body = Vec<ProfileOut>), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<ProfileOut>>, Problem> {
    let account = access::account(&state, &caller, parse_id("account", &id)?).await?;
    let profiles = state
        .domain
        .profiles
        .list_by_account(account.id)
        .await
        .map_err(repo)?;
    Ok(Json(profiles.iter().map(ProfileOut::from).collect()))
}

/// Creates a profile of the account.
#[utoipa::path(post, path = "/v1/accounts/{id}/profiles", tag = "profiles", operation_id = "create_profile", request_body = NewProfile,
    params(("id" = uuid::Uuid, Path, description = "the account's id")),
    responses((status = 201, body = ProfileOut), (status = 403), (status = 404), (status = 409), (status = 422)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(new): Body<NewProfile>,
) -> Result<impl IntoResponse, Problem> {
    let account = access::account(&state, &caller, parse_id("account", &id)?).await?;
    let profile = new
        .into_profile(account.id, Utc::now())
        .map_err(|e| invalid(&e))?;
    state.domain.profiles.create(&profile).await.map_err(repo)?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/profiles/{}", profile.id))],
        Json(ProfileOut::from(&profile)),
    ))
}

/// A profile, by its id.
#[utoipa::path(get, path = "/v1/profiles/{id}", tag = "profiles", operation_id = "get_profile",
    params(("id" = uuid::Uuid, Path, description = "the profile's id")),
    responses((status = 200, body = ProfileOut), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProfileOut>, Problem> {
    let profile = access::profile(&state, &caller, parse_id("profile", &id)?).await?;
    Ok(Json(ProfileOut::from(&profile)))
}

/// Changes a profile: absent fields are kept, `null` clears a nullable one.
#[utoipa::path(patch, path = "/v1/profiles/{id}", tag = "profiles", operation_id = "update_profile", request_body = ProfilePatch,
    params(("id" = uuid::Uuid, Path, description = "the profile's id")),
    responses((status = 200, body = ProfileOut), (status = 403), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(patch): Body<ProfilePatch>,
) -> Result<Json<ProfileOut>, Problem> {
    let current = access::profile(&state, &caller, parse_id("profile", &id)?).await?;
    let now = Utc::now();
    let mut profile = patch.apply(current, now).map_err(|e| invalid(&e))?;
    profile.updated_at = now;
    if !state.domain.profiles.update(&profile).await.map_err(repo)? {
        return Err(not_found("profile"));
    }
    Ok(Json(ProfileOut::from(&profile)))
}

/// Deletes the profile and its badges.
#[utoipa::path(delete, path = "/v1/profiles/{id}", tag = "profiles", operation_id = "delete_profile",
    params(("id" = uuid::Uuid, Path, description = "the profile's id")),
    responses((status = 204), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let profile = access::profile(&state, &caller, parse_id("profile", &id)?).await?;
    let found = state
        .domain
        .profiles
        .delete(profile.id)
        .await
        .map_err(repo)?;
    no_content_if(found, "profile")
}

/// Marks the profile's onboarding done (idempotent).
#[utoipa::path(post, path = "/v1/profiles/{id}/onboarded", tag = "profiles",
    params(("id" = uuid::Uuid, Path, description = "the profile's id")),
    responses((status = 204), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn onboarded(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let profile = access::profile(&state, &caller, parse_id("profile", &id)?).await?;
    let found = state
        .domain
        .profiles
        .mark_onboarded(profile.id)
        .await
        .map_err(repo)?;
    no_content_if(found, "profile")
}

/// The profile's badges, earliest first.
#[utoipa::path(get, path = "/v1/profiles/{id}/badges", tag = "profiles",
    params(("id" = uuid::Uuid, Path, description = "the profile's id")),
    responses((status = 200, body = Vec<BadgeOut>), (status = 403), (status = 404)),
    security(("bearer" = [])))]
pub async fn badges(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<BadgeOut>>, Problem> {
    let profile = access::profile(&state, &caller, parse_id("profile", &id)?).await?;
    let badges = state
        .domain
        .badges
        .list_by_profile(profile.id)
        .await
        .map_err(repo)?;
    Ok(Json(badges.iter().map(BadgeOut::from).collect()))
}

/// Awards a badge: 201 with it when new, 200 with the badge already held of the same
/// configuration (nothing changed).
#[utoipa::path(post, path = "/v1/profiles/{id}/badges", tag = "profiles", request_body = NewBadge,
    params(("id" = uuid::Uuid, Path, description = "the profile's id")),
    responses((status = 201, body = BadgeOut), (status = 200, body = BadgeOut, description = "already held"),
        (status = 403), (status = 404), (status = 422)),
    security(("bearer" = [])))]
pub async fn award(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(new): Body<NewBadge>,
) -> Result<impl IntoResponse, Problem> {
    let profile = access::profile(&state, &caller, parse_id("profile", &id)?).await?;
    let badge = new
        .into_badge(profile.id, Utc::now())
        .map_err(|e| invalid(&e))?;
    Ok(
        match state.domain.badges.award(&badge).await.map_err(repo)? {
            AwardOutcome::Awarded(b) => (StatusCode::CREATED, Json(BadgeOut::from(&b))),
            AwardOutcome::AlreadyHeld(b) => (StatusCode::OK, Json(BadgeOut::from(&b))),
        },
    )
}
