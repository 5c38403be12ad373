//! Documents that compete for one row, against real PostgreSQL: embedded ids repeated across
//! documents (two accounts with one `Subscription.Id`, two profiles with one badge `Id`) and two
//! documents of one entity (EF Core 8's `Account|<guid>` beside EF Core 9's `<guid>`, one GUID
//! in two letter cases). Nothing is lost, a written rule decides, and the result is the same
//! whatever the order of the documents, the batch size or the number of workers.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use mystira_cosmos_codec::generate::{self, GenerateOptions};
use mystira_migrate::{
    BackfillConfig, BackfillReport, ExportDirSource, LoadMode, LoadPath, run_backfill,
};
use serde_json::{Value, json};
use sqlx::PgPool;

const SHARED_SUBSCRIPTION: &str = "5b1e0a9c-2f4d-4c1a-9e3b-7a6d5c4b3a21";
const SHARED_BADGE: &str = "0c9d8e7f-6a5b-4c3d-8e1f-0a1b2c3d4e5f";
const FIRST: &str = "11111111-1111-4111-8111-111111111111";
const CLONE: &str = "22222222-2222-4222-8222-222222222222";
const TWICE: &str = "3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c";
const CASES: &str = "4d4d4d4d-4d4d-4d4d-8d4d-4d4d4d4d4d4d";
const TWICE_SUBSCRIPTION: &str = "5b1e0a9c-0000-4000-8000-000000000003";
const CASES_SUBSCRIPTION: &str = "5b1e0a9c-0000-4000-8000-000000000004";

fn account(id: &str, key: Option<&str>, ts: i64, created: &str, name: &str) -> Value {
    let mut doc = json!({
        "$type": "Account",
        "id": id,
        "ExternalUserId": format!("auth0|{}", id.to_lowercase().replace('|', "-")),
        "Email": format!("{}@example.com", name.to_lowercase().replace(' ', ".")),
        "DisplayName": name,
        "Role": "Guest",
        "CreatedAt": created,
        "LastLoginAt": created,
        "Settings": {},
        "CompletedScenarioIds": ["scenario-1"],
        "Subscription": {
            "Id": SHARED_SUBSCRIPTION,
            "Type": 1,
            "Tier": "Premium",
            "IsActive": true,
            "ProductId": "mystira.monthly",
            "StartDate": created,
            "PurchasedScenarios": "",
        },
        "_ts": ts,
        "_etag": format!("\"etag-{ts}\""),
    });
    if let Some(key) = key {
        doc["Id"] = json!(key);
    }
    doc
}

fn profile(id: &str, account: &str, earned: &str) -> Value {
    json!({
        "$type": "UserProfile",
        "id": id,
        "AccountId": account,
        "Name": "Kid",
        "AgeGroupName": "6-9",
        "CreatedAt": earned,
        "UpdatedAt": earned,
        "IsGuest": false,
        "IsNpc": false,
        "HasCompletedOnboarding": true,
        "PreferredFantasyThemes": "",
        "EarnedBadges": [{
            "Id": SHARED_BADGE,
            "UserProfileId": id,
            "BadgeConfigurationId": "badge-config-1",
            "BadgeName": "Brave",
            "BadgeMessage": "You did it!",
            "Axis": "courage",
            "TriggerValue": 1.0,
            "Threshold": 0.5,
            "EarnedAt": earned,
            "ImageId": "img-1",
        }],
        "_ts": 100,
        "_etag": "\"p\"",
    })
}

/// The competing documents: FIRST and CLONE share a subscription id (FIRST was created first),
/// their profiles share a badge id; TWICE exists as an older EF Core 8 document and a newer
/// EF Core 9 one; CASES as a newer upper-case and an older lower-case id.
fn documents() -> (Vec<Value>, Vec<Value>) {
    let own_subscription = |mut doc: Value, id: &str| {
        doc["Subscription"]["Id"] = json!(id);
        doc
    };
    let accounts = vec![
        account(FIRST, None, 200, "2023-01-01T00:00:00Z", "First"),
        account(CLONE, None, 100, "2024-01-01T00:00:00Z", "Clone"),
        own_subscription(
            account(
                &format!("Account|{TWICE}"),
                Some(TWICE),
                100,
                "2023-02-01T00:00:00Z",
                "Old Twice",
            ),
            TWICE_SUBSCRIPTION,
        ),
        own_subscription(
            account(TWICE, None, 300, "2023-02-01T00:00:00Z", "New Twice"),
            TWICE_SUBSCRIPTION,
        ),
        own_subscription(
            account(
                &CASES.to_uppercase(),
                None,
                400,
                "2023-03-01T00:00:00Z",
                "Upper",
            ),
            CASES_SUBSCRIPTION,
        ),
        own_subscription(
            account(CASES, None, 150, "2023-03-01T00:00:00Z", "Lower"),
            CASES_SUBSCRIPTION,
        ),
    ];
    let profiles = vec![
        profile(
            "aaaaaaaa-0000-4000-8000-000000000001",
            FIRST,
            "2023-05-01T00:00:00Z",
        ),
        profile(
            "aaaaaaaa-0000-4000-8000-000000000002",
            CLONE,
            "2023-04-01T00:00:00Z",
        ),
    ];
    (accounts, profiles)
}

