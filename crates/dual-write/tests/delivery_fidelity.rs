//! A phase-2 delivery changes exactly what the write changed, on the real stores: documents in
//! every shape the app has written (`crates/cosmos-codec/tests/shapes`: EF 8 ids and
//! discriminators, `Auth0UserId`, 7-digit fractions and offsets, legacy spellings, duplicate
//! badges and completions, missing embedded ids, unknown properties at every depth) are
//! created in the Cosmos-protocol server, copied into PostgreSQL by the normal path
//! (`apply::write_page`, what the backfill runs), changed by one service write through the
//! dual-write router in phase 2, delivered, and read back with a plain HTTP GET. The document
//! must differ from what was created at exactly the properties whose meaning PostgreSQL
//! changed (appended items at the end), decode to PostgreSQL's state, and not be written at all
//! when nothing changed. The same property without I/O, over many more cases, is
//! `crates/cosmos-codec/tests/codec_merge.rs`.
#![allow(clippy::unwrap_used)]

use mystira_test_support::cosmos as support;
use mystira_test_support::shapes;

use std::sync::Arc;
use std::time::Duration;

use mystira_copy::apply::{Retries, write_page};
use mystira_cosmos_codec::codec::{self, Container};
use mystira_domain::SignupStatus;
use mystira_domain::aggregate::{AccountAggregate, Aggregate, ProfileAggregate};
use mystira_domain::phase::Phase;
use mystira_domain::ports::{
    AccountRepository, BadgeRepository, CompletedScenarioRepository, PendingSignupRepository,
    ProfileRepository, SubscriptionRepository,
};
use mystira_dual_write::journal::FileJournal;
use mystira_dual_write::relay::{RelayConfig, drain};
use mystira_dual_write::router::{DualWriteRouter, FixedPhase, RouterConfig};
use mystira_migrate::{ContainerCounts, SourceDocument};
use mystira_postgres::outbox;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRng, TestRunner};
use serde_json::{Value, json};
use shapes::*;
use sqlx::PgPool;
use uuid::Uuid;

/// Cases per run: each is a few documents written and read over HTTP and a few PostgreSQL
/// transactions; the codec's own property test covers many more shapes without I/O.
const CASES: usize = 64;
/// Subscription changes and profile moves per run, beyond the general cases.
const SUBSCRIPTION_CASES: usize = 24;
const MOVE_CASES: usize = 24;

/// One generated case: the documents to create and the write to make.
#[derive(Debug, Clone)]
enum Case {
    Account(Value, Change),
    /// A profile (with its `AccountId` still to be set) and the account it may name.
    Profile(Value, ProfileDraft, Change),
    Signup(Value, Change),
    /// A profile of account `from` (named as its draft says) moved to account `to` by an update
    /// of its account. `listed` is how `from`'s `UserProfileIds` names the profile: 0 not at
    /// all, 1 its document id first, 2 its key upper-case with spaces last, 3 EF 8's
    /// `UserProfile|<key>` first.
    Move {
        from: Value,
        to: Value,
        profile: ProfileDraft,
        listed: u8,
    },
}

fn case() -> impl Strategy<Value = Case> {
    proptest::prop_oneof![
        (account_doc(), account_change()).prop_map(|((d, _), c)| Case::Account(d, c)),
        (account_doc(), profile_doc(), profile_change())
            .prop_map(|((a, _), (p, _), c)| Case::Profile(a, p, c)),
        (signup_doc(), signup_change()).prop_map(|((d, _), c)| Case::Signup(d, c)),
    ]
}

/// A time the service writes (whole microseconds), 2026..2027.
fn service_time() -> impl Strategy<Value = chrono::DateTime<chrono::Utc>> {
    (1_767_225_600i64..1_798_761_600, 0u32..1_000_000)
        .prop_map(|(s, us)| chrono::DateTime::from_timestamp(s, us * 1000).unwrap())
}

/// A subscription change of an account in any shape: a new subscription where it has none,
/// else its tier and validity changed; with `CreatedAt`/`UpdatedAt` (7 digits, an offset) in
/// the stored subscription now and then, as an older writer left them.
fn subscription_case() -> impl Strategy<Value = Case> {
    (
        account_doc(),
        any_bool(),
        proptest::sample::select(vec!["Plus", "Family"]),
        service_time(),
    )
        .prop_map(|((mut doc, _), timestamps, tier, valid_until)| {
            if timestamps && let Some(sub) = doc["Subscription"].as_object_mut() {
                sub.insert("CreatedAt".into(), json!("2025-01-02T03:04:05.1234567Z"));
                sub.insert(
                    "UpdatedAt".into(),
                    json!("2025-01-03T03:04:05.1234567+01:00"),
                );
            }
            let change = Change::Subscribe {
                tier: tier.to_owned(),
                valid_until,
            };
            Case::Account(doc, change)
        })
}

fn any_bool() -> impl Strategy<Value = bool> {
    proptest::bool::ANY
}

/// A profile moved from one account to another.
fn move_case() -> impl Strategy<Value = Case> {
    (account_doc(), account_doc(), profile_doc(), 0u8..4).prop_map(
        |((from, _), (to, _), (profile, _), listed)| Case::Move {
            from,
            to,
            profile,
            listed,
        },
    )
}

