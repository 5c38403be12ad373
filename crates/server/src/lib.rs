//! The user-domain service, `mystira-users serve`: HTTP over the stores the migration phase
//! says, watched from outside.
//!
//! What exists (the first slices of issue 9): the process, its graceful shutdown, `/healthz`,
//! `/readyz` (the stores this phase needs are reachable), `/metrics` (Prometheus text:
//! requests, the phase, the retry journal, the outbox, the last verify and the backfill), JWT
//! bearer authentication ([`auth`]) with `/v1/me` and the admin-only `/v1/admin/phase`.
//! **Planned, not built yet:** the domain API over the dual-write router, the other admin
//! endpoints, `/openapi.json`.
//!
//! Layering: the CLI wires (flags, config, connections); this crate holds the HTTP layer; the
//! stores and the phase logic stay in `mystira-postgres` and `mystira-migrate`.

mod api;
pub mod auth;
pub mod health;
pub mod metrics;
mod problem;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use mystira_cosmos_client::CosmosStore;
use mystira_migrate::phase::PhaseWatcher;
use sqlx::PgPool;
use tokio::net::TcpListener;

pub use metrics::Metrics;
pub use problem::Problem;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// `None` when no Cosmos account is configured (development on PostgreSQL alone).
    pub cosmos: Option<CosmosStore>,
    pub phase: PhaseWatcher,
    pub metrics: Arc<Metrics>,
    /// Verifies the bearer tokens of the authenticated endpoints.
    pub auth: Arc<auth::Authenticator>,
    /// How long a readiness probe waits for each store.
    pub probe_timeout: Duration,
}

/// The service's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/v1/me", get(api::me))
        .route("/v1/admin/phase", get(api::admin_phase))
        .fallback(problem::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track_requests,
        ))
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` resolves, then stops accepting and
/// finishes the requests in flight (axum's graceful shutdown) before returning.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