fn write_export(dir: &Path, accounts: &[Value], profiles: &[Value]) {
    let lines = |docs: &[Value]| docs.iter().map(|d| format!("{d}\n")).collect::<String>();
    std::fs::write(dir.join("Accounts.jsonl"), lines(accounts)).unwrap();
    std::fs::write(dir.join("UserProfiles.jsonl"), lines(profiles)).unwrap();
}

/// Every domain row and every record an operator sees, as text, in a fixed order.
async fn state(pool: &PgPool) -> BTreeMap<&'static str, Vec<String>> {
    let queries: [(&str, &str); 10] = [
        ("accounts", "select t::text from accounts t order by id"),
        (
            "pending_signups",
            "select t::text from pending_signups t order by id",
        ),
        (
            "subscriptions",
            "select t::text from subscriptions t order by id",
        ),
        (
            "user_profiles",
            "select t::text from user_profiles t order by id",
        ),
        (
            "user_badges",
            "select t::text from user_badges t order by id",
        ),
        (
            "completed_scenarios",
            "select t::text from completed_scenarios t order by id",
        ),
        (
            "versions",
            "select concat_ws(' ', container, document_id, key, source_ts, source_etag, deleted)
             from migration.document_versions order by container, document_id",
        ),
        (
            "notes",
            "select concat_ws(' ', container, document_id, code, subject, detail, original)
             from migration.document_notes order by container, document_id, code, subject",
        ),
        (
            // the document kept differs by order (raw when it arrives second, a snapshot of its
            // rows when it was written first and displaced), so it is not compared
            "quarantine",
            "select concat_ws(' ', container, document_id, reason_code, source_ts,
                              resolved_at is null)
             from migration.quarantine order by container, document_id",
        ),
        (
            "superseded_by",
            "select concat_ws(' ', document_id, substring(message from '`([^`]*)`'))
             from migration.quarantine where reason_code = 'superseded_duplicate'
             order by document_id",
        ),
    ];
    let mut out = BTreeMap::new();
    for (name, sql) in queries {
        let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_all(pool)
            .await
            .unwrap();
        out.insert(name, rows);
    }
    out
}