/// `count` cases of `strategy`, generated from a fixed seed (one per kind of case, so that
/// their documents' ids differ), so a failure names a case that can be replayed.
fn generate(strategy: impl Strategy<Value = Case>, count: usize, seed: u8) -> Vec<Case> {
    let rng = match seed {
        0 => TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
        n => TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[n; 32]),
    };
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    (0..count)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .collect()
}

/// The cases of a run.
fn cases() -> Vec<Case> {
    generate(case(), CASES, 0)
}

struct Setup {
    pool: PgPool,
    /// The router in phase 2 (`dual-write-postgres-read`).
    router: DualWriteRouter,
    /// A router over the same stores in phase 1 (`dual-write-cosmos-read`).
    phase1: DualWriteRouter,
    store: mystira_cosmos_store::CosmosStore,
    _dir: tempfile::TempDir,
}

async fn setup(pool: &PgPool) -> Setup {
    setup_with(pool, RouterConfig::default()).await
}

async fn setup_with(pool: &PgPool, config: RouterConfig) -> Setup {
    let (store, repos) = support::user_domain("fidelity").await;
    let dir = tempfile::tempdir().unwrap();
    let router_in = |phase: Phase, journal: &str, config: RouterConfig| {
        DualWriteRouter::new(
            pool.clone(),
            repos.clone(),
            Arc::new(FixedPhase(phase)),
            FileJournal::open(dir.path().join(journal)).unwrap(),
            config,
        )
    };
    let router = router_in(Phase::DualWritePostgresRead, "journal", config);
    let phase1 = router_in(
        Phase::DualWriteCosmosRead,
        "journal-1",
        RouterConfig::default(),
    );
    Setup {
        pool: pool.clone(),
        router,
        phase1,
        store,
        _dir: dir,
    }
}

/// The partition-key value of a document of `container`.
fn partition(container: Container, doc: &Value) -> String {
    let name = match container {
        Container::PendingSignups => "email",
        _ => "id",
    };
    doc[name].as_str().unwrap().to_owned()
}

/// The document as an independent HTTP client reads it (plain GET on the REST path, no SDK;
/// the test server does not check the signature).
async fn raw_document(s: &Setup, container: Container, id: &str, pk: &str) -> Value {
    support::raw_document(s.store.database_name(), container.name(), id, pk).await
}

/// Creates the document in Cosmos, copies it into PostgreSQL the way the backfill does, and
/// returns it as Cosmos stores it and its key.
async fn load(s: &Setup, container: Container, doc: &Value) -> (Value, Uuid) {
    let id = doc["id"].as_str().unwrap().to_owned();
    let pk = partition(container, doc);
    s.store
        .container(container.name())
        .await
        .unwrap()
        .create(pk.clone(), &id, doc)
        .await
        .unwrap();
    let stored = raw_document(s, container, &id, &pk).await;
    let mut counts = ContainerCounts::default();
    write_page(
        &s.pool,
        container.name(),
        vec![SourceDocument::Document(stored.clone())],
        &mut counts,
        Retries::Backoff,
    )
    .await
    .unwrap();
    assert_eq!(
        counts.written, 1,
        "{container} {id} was not copied: {counts:?}"
    );
    let key = codec::document_ref(container, &stored).unwrap().key;
    (stored, key)
}

async fn state(s: &Setup, container: Container, key: Uuid) -> Aggregate {
    let mut conn = s.pool.acquire().await.unwrap();
    mystira_postgres::aggregates::load(&mut conn, container.name(), key)
        .await
        .unwrap()
        .unwrap()
}

fn account_state(a: Aggregate) -> AccountAggregate {
    match a {
        Aggregate::Account(a) => *a,
        other => panic!("not an account: {other:?}"),
    }
}

fn profile_state(a: Aggregate) -> ProfileAggregate {
    match a {
        Aggregate::Profile(p) => *p,
        other => panic!("not a profile: {other:?}"),
    }
}

/// Makes the write through the router, then lets the relay deliver whatever the inline
/// delivery left. [`Change::Same`] delivers the unchanged aggregate (as a repair does).
async fn write(s: &Setup, container: Container, key: Uuid, change: &Change) {
    write_through(s, &s.router, container, key, change).await;
}

