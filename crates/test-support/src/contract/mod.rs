//! The repository ports' contract (`mystira_domain::ports`), written once and run against
//! every store that implements them: PostgreSQL (`crates/postgres/tests/repositories_pg.rs`),
//! Cosmos (`crates/cosmos-store/tests/repositories_cosmos.rs`) and the dual-write router in
//! each phase (`crates/dual-write/tests/router_contract.rs`).
//!
//! Each case is a function over [`Ports`], the six repositories of one store on a fresh,
//! empty database; it panics when the store breaks the contract. What only one store has (its
//! schema, its document shapes, its faults) stays in that store's own tests; a case that
//! returns a value hands a store's own test what it needs to check its rows after the case.
//!
//! Every case holds on PostgreSQL. Where a store differs today, its test file leaves the case
//! out and says so:
//! - the Cosmos repositories (and the router in phases 0 and 1, which reads Cosmos):
//!   `accounts::update_replaces_every_field_but_id_and_created_at` (the stored cosmos id is
//!   kept), `accounts::deleting_an_account_removes_its_subscription_and_completions_and_detaches_its_profiles`
//!   (the profile keeps naming the deleted account, as `delete_account_removes_subscription_and_completions_and_leaves_profiles` documents), `badges::awarding_to_a_missing_profile_or_without_configuration_is_refused`
//!   (a badge id is not unique across configurations), `completed_scenarios::completing_again_keeps_the_first_completion`
//!   and `completed_scenarios::list_by_account_returns_the_earliest_completion_first` (a
//!   completion's time is not the one given), `subscriptions::list_active_excludes_inactive_and_expired_and_pages_in_id_order`
//!   (the last page still names a next one);
//! - the router in phase 2: `pending_signups::cleanup_deletes_only_signups_expired_more_than_a_day_ago`
//!   (a sign-up deleted from PostgreSQL reads back from Cosmos, where a miss falls back to).

pub mod accounts;
pub mod badges;
pub mod completed_scenarios;
pub mod fixtures;
pub mod pending_signups;
pub mod profiles;
pub mod subscriptions;

use mystira_domain::ports::{
    AccountRepository, BadgeRepository, CompletedScenarioRepository, PendingSignupRepository,
    ProfileRepository, SubscriptionRepository,
};

/// The six repositories of one store, on a database no other test uses.
#[derive(Clone, Copy)]
pub struct Ports<'a> {
    pub accounts: &'a dyn AccountRepository,
    pub subscriptions: &'a dyn SubscriptionRepository,
    pub profiles: &'a dyn ProfileRepository,
    pub badges: &'a dyn BadgeRepository,
    pub completions: &'a dyn CompletedScenarioRepository,
    pub signups: &'a dyn PendingSignupRepository,
}

impl std::fmt::Debug for Ports<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ports")
    }
}

impl<'a> Ports<'a> {
    /// The ports of a store whose one value implements all six (the dual-write router).
    pub fn of<R>(store: &'a R) -> Self
    where
        R: AccountRepository
            + SubscriptionRepository
            + ProfileRepository
            + BadgeRepository
            + CompletedScenarioRepository
            + PendingSignupRepository,
    {
        Self {
            accounts: store,
            subscriptions: store,
            profiles: store,
            badges: store,
            completions: store,
            signups: store,
        }
    }
}
