//! The scale guard (issue 33): every statement of the initial load, the upsert path, verify and
//! repair must cost in proportion to the data (or to the batch), whatever the statistics. A
//! statement whose plan grows with the square of the data only shows at sizes no test can
//! afford (a million accounts), so this guard looks at the shape of the plans instead, at a
//! size where the planner already makes its large-data choices, and at the time per document
//! over two sizes.
//!
//! - [`no_statement_scans_a_table_per_row`] (in every test run): auto_explain reports the plan
//!   of every statement the load, verify and repair run, as a notice to the client, and none
//!   may scan a data table once per row of another: a correlated subplan over a table
//!   (hashed or not: a hashed subplan falls back to one scan per row once its hash table
//!   outgrows `work_mem`), or a sequential scan inside a nested loop. Looked at with the
//!   stripped schema without statistics and after `ANALYZE`, with the full schema (the upsert
//!   pass, verify, repair), and for the upsert path into an empty database without
//!   statistics. `work_mem` is at its minimum, 64kB, so that a hash a million accounts would
//!   not fit is one a few thousand do not fit either.
//! - [`initial_load_cost_per_document_does_not_grow_with_the_data`] (ignored by the default
//!   run: `scripts/test` runs it on its own, after the other tests, so that their load does not
//!   blur its timings): times the initial load at two sizes, best of a few runs each, and fails
//!   when the time per document (of the whole load, and of its set-based step) grows more than
//!   1.5 times.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mystira_cosmos_codec::generate::{self, GenerateOptions};
use mystira_migrate::initial::LoadMode;
use mystira_migrate::{
    BackfillConfig, BackfillReport, ExportDirSource, RepairOptions, VerifyOptions, repair,
    run_backfill, run_verify,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, PgPool};

/// Tables whose size grows with the data: a sequential scan of one of them per row of
/// another is quadratic.
const DATA_TABLES: [&str; 12] = [
    "accounts",
    "subscriptions",
    "user_profiles",
    "user_badges",
    "completed_scenarios",
    "pending_signups",
    "document_versions",
    "document_notes",
    "load_redo",
    "load_refs",
    "quarantine",
    "outbox",
];

/// The tables the initial load strips and fills, whose statistics the guard controls.
const LOADED_TABLES: [&str; 8] = [
    "accounts",
    "subscriptions",
    "user_profiles",
    "user_badges",
    "completed_scenarios",
    "pending_signups",
    "migration.document_versions",
    "migration.document_notes",
];

fn no_progress(_: &str, _: &mystira_migrate::ContainerCounts) {}

/// Writes a generated export of `accounts` accounts to `dir`, plus competing documents: every
/// 40th account and profile again under its id in upper case (another document of the same
/// row), so that the initial load sets documents aside and runs its upsert pass.
fn export_with_competitors(dir: &Path, accounts: u64) {
    generate::write_export(
        dir,
        &GenerateOptions {
            accounts,
            seed: 5,
            dirty: 0.02,
        },
    )
    .unwrap();
    for container in ["Accounts", "UserProfiles"] {
        let path = dir.join(format!("{container}.jsonl"));
        let text = std::fs::read_to_string(&path).unwrap();
        let mut extra = String::new();
        for line in text.lines().step_by(40) {
            let Ok(serde_json::Value::Object(mut doc)) = serde_json::from_str(line) else {
                continue;
            };
            let Some(id) = doc
                .get("id")
                .and_then(|v| v.as_str())
                .map(str::to_uppercase)
            else {
                continue;
            };
            doc.insert("id".into(), serde_json::Value::String(id));
            extra.push_str(&serde_json::Value::Object(doc).to_string());
            extra.push('\n');
        }
        std::fs::write(&path, text + &extra).unwrap();
    }
}

/// A fresh, migrated database on the test server, named after this process, with `settings`
/// for every session (`alter database ... set`), and a pool on it. Dropped by [`drop_db`].
async fn fresh_db(
    admin: &PgPool,
    connect: &PgConnectOptions,
    suffix: &str,
    settings: &[(&str, &str)],
) -> (String, PgPool) {
    plans::step("setting up");
    // not the test database's name with a suffix: that is cut back to itself at 63 bytes
    let name = format!("scale_guard_{}_{suffix}", std::process::id());
    for statement in [
        format!("drop database if exists \"{name}\" with (force)"),
        format!("create database \"{name}\""),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
            .execute(admin)
            .await
            .unwrap();
    }
    for (key, value) in settings {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "alter database \"{name}\" set {key} = '{value}'"
        )))
        .execute(admin)
        .await
        .unwrap();
    }
    let pool = PgPoolOptions::new()
        .max_connections(12)
        .connect_with(connect.clone().database(&name).disable_statement_logging())
        .await
        .unwrap();
    mystira_postgres::MIGRATOR.run(&pool).await.unwrap();
    (name, pool)
}