/// [`write`] through `r` (the phase-1 or the phase-2 router).
async fn write_through(
    s: &Setup,
    r: &DualWriteRouter,
    container: Container,
    key: Uuid,
    change: &Change,
) {
    match change {
        Change::RenameAccount(name) => {
            let mut a = AccountRepository::get(r, key).await.unwrap().unwrap();
            a.display_name = name.clone();
            assert!(AccountRepository::update(r, &a).await.unwrap());
        }
        Change::Login(at) => assert!(r.record_login(key, *at).await.unwrap()),
        Change::Theme(theme) => {
            let mut a = AccountRepository::get(r, key).await.unwrap().unwrap();
            a.settings.theme = theme.clone();
            assert!(AccountRepository::update(r, &a).await.unwrap());
        }
        Change::Subscribe { tier, valid_until } => {
            let sub = match r.get_for_account(key).await.unwrap() {
                Some(mut sub) => {
                    sub.tier = tier.clone();
                    sub.valid_until = Some(*valid_until);
                    sub
                }
                None => new_subscription(key, tier, *valid_until),
            };
            r.upsert_for_account(&sub).await.unwrap();
        }
        Change::Complete(scenario, at) => {
            r.mark_completed(key, scenario, *at).await.unwrap();
        }
        Change::RenameProfile(name, bio) => {
            let mut p = ProfileRepository::get(r, key).await.unwrap().unwrap();
            p.name = name.clone();
            p.bio = bio.clone();
            assert!(ProfileRepository::update(r, &p).await.unwrap());
        }
        Change::Onboard => assert!(r.mark_onboarded(key).await.unwrap()),
        Change::Award(config, at) => {
            r.award(&new_badge(key, config, *at)).await.unwrap();
        }
        Change::MarkUsed => assert!(r.mark_used(key).await.unwrap()),
        Change::MarkVerified(status, at) => {
            let status = SignupStatus::new("status", i64::from(*status)).unwrap();
            r.mark_verified(key, status, *at).await.unwrap();
        }
        Change::Same => outbox::enqueue(&s.pool, container.name(), key)
            .await
            .unwrap(),
    }
    let (_, left) = drain(
        &s.pool,
        &r.cosmos().writer,
        &RelayConfig::default(),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(left.rows, 0, "the outbox did not drain");
}

/// Runs one case; panics naming what differs. Returns the paths the write changed.
async fn run(s: &Setup, r: &DualWriteRouter, case: &Case) -> Vec<String> {
    match case {
        Case::Account(doc, change) => {
            let (before_doc, key) = load(s, Container::Accounts, doc).await;
            let before = account_state(state(s, Container::Accounts, key).await);
            write_through(s, r, Container::Accounts, key, change).await;
            let after = account_state(state(s, Container::Accounts, key).await);
            let id = before_doc["id"].as_str().unwrap();
            let after_doc = raw_document(s, Container::Accounts, id, id).await;
            let expected = expected_account_paths(&before_doc, &before, &after);
            assert_eq!(changed_paths(&before_doc, &after_doc), expected);
            let d = codec::decode_account(&after_doc).unwrap();
            let decoded = AccountAggregate {
                account: d.account,
                subscription: d.subscription,
                completed_scenarios: d.completed_scenarios,
            };
            assert_eq!(
                account_meaning(&decoded, false),
                account_meaning(&after, false)
            );
            untouched_unless_changed(&before_doc, &after_doc, &expected);
            // the app's `Subscription` has no timestamps: a write never adds them
            for name in ["CreatedAt", "UpdatedAt"] {
                if after_doc["Subscription"].get(name).is_some() {
                    assert!(
                        before_doc["Subscription"].get(name).is_some(),
                        "the write added Subscription.{name}"
                    );
                }
            }
            expected
        }
        Case::Profile(account, draft, change) => {
            let (account_doc, _) = load(s, Container::Accounts, account).await;
            let doc = draft.with_account(&account_doc);
            let (before_doc, key) = load(s, Container::UserProfiles, &doc).await;
            let before = profile_state(state(s, Container::UserProfiles, key).await);
            write_through(s, r, Container::UserProfiles, key, change).await;
            let after = profile_state(state(s, Container::UserProfiles, key).await);
            let id = before_doc["id"].as_str().unwrap();
            let after_doc = raw_document(s, Container::UserProfiles, id, id).await;
            let expected = expected_profile_paths(&before_doc, &before, &after);
            assert_eq!(changed_paths(&before_doc, &after_doc), expected);
            let d = codec::decode_profile(&after_doc).unwrap();
            let with_account = after.profile.account_id.is_some();
            let decoded = ProfileAggregate {
                profile: d.profile,
                badges: d.badges,
                account_cosmos_id: None,
            };
            assert_eq!(
                profile_meaning(&decoded, with_account),
                profile_meaning(&after, with_account)
            );
            // the duplicates the app appended are all still there
            let stored_duplicates = codec::decode_profile(&before_doc)
                .unwrap()
                .duplicate_badges
                .len();
            assert_eq!(d.duplicate_badges.len(), stored_duplicates);
            untouched_unless_changed(&before_doc, &after_doc, &expected);
            // the account's document was not written
            let account_id = account_doc["id"].as_str().unwrap();
            let account_after = raw_document(s, Container::Accounts, account_id, account_id).await;
            assert_eq!(account_after, account_doc);
            expected
        }
        Case::Move {
            from,
            to,
            profile,
            listed,
        } => run_move(s, r, from, to, profile, *listed).await,
        Case::Signup(doc, change) => {
            let (before_doc, key) = load(s, Container::PendingSignups, doc).await;
            let Aggregate::Signup(before) = state(s, Container::PendingSignups, key).await else {
                unreachable!()
            };
            write_through(s, r, Container::PendingSignups, key, change).await;
            let Aggregate::Signup(after) = state(s, Container::PendingSignups, key).await else {
                unreachable!()
            };
            let id = before_doc["id"].as_str().unwrap();
            let pk = partition(Container::PendingSignups, &before_doc);
            let after_doc = raw_document(s, Container::PendingSignups, id, &pk).await;
            let expected = expected_signup_paths(&before, &after);
            assert_eq!(changed_paths(&before_doc, &after_doc), expected);
            let decoded = codec::decode_pending_signup(&after_doc).unwrap().signup;
            assert_eq!(signup_meaning(&decoded), signup_meaning(&after));
            untouched_unless_changed(&before_doc, &after_doc, &expected);
            expected
        }
    }
}

/// [`Case::Move`]: the profile's document changes as its update means (its `AccountId` names
/// the new account), the former account's `UserProfileIds` loses the profile's id in whatever
/// spelling it lists it (only when the profile named that account), the new account's gains
/// its document id at the end, and nothing else of either account document changes.
async fn run_move(
    s: &Setup,
    r: &DualWriteRouter,
    from: &Value,
    to: &Value,
    draft: &ProfileDraft,
    listed: u8,
) -> Vec<String> {
    let doc = draft.with_account(from);
    let profile_id = doc["id"].as_str().unwrap().to_owned();
    let key = codec::document_ref(Container::UserProfiles, &doc)
        .unwrap()
        .key;
    let base = from["UserProfileIds"].as_str().unwrap().to_owned();
    let item = match listed {
        0 => None,
        1 => Some(profile_id.clone()),
        2 => Some(format!(" {} ", key.to_string().to_uppercase())),
        _ => Some(format!("UserProfile|{key}")),
    };
    let list = match &item {
        None => base.clone(),
        Some(item) if base.is_empty() => item.clone(),
        Some(item) if listed == 2 => format!("{base},{item}"),
        Some(item) => format!("{item},{base}"),
    };
    let mut from = from.clone();
    from["UserProfileIds"] = json!(list);
    let (from_before, _) = load(s, Container::Accounts, &from).await;
    let (to_before, to_key) = load(s, Container::Accounts, to).await;
    let (before_doc, loaded) = load(s, Container::UserProfiles, &doc).await;
    assert_eq!(loaded, key);
    let before = profile_state(state(s, Container::UserProfiles, key).await);

    let mut p = ProfileRepository::get(r, key).await.unwrap().unwrap();
    p.account_id = Some(to_key);
    assert!(ProfileRepository::update(r, &p).await.unwrap());
    drain_outbox(s).await;

    let after = profile_state(state(s, Container::UserProfiles, key).await);
    assert_eq!(after.profile.account_id, Some(to_key));
    let after_doc = raw_document(s, Container::UserProfiles, &profile_id, &profile_id).await;
    let expected = expected_profile_paths(&before_doc, &before, &after);
    assert!(expected.contains(&"AccountId".to_owned()), "{expected:?}");
    assert_eq!(changed_paths(&before_doc, &after_doc), expected);
    let d = codec::decode_profile(&after_doc).unwrap();
    let decoded = ProfileAggregate {
        profile: d.profile,
        badges: d.badges,
        account_cosmos_id: None,
    };
    assert_eq!(
        profile_meaning(&decoded, true),
        profile_meaning(&after, true)
    );

    let id_of = |doc: &Value| doc["id"].as_str().unwrap().to_owned();
    let from_after = raw_document(
        s,
        Container::Accounts,
        &id_of(&from_before),
        &id_of(&from_before),
    )
    .await;
    let names_from = matches!(draft.account, AccountRef::Case(_));
    if names_from && item.is_some() {
        assert_eq!(
            changed_paths(&from_before, &from_after),
            ["UserProfileIds"],
            "the former account: only its list changes"
        );
        assert_eq!(
            from_after["UserProfileIds"], base,
            "the former account's list loses the profile, the rest stays as it was"
        );
    } else {
        assert_eq!(from_after, from_before, "the former account was written");
    }
    let to_after = raw_document(
        s,
        Container::Accounts,
        &id_of(&to_before),
        &id_of(&to_before),
    )
    .await;
    assert_eq!(
        changed_paths(&to_before, &to_after),
        ["UserProfileIds"],
        "the new account: only its list changes"
    );
    let to_list = to_before["UserProfileIds"].as_str().unwrap();
    let appended = if to_list.is_empty() {
        profile_id.clone()
    } else {
        format!("{to_list},{profile_id}")
    };
    assert_eq!(
        to_after["UserProfileIds"], appended,
        "the new account's list gains the profile's id at the end"
    );
    // the profile's paths, and which lists changed (for the run's own check)
    let mut paths = expected;
    if names_from && item.is_some() {
        paths.push("from:UserProfileIds".to_owned());
    }
    paths.push("to:UserProfileIds".to_owned());
    paths
}

/// Runs `cases` one after the other; a failure names its case. Returns the paths each write
/// changed.
async fn run_cases(s: &Setup, r: &DualWriteRouter, cases: &[Case]) -> Vec<Vec<String>> {
    let mut changed = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let outcome =
            futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run(s, r, case))).await;
        match outcome {
            Ok(paths) => changed.push(paths),
            Err(panic) => {
                // the case is synthetic (no personal data): show it, so it can be replayed
                eprintln!("case {n} of {} failed: {case:#?}", cases.len());
                std::panic::resume_unwind(panic);
            }
        }
    }
    changed
}

