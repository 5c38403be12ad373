//! The user-domain service, `mystira-users serve`: HTTP over the stores the migration phase
//! says, watched from outside.
//!
//! What exists: the process, its graceful shutdown, `/healthz`, `/readyz` (the stores this
//! phase needs are reachable), `/metrics` (Prometheus text: requests, rate limits, the phase,
//! the retry journal, the outbox, the last verify and the backfill), JWT bearer
//! authentication ([`auth`]), the domain API over [`Domain`] (the dual-write router, or
//! PostgreSQL alone) with per-user authorisation, sign-ups with rate limits, the phase for
//! admins (shown and set through the CLI's gates and audit), the retry journal, the outbox,
//! the runs and the quarantine for admins, and `/openapi.json` generated from the handlers.
//!
//! Layering: the CLI parses the flags and the config file and makes the connections;
//! [`Application::build`] assembles the service from them (the phase watcher, the router and
//! its lifecycle, the listener) and [`Application::run_until_stopped`] runs it; this crate
//! holds the HTTP layer; the stores stay in `mystira-postgres`, the phase logic, the router and
//! the status read in `mystira-dual-write`.

pub mod api;
pub mod application;
pub mod auth;
pub mod client_addr;
pub mod connections;
mod domain;
pub mod health;
pub mod metrics;
mod private_file;
mod problem;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use mystira_cosmos_store::CosmosStore;
use mystira_dual_write::phase::PhaseWatcher;
use sqlx::PgPool;
use tokio::net::TcpListener;

pub use api::signups::{FileMailer, RateLimit, SignupSettings};
pub use application::{Application, ApplicationConfig, BuildError};
pub use client_addr::{Cidr, TrustedProxies};
pub use domain::{Backend, Domain};
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
    /// The domain's ports.
    pub domain: Domain,
    /// How sign-ups behave (code lifetime, lock-out, rate limits, the mailer).
    pub signups: Arc<SignupSettings>,
    /// Verifies the bearer tokens of the authenticated endpoints.
    pub auth: Arc<auth::Authenticator>,
    /// How long a readiness probe waits for each store.
    pub probe_timeout: Duration,
    /// The phase gates' settings (the maximum verify age), as `mystira-users phase` has them.
    pub gates: mystira_dual_write::phase::GateConfig,
}

/// The service's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/openapi.json", get(api::openapi::document))
        .merge(api::routes())
        .fallback(problem::not_found)
        // problem+json for every error, before the request is counted with its final status
        .layer(axum::middleware::from_fn(problem::uniform))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track_requests,
        ))
        .with_state(state)
}

/// Serves `app(state)` on `listener` with the default [`connections::Limits`] until
/// `shutdown` resolves (see [`serve_with`]).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<connections::Stopped> {
    serve_with(listener, state, connections::Limits::default(), shutdown).await
}

/// Serves `app(state)` on `listener` within `limits` until `shutdown` resolves, then stops
/// accepting, lets the requests in flight be answered for at most the shutdown timeout, and
/// cuts the connections still open then.
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    limits: connections::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<connections::Stopped> {
    let metrics = state.metrics.clone();
    connections::serve(listener, app(state), limits, metrics, shutdown).await
}