async fn drop_db(admin: &PgPool, name: &str, pool: PgPool) {
    pool.close().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "drop database if exists \"{name}\" with (force)"
    )))
    .execute(admin)
    .await
    .unwrap();
}

/// No statistics unless a test takes them: autovacuum would analyze the freshly loaded tables
/// at a moment of its choosing.
async fn without_autovacuum(pool: &PgPool) {
    for table in LOADED_TABLES {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "alter table {table} set (autovacuum_enabled = off)"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn load(pool: &PgPool, dir: &Path, mode: LoadMode, batch_rows: usize) -> BackfillReport {
    let report = run_backfill(
        pool,
        &ExportDirSource::new(dir),
        &BackfillConfig {
            batch_rows,
            load_mode: mode,
            ..BackfillConfig::default()
        },
        &no_progress,
    )
    .await
    .unwrap();
    assert!(report.reconciles(), "{report:#?}");
    report
}

/// Changes, removes and adds rows behind the migration's back, so that verify finds drift of
/// every kind and repair has something to do.
async fn damage(pool: &PgPool) {
    sqlx::raw_sql(
        "set mystira.keep_source_timestamps = 'on';
         update accounts set display_name = display_name || ' (changed)'
             where id in (select id from accounts order by id limit 25);
         delete from user_badges where id in (select id from user_badges order by id limit 25);
         delete from user_profiles where id in (select id from user_profiles order by id desc limit 10);
         reset mystira.keep_source_timestamps;",
    )
    .execute(pool)
    .await
    .unwrap();
}

async fn verify_and_repair(pool: &PgPool, dir: &Path) {
    let source = ExportDirSource::new(dir);
    run_verify(pool, &source, &VerifyOptions::default())
        .await
        .unwrap();
    damage(pool).await;
    let repaired = repair(
        pool,
        &source,
        &VerifyOptions::default(),
        &RepairOptions {
            delete_extra: true,
            ..RepairOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(repaired.after.drift_count() < repaired.before.drift_count());
}

mod plans {
    //! The plans auto_explain sends as notices (`auto_explain.log_level = notice`), which sqlx
    //! hands to `tracing` under the target `sqlx::postgres::notice`, kept by a subscriber of
    //! this test's own, each with the name of the step it belongs to.

    use std::sync::Mutex;

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    static STEP: Mutex<String> = Mutex::new(String::new());
    static KEPT: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

    /// The step the plans reported from now on belong to.
    pub fn step(name: &str) {
        *STEP.lock().unwrap() = name.to_owned();
    }

    /// The plans kept so far, with their step, and none kept after.
    pub fn take() -> Vec<(String, serde_json::Value)> {
        std::mem::take(&mut *KEPT.lock().unwrap())
            .into_iter()
            .filter_map(|(step, text)| {
                // "duration: 0.123 ms  plan:\n{...}"
                let json = &text[text.find('{')?..];
                Some((step, serde_json::from_str(json).ok()?))
            })
            .collect()
    }

    struct Notices;

    struct Message(Option<String>);

    impl Visit for Message {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.0 = Some(value.to_owned());
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" && self.0.is_none() {
                self.0 = Some(format!("{value:?}"));
            }
        }
    }

    impl Subscriber for Notices {
        fn enabled(&self, metadata: &Metadata<'_>) -> bool {
            metadata.target() == "sqlx::postgres::notice"
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut message = Message(None);
            event.record(&mut message);
            if let Some(text) = message.0.filter(|t| t.contains("plan:")) {
                let step = STEP.lock().unwrap().clone();
                KEPT.lock().unwrap().push((step, text));
            }
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    pub fn install() {
        // one subscriber per process: the first test to get here installs it
        let _ = tracing::subscriber::set_global_default(Notices);
    }
}

/// Settings of a database whose every statement's plan reaches the client: auto_explain
/// loaded in each session, reporting every plan (top-level statements: a foreign key's check
/// is a lookup by key) as a notice in JSON; and `work_mem` at its least.
const EXPLAINED: [(&str, &str); 5] = [
    ("session_preload_libraries", "auto_explain"),
    ("auto_explain.log_min_duration", "0"),
    ("auto_explain.log_level", "notice"),
    ("auto_explain.log_format", "json"),
    ("work_mem", "64kB"),
];

/// One plan node that reads a data table once per row of another.
#[derive(Debug)]
struct PerRowScan {
    step: String,
    rule: &'static str,
    table: String,
    query: String,
}

fn seq_scans_under(node: &serde_json::Value, out: &mut Vec<String>) {
    if node["Node Type"] == "Seq Scan"
        && let Some(table) = node["Relation Name"].as_str()
        && DATA_TABLES.contains(&table)
    {
        out.push(table.to_owned());
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        seq_scans_under(child, out);
    }
}

/// The per-row scans of one plan tree: a subplan (correlated: an init plan runs once) that
/// reads a data table sequentially, or a nested loop whose inner side does.
fn per_row_scans(node: &serde_json::Value, found: &mut Vec<(&'static str, String)>) {
    let mut tables = Vec::new();
    if node["Parent Relationship"] == "SubPlan" {
        seq_scans_under(node, &mut tables);
        found.extend(
            tables
                .drain(..)
                .map(|t| ("a subplan scans the table once per row", t)),
        );
    }
    if node["Node Type"] == "Nested Loop"
        && let Some(inner) = node["Plans"].as_array().and_then(|p| p.get(1))
    {
        seq_scans_under(inner, &mut tables);
        found.extend(
            tables
                .drain(..)
                .map(|t| ("a nested loop scans the table for each outer row", t)),
        );
    }
    for child in node["Plans"].as_array().into_iter().flatten() {
        per_row_scans(child, found);
    }
}

fn check(plans: &[(String, serde_json::Value)]) -> (Vec<PerRowScan>, BTreeMap<String, usize>) {
    let mut bad = Vec::new();
    let mut looked_at: BTreeMap<String, usize> = BTreeMap::new();
    for (step, plan) in plans {
        *looked_at.entry(step.clone()).or_default() += 1;
        let mut found = Vec::new();
        per_row_scans(&plan["Plan"], &mut found);
        let query = plan["Query Text"]
            .as_str()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        for (rule, table) in found {
            if !bad.iter().any(|b: &PerRowScan| {
                b.step == *step && b.query == query && b.table == table && b.rule == rule
            }) {
                bad.push(PerRowScan {
                    step: step.clone(),
                    rule,
                    table,
                    query: query.clone(),
                });
            }
        }
    }
    (bad, looked_at)
}

/// Waits (bounded) until a session of `pool`'s database waits for an advisory lock: the
/// backfill's workers are done and its finish waits for the lock this test holds.
async fn until_a_session_waits_for_the_lock(admin: &PgPool, database: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let waiting: bool = sqlx::query_scalar(
            "select exists (select 1 from pg_locks l join pg_stat_activity a on a.pid = l.pid
                            where l.locktype = 'advisory' and not l.granted and a.datname = $1)",
        )
        .bind(database)
        .fetch_one(admin)
        .await
        .unwrap();
        if waiting {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the load never reached its finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn no_statement_scans_a_table_per_row(_pool_opts: PgPoolOptions, connect: PgConnectOptions) {
    plans::install();
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(connect.clone())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    export_with_competitors(dir.path(), 2_000);

    // the initial load with the stripped schema and no statistics, then the upsert pass,
    // verify and repair with the full schema
    let (name, pool) = fresh_db(&admin, &connect, "nostats", &EXPLAINED).await;
    without_autovacuum(&pool).await;
    plans::step("initial load, stripped tables without statistics");
    let report = load(&pool, dir.path(), LoadMode::Initial, 500).await;
    let summary = report.initial_load.as_ref().unwrap();
    assert!(
        !summary.set_aside.documents.is_empty() && summary.set_aside.detached_profiles > 0,
        "the data must exercise the set-aside checks and the orphans: {summary:?}"
    );
    plans::step("verify and repair after the initial load");
    verify_and_repair(&pool, dir.path()).await;
    drop_db(&admin, &name, pool).await;

    // the same checks after ANALYZE of the stripped tables: the finish waits for this lock
    let (name, pool) = fresh_db(&admin, &connect, "analyzed", &EXPLAINED).await;
    without_autovacuum(&pool).await;
    let lock = mystira_postgres::leases::SessionLock::acquire(&pool, "mystira.initial_load/finish")
        .await
        .unwrap();
    plans::step("initial load, stripped tables after ANALYZE");
    let running = load(&pool, dir.path(), LoadMode::Initial, 500);
    let analyze = async {
        until_a_session_waits_for_the_lock(&admin, &name).await;
        for table in LOADED_TABLES {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("analyze {table}")))
                .execute(&pool)
                .await
                .unwrap();
        }
        drop(lock);
    };
    tokio::join!(running, analyze);
    drop_db(&admin, &name, pool).await;

    // the upsert path into an empty database, small batches, no statistics
    let (name, pool) = fresh_db(&admin, &connect, "upsert", &EXPLAINED).await;
    without_autovacuum(&pool).await;
    plans::step("upsert path into an empty database without statistics");
    load(&pool, dir.path(), LoadMode::Upsert, 100).await;
    plans::step("verify and repair after the upsert path");
    verify_and_repair(&pool, dir.path()).await;
    drop_db(&admin, &name, pool).await;

    let (bad, looked_at) = check(&plans::take());
    for (step, n) in &looked_at {
        println!("{n:6} plans looked at: {step}");
    }
    for step in [
        "initial load, stripped tables without statistics",
        "initial load, stripped tables after ANALYZE",
        "verify and repair after the initial load",
        "upsert path into an empty database without statistics",
        "verify and repair after the upsert path",
    ] {
        assert!(
            looked_at.get(step).copied().unwrap_or(0) > 20,
            "auto_explain reported no plans for `{step}`: {looked_at:?}"
        );
    }
    assert!(
        bad.is_empty(),
        "statements that read a table once per row of another (quadratic in the data):\n{}",
        bad.iter()
            .map(|b| format!(
                "- {} ({}; table {}):\n    {}",
                b.rule,
                b.step,
                b.table,
                b.query.chars().take(600).collect::<String>()
            ))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Seconds of the whole load and of its set-based step (set aside) of `report`.
fn load_seconds(report: &BackfillReport) -> (f64, f64) {
    let summary = report.initial_load.as_ref().unwrap();
    (report.elapsed_seconds, summary.set_aside_seconds)
}

/// The per-document cost of the initial load at two sizes, each the best of a few runs into a
/// fresh database. Run by `scripts/test` on its own.
///
/// With the server's own `work_mem`: at these sizes every hash fits, so a statement that needs
/// a hash per row does not show here (the plan check above finds it); what this finds is a
/// cost that grows with the data whatever the memory. Not at 64kB: a sort or hash aggregate
/// that spills to disk in passes of a few kilobytes costs more per row at each size (n log n
/// with a small log base: 1.55 times per document from 5,000 to 20,000 accounts in the set
/// aside step), which is PostgreSQL's and not a regression.
#[ignore = "timing: scripts/test runs it alone, after the other tests"]
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn initial_load_cost_per_document_does_not_grow_with_the_data(
    _pool_opts: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // (accounts, runs): about 15,000 and 60,000 documents
    const SIZES: [(u64, usize); 2] = [(4_000, 3), (16_000, 3)];
    const MAX_GROWTH: f64 = 1.5;
    let admin = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(connect.clone())
        .await
        .unwrap();
    let figures: Mutex<Vec<(u64, u64, f64, f64)>> = Mutex::new(Vec::new());
    for (accounts, runs) in SIZES {
        let dir = tempfile::tempdir().unwrap();
        export_with_competitors(dir.path(), accounts);
        let (mut best_load, mut best_set_aside, mut documents) = (f64::MAX, f64::MAX, 0);
        for run in 0..runs {
            let (name, pool) = fresh_db(&admin, &connect, &format!("t{run}"), &[]).await;
            let report = load(&pool, dir.path(), LoadMode::Initial, 1000).await;
            documents = report.job_totals.values().map(|c| c.read).sum();
            let (all, set_aside) = load_seconds(&report);
            println!(
                "scale guard: {accounts} accounts ({documents} documents), run {}: load {all:.2} s, set aside {set_aside:.3} s",
                run + 1
            );
            best_load = best_load.min(all);
            best_set_aside = best_set_aside.min(set_aside);
            drop_db(&admin, &name, pool).await;
        }
        figures
            .lock()
            .unwrap()
            .push((accounts, documents, best_load, best_set_aside));
    }
    let figures = figures.into_inner().unwrap();
    let per_document = |f: &(u64, u64, f64, f64), seconds: f64| seconds / f.1 as f64;
    let (small, large) = (&figures[0], &figures[1]);
    let load_growth = per_document(large, large.2) / per_document(small, small.2);
    let set_aside_growth = per_document(large, large.3) / per_document(small, small.3);
    for f in &figures {
        println!(
            "scale guard: {} accounts, {} documents: load {:.2} s ({:.1} µs a document), set aside {:.3} s ({:.1} µs a document)",
            f.0,
            f.1,
            f.2,
            per_document(f, f.2) * 1e6,
            f.3,
            per_document(f, f.3) * 1e6
        );
    }
    println!(
        "scale guard: per-document cost at {} against {} accounts: load {load_growth:.2}x, set aside {set_aside_growth:.2}x (at most {MAX_GROWTH}x)",
        large.0, small.0
    );
    assert!(
        load_growth <= MAX_GROWTH && set_aside_growth <= MAX_GROWTH,
        "the initial load's cost per document grew with the data: load {load_growth:.2}x, \
         set aside {set_aside_growth:.2}x from {} to {} accounts (at most {MAX_GROWTH}x)",
        small.0,
        large.0
    );
}