/// A delivery that changes nothing writes nothing: the document keeps its `_etag` and `_ts`.
fn untouched_unless_changed(before: &Value, after: &Value, expected: &[String]) {
    if expected.is_empty() {
        assert_eq!(after, before, "an unchanged aggregate rewrote its document");
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_phase2_delivery_changes_exactly_what_the_write_changed(pool: PgPool) {
    let s = setup(&pool).await;
    changes_exactly_what_the_write_changed(&s, &s.router).await;
}

/// The same cases through the router in phase 1: the write goes to Cosmos first (the Cosmos
/// repositories' read-modify-write), and its copy into PostgreSQL must not come back changed
/// either.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_phase1_write_changes_exactly_what_the_write_changed(pool: PgPool) {
    let s = setup(&pool).await;
    changes_exactly_what_the_write_changed(&s, &s.phase1).await;
}

async fn changes_exactly_what_the_write_changed(s: &Setup, r: &DualWriteRouter) {
    use mystira_migrate::{CosmosSource, Outcome, VerifyOptions, run_verify};
    use mystira_postgres::phase::VerifyDirection;

    let changed = run_cases(s, r, &cases()).await;
    // the run is not vacuous: most writes changed something, some changed nothing
    let writes = changed.iter().filter(|p| !p.is_empty()).count();
    eprintln!("{writes} of {CASES} writes changed their document: {changed:?}");
    assert!(
        (CASES / 2..CASES).contains(&writes),
        "{writes} of {CASES} changed"
    );
    // subscriptions changed in every shape, and profiles moved between accounts: each write
    // changes its document
    let subscribed = run_cases(s, r, &generate(subscription_case(), SUBSCRIPTION_CASES, 1)).await;
    eprintln!("subscription writes changed: {subscribed:?}");
    assert!(subscribed.iter().all(|p| !p.is_empty()));
    assert!(
        subscribed
            .iter()
            .any(|p| p.iter().any(|p| p.starts_with("Subscription."))),
        "no subscription was changed in place: {subscribed:?}"
    );
    let moved = run_cases(s, r, &generate(move_case(), MOVE_CASES, 2)).await;
    eprintln!("moves changed: {moved:?}");
    assert!(moved.iter().all(|p| p.contains(&"AccountId".to_owned())));
    let left = moved
        .iter()
        .filter(|p| p.contains(&"from:UserProfileIds".to_owned()))
        .count();
    assert!(
        (1..MOVE_CASES).contains(&left),
        "{left} of {MOVE_CASES} moves left a list that named the profile"
    );

    // what no row holds (the accounts' lists among it) is still what the stores agree on
    let source = CosmosSource::new(s.store.clone());
    let opts = VerifyOptions {
        direction: VerifyDirection::PgToCosmos,
        ..VerifyOptions::default()
    };
    let report = run_verify(&s.pool, &source, &opts).await.unwrap();
    assert_eq!(report.outcome, Outcome::Clean, "{}", report.summary(10));
}

/// Replaces the document in Cosmos and records the version it now has, as a delivery does.
async fn rewrite(s: &Setup, container: Container, doc: &Value) {
    let id = doc["id"].as_str().unwrap().to_owned();
    let pk = partition(container, doc);
    s.store
        .container(container.name())
        .await
        .unwrap()
        .upsert(pk.clone(), &id, &user_part(doc))
        .await
        .unwrap();
    let stored = raw_document(s, container, &id, &pk).await;
    let recorded = sqlx::query(
        "update migration.document_versions set source_ts = $3, source_etag = $4
         where container = $1 and document_id = $2",
    )
    .bind(container.name())
    .bind(&id)
    .bind(stored["_ts"].as_i64().unwrap())
    .bind(stored["_etag"].as_str().unwrap())
    .execute(&s.pool)
    .await
    .unwrap();
    assert_eq!(recorded.rows_affected(), 1);
}

/// `verify --direction pg-to-cosmos` compares what no row holds too: after phase-2 writes it is
/// clean, and an app-written property no column holds (an unknown property of the
/// subscription, a duplicate badge) removed behind the router's back is drift, named by the
/// document's id and the property's path, without its value.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn verify_towards_cosmos_reports_an_app_property_removed_out_of_band(pool: PgPool) {
    use mystira_migrate::verify::remainder::LOST_REASON;
    use mystira_migrate::{CosmosSource, Entity, Outcome, VerifyOptions, run_verify};
    use mystira_postgres::phase::VerifyDirection;

    let s = setup(&pool).await;
    let account_id = Uuid::new_v4().to_string();
    let account = json!({
        "id": account_id, "$type": "Account",
        "ExternalUserId": "auth0|0123456789abcdef0123456789abcdef",
        "Email": "Sam@Example.org", "DisplayName": "Sam", "Role": "User", "UserProfileIds": "",
        "CompletedScenarioIds": ["pirates", "dragons"],
        "Subscription": {
            "Type": 1, "ProductId": "monthly", "ValidUntil": null, "IsActive": true,
            "PurchaseToken": null, "LastVerified": null, "PurchasedScenarios": "", "Tier": "Plus",
            "StartDate": "2025-01-02T03:04:05.6313029+02:00",
            "EndDate": "9999-12-31T23:59:59.9999999", "SubExtra": {"kept": [1, 2]}
        },
        "Settings": {"CacheCredentials": false, "Theme": "dark"},
        "CreatedAt": "2025-12-20T10:15:11.6313029Z", "LastLoginAt": "2025-12-21T10:15:11.6313029",
        "AppExtra": "kept"
    });
    let profile_id = Uuid::new_v4().to_string();
    let duplicate_id = Uuid::new_v4().to_string();
    let badge = |id: &str, earned: &str| {
        json!({
            "Id": id, "UserProfileId": profile_id, "BadgeConfigurationId": "brave-1",
            "BadgeName": "Brave", "BadgeMessage": "", "Axis": "courage", "TriggerValue": 0.75,
            "Threshold": 1, "EarnedAt": earned, "GameSessionId": null, "ScenarioId": null,
            "ImageId": "img", "BadgeExtra": {"x": true}
        })
    };
    let profile = json!({
        "id": profile_id, "$type": "UserProfile", "AccountId": account_id, "Name": "Kid",
        "AgeGroupName": "6-9", "PreferredFantasyThemes": "", "IsGuest": false, "IsNpc": false,
        "HasCompletedOnboarding": false,
        "CreatedAt": "2025-12-20T10:15:11.6313029Z", "UpdatedAt": "2025-12-20T10:15:11.6313029Z",
        "EarnedBadges": [
            badge(&Uuid::new_v4().to_string(), "2025-12-20T00:00:00.1234567Z"),
            badge(&duplicate_id, "2025-12-21T00:00:00.1234567Z"),
        ]
    });
    let (_, account_key) = load(&s, Container::Accounts, &account).await;
    let (_, profile_key) = load(&s, Container::UserProfiles, &profile).await;
    write(
        &s,
        Container::Accounts,
        account_key,
        &Change::RenameAccount("Samantha".to_owned()),
    )
    .await;
    let at = chrono::DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
        .unwrap()
        .to_utc();
    write(
        &s,
        Container::Accounts,
        account_key,
        &Change::Subscribe {
            tier: "Family".to_owned(),
            valid_until: at,
        },
    )
    .await;
    write(
        &s,
        Container::UserProfiles,
        profile_key,
        &Change::Award("kind-2".to_owned(), at),
    )
    .await;

    let source = CosmosSource::new(s.store.clone());
    let opts = VerifyOptions {
        direction: VerifyDirection::PgToCosmos,
        ..VerifyOptions::default()
    };
    let clean = run_verify(&pool, &source, &opts).await.unwrap();
    assert_eq!(clean.outcome, Outcome::Clean, "{}", clean.summary(10));

    // a writer that drops what it does not map, and records the version it wrote as a
    // delivery does (so the versions agree and only the documents' content can tell): the
    // subscription's unknown property and the duplicate badge the app appended are gone
    let mut doc = raw_document(&s, Container::Accounts, &account_id, &account_id).await;
    doc["Subscription"]
        .as_object_mut()
        .unwrap()
        .remove("SubExtra");
    rewrite(&s, Container::Accounts, &doc).await;
    let mut doc = raw_document(&s, Container::UserProfiles, &profile_id, &profile_id).await;
    doc["EarnedBadges"]
        .as_array_mut()
        .unwrap()
        .retain(|b| b["Id"] != duplicate_id.as_str());
    rewrite(&s, Container::UserProfiles, &doc).await;

    let drift = run_verify(&pool, &source, &opts).await.unwrap();
    assert_eq!(drift.outcome, Outcome::Drift);
    assert_eq!(drift.outcome.exit_code(), 1);
    // compared as sets: verify names a document's items in path order, and whether the
    // duplicate's `EarnedBadges[<random id>]` sorts before `EarnedBadges[1]` depends on its id
    let mut lost: Vec<(Entity, Option<String>, Vec<String>)> = drift
        .drift()
        .filter(|i| i.reason.as_deref() == Some(LOST_REASON))
        .map(|i| (i.entity, i.cosmos_id.clone(), i.fields.clone()))
        .collect();
    lost.sort_by(|a, b| a.2.cmp(&b.2));
    let mut expected = vec![
        (
            Entity::Subscriptions,
            Some(account_id.clone()),
            vec!["Subscription.SubExtra".to_owned()],
        ),
        // the duplicate's own unknown property went with it
        (
            Entity::UserBadges,
            Some(profile_id.clone()),
            vec!["EarnedBadges[1].BadgeExtra".to_owned()],
        ),
        (
            Entity::UserBadges,
            Some(profile_id.clone()),
            vec![format!("EarnedBadges[{duplicate_id}]")],
        ),
    ];
    expected.sort_by(|a, b| a.2.cmp(&b.2));
    assert_eq!(lost, expected, "{}", drift.summary(10));
    assert!(drift.drift().all(|i| i.values.is_none()));
    assert_eq!(drift.drift_count(), 3, "{}", drift.summary(10));
}

