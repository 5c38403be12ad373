//! The authenticated endpoints that exist so far: who the caller is, and the phase for
//! admins. **Planned:** the domain API over the dual-write router (accounts, subscription,
//! profiles, badges, completed scenarios, sign-ups) and the other admin endpoints.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::auth::Caller;
use crate::{AppState, Problem};

/// `GET /v1/me`: the caller as the service sees them (their own id and role).
pub async fn me(caller: Caller) -> Json<Value> {
    Json(json!({ "user_id": caller.user_id, "role": caller.role.as_str() }))
}

/// `GET /v1/admin/phase`: what `mystira-users phase show` reports (Admin and SuperAdmin only).
pub async fn admin_phase(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, Problem> {
    caller.require_admin()?;
    let status =
        mystira_migrate::phase::status(&state.pool, &mystira_migrate::phase::GateConfig::default())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "admin phase: cannot read the phase");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the phase cannot be read from PostgreSQL",
                )
            })?;
    Ok(Json(serde_json::to_value(status).unwrap_or(Value::Null)))
}
