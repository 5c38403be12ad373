//! Verification and repair against real PostgreSQL, from generated export files: a clean copy
//! verifies clean (including awkward values, which must hash the same on both sides), each
//! kind of seeded drift is detected exactly and nothing else, values are only shown on
//! request, and repair fixes everything (deleting extra rows only when asked).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use mystira_cosmos::export::ExportWriter;
use mystira_cosmos::generate::{self, DocKind, GenerateOptions};
use mystira_migrate::{
    BackfillConfig, DriftKind, Entity, ExportDirSource, Outcome, RepairOptions, VerifyOptions,
    VerifyReport, repair, run_backfill, run_verify, verify,
};
use serde_json::json;
use sqlx::PgPool;

fn options(accounts: u64, dirty: f64) -> GenerateOptions {
    GenerateOptions {
        accounts,
        seed: 23,
        dirty,
    }
}

fn export(opts: &GenerateOptions) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    generate::write_export(dir.path(), opts).unwrap();
    dir
}

async fn backfill(pool: &PgPool, dir: &Path) {
    let config = BackfillConfig {
        batch_rows: 200,
        ..BackfillConfig::default()
    };
    let report = run_backfill(pool, &ExportDirSource::new(dir), &config, &|_, _| {})
        .await
        .unwrap();
    assert!(report.reconciles());
}

async fn check(pool: &PgPool, dir: &Path, show_values: bool) -> VerifyReport {
    let opts = VerifyOptions {
        show_values,
        page_size: 100,
        ..VerifyOptions::default()
    };
    verify(pool, &ExportDirSource::new(dir), &opts)
        .await
        .unwrap()
}

