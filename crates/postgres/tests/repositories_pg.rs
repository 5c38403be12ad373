//! The PostgreSQL repositories against a real, freshly migrated database per test: the ports'
//! contract (`mystira_test_support::contract`, the same cases Cosmos and the dual-write router
//! run), and what only PostgreSQL has: every constraint surfacing as its domain error, the
//! cascades and the `updated_at` trigger as rows, the views, the schema's functions, and the
//! concurrency promises of the ports across connections.
#![allow(clippy::unwrap_used)]

use chrono::Duration;
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::*;
use mystira_domain::*;
use mystira_postgres::map_sqlx_error;
use mystira_postgres::repos::*;
use mystira_test_support::contract::fixtures::{badge, email, now, subscription};
use mystira_test_support::contract::{self, Ports};
use sqlx::PgPool;
use uuid::Uuid;

/// The six PostgreSQL repositories on one pool.
struct PgStore {
    accounts: PgAccountRepository,
    subscriptions: PgSubscriptionRepository,
    profiles: PgProfileRepository,
    badges: PgBadgeRepository,
    completions: PgCompletedScenarioRepository,
    signups: PgPendingSignupRepository,
}

impl PgStore {
    fn new(pool: &PgPool) -> Self {
        Self {
            accounts: PgAccountRepository::new(pool.clone()),
            subscriptions: PgSubscriptionRepository::new(pool.clone()),
            profiles: PgProfileRepository::new(pool.clone()),
            badges: PgBadgeRepository::new(pool.clone()),
            completions: PgCompletedScenarioRepository::new(pool.clone()),
            signups: PgPendingSignupRepository::new(pool.clone()),
        }
    }

    fn ports(&self) -> Ports<'_> {
        Ports {
            accounts: &self.accounts,
            subscriptions: &self.subscriptions,
            profiles: &self.profiles,
            badges: &self.badges,
            completions: &self.completions,
            signups: &self.signups,
        }
    }
}

/// One `#[sqlx::test]` per contract case of `module`, on a fresh database.
macro_rules! contract_cases {
    ($module:ident: $($case:ident),* $(,)?) => {$(
        #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
        async fn $case(pool: PgPool) {
            contract::$module::$case(&PgStore::new(&pool).ports()).await;
        }
    )*};
}

async fn stored_account(pool: &PgPool, address: &str) -> Account {
    contract::accounts::stored_account(&PgStore::new(pool).ports(), address).await
}

async fn stored_profile(pool: &PgPool, account_id: Option<Uuid>) -> UserProfile {
    contract::profiles::stored_profile(&PgStore::new(pool).ports(), account_id).await
}

async fn count(pool: &PgPool, sql: &'static str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("count query")
}

/// Runs a statement that PostgreSQL refuses and maps its error the way the repositories do.
async fn refused(pool: &PgPool, entity: &'static str, sql: &'static str) -> RepoError {
    let err = sqlx::query(sql)
        .execute(pool)
        .await
        .expect_err("the statement must be refused");
    map_sqlx_error(entity, err)
}

mod accounts {
    use super::*;

