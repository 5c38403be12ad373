//! The PostgreSQL side of mystira-users: the embedded schema migrations, the repositories that
//! implement the domain ports, and a private PostgreSQL cluster that starts itself when no
//! database is configured.

pub mod aggregates;
pub mod bookkeeping;
pub mod bulk;
pub mod error;
pub mod feed_checks;
pub mod heartbeats;
pub mod initial_load;
pub mod journal;
pub mod leases;
pub mod local_cluster;
pub mod outbox;
pub mod phase;
pub mod read_budget;
pub mod repos;
pub mod schema;
pub mod signup_guesses;
pub mod signup_throttle;

pub use error::map_sqlx_error;
pub use repos::{
    PgAccountRepository, PgBadgeRepository, PgCompletedScenarioRepository,
    PgPendingSignupRepository, PgProfileRepository, PgSubscriptionRepository,
};
pub use schema::{
    MIGRATOR, MigrationStatus, connect, ensure_database, migrate, ping, server_now, status,
};