/// The completion times of `account` as PostgreSQL holds them, by scenario.
async fn completion_times(
    pool: &PgPool,
    account: Uuid,
) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as(
        "select scenario_id, completed_at from completed_scenarios where account_id = $1
         order by scenario_id",
    )
    .bind(account)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// A completion's time has no place in the app's document (`CompletedScenarioIds` lists ids),
/// so a re-copy from Cosmos (after a rollback: the app wrote the document again, `migrate`
/// copies it through the upsert path) must keep the time PostgreSQL already holds for every
/// completion it has, those the service recorded in phase 2 included, and derive one only
/// for a completion it does not have.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_recopy_from_cosmos_keeps_the_completion_times_postgres_holds(pool: PgPool) {
    let s = setup(&pool).await;
    let id = Uuid::new_v4().to_string();
    let account = json!({
        "id": id, "$type": "Account", "ExternalUserId": "auth0|0123456789abcdef0123456789abcdef",
        "Email": "sam@example.org", "DisplayName": "Sam", "Role": "Guest", "UserProfileIds": "",
        "CompletedScenarioIds": ["pirates", "dragons"], "Subscription": null,
        "Settings": {"Id": Uuid::new_v4().to_string(), "Theme": "dark"},
        "CreatedAt": "2025-12-20T10:15:11.6313029Z", "LastLoginAt": "2025-12-21T10:15:11.6313029Z"
    });
    let (_, key) = load(&s, Container::Accounts, &account).await;
    let at = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc();
    write(
        &s,
        Container::Accounts,
        key,
        &Change::Complete("space".to_owned(), at("2026-03-04T05:06:07.123456Z")),
    )
    .await;
    let held = completion_times(&pool, key).await;
    assert_eq!(held.len(), 3);
    assert_eq!(
        held[2],
        ("space".to_owned(), at("2026-03-04T05:06:07.123456Z"))
    );

    // the app, after a rollback: a login and a completion of its own, then `migrate`
    let mut doc = raw_document(&s, Container::Accounts, &id, &id).await;
    doc["LastLoginAt"] = json!("2026-06-01T00:00:00.0000000Z");
    doc["CompletedScenarioIds"]
        .as_array_mut()
        .unwrap()
        .push(json!("castle"));
    s.store
        .container(Container::Accounts.name())
        .await
        .unwrap()
        .upsert(id.clone(), &id, &user_part(&doc))
        .await
        .unwrap();
    let stored = raw_document(&s, Container::Accounts, &id, &id).await;
    let mut counts = ContainerCounts::default();
    write_page(
        &s.pool,
        Container::Accounts.name(),
        vec![SourceDocument::Document(stored)],
        &mut counts,
        Retries::Backoff,
    )
    .await
    .unwrap();
    assert_eq!(counts.written, 1, "{counts:?}");
    let mut expected = held.clone();
    // the one completion PostgreSQL did not have: derived from the new LastLoginAt
    expected.insert(0, ("castle".to_owned(), at("2026-06-01T00:00:00Z")));
    assert_eq!(completion_times(&pool, key).await, expected);
}

