//! Aggregates: the unit that is one document in Cosmos and several rows in PostgreSQL. Moving
//! data between the stores moves whole aggregates, so a copy is never half of a document.

use crate::entities::{
    Account, CompletedScenario, PendingSignup, Subscription, UserBadge, UserProfile,
};

/// An account with what its Cosmos document embeds.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountAggregate {
    pub account: Account,
    pub subscription: Option<Subscription>,
    pub completed_scenarios: Vec<CompletedScenario>,
}

/// A profile with its badges, and the Cosmos id of its account when it has one (a profile's
/// `AccountId` must spell the account's id as Cosmos knows it, which is not always a UUID).
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileAggregate {
    pub profile: UserProfile,
    pub badges: Vec<UserBadge>,
    pub account_cosmos_id: Option<String>,
}

/// One aggregate of the user domain.
#[derive(Debug, Clone, PartialEq)]
pub enum Aggregate {
    Account(Box<AccountAggregate>),
    Profile(Box<ProfileAggregate>),
    Signup(Box<PendingSignup>),
}
