//! The six repository ports the API calls, behind one handle: the dual-write router when a
//! Cosmos account is configured (so every call is routed by the phase, as the app's would be),
//! or PostgreSQL's repositories alone when none is (development on the self-started cluster).

use std::sync::Arc;

use mystira_domain::ports::{
    AccountRepository, BadgeRepository, CompletedScenarioRepository, PendingSignupRepository,
    ProfileRepository, SubscriptionRepository,
};
use mystira_dual_write::router::DualWriteRouter;
use mystira_postgres::{
    PgAccountRepository, PgBadgeRepository, PgCompletedScenarioRepository,
    PgPendingSignupRepository, PgProfileRepository, PgSubscriptionRepository,
};
use sqlx::PgPool;

/// Which stores serve the domain API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The dual-write router: the phase decides (see `mystira_dual_write::router`).
    Router,
    /// PostgreSQL alone, whatever the phase says (no Cosmos account is configured).
    PostgresOnly,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Router => "dual-write router",
            Self::PostgresOnly => "postgresql alone",
        }
    }
}

/// The ports (cheap to clone).
#[derive(Clone)]
pub struct Domain {
    pub backend: Backend,
    pub accounts: Arc<dyn AccountRepository>,
    pub subscriptions: Arc<dyn SubscriptionRepository>,
    pub profiles: Arc<dyn ProfileRepository>,
    pub badges: Arc<dyn BadgeRepository>,
    pub completed: Arc<dyn CompletedScenarioRepository>,
    pub signups: Arc<dyn PendingSignupRepository>,
}

impl std::fmt::Debug for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Domain")
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl Domain {
    /// Every port through the router.
    pub fn router(router: DualWriteRouter) -> Self {
        let r = Arc::new(router);
        Self {
            backend: Backend::Router,
            accounts: r.clone(),
            subscriptions: r.clone(),
            profiles: r.clone(),
            badges: r.clone(),
            completed: r.clone(),
            signups: r,
        }
    }

    /// Every port on PostgreSQL.
    pub fn postgres(pool: &PgPool) -> Self {
        Self {
            backend: Backend::PostgresOnly,
            accounts: Arc::new(PgAccountRepository::new(pool.clone())),
            subscriptions: Arc::new(PgSubscriptionRepository::new(pool.clone())),
            profiles: Arc::new(PgProfileRepository::new(pool.clone())),
            badges: Arc::new(PgBadgeRepository::new(pool.clone())),
            completed: Arc::new(PgCompletedScenarioRepository::new(pool.clone())),
            signups: Arc::new(PgPendingSignupRepository::new(pool.clone())),
        }
    }
}