async fn open_quarantine(pool: &PgPool) -> BTreeSet<(String, String)> {
    sqlx::query_as::<_, (String, String)>(
        "select container, document_id from migration.quarantine where resolved_at is null",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// (kind, entity, key) of every drift item.
fn drift_set(report: &VerifyReport) -> BTreeSet<(DriftKind, Entity, String)> {
    report
        .drift()
        .map(|i| (i.kind, i.entity, i.key.clone().unwrap_or_default()))
        .collect()
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_clean_migration_verifies_clean_and_is_recorded(pool: PgPool) {
    let dir = export(&options(120, 0.1));
    backfill(&pool, dir.path()).await;
    let report = run_verify(
        &pool,
        &ExportDirSource::new(dir.path()),
        &VerifyOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, Outcome::Clean, "{}", report.summary(20));
    assert_eq!(report.outcome.exit_code(), 0);
    assert_eq!(report.differing_buckets, 0, "no descent on a clean copy");
    assert_eq!(report.source_passes, 1);
    for (entity, c) in &report.entities {
        assert_eq!(c.source, c.postgres, "{entity}");
        assert_eq!(c.matched, c.source, "{entity}");
        assert!(c.source > 0, "{entity} should have rows");
    }
    // every quarantined document is reported as quarantined (and is not drift)
    let quarantined: BTreeSet<(String, String)> = report
        .items
        .iter()
        .filter(|i| i.kind == DriftKind::Quarantined)
        .map(|i| {
            (
                i.entity.container().to_owned(),
                i.cosmos_id.clone().unwrap(),
            )
        })
        .collect();
    assert!(
        !quarantined.is_empty(),
        "the data set should hold quarantined documents"
    );
    assert_eq!(quarantined, open_quarantine(&pool).await);

    let (job, status, outcome, entities): (String, String, String, serde_json::Value) =
        sqlx::query_as(
            "select job, status, counts->>'outcome', counts->'entities' from migration.runs
             where id = $1",
        )
        .bind(report.run_id.unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        (job.as_str(), status.as_str(), outcome.as_str()),
        ("verify", "succeeded", "clean")
    );
    assert_eq!(
        entities["accounts"]["postgres"].as_u64(),
        Some(report.entities[&Entity::Accounts].postgres)
    );
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn awkward_values_hash_the_same_on_both_sides(pool: PgPool) {
    // clean documents with values that test every canonical form: unicode, quotes,
    // backslashes and control characters; JSON numbers in exponent form and nested settings;
    // times before 2000 with 100 ns digits (sqlx truncates toward zero), and float badges
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ExportWriter::create(dir.path()).unwrap();
    for c in mystira_cosmos::codec::Container::ALL {
        writer.add_container(c.name()).unwrap();
    }
    let mut touched = (0i64, 0i64);
    let clean = generate::documents_of(&options(30, 0.0)).filter(|d| d.kind == DocKind::Clean);
    for (n, doc) in clean.enumerate() {
        let mut value = doc.value;
        if doc.container.name() == "Accounts" && n % 2 == 0 {
            let obj = value.as_object_mut().unwrap();
            obj.insert(
                "DisplayName".into(),
                json!("Zoë \"Q\" \\ tab\t bell\u{7} 日本"),
            );
            obj.insert("CreatedAt".into(), json!("1990-06-15T12:00:00.1234567Z"));
            obj.insert("LastLoginAt".into(), json!("1999-12-31T23:59:59.9999995"));
            if let Some(settings) = obj.get_mut("Settings").and_then(|s| s.as_object_mut()) {
                settings.insert("Big".into(), json!(1e20));
                settings.insert("Tiny".into(), json!(1.5e-7));
                settings.insert("Negative".into(), json!(-0.0));
                settings.insert(
                    "Nested".into(),
                    json!({"bb": [1, "x\u{1}"], "a": null, "é": 2.50}),
                );
            }
            touched.0 += 1;
        }
        if doc.container.name() == "UserProfiles" {
            let obj = value.as_object_mut().unwrap();
            obj.insert("Name".into(), json!("Ünï \u{1f}\r\n"));
            if let Some(badges) = obj.get_mut("EarnedBadges").and_then(|b| b.as_array_mut()) {
                for (i, b) in badges.iter_mut().enumerate() {
                    b["TriggerValue"] = json!(0.1 + i as f64 / 3.0);
                    b["Threshold"] = json!(1e-3);
                    touched.1 += 1;
                }
            }
        }
        writer.write(doc.container.name(), &value).unwrap();
    }
    writer.finish().unwrap();
    assert!(touched.0 > 0 && touched.1 > 0, "{touched:?}");
    backfill(&pool, dir.path()).await;
    let reasons: Vec<(String, String)> =
        sqlx::query_as("select reason_code, message from migration.quarantine")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        reasons.is_empty(),
        "the awkward documents must all land: {reasons:?}"
    );
    let landed: (i64, i64) = sqlx::query_as(
        "select count(*) filter (where display_name like 'Zoë%' and settings ? 'Nested'
                                   and last_login_at < '2000-01-01T00:00:01Z'),
                (select count(*) from user_badges where threshold = 0.001::real)
         from accounts",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(landed, (touched.0, touched.1));
    let report = check(&pool, dir.path(), true).await;
    assert_eq!(report.outcome, Outcome::Clean, "{}", report.summary(20));
    assert_eq!(report.differing_buckets, 0);
}

/// The keys of the seeded drift.
struct Seeded {
    missing_signup: String,
    changed_account: String,
    display_name: String,
    extra_signup: String,
    stale_profile: String,
}

/// Seeds one drift of each kind into a backfilled copy of `dir`.
async fn seed_drift(pool: &PgPool, dir: &Path) -> Seeded {
    let (missing_signup,): (String,) = sqlx::query_as(
        "delete from pending_signups where id = (select id from pending_signups order by id limit 1)
         returning id::text",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let (changed_account, display_name): (String, String) = sqlx::query_as(
        "update accounts a set display_name = a.display_name || ' (edited)'
         where id = (select id from accounts order by id offset 3 limit 1)
         returning id::text, a.display_name",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let (extra_signup,): (String,) = sqlx::query_as(
        "insert into pending_signups (id, email, code, expires_at)
         values (gen_random_uuid(), 'extra@example.com', '123456', now()) returning id::text",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    // the source changes after the copy: a profile renamed, with a newer _ts
    let (stale_profile, document_id): (String, String) = sqlx::query_as(
        "select id::text, coalesce(cosmos_id, id::text) from user_profiles order by id offset 5 limit 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let file = dir.join("UserProfiles.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut out = String::new();
    let mut rewritten = 0;
    for line in text.lines() {
        let mut doc: serde_json::Value = match serde_json::from_str(line) {
            Ok(d) => d,
            Err(_) => {
                out.push_str(line);
                out.push('\n');
                continue;
            }
        };
        if doc.get("id").and_then(|i| i.as_str()) == Some(document_id.as_str()) {
            let name = doc["Name"].as_str().unwrap_or_default().to_owned();
            doc["Name"] = json!(format!("{name} renamed"));
            doc["_ts"] = json!(doc["_ts"].as_i64().unwrap_or(0) + 1000);
            rewritten += 1;
        }
        out.push_str(&serde_json::to_string(&doc).unwrap());
        out.push('\n');
    }
    assert_eq!(rewritten, 1);
    std::fs::write(&file, out).unwrap();
    Seeded {
        missing_signup,
        changed_account,
        display_name,
        extra_signup,
        stale_profile,
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn seeded_drift_of_every_kind_is_detected_exactly(pool: PgPool) {
    let dir = export(&options(120, 0.08));
    backfill(&pool, dir.path()).await;
    let s = seed_drift(&pool, dir.path()).await;

    let report = check(&pool, dir.path(), false).await;
    assert_eq!(report.outcome, Outcome::Drift);
    assert_eq!(report.outcome.exit_code(), 1);
    let expected: BTreeSet<(DriftKind, Entity, String)> = [
        (
            DriftKind::Missing,
            Entity::PendingSignups,
            s.missing_signup.clone(),
        ),
        (
            DriftKind::Changed,
            Entity::Accounts,
            s.changed_account.clone(),
        ),
        (
            DriftKind::Extra,
            Entity::PendingSignups,
            s.extra_signup.clone(),
        ),
        (
            DriftKind::Stale,
            Entity::UserProfiles,
            s.stale_profile.clone(),
        ),
    ]
    .into();
    assert_eq!(drift_set(&report), expected, "{}", report.summary(20));
    let item = |kind| report.drift().find(|i| i.kind == kind).unwrap();
    assert_eq!(item(DriftKind::Changed).fields, ["display_name"]);
    let stale = &item(DriftKind::Stale).fields;
    assert!(
        stale.contains(&"name".to_owned()) && stale.contains(&"_ts".to_owned()),
        "{stale:?}"
    );
    assert!(!item(DriftKind::Extra).source_has_document);
    // values are personal data: redacted unless asked for
    assert!(report.items.iter().all(|i| i.values.is_none()));
    assert!(!report.summary(20).contains("(edited)"));
    assert!(!serde_json::to_string(&report).unwrap().contains("(edited)"));

    let counts = &report.entities[&Entity::PendingSignups];
    assert_eq!((counts.missing, counts.extra), (1, 1));
    assert_eq!(counts.source, counts.postgres, "one missing and one extra");
    assert_eq!(report.entities[&Entity::Accounts].changed, 1);
    assert_eq!(report.entities[&Entity::UserProfiles].stale, 1);
    // quarantined documents are reported as such, never as missing
    let quarantined: BTreeSet<String> = report
        .items
        .iter()
        .filter(|i| i.kind == DriftKind::Quarantined)
        .filter_map(|i| i.cosmos_id.clone())
        .collect();
    assert_eq!(quarantined.len(), open_quarantine(&pool).await.len());
    assert!(
        report
            .drift()
            .all(|i| !quarantined.contains(i.cosmos_id.as_deref().unwrap_or("")))
    );

    let shown = check(&pool, dir.path(), true).await;
    let changed = shown
        .drift()
        .find(|i| i.kind == DriftKind::Changed)
        .unwrap();
    let values = changed.values.as_ref().unwrap();
    assert_eq!(values.len(), 1);
    assert_eq!(values[0].postgres.as_deref(), Some(s.display_name.as_str()));
    assert_eq!(
        values[0].source.as_deref(),
        s.display_name.strip_suffix(" (edited)"),
        "the source keeps the original"
    );
    assert!(shown.summary(20).contains("(edited)"));
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn repair_fixes_everything_and_deletes_extra_rows_only_when_asked(pool: PgPool) {
    let dir = export(&options(120, 0.08));
    backfill(&pool, dir.path()).await;
    let s = seed_drift(&pool, dir.path()).await;
    // and a deleted account: its subscription and completed scenarios go with it (cascade) and
    // its profiles are detached; repair needs a second round to re-attach them
    let (deleted_account,): (String,) = sqlx::query_as(
        "delete from accounts where id = (select account_id from user_profiles p
             join subscriptions s using (account_id) order by account_id limit 1)
         returning id::text",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let source = ExportDirSource::new(dir.path());
    let opts = VerifyOptions::default();

    let kept = repair(&pool, &source, &opts, &RepairOptions::default())
        .await
        .unwrap();
    assert!(
        kept.before.drift_count() >= 5,
        "{}",
        kept.before.summary(30)
    );
    assert!(kept.before.drift().any(
        |i| i.kind == DriftKind::Missing && i.key.as_deref() == Some(deleted_account.as_str())
    ));
    let left: BTreeSet<(DriftKind, Entity, String)> = [(
        DriftKind::Extra,
        Entity::PendingSignups,
        s.extra_signup.clone(),
    )]
    .into();
    assert_eq!(drift_set(&kept.after), left, "{}", kept.summary(30));
    assert!(kept.rounds.iter().all(|r| r.deleted.is_empty()));
    let renamed: String = sqlx::query_scalar("select name from user_profiles where id = $1::uuid")
        .bind(&s.stale_profile)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        renamed.ends_with(" renamed"),
        "the stale copy was refreshed"
    );

    let deleted = repair(
        &pool,
        &source,
        &opts,
        &RepairOptions {
            delete_extra: true,
            ..RepairOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        deleted.after.outcome,
        Outcome::Clean,
        "{}",
        deleted.summary(30)
    );
    assert_eq!(deleted.fixed(), 1);
    assert_eq!(deleted.rounds[0].deleted.get("pending_signups"), Some(&1));
    let extra: i64 = sqlx::query_scalar("select count(*) from pending_signups where id = $1::uuid")
        .bind(&s.extra_signup)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(extra, 0);
    // every verification of the repair was recorded
    let runs: i64 = sqlx::query_scalar("select count(*) from migration.runs where job = 'verify'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(runs as usize, 2 + kept.rounds.len() + deleted.rounds.len());
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn slices_of_the_key_space_add_up_to_the_whole(pool: PgPool) {
    let dir = export(&options(80, 0.05));
    backfill(&pool, dir.path()).await;
    let s = seed_drift(&pool, dir.path()).await;
    let source = ExportDirSource::new(dir.path());
    let whole = verify(&pool, &source, &VerifyOptions::default())
        .await
        .unwrap();
    let mut halves = BTreeSet::new();
    let mut postgres = 0;
    for (first_bucket, last_bucket) in [(0, 127), (128, 255)] {
        let opts = VerifyOptions {
            first_bucket,
            last_bucket,
            ..VerifyOptions::default()
        };
        let part = verify(&pool, &source, &opts).await.unwrap();
        halves.extend(drift_set(&part));
        postgres += part.entities[&Entity::Accounts].postgres;
    }
    assert_eq!(halves, drift_set(&whole));
    assert!(halves.iter().any(|(_, _, k)| *k == s.stale_profile));
    assert_eq!(postgres, whole.entities[&Entity::Accounts].postgres);
}

/// Times verification against migration of the same data set (printed, not asserted).
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn verification_is_timed_against_migration(pool: PgPool) {
    let accounts = std::env::var("VERIFY_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = export(&options(accounts, 0.02));
    let started = Instant::now();
    backfill(&pool, dir.path()).await;
    let migrate = started.elapsed();
    let started = Instant::now();
    let clean = check(&pool, dir.path(), false).await;
    let verify_clean = started.elapsed();
    assert_eq!(clean.outcome, Outcome::Clean);
    // drift in about 1% of the accounts: the descent reads the source a second time
    sqlx::query("update accounts set display_name = display_name || '!' where get_byte(uuid_send(id), 1) < 3")
        .execute(&pool)
        .await
        .unwrap();
    let started = Instant::now();
    let drift = check(&pool, dir.path(), false).await;
    let verify_drift = started.elapsed();
    assert_eq!(drift.outcome, Outcome::Drift);
    let rows: u64 = clean.entities.values().map(|c| c.source).sum();
    println!(
        "timing: {accounts} accounts ({rows} rows): migrate {:.2} s, verify clean {:.2} s, \
         verify with {} drifted rows in {} buckets {:.2} s",
        migrate.as_secs_f64(),
        verify_clean.as_secs_f64(),
        drift.drift_count(),
        drift.differing_buckets,
        verify_drift.as_secs_f64(),
    );
}