    contract_cases!(accounts:
        an_empty_auth0_id_is_stored_as_none,
        creating_an_existing_id_or_cosmos_id_is_a_duplicate_id_conflict,
        a_second_account_with_the_same_auth0_id_is_refused,
        an_overlong_display_name_is_refused_before_anything_is_written,
        find_by_email_ignores_case_and_returns_the_oldest_first,
        update_replaces_every_field_but_id_and_created_at,
        record_login_sets_last_login_at,
        list_pages_through_every_account_in_id_order,
        get_by_cosmos_id_finds_accounts_by_the_original_spelling_of_their_id,
    );

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_created_account_reads_back_equal_by_id_and_auth0_id(pool: PgPool) {
        let a = contract::accounts::a_created_account_reads_back_equal_by_id_and_auth0_id(
            &PgStore::new(&pool).ports(),
        )
        .await;
        // the settings are stored under the app's property names, unknown ones kept
        let settings: serde_json::Value =
            sqlx::query_scalar("select settings from accounts where id = $1")
                .bind(a.id)
                .fetch_one(&pool)
                .await
                .expect("settings");
        assert_eq!(settings["Theme"], "dark");
        assert_eq!(settings["FutureFlag"], 3);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn deleting_an_account_removes_its_subscription_and_completions_and_detaches_its_profiles(
        pool: PgPool,
    ) {
        let deleted = contract::accounts::deleting_an_account_removes_its_subscription_and_completions_and_detaches_its_profiles(
            &PgStore::new(&pool).ports(),
        )
        .await;
        // the rows are gone, not merely hidden from the ports
        assert_eq!(
            count(
                &pool,
                "select count(*) from subscriptions where account_id = $1",
                deleted.deleted
            )
            .await,
            0
        );
        assert_eq!(
            count(
                &pool,
                "select count(*) from completed_scenarios where account_id = $1",
                deleted.deleted
            )
            .await,
            0
        );
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn check_constraints_surface_as_validation_errors_naming_the_field(pool: PgPool) {
        let bad_email = refused(
            &pool,
            "accounts",
            "insert into accounts (email) values ('not an email')",
        )
        .await;
        assert!(
            matches!(
                bad_email,
                RepoError::Invalid(ValidationError::InvalidEmail { field: "email", .. })
            ),
            "{bad_email:?}"
        );
        let bad_role = refused(
            &pool,
            "accounts",
            "insert into accounts (email, role) values ('a@example.com', 'root')",
        )
        .await;
        assert!(
            matches!(
                bad_role,
                RepoError::Invalid(ValidationError::InvalidRole { field: "role" })
            ),
            "{bad_role:?}"
        );
        let bad_age = refused(
            &pool,
            "user_profiles",
            "insert into user_profiles (age_group) values ('toddlers')",
        )
        .await;
        assert!(
            matches!(
                bad_age,
                RepoError::Invalid(ValidationError::InvalidAgeGroup {
                    field: "age_group",
                    ..
                })
            ),
            "{bad_age:?}"
        );
        let bad_signup_email = refused(
            &pool,
            "pending_signups",
            "insert into pending_signups (email, code, expires_at) values ('x@y', '1', now())",
        )
        .await;
        assert!(
            matches!(
                bad_signup_email,
                RepoError::Invalid(ValidationError::InvalidEmail { field: "email", .. })
            ),
            "{bad_signup_email:?}"
        );
        let too_many_attempts = refused(
            &pool,
            "pending_signups",
            "insert into pending_signups (email, code, expires_at, failed_attempts) \
             values ('a@example.com', '1', now(), 11)",
        )
        .await;
        assert!(
            matches!(
                too_many_attempts,
                RepoError::Invalid(ValidationError::OutOfRange {
                    field: "failed_attempts",
                    ..
                })
            ),
            "{too_many_attempts:?}"
        );
        // the message names the rule, never the rejected value or the SQL
        let text = bad_email.to_string();
        assert!(
            !text.contains("not an email") && !text.contains("insert"),
            "{text}"
        );
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn unique_constraints_surface_as_their_conflict_kinds(pool: PgPool) {
        let a = stored_account(&pool, "a@example.com").await;
        let p = stored_profile(&pool, Some(a.id)).await;
        PgSubscriptionRepository::new(pool.clone())
            .upsert_for_account(&subscription(a.id))
            .await
            .expect("subscription");
        PgBadgeRepository::new(pool.clone())
            .award(&badge(p.id, "cfg-1"))
            .await
            .expect("badge");
        PgCompletedScenarioRepository::new(pool.clone())
            .mark_completed(a.id, "scenario-a", now())
            .await
            .expect("completion");
        let cases: [(&'static str, &'static str, ConflictKind); 3] = [
            (
                "subscriptions",
                "insert into subscriptions (account_id) select id from accounts",
                ConflictKind::DuplicateSubscription,
            ),
            (
                "user_badges",
                "insert into user_badges (user_profile_id, badge_configuration_id, badge_name, \
                 axis) select id, 'cfg-1', 'b', 'a' from user_profiles",
                ConflictKind::DuplicateBadge,
            ),
            (
                "completed_scenarios",
                "insert into completed_scenarios (account_id, scenario_id) \
                 select id, 'scenario-a' from accounts",
                ConflictKind::DuplicateCompletedScenario,
            ),
        ];
        for (entity, sql, kind) in cases {
            let err = refused(&pool, entity, sql).await;
            assert_eq!(err.conflict_kind(), Some(kind), "{err}");
        }
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_stored_value_the_domain_rejects_is_a_store_error_naming_the_column(pool: PgPool) {
        let repo = PgAccountRepository::new(pool.clone());
        let a = stored_account(&pool, "a@example.com").await;
        sqlx::query("update accounts set settings = '[1, 2]' where id = $1")
            .bind(a.id)
            .execute(&pool)
            .await
            .expect("corrupt settings");
        match repo.get(a.id).await {
            Err(RepoError::Store(message)) => assert!(message.contains("settings"), "{message}"),
            other => panic!("expected a store error, got {other:?}"),
        }
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn migrate_account_from_cosmos_keeps_a_non_uuid_id_and_updates_on_rerun(pool: PgPool) {
        let repo = PgAccountRepository::new(pool.clone());
        let cosmos_id = "01HF3K9Q2Z8Y7X6W5V4T3S2R1Q";
        let migrate = async |display_name: &str| -> Uuid {
            sqlx::query_scalar(
                "select migrate_account_from_cosmos($1, '', ' Ada@Example.com ', $2, 'admin', \
                 '{\"Theme\": \"dark\"}', now() - interval '1 day', now())",
            )
            .bind(cosmos_id)
            .bind(display_name)
            .fetch_one(&pool)
            .await
            .expect("migrate_account_from_cosmos")
        };
        let first = migrate("Ada").await;
        assert_eq!(first, MappedId::from_source(cosmos_id).uuid);
        let found = repo
            .get_by_cosmos_id(cosmos_id)
            .await
            .expect("lookup")
            .expect("found by its original id");
        assert_eq!(found.id, first);
        assert_eq!(found.cosmos_id.as_deref(), Some(cosmos_id));
        assert_eq!(found.role, Role::Admin);
        assert_eq!(found.auth0_user_id, None);
        assert_eq!(found.email.as_str(), "Ada@Example.com");
        assert_eq!(found.settings.theme, "dark");

        let second = migrate("Ada Lovelace").await;
        assert_eq!(second, first);
        let all = repo.list(PageRequest::first(10)).await.expect("list");
        assert_eq!(all.items.len(), 1);
        assert_eq!(all.items[0].display_name, "Ada Lovelace");
    }
}

mod subscriptions {
    use super::*;
    use mystira_test_support::contract::subscriptions::mixed_subscriptions;

    contract_cases!(subscriptions:
        upserting_for_a_missing_account_is_a_missing_reference,
        an_overlong_tier_is_refused_before_anything_is_written,
        list_active_excludes_inactive_and_expired_and_pages_in_id_order,
    );

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn upsert_creates_then_replaces_keeping_id_and_created_at(pool: PgPool) {
        let repo = PgSubscriptionRepository::new(pool.clone());
        let a = stored_account(&pool, "a@example.com").await;
        assert_eq!(repo.get_for_account(a.id).await.expect("none yet"), None);
        let first = subscription(a.id);
        let stored = repo.upsert_for_account(&first).await.expect("create");
        assert_eq!(stored, first);
        assert_eq!(
            repo.get_for_account(a.id).await.expect("get"),
            Some(first.clone())
        );
        assert_eq!(
            repo.upsert_for_account(&first).await.expect("again").id,
            first.id
        );

        let mut replacement = subscription(a.id);
        replacement.subscription_type = SubscriptionType::Lifetime;
        replacement.tier = "Lifetime".into();
        replacement.end_date = Some(now() + Duration::days(3650));
        replacement.purchase_token = None;
        replacement.purchased_scenarios = vec![];
        replacement.created_at = now() + Duration::days(1);
        replacement.updated_at = now() - Duration::days(10);
        let before = now();
        let stored = repo
            .upsert_for_account(&replacement)
            .await
            .expect("replace");
        assert_eq!(stored.id, first.id);
        assert_eq!(stored.created_at, first.created_at);
        assert_eq!(stored.subscription_type, SubscriptionType::Lifetime);
        assert_eq!(stored.tier, "Lifetime");
        assert_eq!(stored.purchase_token, None);
        assert!(stored.purchased_scenarios.is_empty());
        assert_eq!(stored.end_date, replacement.end_date);
        // the trigger stamps the time of the write over the given updated_at
        assert!(stored.updated_at >= before, "updated_at moves forward");
        assert_eq!(repo.get_for_account(a.id).await.expect("get"), Some(stored));
        assert_eq!(
            count(
                &pool,
                "select count(*) from subscriptions where account_id = $1",
                a.id
            )
            .await,
            1
        );
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn null_purchased_scenarios_read_as_none_bought(pool: PgPool) {
        let repo = PgSubscriptionRepository::new(pool.clone());
        let a = stored_account(&pool, "a@example.com").await;
        repo.upsert_for_account(&subscription(a.id))
            .await
            .expect("create");
        sqlx::query("update subscriptions set purchased_scenarios = null where account_id = $1")
            .bind(a.id)
            .execute(&pool)
            .await
            .expect("null the array");
        let read = repo
            .get_for_account(a.id)
            .await
            .expect("get")
            .expect("exists");
        assert!(read.purchased_scenarios.is_empty());
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn the_active_subscriptions_view_excludes_inactive_and_expired(pool: PgPool) {
        let (active, _) = mixed_subscriptions(&PgStore::new(&pool).ports()).await;
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("select id, email from active_subscriptions order by id")
                .fetch_all(&pool)
                .await
                .expect("view");
        assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), active);
        assert!(rows.iter().all(|r| r.1.ends_with("@example.com")));
    }
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

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn keep_source_timestamps_makes_the_trigger_keep_the_written_updated_at(pool: PgPool) {
        let p = stored_profile(&pool, None).await;
        let mut copied = p.clone();
        copied.updated_at = now() - Duration::days(10);
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query("set local mystira.keep_source_timestamps = 'on'")
            .execute(&mut *tx)
            .await
            .expect("set local");
        assert!(
            mystira_postgres::repos::profiles::update_profile(&mut *tx, &copied)
                .await
                .expect("update in transaction")
        );
        tx.commit().await.expect("commit");
        let read = PgProfileRepository::new(pool.clone())
            .get(p.id)
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(read.updated_at, copied.updated_at);
        // outside such a transaction the trigger is back in charge
        assert!(
            PgProfileRepository::new(pool.clone())
                .update(&copied)
                .await
                .expect("plain update")
        );
        let read = PgProfileRepository::new(pool)
            .get(p.id)
            .await
            .expect("get")
            .expect("exists");
        assert!(read.updated_at > copied.updated_at);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn the_profiles_with_account_view_joins_account_and_subscription(pool: PgPool) {
        let a = stored_account(&pool, "a@example.com").await;
        let mut s = subscription(a.id);
        s.tier = "Premium".into();
        PgSubscriptionRepository::new(pool.clone())
            .upsert_for_account(&s)
            .await
            .expect("subscription");
        let owned = stored_profile(&pool, Some(a.id)).await;
        let detached = stored_profile(&pool, None).await;
        type ViewRow = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<bool>,
        );
        let row = async |id: Uuid| -> ViewRow {
            sqlx::query_as(
                "select account_email, account_display_name, account_role, \
                 subscription_type::text, subscription_tier, subscription_active \
                 from user_profiles_with_account where id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .expect("view row")
        };
        assert_eq!(
            row(owned.id).await,
            (
                Some("a@example.com".into()),
                Some("Ada".into()),
                Some("User".into()),
                Some("Monthly".into()),
                Some("Premium".into()),
                Some(true),
            )
        );
        assert_eq!(row(detached.id).await, (None, None, None, None, None, None));
    }
}

mod badges {
    use super::*;

    contract_cases!(badges:
        a_second_award_of_a_configuration_returns_the_first_badge,
        list_by_profile_returns_the_earliest_badge_first,
        awarding_to_a_missing_profile_or_without_configuration_is_refused,
    );

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn two_concurrent_awards_of_one_configuration_store_exactly_one_badge(pool: PgPool) {
        let profile =
            contract::badges::two_concurrent_awards_of_one_configuration_store_exactly_one_badge(
                &PgStore::new(&pool).ports(),
            )
            .await;
        assert_eq!(
            count(
                &pool,
                "select count(*) from user_badges where user_profile_id = $1",
                profile
            )
            .await,
            5
        );
    }
}

mod completed_scenarios {
    use super::*;

    contract_cases!(completed_scenarios:
        completing_again_keeps_the_first_completion,
        list_by_account_returns_the_earliest_completion_first,
        completing_for_a_missing_account_or_an_empty_scenario_is_refused,
    );

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn concurrent_completions_store_one_row(pool: PgPool) {
        let (account, rounds) =
            contract::completed_scenarios::concurrent_completions_store_one_row(
                &PgStore::new(&pool).ports(),
            )
            .await;
        assert_eq!(
            count(
                &pool,
                "select count(*) from completed_scenarios where account_id = $1",
                account
            )
            .await,
            rounds as i64
        );
    }
}

mod pending_signups {
    use super::*;
    use mystira_test_support::contract::pending_signups::{LOCKOUT, stored_signup};

    async fn failed_attempts(pool: &PgPool, id: Uuid) -> i32 {
        sqlx::query_scalar("select failed_attempts from pending_signups where id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("failed_attempts")
    }

    contract_cases!(pending_signups:
        a_created_signup_reads_back_equal_and_its_id_is_unique,
        the_right_code_verifies_the_newest_open_signup_ignoring_case,
        verify_reports_missing_and_expired_signups,
        cleanup_deletes_only_signups_expired_more_than_a_day_ago,
    );

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn wrong_codes_count_down_to_a_lockout_that_refuses_even_the_right_code(pool: PgPool) {
        let id = contract::pending_signups::wrong_codes_count_down_to_a_lockout_that_refuses_even_the_right_code(
            &PgStore::new(&pool).ports(),
        )
        .await;
        assert_eq!(failed_attempts(&pool, id).await, LOCKOUT);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_lockout_above_the_schema_ceiling_is_clamped_so_the_check_never_fires(pool: PgPool) {
        let id = contract::pending_signups::a_lockout_above_the_schema_ceiling_is_clamped_so_the_check_never_fires(
            &PgStore::new(&pool).ports(),
        )
        .await;
        assert_eq!(
            failed_attempts(&pool, id).await,
            PendingSignup::MAX_FAILED_ATTEMPTS
        );
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn of_concurrent_redemptions_of_the_right_code_exactly_one_wins(pool: PgPool) {
        let repo = PgPendingSignupRepository::new(pool.clone());
        let s = stored_signup(&PgStore::new(&pool).ports(), "a@example.com", "123456").await;
        let address = email("a@example.com");
        // a wrong code redeemed is counted as by verify_code and leaves the sign-up open
        assert_eq!(
            repo.redeem_code(&address, "000000", now(), LOCKOUT)
                .await
                .expect("wrong"),
            VerifyOutcome::WrongCode {
                attempts_left: LOCKOUT - 1
            }
        );
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (repo, address) = (repo.clone(), address.clone());
            tasks.spawn(async move { repo.redeem_code(&address, "123456", now(), LOCKOUT).await });
        }
        let mut winners = Vec::new();
        for outcome in tasks.join_all().await {
            match outcome.expect("redeem") {
                VerifyOutcome::Verified(signup) => winners.push(signup),
                VerifyOutcome::NotFound => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        assert_eq!(winners[0].id, s.id);
        assert!(winners[0].is_used);
        let stored = repo.get(s.id).await.expect("get").expect("present");
        assert!(stored.is_used);
        assert_eq!(stored.failed_attempts, 1);
        // verify_code checks without using
        let t = stored_signup(&PgStore::new(&pool).ports(), "b@example.com", "654321").await;
        let checked = repo
            .verify_code(&email("b@example.com"), "654321", now(), LOCKOUT)
            .await
            .expect("verify");
        assert_eq!(checked, VerifyOutcome::Verified(t.clone()));
        assert!(!repo.get(t.id).await.expect("get").expect("present").is_used);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn concurrent_wrong_guesses_are_each_counted_and_never_pass_the_limit(pool: PgPool) {
        let repo = PgPendingSignupRepository::new(pool.clone());
        let s = stored_signup(&PgStore::new(&pool).ports(), "a@example.com", "123456").await;
        let address = email("a@example.com");
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..12 {
            let (repo, address) = (repo.clone(), address.clone());
            tasks.spawn(async move { repo.verify_code(&address, "000000", now(), LOCKOUT).await });
        }
        let outcomes: Vec<VerifyOutcome> = tasks
            .join_all()
            .await
            .into_iter()
            .map(|r| r.expect("verify"))
            .collect();
        let wrong = outcomes
            .iter()
            .filter(|o| matches!(o, VerifyOutcome::WrongCode { .. }))
            .count();
        let locked = outcomes
            .iter()
            .filter(|o| matches!(o, VerifyOutcome::LockedOut))
            .count();
        assert_eq!(wrong, usize::try_from(LOCKOUT).expect("small"));
        assert_eq!(locked, 12 - wrong);
        let mut left: Vec<i32> = outcomes
            .iter()
            .filter_map(|o| match o {
                VerifyOutcome::WrongCode { attempts_left } => Some(*attempts_left),
                _ => None,
            })
            .collect();
        left.sort();
        assert_eq!(left, (0..LOCKOUT).collect::<Vec<_>>());
        assert_eq!(failed_attempts(&pool, s.id).await, LOCKOUT);
    }
}

/// The magic-link version of a sign-up (issue 10 item 4): stored beside the code version in
/// the same table, and found, verified and consumed through its token hash.
mod magic_link_signups {
    use super::*;
    use mystira_test_support::contract::pending_signups::HASH;

    async fn columns(pool: &PgPool, id: Uuid) -> (Option<String>, Option<String>, Option<i16>) {
        sqlx::query_as(
            "select code, verification_token_hash, status from pending_signups where id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("row")
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_magic_link_signup_is_stored_found_verified_and_consumed(pool: PgPool) {
        let stored =
            contract::pending_signups::a_magic_link_signup_is_stored_found_verified_and_consumed(
                &PgStore::new(&pool).ports(),
            )
            .await;
        // the link in its columns, no code; a code-only sign-up has no status
        assert_eq!(
            columns(&pool, stored.magic).await,
            (None, Some(HASH.to_owned()), Some(3))
        );
        assert_eq!(columns(&pool, stored.code_only).await.2, None);
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_signup_with_both_versions_keeps_both(pool: PgPool) {
        let id = contract::pending_signups::a_signup_with_both_versions_keeps_both(
            &PgStore::new(&pool).ports(),
        )
        .await;
        assert_eq!(
            columns(&pool, id).await,
            (Some("123456".to_owned()), Some(HASH.to_owned()), Some(2))
        );
    }

    #[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
    async fn a_signup_without_code_or_token_or_with_a_bad_status_is_refused(pool: PgPool) {
        contract::pending_signups::a_signup_without_code_or_token_is_refused(
            &PgStore::new(&pool).ports(),
        )
        .await;
        // the schema's own checks, mapped to the same rules
        let refused_neither = refused(
            &pool,
            "pending_signups",
            "insert into pending_signups (id, email, display_name, expires_at) \
             values (gen_random_uuid(), 'n@example.com', '', now())",
        )
        .await;
        match refused_neither {
            RepoError::Invalid(v) => assert_eq!(v.code(), "no_code_or_token", "{v}"),
            other => panic!("expected no_code_or_token, got {other:?}"),
        }
        let bad_status = refused(
            &pool,
            "pending_signups",
            "insert into pending_signups (id, email, display_name, expires_at, \
             verification_token_hash, status) \
             values (gen_random_uuid(), 'n@example.com', '', now(), 'ab', 5)",
        )
        .await;
        match bad_status {
            RepoError::Invalid(v) => assert_eq!(v.field(), "status", "{v}"),
            other => panic!("expected an invalid status, got {other:?}"),
        }
    }
}
