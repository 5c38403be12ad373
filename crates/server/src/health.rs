//! `/healthz` (the process is alive) and `/readyz` (the stores the current phase needs are
//! reachable, each probed with a bound).

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
    pub checks: Vec<StoreCheck>,
}

/// One store's probe.
#[derive(Debug, Clone, Serialize)]
pub struct StoreCheck {
    pub store: &'static str,
    /// Whether the phase needs this store (one that is not needed does not make the process
    /// unready, but is still reported).
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
            "phase {} needs stores that do not answer ({})",
            readiness.phase,
            failing.join("; ")
        ),
    )
    .into_response()
}

/// Probes every store. PostgreSQL is needed in every phase: it holds the phase itself, the
/// retry journal and the outbox, even while Cosmos is the primary. Cosmos is needed while the
/// phase writes it (0 to 2).
pub async fn check(state: &AppState) -> Readiness {
    let phase = state.phase.domain_phase();
    let postgres = probe(
        "postgresql",
        true,
        state.probe_timeout,
        sqlx::query("select 1").execute(&state.pool),
    )
    .await;
    let cosmos_needed = phase.writes_cosmos();
    let cosmos = match &state.cosmos {
        None => StoreCheck {
            store: "cosmos",
            needed: cosmos_needed,
            ok: false,
            detail: "not configured".to_owned(),
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
