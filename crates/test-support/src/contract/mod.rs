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

/// The contract cases the Cosmos repositories hold today (every case but those the module doc
/// lists for them), one module per port: `cosmos_contract_cases!(m)` expands to
/// `mod accounts { use super::*; m!(accounts: case, ...); } ...`, where `m` is the caller's
/// macro that turns a case into a test on its store. Run by the Cosmos repositories' tests and
/// by the router in phases 0 and 1 (which read Cosmos); one list, so they cannot drift apart.
#[macro_export]
macro_rules! cosmos_contract_cases {
    ($m:ident) => {
        mod accounts {
            use super::*;

            $m!(accounts:
                a_created_account_reads_back_equal_by_id_and_auth0_id,
                an_empty_auth0_id_is_stored_as_none,
                creating_an_existing_id_or_cosmos_id_is_a_duplicate_id_conflict,
                a_second_account_with_the_same_auth0_id_is_refused,
                an_overlong_display_name_is_refused_before_anything_is_written,
                find_by_email_ignores_case_and_returns_the_oldest_first,
                record_login_sets_last_login_at,
                list_pages_through_every_account_in_id_order,
                get_by_cosmos_id_finds_accounts_by_the_original_spelling_of_their_id,
            );
        }

        mod subscriptions {
            use super::*;

            $m!(subscriptions:
                upserting_for_a_missing_account_is_a_missing_reference,
                an_overlong_tier_is_refused_before_anything_is_written,
            );
        }

        mod profiles {
            use super::*;

            $m!(profiles:
                a_created_profile_reads_back_equal,
                creating_conflicting_profiles_is_refused_with_the_reason,
                list_by_account_returns_the_accounts_profiles_oldest_first,
                update_replaces_the_fields_and_moves_updated_at_forward,
                deleting_a_profile_removes_its_badges,
                mark_onboarded_sets_the_flag_idempotently,
            );
        }

        mod badges {
            use super::*;

            $m!(badges:
                a_second_award_of_a_configuration_returns_the_first_badge,
                list_by_profile_returns_the_earliest_badge_first,
                two_concurrent_awards_of_one_configuration_store_exactly_one_badge,
            );
        }

        mod completed_scenarios {
            use super::*;

            $m!(completed_scenarios:
                concurrent_completions_store_one_row,
                completing_for_a_missing_account_or_an_empty_scenario_is_refused,
            );
        }

        mod pending_signups {
            use super::*;

            $m!(pending_signups:
                a_created_signup_reads_back_equal_and_its_id_is_unique,
                the_right_code_verifies_the_newest_open_signup_ignoring_case,
                verify_reports_missing_and_expired_signups,
                wrong_codes_count_down_to_a_lockout_that_refuses_even_the_right_code,
                a_lockout_above_the_schema_ceiling_is_clamped_so_the_check_never_fires,
                cleanup_deletes_only_signups_expired_more_than_a_day_ago,
                a_magic_link_signup_is_stored_found_verified_and_consumed,
                a_signup_with_both_versions_keeps_both,
                a_signup_without_code_or_token_is_refused,
            );
        }
    };
}