fn new_profile(account: Option<Uuid>) -> mystira_domain::UserProfile {
    let at = chrono::DateTime::parse_from_rfc3339("2026-02-03T04:05:06.123456Z")
        .unwrap()
        .to_utc();
    mystira_domain::UserProfile {
        id: Uuid::new_v4(),
        cosmos_id: None,
        account_id: account,
        name: "Pip".to_owned(),
        age_group: mystira_domain::AgeGroup::parse("6-9").unwrap(),
        date_of_birth: None,
        is_guest: false,
        is_npc: false,
        pronouns: None,
        bio: None,
        avatar_media_id: None,
        selected_avatar_media_id: None,
        preferred_themes: vec!["Classic Fantasy".to_owned()],
        has_completed_onboarding: false,
        created_at: at,
        updated_at: at,
    }
}

/// Lets the relay deliver whatever the router left in the outbox.
async fn drain_outbox(s: &Setup) {
    let (_, left) = drain(
        &s.pool,
        &s.router.cosmos().writer,
        &RelayConfig::default(),
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert_eq!(left.rows, 0, "the outbox did not drain");
}

/// The service creates and deletes profiles as the app does to their account's document: the
/// new profile's id appended to `UserProfileIds`, a deleted one's id removed (in whatever
/// spelling the list holds it), everything else byte-identical, in phase 1 (the router writes
/// Cosmos) and in phase 2 (the delivery writes it). The list drifted in real data (blank items,
/// spaces, EF 8's `UserProfile|<guid>`, ids of profiles that no longer exist): the drift stays.
/// `verify --direction pg-to-cosmos` is clean afterwards: the bookkeeping of what no row holds
/// follows the list the deliveries wrote.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn profile_creates_and_deletes_maintain_user_profile_ids_as_the_app_does(pool: PgPool) {
    use mystira_migrate::{CosmosSource, Outcome, VerifyOptions, run_verify};
    use mystira_postgres::phase::VerifyDirection;

    let s = setup(&pool).await;
    let account_id = Uuid::new_v4().to_string();
    let (gone, legacy) = (Uuid::new_v4(), Uuid::new_v4());
    let list = format!(
        " {} , ,UserProfile|{legacy}",
        gone.to_string().to_uppercase()
    );
    let account = json!({
        "id": account_id, "$type": "Account", "ExternalUserId": "auth0|0123456789abcdef0123456789abcdef",
        "Email": "Sam@Example.org", "DisplayName": "Sam", "Role": "user", "UserProfileIds": list,
        "CompletedScenarioIds": ["pirates"], "Subscription": null,
        "Settings": {"Theme": "dark", "AppSetting": [1]},
        "CreatedAt": "2025-12-20T10:15:11.6313029+02:00", "LastLoginAt": "2025-12-21T10:15:11.6313029",
        "AppExtra": {"kept": true}
    });
    let (original, account_key) = load(&s, Container::Accounts, &account).await;
    // the profile the list names in EF 8's form
    let legacy_doc = json!({
        "id": format!("UserProfile|{legacy}"), "Id": legacy.to_string(), "Discriminator": "UserProfile",
        "AccountId": account_id, "Name": "Old", "AgeGroupName": "school",
        "PreferredFantasyThemes": "", "CreatedAt": "2025-12-20T10:15:11.6313029Z",
        "UpdatedAt": "2025-12-20T10:15:11.6313029Z", "EarnedBadges": []
    });
    load(&s, Container::UserProfiles, &legacy_doc).await;
    let read = || raw_document(&s, Container::Accounts, &account_id, &account_id);

    for (phase, router) in [("1", &s.phase1), ("2", &s.router)] {
        let before = read().await;
        let p = new_profile(Some(account_key));
        ProfileRepository::create(router, &p).await.unwrap();
        drain_outbox(&s).await;
        let after = read().await;
        assert_eq!(
            changed_paths(&before, &after),
            ["UserProfileIds"],
            "phase {phase}: create"
        );
        assert_eq!(
            after["UserProfileIds"],
            format!("{},{}", before["UserProfileIds"].as_str().unwrap(), p.id),
            "phase {phase}: the new id is appended"
        );
        assert!(ProfileRepository::delete(router, p.id).await.unwrap());
        drain_outbox(&s).await;
        let after = read().await;
        assert_eq!(
            user_part(&after),
            user_part(&before),
            "phase {phase}: the deleted id is removed, nothing else changes"
        );
    }
    // a profile the list names in another spelling: that item goes, the drift stays
    assert!(ProfileRepository::delete(&s.router, legacy).await.unwrap());
    drain_outbox(&s).await;
    let after = read().await;
    assert_eq!(changed_paths(&original, &after), ["UserProfileIds"]);
    assert_eq!(
        after["UserProfileIds"],
        format!(" {} , ", gone.to_string().to_uppercase())
    );

    let source = CosmosSource::new(s.store.clone());
    let opts = VerifyOptions {
        direction: VerifyDirection::PgToCosmos,
        ..VerifyOptions::default()
    };
    let report = run_verify(&pool, &source, &opts).await.unwrap();
    assert_eq!(report.outcome, Outcome::Clean, "{}", report.summary(10));
}

