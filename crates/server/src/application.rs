//! The service assembled from its parts and run: [`Application::build`] starts the phase
//! watcher, the dual-write router with its background work (when a Cosmos account is
//! configured), chooses the domain's ports and binds the listener;
//! [`Application::run_until_stopped`] serves until told to stop, then shuts down in order. The
//! caller (`mystira-users serve`) parses the flags and the config file and makes the
//! connections; this is where they become a service.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mystira_cosmos_store::CosmosStore;
use mystira_dual_write::hosting::{HostedRouter, HostingError};
use mystira_dual_write::phase::{GateConfig, PhaseWatcher};
use mystira_dual_write::router::RouterConfig;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::connections::{Limits, Stopped};
use crate::{AppState, Domain, Metrics, SignupSettings};

/// What the service is built from: the connections the caller made and its settings.
#[derive(Debug)]
pub struct ApplicationConfig {
    /// A pool on the database, its schema migrated.
    pub pool: PgPool,
    /// The Cosmos account; `None` serves the domain API from PostgreSQL alone.
    pub cosmos: Option<CosmosStore>,
    /// Where to listen (port 0 picks a free one: [`Application::address`] says which).
    pub listen: SocketAddr,
    /// How often the phase is re-read besides PostgreSQL's notifications.
    pub phase_poll: Duration,
    /// Phase 2: how long a write waits for its delivery to Cosmos before it is answered and
    /// the delivery left to the background and the relay.
    pub delivery_deadline: Duration,
    /// Where the router journals phase-1 writes when PostgreSQL is down (`None`: the default
    /// journal directory).
    pub journal_dir: Option<PathBuf>,
    /// Verifies the bearer tokens; a development authenticator means development mode.
    pub auth: Arc<Authenticator>,
    pub signups: Arc<SignupSettings>,
    pub limits: Limits,
    /// How long a readiness probe waits for each store.
    pub probe_timeout: Duration,
    /// The phase gates of `PUT /v1/admin/phase`.
    pub gates: GateConfig,
}

/// Why the service could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error("cannot read the migration phase")]
    Phase(#[source] mystira_domain::RepoError),
    /// Production with no Cosmos account while the phase writes Cosmos: the service would
    /// answer from PostgreSQL alone while Cosmos is a store the phase writes (in phases 0 and
    /// 1, the primary). A configuration mistake.
    #[error(
        "no Cosmos account is configured, and the phase is {phase}, which writes Cosmos: in \
         production (a JWKS is configured) serve would answer from PostgreSQL alone. Configure \
         the account (--cosmos-endpoint, COSMOS_ENDPOINT or [cosmos] endpoint, with its key), \
         or serve without Cosmos only once the phase is postgres-only"
    )]
    PostgresAlone { phase: &'static str },
    #[error(transparent)]
    Router(#[from] HostingError),
    #[error("cannot listen on {address}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the bound address")]
    Address(#[source] std::io::Error),
}

/// The service, built and bound, not serving yet.
#[derive(Debug)]
pub struct Application {
    address: SocketAddr,
    listener: TcpListener,
    state: AppState,
    hosted: Option<HostedRouter>,
    limits: Limits,
}

impl Application {
    /// Starts the phase watcher, refuses what would be unsafe to serve (production with no
    /// Cosmos account while the phase writes Cosmos), starts the dual-write router and its
    /// background work when a Cosmos account is given and binds the listener (the caller
    /// logs `serving` with [`Application::address`]: scripts read that line under the
    /// command's own log target).
    pub async fn build(config: ApplicationConfig) -> Result<Self, BuildError> {
        let ApplicationConfig {
            pool,
            cosmos,
            listen,
            phase_poll,
            delivery_deadline,
            journal_dir,
            auth,
            signups,
            limits,
            probe_timeout,
            gates,
        } = config;
        let phase = PhaseWatcher::start(pool.clone(), phase_poll)
            .await
            .map_err(BuildError::Phase)?;
        let metrics = Arc::new(Metrics::new());
        refuse_postgres_alone(!auth.is_development(), cosmos.is_some(), &phase)?;
        let hosted = match &cosmos {
            Some(store) => Some(
                HostedRouter::start(
                    &pool,
                    store,
                    journal_dir.as_deref(),
                    phase.clone(),
                    RouterConfig {
                        // the router's store-write times and dual-write failures, in /metrics
                        observer: Some(metrics.clone()),
                        phase2_delivery_deadline: delivery_deadline,
                        ..RouterConfig::default()
                    },
                )
                .await?,
            ),
            None => {
                tracing::warn!(
                    "no Cosmos account configured: the domain API serves PostgreSQL alone, \
                     whatever the phase says"
                );
                None
            }
        };
        let domain = match &hosted {
            Some(h) => Domain::router(h.router.clone()),
            None => Domain::postgres(&pool),
        };
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| BuildError::Listen {
                address: listen,
                source,
            })?;
        let address = listener.local_addr().map_err(BuildError::Address)?;
        let state = AppState {
            pool,
            cosmos,
            phase,
            metrics,
            domain,
            signups,
            auth,
            probe_timeout,
            gates,
        };
        Ok(Self {
            address,
            listener,
            state,
            hosted,
            limits,
        })
    }

    /// The address the listener is bound to.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What the handlers share.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets the requests in flight be
    /// answered (or cuts them at the shutdown timeout), stops the router's background work
    /// and closes the database connections.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<Stopped> {
        let Self {
            listener,
            state,
            hosted,
            limits,
            ..
        } = self;
        let pool = state.pool.clone();
        let served = crate::serve_with(listener, state, limits, shutdown).await;
        // the requests are answered (or cut at the deadline); what they left to the background
        // work is finished or journalled before the process goes. The background pass and the
        // database connections get the same deadline again: a Cosmos that hangs holds a
        // delivery (inline or the relay's) and its connection, and must not keep the process
        // from ending; what such a delivery did not finish stays in the outbox for the next
        // relay
        if let Some(hosted) = hosted
            && hosted.stop_within(limits.shutdown_timeout).await.is_none()
        {
            tracing::warn!(
                deadline_seconds = limits.shutdown_timeout.as_secs(),
                "the background pass (journal replay, outbox relay) did not finish by the \
                 shutdown deadline: dropped, its work stays queued"
            );
        }
        let stopped = served?;
        if tokio::time::timeout(limits.shutdown_timeout, pool.close())
            .await
            .is_err()
        {
            tracing::warn!(
                deadline_seconds = limits.shutdown_timeout.as_secs(),
                "database connections still in use at the shutdown deadline (a delivery \
                 waiting on Cosmos): closed with the process"
            );
        }
        Ok(stopped)
    }
}

/// Production with no Cosmos account answers from PostgreSQL alone: right only once the phase
/// is `postgres-only`. Before, Cosmos is a store the phase writes (and, in phases 0 and 1, the
/// primary), so such a process would answer from the wrong store: it does not start.
/// (Development mode serves PostgreSQL alone whatever the phase, and `/readyz` says so.)
fn refuse_postgres_alone(
    production: bool,
    with_cosmos: bool,
    phase: &PhaseWatcher,
) -> Result<(), BuildError> {
    let phase = phase.domain_phase();
    if !production || with_cosmos || !phase.writes_cosmos() {
        return Ok(());
    }
    Err(BuildError::PostgresAlone {
        phase: phase.name(),
    })
}
