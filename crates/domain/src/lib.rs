//! The mystira user domain: entities, validated value types, the mapping from Cosmos ids to
//! PostgreSQL keys, the repository ports that every store implements, and the migration
//! phase with its routing policy.
//!
//! This crate does no I/O. Its value types reject exactly what the PostgreSQL schema's CHECK
//! constraints and column widths reject, so a value that gets this far will not be turned away
//! by the database, and a value that does not is refused with an error naming the field and the
//! rule it broke.

pub mod aggregate;
pub mod entities;
pub mod error;
pub mod ids;
pub mod input;
pub mod phase;
pub mod ports;
pub mod values;

pub use entities::{
    Account, AccountSettings, CodeCheck, CompletedScenario, MagicLink, PendingSignup, Subscription,
    UserBadge, UserProfile,
};
pub use error::{RepoError, ValidationError};
pub use ids::{COSMOS_ID_NAMESPACE, MappedId};
pub use values::{AgeGroup, Email, Role, Secret, SignupCode, SignupStatus, SubscriptionType};