/// An account created in phase 2 whose profile's delivery runs before its own (Cosmos was out,
/// the relay delivers in any order): the profile found no account document to join, so the
/// account's new document lists it, as the app's would.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_new_account_document_lists_the_profiles_delivered_before_it(pool: PgPool) {
    use mystira_dual_write::relay::deliver;
    use mystira_postgres::outbox::PendingAggregate;

    let config = RouterConfig {
        phase2_delivery: mystira_dual_write::router::Phase2Delivery::Background,
        ..RouterConfig::default()
    };
    let s = setup_with(&pool, config).await;
    let key = Uuid::new_v4();
    let at = chrono::DateTime::parse_from_rfc3339("2026-02-03T04:05:06Z")
        .unwrap()
        .to_utc();
    let account = mystira_domain::Account {
        id: key,
        cosmos_id: None,
        auth0_user_id: Some(format!("auth0|{}", Uuid::new_v4().simple())),
        email: mystira_domain::Email::parse("sam@example.org").unwrap(),
        display_name: "Sam".to_owned(),
        role: mystira_domain::Role::Guest,
        settings: mystira_domain::AccountSettings::default(),
        created_at: at,
        last_login_at: at,
    };
    AccountRepository::create(&s.router, &account)
        .await
        .unwrap();
    let (first, second) = (new_profile(Some(key)), new_profile(Some(key)));
    ProfileRepository::create(&s.router, &first).await.unwrap();
    ProfileRepository::create(&s.router, &second).await.unwrap();
    let writer = &s.router.cosmos().writer;
    for (container, key) in [
        ("UserProfiles", second.id),
        ("UserProfiles", first.id),
        ("Accounts", key),
    ] {
        let aggregate = PendingAggregate {
            container: container.to_owned(),
            key,
        };
        deliver(&pool, writer, aggregate).await.unwrap();
    }
    let id = key.to_string();
    let doc = raw_document(&s, Container::Accounts, &id, &id).await;
    // oldest first (the two were created at the same instant: by key then)
    let mut ids = [first.id, second.id];
    ids.sort();
    assert_eq!(doc["UserProfileIds"], format!("{},{}", ids[0], ids[1]));
    // the version recorded is the one holding the list (verify does not see a stale account)
    let recorded: (i64, Option<String>) = sqlx::query_as(
        "select source_ts, source_etag from migration.document_versions
         where container = 'Accounts' and document_id = $1",
    )
    .bind(&id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        recorded,
        (
            doc["_ts"].as_i64().unwrap(),
            doc["_etag"].as_str().map(str::to_owned)
        )
    );
}
