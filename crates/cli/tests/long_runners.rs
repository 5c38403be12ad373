//! The long-runners as processes, through real outages: `replicate` and `relay` run
//! continuously (the real binary) on a PostgreSQL cluster of the test's own, which the test
//! stops and starts again (`mystira-users db stop|start`), and on the Cosmos-protocol test
//! server, whose `/_faults` endpoint answers the test's own database with 500s or drops its
//! connections. Through each outage the process must stay alive, its heartbeat
//! (`migration.worker_heartbeats`) must go stale or say `retrying` with the failure's class
//! while the store is out and beat `running` again after, and what was written meanwhile must
//! arrive (in PostgreSQL for `replicate`, in Cosmos for `relay`). Before this, a continuous
//! `replicate` exited 1 when PostgreSQL stopped for a few seconds (issue 34, item 5).
//!
//! Environment: the Cosmos test server (`COSMOS_ENDPOINT`, `COSMOS_CERT_FILE`,
//! `SSL_CERT_FILE`, as `scripts/test` exports them) and PostgreSQL's server programs. Every wait
//! is bounded; each test takes about 20-30 s.
#![allow(clippy::unwrap_used)]

use mystira_test_support::cosmos as support;
use mystira_test_support::process::{ChildGuard, SpawnGuarded};

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mystira_cosmos_codec::generate::{self, GenerateOptions};
use mystira_cosmos_store::{CosmosStore, QuerySpec, import_dir};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");

/// A PostgreSQL cluster of this test's own (see `dual_write_faults.rs`), stopped and removed
/// on drop.
struct Cluster {
    dir: tempfile::TempDir,
    url: String,
}

impl Cluster {
    fn db(dir: &Path, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(["--quiet", "db"])
            .args(args)
            .env("MYSTIRA_PG_DIR", dir)
            .env_remove("DATABASE_URL")
            .env_remove("MYSTIRA_CONFIG")
            .output()
            .unwrap()
    }

    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("mu-long-")
            .tempdir_in("/tmp")
            .unwrap();
        let out = Self::db(dir.path(), &["start"]);
        assert!(
            out.status.success(),
            "db start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let url = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Self { dir, url }
    }

    fn stop(&self) {
        let out = Self::db(self.dir.path(), &["stop"]);
        assert!(out.status.success(), "db stop failed");
    }

    fn restart(&self) {
        let out = Self::db(self.dir.path(), &["start"]);
        assert!(
            out.status.success(),
            "db start (again) failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `None` while the server is down.
    async fn connect(&self) -> Option<PgConnection> {
        PgConnection::connect(&self.url).await.ok()
    }

    async fn scalar<T>(&self, sql: &str) -> Option<T>
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        let mut conn = self.connect().await?;
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut conn)
            .await
            .ok()
    }

    async fn execute(&self, sql: &str) {
        let mut conn = self.connect().await.expect("postgresql is up");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Self::db(self.dir.path(), &["stop"]);
    }
}

/// The binary on `cluster` and the Cosmos database `cosmos_db`, logging to `log`.
fn command(cluster: &Cluster, cosmos_db: &str, args: &[&str], log: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .args(["--database-url", &cluster.url])
        .env("MYSTIRA_PG_DIR", cluster.dir.path())
        .env("COSMOS_KEY", support::EMULATOR_KEY)
        .env("COSMOS_DATABASE", cosmos_db)
        .env_remove("MYSTIRA_CONFIG")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    c
}

async fn import_generated(store: &CosmosStore, accounts: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    generate::write_export(
        dir.path(),
        &GenerateOptions {
            accounts,
            seed,
            dirty: 0.0,
        },
    )
    .unwrap();
    import_dir(store, dir.path(), 8).await.unwrap();
}

/// The worker's heartbeat row: (state, last error class, seconds since its beat, beat time as
/// epoch seconds); `None` while PostgreSQL is down.
async fn heartbeat(cluster: &Cluster, kind: &str) -> Option<(String, Option<String>, f64, f64)> {
    let mut conn = cluster.connect().await?;
    sqlx::query_as(
        "select state, last_error_class, extract(epoch from now() - beat_at)::float8,
                extract(epoch from beat_at)::float8
         from migration.worker_heartbeats where kind = $1 order by beat_at desc limit 1",
    )
    .bind(kind)
    .fetch_optional(&mut conn)
    .await
    .ok()
    .flatten()
}