async fn reset(pool: &PgPool) {
    sqlx::raw_sql(
        "truncate accounts, subscriptions, user_profiles, user_badges, completed_scenarios,
                  pending_signups, migration.document_versions, migration.document_notes,
                  migration.quarantine, migration.checkpoints, migration.runs,
                  migration.work_ranges",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn migrate(pool: &PgPool, dir: &Path, workers: usize, batch_rows: usize) {
    let config = BackfillConfig {
        batch_rows,
        workers,
        ranges_per_container: workers * 2,
        ..BackfillConfig::default()
    };
    let report = run_backfill(pool, &ExportDirSource::new(dir), &config, &|_, _| {})
        .await
        .unwrap();
    assert!(report.reconciles(), "{report:?}");
}

async fn scalar(pool: &PgPool, sql: &'static str) -> String {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn competing_documents_resolve_by_rule_whatever_the_order_batches_or_workers(pool: PgPool) {
    let (accounts, profiles) = documents();
    let forward = tempfile::tempdir().unwrap();
    write_export(forward.path(), &accounts, &profiles);
    let backward = tempfile::tempdir().unwrap();
    let reversed = |docs: &[Value]| docs.iter().rev().cloned().collect::<Vec<_>>();
    write_export(backward.path(), &reversed(&accounts), &reversed(&profiles));

    migrate(&pool, forward.path(), 1, 1000).await;
    let reference = state(&pool).await;

    // the rule, checked on the reference
    assert_eq!(
        reference["accounts"].len(),
        4,
        "{:#?}",
        reference["accounts"]
    );
    assert_eq!(
        scalar(
            &pool,
            "select display_name from accounts where id = '3c3c3c3c-3c3c-4c3c-8c3c-3c3c3c3c3c3c'"
        )
        .await,
        "New Twice",
        "the newer EF Core 9 document owns the row"
    );
    assert_eq!(
        scalar(
            &pool,
            "select display_name from accounts where id = '4d4d4d4d-4d4d-4d4d-8d4d-4d4d4d4d4d4d'"
        )
        .await,
        "Upper",
        "the newer spelling owns the row"
    );
    assert_eq!(
        reference["superseded_by"],
        vec![
            format!("{CASES} {}", CASES.to_uppercase()),
            format!("Account|{TWICE} {TWICE}"),
        ]
    );
    // one subscription each; FIRST (created first) keeps the shared id, CLONE's is derived and
    // remembers the original
    let subs: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "select account_id::text, id::text, cosmos_id from subscriptions
         where account_id in ($1::uuid, $2::uuid) order by account_id",
    )
    .bind(FIRST)
    .bind(CLONE)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(subs[0].0, FIRST);
    assert_eq!(subs[0].1, SHARED_SUBSCRIPTION);
    assert_eq!(subs[1].0, CLONE);
    assert_ne!(subs[1].1, SHARED_SUBSCRIPTION);
    assert_eq!(subs[1].2.as_deref(), Some(SHARED_SUBSCRIPTION));
    // the badge: CLONE's profile earned it first, so it keeps the id
    let kept_badge_owner = scalar(
        &pool,
        "select user_profile_id::text from user_badges where id = '0c9d8e7f-6a5b-4c3d-8e1f-0a1b2c3d4e5f'",
    )
    .await;
    assert_eq!(kept_badge_owner, "aaaaaaaa-0000-4000-8000-000000000002");
    let collisions: Vec<String> = sqlx::query_scalar(
        "select document_id || ' ' || subject from migration.document_notes
         where code = 'embedded_id_collision' order by document_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        collisions,
        vec![
            format!("{CLONE} Subscription.Id"),
            "aaaaaaaa-0000-4000-8000-000000000001 EarnedBadges[badge-config-1].Id".to_owned(),
        ]
    );

    // the same documents in reverse order, one per batch, four workers: the same state
    reset(&pool).await;
    migrate(&pool, backward.path(), 4, 1).await;
    assert_eq!(state(&pool).await, reference, "reverse order, 4 workers");

    // and a re-run over the migrated state changes nothing
    migrate(&pool, forward.path(), 2, 3).await;
    assert_eq!(state(&pool).await, reference, "re-run");
}

const KEEPER: &str = "55555555-5555-4555-8555-555555555555";
const LOSER: &str = "66666666-6666-4666-8666-666666666666";
const READ_TWICE: &str = "77777777-7777-4777-8777-777777777777";

async fn migrate_by(
    pool: &PgPool,
    dir: &Path,
    workers: usize,
    batch_rows: usize,
    load_mode: LoadMode,
) -> BackfillReport {
    let config = BackfillConfig {
        batch_rows,
        workers,
        ranges_per_container: workers * 2,
        load_mode,
        ..BackfillConfig::default()
    };
    let report = run_backfill(pool, &ExportDirSource::new(dir), &config, &|_, _| {})
        .await
        .unwrap();
    assert!(report.reconciles(), "{report:?}");
    report
}

/// The counts an operator reads: per container, read and each outcome (not `superseded` or
/// `set_aside`, which say how a path got there).
fn outcomes(report: &BackfillReport) -> Vec<(String, u64, u64, u64, u64, u64)> {
    report
        .job_totals
        .iter()
        .map(|(c, n)| {
            let skipped = n.skipped.values().sum();
            (
                c.clone(),
                n.read,
                n.written,
                n.unchanged,
                n.quarantined,
                skipped,
            )
        })
        .collect()
}

