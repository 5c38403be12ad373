//! The repository ports' contract (`mystira_test_support::contract`) through the dual-write
//! router, in phase 0 (Cosmos only), 1 (Cosmos first, then PostgreSQL) and 2 (PostgreSQL first,
//! then Cosmos): the same cases PostgreSQL and Cosmos run on their own, on a fresh PostgreSQL
//! database and a fresh Cosmos database per test (set up as `dual_write.rs` sets them up).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use mystira_cosmos_store::CosmosStore;
use mystira_domain::phase::Phase;
use mystira_dual_write::journal::FileJournal;
use mystira_dual_write::router::{DualWriteRouter, FixedPhase, RouterConfig};
use mystira_test_support::contract::{self, Ports};
use mystira_test_support::cosmos::user_domain;
use sqlx::PgPool;

/// The router in `phase` over `pool` and a fresh Cosmos database, that database (to drop after
/// the case) and the directory of the router's journal files (kept while the router lives).
async fn router(pool: PgPool, phase: Phase) -> (DualWriteRouter, CosmosStore, tempfile::TempDir) {
    let (store, repos) = user_domain("router-contract").await;
    let dir = tempfile::tempdir().unwrap();
    let files = FileJournal::open(dir.path().join("journal")).unwrap();
    let router = DualWriteRouter::new(
        pool,
        repos,
        Arc::new(FixedPhase(phase)),
        files,
        RouterConfig::default(),
    );
    (router, store, dir)
}

/// One `#[sqlx::test]` per contract case of `module`, through the router in the phase of the
/// enclosing module (`PHASE`).
macro_rules! contract_cases {
    ($module:ident: $($case:ident),* $(,)?) => {$(
        #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
        async fn $case(pool: PgPool) {
            let (router, store, _dir) = router(pool, PHASE).await;
            contract::$module::$case(&Ports::of(&router)).await;
            store.delete_database().await.expect("cleanup");
        }
    )*};
}

mod phase0 {
    use super::*;

    const PHASE: Phase = Phase::CosmosOnly;

    // Reads and writes go to Cosmos: the cases where the Cosmos repositories differ from the
    // contract are not run (see `repositories_cosmos.rs`).

    mystira_test_support::cosmos_contract_cases!(contract_cases);
}

mod phase1 {
    use super::*;

    const PHASE: Phase = Phase::DualWriteCosmosRead;

    // Reads go to Cosmos: the cases where the Cosmos repositories differ from the contract are
    // not run (see `repositories_cosmos.rs`).

    mystira_test_support::cosmos_contract_cases!(contract_cases);
}

mod phase2 {
    use super::*;

    const PHASE: Phase = Phase::DualWritePostgresRead;

    // Not run here: after `cleanup_expired` a deleted sign-up still reads back, from Cosmos
    // (a miss in PostgreSQL falls back to Cosmos, which has not been cleaned up yet).

    mod accounts {
        use super::*;

        contract_cases!(accounts:
            a_created_account_reads_back_equal_by_id_and_auth0_id,
            an_empty_auth0_id_is_stored_as_none,
            creating_an_existing_id_or_cosmos_id_is_a_duplicate_id_conflict,
            a_second_account_with_the_same_auth0_id_is_refused,
            an_overlong_display_name_is_refused_before_anything_is_written,
            find_by_email_ignores_case_and_returns_the_oldest_first,
            update_replaces_every_field_but_id_and_created_at,
            record_login_sets_last_login_at,
            deleting_an_account_removes_its_subscription_and_completions_and_detaches_its_profiles,
            list_pages_through_every_account_in_id_order,
            get_by_cosmos_id_finds_accounts_by_the_original_spelling_of_their_id,
        );
    }

    mod subscriptions {
        use super::*;

        contract_cases!(subscriptions:
            upserting_for_a_missing_account_is_a_missing_reference,
            an_overlong_tier_is_refused_before_anything_is_written,
            list_active_excludes_inactive_and_expired_and_pages_in_id_order,
        );
    }

    mod profiles {
        use super::*;

        contract_cases!(profiles:
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

        contract_cases!(badges:
            a_second_award_of_a_configuration_returns_the_first_badge,
            list_by_profile_returns_the_earliest_badge_first,
            two_concurrent_awards_of_one_configuration_store_exactly_one_badge,
            awarding_to_a_missing_profile_or_without_configuration_is_refused,
        );
    }

    mod completed_scenarios {
        use super::*;

        contract_cases!(completed_scenarios:
            completing_again_keeps_the_first_completion,
            list_by_account_returns_the_earliest_completion_first,
            concurrent_completions_store_one_row,
            completing_for_a_missing_account_or_an_empty_scenario_is_refused,
        );
    }

    mod pending_signups {
        use super::*;

        contract_cases!(pending_signups:
            a_created_signup_reads_back_equal_and_its_id_is_unique,
            the_right_code_verifies_the_newest_open_signup_ignoring_case,
            verify_reports_missing_and_expired_signups,
            wrong_codes_count_down_to_a_lockout_that_refuses_even_the_right_code,
            a_lockout_above_the_schema_ceiling_is_clamped_so_the_check_never_fires,
            a_magic_link_signup_is_stored_found_verified_and_consumed,
            a_signup_with_both_versions_keeps_both,
            a_signup_without_code_or_token_is_refused,
        );
    }
}