/// Waits (bounded) until `check` holds; fails at once when `child` has exited.
async fn until<F, Fut>(child: &mut Child, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the worker exited ({status}) while waiting for {what}");
        }
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keeps `child` under watch for `pause`: it must not exit.
async fn stays_alive(child: &mut Child, pause: Duration, what: &str) {
    let deadline = Instant::now() + pause;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the worker exited ({status}) {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn now_epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// SIGTERM, then the exit status and stdout.
fn terminate(child: ChildGuard) -> (std::process::ExitStatus, String) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.into_inner().wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// What the worker logged: no document value may be in it (the generated emails hold `@`).
fn log_of(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap();
    assert!(
        !log.contains("@example") && !log.contains("@mystira"),
        "the log holds an email: {log}"
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_replicate_survives_postgresql_and_cosmos_outages() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("replicate.log");
    let (store, _repos) = support::user_domain("long-repl").await;
    let cosmos_db = store.database_name().to_owned();
    import_generated(&store, 5, 61).await;
    let mut child = command(
        &cluster,
        &cosmos_db,
        &[
            "replicate",
            "--json",
            "--poll-ms",
            "200",
            "--delete-check-seconds",
            "0",
            "--max-retry-wait-seconds",
            "2",
        ],
        &log,
    )
    .spawn_guarded()
    .unwrap();
    let accounts = |n: i64| {
        let cluster = &cluster;
        async move {
            cluster
                .scalar::<i64>("select count(*) from accounts")
                .await
                .is_some_and(|c| c == n)
        }
    };
    until(&mut child, "the first catch-up", || accounts(5)).await;
    until(&mut child, "a heartbeat", || async {
        heartbeat(&cluster, "replicate")
            .await
            .is_some_and(|(state, _, age, _)| state == "running" && age < 10.0)
    })
    .await;

    // PostgreSQL stops for a few seconds; the app keeps writing to Cosmos meanwhile.
    cluster.stop();
    import_generated(&store, 3, 62).await;
    stays_alive(
        &mut child,
        Duration::from_secs(5),
        "while PostgreSQL was down",
    )
    .await;
    cluster.restart();
    let restarted = now_epoch();
    until(&mut child, "the accounts written during the outage", || {
        accounts(8)
    })
    .await;
    until(&mut child, "the heartbeat to resume", || async {
        heartbeat(&cluster, "replicate")
            .await
            .is_some_and(|(state, _, _, at)| state == "running" && at >= restarted - 1.0)
    })
    .await;

    // Cosmos answers 500 for a while: alive, beating, and saying it is retrying, and why.
    let faults = support::Faults::new();
    let fault = faults
        .arm(json!({
            "pathContains": format!("/dbs/{cosmos_db}/"), "count": 1_000_000,
            "action": "respond", "status": 500
        }))
        .await;
    until(&mut child, "the Cosmos outage in the heartbeat", || async {
        heartbeat(&cluster, "replicate")
            .await
            .is_some_and(|(state, class, age, _)| {
                state == "retrying" && class.as_deref() == Some("cosmos_service") && age < 10.0
            })
    })
    .await;
    let hits = faults.hits(&fault).await;
    until(&mut child, "more attempts", || async {
        faults.hits(&fault).await >= hits + 2
    })
    .await;
    faults.disarm(&fault).await;
    import_generated(&store, 2, 63).await;
    until(&mut child, "the accounts written after the outage", || {
        accounts(10)
    })
    .await;
    until(&mut child, "running again", || async {
        heartbeat(&cluster, "replicate")
            .await
            .is_some_and(|(state, _, age, _)| state == "running" && age < 10.0)
    })
    .await;

    let (status, stdout) = terminate(child);
    assert!(status.success(), "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["stopped"], true);
    assert_eq!(report["reconciled"], true);
    let (state, _, _, _) = heartbeat(&cluster, "replicate").await.unwrap();
    assert_eq!(state, "stopped", "the stop is recorded");
    let log = log_of(&log);
    assert!(
        log.contains("postgres_unavailable") && log.contains("cosmos_service"),
        "each outage is logged by its class: {log}"
    );
    store.delete_database().await.unwrap();
}

/// An account's `DisplayName` as Cosmos holds it.
async fn cosmos_display_name(store: &CosmosStore, id: &str) -> Option<String> {
    let accounts = store.container("Accounts").await.ok()?;
    let spec = QuerySpec::new("select * from c where c.id = @id").param("@id", id);
    let mut pages = accounts.query::<Value>(spec, None);
    let page = pages.next_page().await.ok()??;
    page.items
        .first()
        .and_then(|d| d["DisplayName"].as_str().map(str::to_owned))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuous_relay_survives_postgresql_and_cosmos_outages() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let (store, _repos) = support::user_domain("long-relay").await;
    let cosmos_db = store.database_name().to_owned();
    import_generated(&store, 4, 71).await;
    let migrate = command(
        &cluster,
        &cosmos_db,
        &["migrate", "--json"],
        &work.path().join("migrate.log"),
    )
    .output()
    .unwrap();
    assert!(migrate.status.success(), "migrate failed");
    let ids: Vec<String> = {
        let mut conn = cluster.connect().await.unwrap();
        sqlx::query_scalar("select coalesce(cosmos_id, id::text) from accounts order by id limit 3")
            .fetch_all(&mut conn)
            .await
            .unwrap()
    };
    // A PostgreSQL write (an admin's SQL: the trigger queues it for Cosmos all the same).
    let rename = |n: usize, name: &'static str| {
        let sql = format!(
            "update accounts set display_name = '{name}'
             where coalesce(cosmos_id, id::text) = '{}'",
            ids[n]
        );
        let cluster = &cluster;
        async move { cluster.execute(&sql).await }
    };
    let in_cosmos = |n: usize, name: &'static str| {
        let (store, id) = (&store, ids[n].clone());
        async move { cosmos_display_name(store, &id).await.as_deref() == Some(name) }
    };

    let log = work.path().join("relay.log");
    let mut child = command(
        &cluster,
        &cosmos_db,
        &["relay", "--json", "--max-retry-wait-seconds", "2"],
        &log,
    )
    .spawn_guarded()
    .unwrap();
    until(&mut child, "a heartbeat", || async {
        heartbeat(&cluster, "relay")
            .await
            .is_some_and(|(state, _, age, _)| state == "running" && age < 10.0)
    })
    .await;
    rename(0, "Relayed before").await;
    until(&mut child, "the first delivery", || {
        in_cosmos(0, "Relayed before")
    })
    .await;

    // PostgreSQL stops for a few seconds.
    cluster.stop();
    stays_alive(
        &mut child,
        Duration::from_secs(5),
        "while PostgreSQL was down",
    )
    .await;
    cluster.restart();
    let restarted = now_epoch();
    until(&mut child, "the heartbeat to resume", || async {
        heartbeat(&cluster, "relay")
            .await
            .is_some_and(|(state, _, _, at)| state == "running" && at >= restarted - 1.0)
    })
    .await;
    rename(1, "Relayed after PostgreSQL").await;
    until(
        &mut child,
        "the delivery after the PostgreSQL outage",
        || in_cosmos(1, "Relayed after PostgreSQL"),
    )
    .await;

    // Cosmos refuses every request for a while: the delivery is deferred, the relay says it
    // is retrying, and delivers once Cosmos is back.
    let faults = support::Faults::new();
    let fault = faults
        .arm(json!({
            "pathContains": format!("/dbs/{cosmos_db}/"), "count": 1_000_000,
            "action": "respond", "status": 500
        }))
        .await;
    rename(2, "Relayed after Cosmos").await;
    until(&mut child, "the Cosmos outage in the heartbeat", || async {
        heartbeat(&cluster, "relay")
            .await
            .is_some_and(|(state, class, _, _)| {
                state == "retrying" && class.is_some_and(|c| c.starts_with("delivery_"))
            })
    })
    .await;
    stays_alive(&mut child, Duration::from_secs(2), "while Cosmos was out").await;
    faults.disarm(&fault).await;
    until(&mut child, "the delivery after the Cosmos outage", || {
        in_cosmos(2, "Relayed after Cosmos")
    })
    .await;
    until(&mut child, "running again", || async {
        heartbeat(&cluster, "relay")
            .await
            .is_some_and(|(state, _, age, _)| state == "running" && age < 10.0)
    })
    .await;
    assert_eq!(
        cluster
            .scalar::<i64>("select count(*) from migration.outbox")
            .await,
        Some(0),
        "the outbox drained"
    );

    let (status, stdout) = terminate(child);
    assert!(status.success(), "{stdout}");
    let (state, _, _, _) = heartbeat(&cluster, "relay").await.unwrap();
    assert_eq!(state, "stopped");
    let log = log_of(&log);
    assert!(
        log.contains("relay pass failed (postgresql); retrying"),
        "the outage is logged: {log}"
    );
    store.delete_database().await.unwrap();
}