/// A generated export (every historical shape, with problems) plus the competing documents,
/// and more of them: two accounts of one login, a document read twice with its older copy
/// second, a profile of the account that loses its login and one of an account no document
/// has. Every file's lines reversed when `reversed`.
fn export_with_competitors(reversed: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    generate::write_export(
        dir.path(),
        &GenerateOptions {
            accounts: 80,
            seed: 5,
            dirty: 0.1,
        },
    )
    .unwrap();
    let (mut accounts, mut profiles) = documents();
    let mut keeper = account(KEEPER, None, 500, "2023-06-01T00:00:00Z", "Keeper");
    let mut loser = account(LOSER, None, 450, "2023-06-02T00:00:00Z", "Loser");
    for d in [&mut keeper, &mut loser] {
        d["ExternalUserId"] = json!("auth0|shared-login");
    }
    accounts.extend([
        keeper,
        loser,
        account(READ_TWICE, None, 300, "2023-07-01T00:00:00Z", "Read Twice"),
        account(
            READ_TWICE,
            None,
            250,
            "2023-07-01T00:00:00Z",
            "Read Twice Older",
        ),
    ]);
    profiles.push(profile(
        "aaaaaaaa-0000-4000-8000-000000000003",
        LOSER,
        "2023-06-05T00:00:00Z",
    ));
    profiles.push(profile(
        "aaaaaaaa-0000-4000-8000-000000000004",
        "99999999-9999-4999-8999-999999999999",
        "2023-06-06T00:00:00Z",
    ));
    // an orphan whose reference is not the key's canonical text: its note keeps the spelling
    profiles.push(profile(
        "aaaaaaaa-0000-4000-8000-000000000005",
        "ABCDEF01-9999-4999-8999-999999999999",
        "2023-06-07T00:00:00Z",
    ));
    // the two orphans compete for nothing else (their own badge ids): the initial load
    // detaches them set-based, not through the upsert pass
    for (p, badge) in profiles.iter_mut().rev().take(2).zip([
        "b0b0b0b0-0000-4000-8000-000000000005",
        "b0b0b0b0-0000-4000-8000-000000000004",
    ]) {
        p["EarnedBadges"][0]["Id"] = json!(badge);
    }
    for (file, extra) in [
        ("Accounts.jsonl", &accounts),
        ("UserProfiles.jsonl", &profiles),
    ] {
        let path = dir.path().join(file);
        let mut lines: Vec<String> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.extend(extra.iter().map(Value::to_string));
        if reversed {
            lines.reverse();
        }
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    }
    dir
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_initial_load_reaches_the_upsert_paths_state_whatever_the_order_batches_or_workers(
    pool: PgPool,
) {
    let forward = export_with_competitors(false);
    let backward = export_with_competitors(true);
    let catalog = mystira_postgres::initial_load::schema::domain_catalog(&pool)
        .await
        .unwrap();

    let upserted = migrate_by(&pool, forward.path(), 1, 1000, LoadMode::Upsert).await;
    assert_eq!(upserted.load_path, LoadPath::Upsert);
    let reference = state(&pool).await;
    assert_eq!(
        scalar(
            &pool,
            "select display_name from accounts where id = '77777777-7777-4777-8777-777777777777'"
        )
        .await,
        "Read Twice",
        "the newer copy of a document read twice"
    );
    assert_eq!(
        scalar(
            &pool,
            "select string_agg(document_id, ' ') from migration.quarantine
             where reason_code = 'duplicate_auth0_user_id'"
        )
        .await,
        LOSER
    );
    assert_eq!(
        scalar(
            &pool,
            "select original #>> '{}' from migration.document_notes
             where code = 'missing_account' and document_id = 'aaaaaaaa-0000-4000-8000-000000000005'"
        )
        .await,
        "ABCDEF01-9999-4999-8999-999999999999"
    );

    for (dir, workers, batch_rows) in [
        (forward.path(), 1, 1000),
        (backward.path(), 4, 1),
        (forward.path(), 2, 7),
    ] {
        reset(&pool).await;
        let report = migrate_by(&pool, dir, workers, batch_rows, LoadMode::Initial).await;
        let what = format!("workers={workers} batch={batch_rows} dir={}", dir.display());
        assert_eq!(report.load_path, LoadPath::Initial, "{what}");
        let summary = report.initial_load.clone().unwrap();
        // FIRST/CLONE (shared ids), TWICE and CASES (one key), KEEPER/LOSER (one login),
        // READ_TWICE, the orphans: all through the upsert pass
        assert!(
            summary.set_aside.documents["Accounts"] >= 9,
            "{what}: {summary:?}"
        );
        assert!(
            summary.set_aside.detached_profiles >= 2,
            "{what}: {summary:?}"
        );
        assert_eq!(state(&pool).await, reference, "{what}");
        assert_eq!(outcomes(&report), outcomes(&upserted), "{what}");
        assert_eq!(
            mystira_postgres::initial_load::schema::domain_catalog(&pool)
                .await
                .unwrap(),
            catalog,
            "{what}: the schema is whole again"
        );
    }

    // a later run takes the upsert path and changes nothing
    let again = migrate_by(&pool, forward.path(), 2, 100, LoadMode::Auto).await;
    assert_eq!(again.load_path, LoadPath::Upsert);
    assert_eq!(state(&pool).await, reference, "re-run");
}
