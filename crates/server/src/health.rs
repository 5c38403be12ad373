//! `/healthz` (the process is alive) and `/readyz` (the stores this process uses in the current
//! phase are reachable, each probed with a bound).
//!
//! Readiness describes the process as it runs: with no Cosmos account configured the domain
//! API answers from PostgreSQL alone, so in development mode Cosmos is reported as not
//! configured and not needed, whatever the phase. In production (a JWKS configured) `serve`
//! starts without a Cosmos account only in `postgres-only`; if the phase later moves back to
//! one that writes Cosmos, such a process is not ready (it would answer from the wrong store),
//! and the answer says to restart it with a Cosmos account.

use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::{AppState, Problem};

/// The answer of `/readyz` when every needed store answered.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    pub ready: bool,
    /// The domain-wide phase the process sees (`phase show` names them).
    pub phase: &'static str,
    /// What the domain API calls: `dual-write router` (a Cosmos account is configured) or
    /// `postgresql alone`.
    pub backend: &'static str,
    pub checks: Vec<StoreCheck>,
}

/// One store's probe.
#[derive(Debug, Clone, Serialize)]
pub struct StoreCheck {
    pub store: &'static str,
    /// Whether this process needs this store in the phase (one that is not needed does not
    /// make the process unready, but is still reported).
    pub needed: bool,
    pub ok: bool,
    /// `reachable`, `not configured`, `timed out after ..`, or the error's class.
    pub detail: String,
}

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "alive" }))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = check(&state).await;
    if readiness.ready {
        return (StatusCode::OK, Json(readiness)).into_response();
    }
    let failing: Vec<String> = readiness
        .checks
        .iter()
        .filter(|c| c.needed && !c.ok)
        .map(|c| format!("{}: {}", c.store, c.detail))
        .collect();
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        format!(
            "phase {} needs stores this process cannot use ({})",
            readiness.phase,
            failing.join("; ")
        ),
    )
    .into_response()
}

/// Probes every store. PostgreSQL is needed in every phase: it holds the phase itself, the
/// retry journal and the outbox, even while Cosmos is the primary. Cosmos is needed while the
/// phase writes it (0 to 2) when an account is configured; with none, only in production (see
/// the module docs).
pub async fn check(state: &AppState) -> Readiness {
    let phase = state.phase.domain_phase();
    let postgres = probe(
        "postgresql",
        true,
        state.probe_timeout,
        mystira_postgres::ping(&state.pool),
    )
    .await;
    let cosmos_needed = phase.writes_cosmos();
    let cosmos = match &state.cosmos {
        // development: the API serves PostgreSQL alone by design, so Cosmos is not needed
        None if state.auth.is_development() => StoreCheck {
            store: "cosmos",
            needed: false,
            ok: false,
            detail: "not configured: this process serves from PostgreSQL alone (development \
                     mode)"
                .to_owned(),
        },
        None => StoreCheck {
            store: "cosmos",
            needed: cosmos_needed,
            ok: false,
            detail: if cosmos_needed {
                format!(
                    "not configured, and phase {} writes Cosmos: restart serve with the Cosmos \
                     account (--cosmos-endpoint, COSMOS_ENDPOINT or [cosmos] endpoint)",
                    phase.name()
                )
            } else {
                "not configured: this process serves from PostgreSQL alone".to_owned()
            },
        },
        // opening a container reads its properties: one real request to the account
        Some(store) => {
            probe(
                "cosmos",
                cosmos_needed,
                state.probe_timeout,
                store.container("Accounts"),
            )
            .await
        }
    };
    let checks = vec![postgres, cosmos];
    Readiness {
        ready: checks.iter().all(|c| c.ok || !c.needed),
        phase: phase.name(),
        backend: state.domain.backend.name(),
        checks,
    }
}

async fn probe<T, E: std::fmt::Display>(
    store: &'static str,
    needed: bool,
    timeout: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> StoreCheck {
    let (ok, detail) = match tokio::time::timeout(timeout, call).await {
        Ok(Ok(_)) => (true, "reachable".to_owned()),
        // driver and SDK errors name hosts and causes, never stored values
        Ok(Err(e)) => (false, e.to_string()),
        Err(_) => (false, format!("timed out after {} ms", timeout.as_millis())),
    };
    StoreCheck {
        store,
        needed,
        ok,
        detail,
    }
}
