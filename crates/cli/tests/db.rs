//! The `db` commands, run as the built binary the way a person would: with nothing configured
//! (a private PostgreSQL cluster in a temporary `MYSTIRA_PG_DIR`), and with `--database-url`
//! pointing at the server in `DATABASE_URL` (which `./scripts/test` provides).

use std::path::Path;
use std::process::{Command, Output};

use mystira_test_support::postgres::{database_url, server_url, unique_database_name};
use mystira_test_support::process::SpawnGuarded;
use serde_json::Value;
use sqlx::Connection;

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");

/// A private cluster in a temporary directory, stopped and removed when dropped (also when the
/// test panics). Commands run in a scratch working directory with no config file in reach.
struct Sandbox {
    pg_dir: tempfile::TempDir,
    cwd: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        // directly under /tmp: the socket path must stay under the kernel's 107 bytes
        let temp = |prefix| {
            tempfile::Builder::new()
                .prefix(prefix)
                .tempdir_in("/tmp")
                .expect("create a temp dir")
        };
        Self {
            pg_dir: temp("mu-pg-"),
            cwd: temp("mu-cwd-"),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(self.cwd.path())
            .env("MYSTIRA_PG_DIR", self.pg_dir.path())
            .env("XDG_CONFIG_HOME", self.cwd.path())
            .env_remove("DATABASE_URL")
            .env_remove("MYSTIRA_CONFIG")
            .env_remove("RUST_LOG");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run mystira-users")
    }

    /// Runs with `--json` and returns the exit code and the parsed stdout.
    fn run_json(&self, args: &[&str]) -> (i32, Value) {
        let mut all = args.to_vec();
        all.push("--json");
        json_of(&self.run(&all))
    }

    fn pg_dir(&self) -> &Path {
        self.pg_dir.path()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // stop a server a test started, or it would outlive the test and its directory
        let _ = self.run(&["db", "stop"]);
    }
}

fn json_of(output: &Output) -> (i32, Value) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON value ({e}):\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().expect("exit code"), value)
}

fn count(value: &Value, key: &str) -> u64 {
    value[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a count in {value}"))
}

#[test]
fn migrate_with_nothing_configured_starts_a_private_cluster_and_is_idempotent() {
    let sandbox = Sandbox::new();

    let (code, first) = sandbox.run_json(&["db", "migrate"]);
    assert_eq!(code, 0, "{first}");
    assert_eq!(first["database_source"], "private_cluster");
    let total = count(&first, "total");
    assert!(total > 0, "{first}");
    assert_eq!(
        first["applied"].as_array().map(Vec::len),
        Some(total as usize)
    );
    assert!(sandbox.pg_dir().join("data/PG_VERSION").is_file());

    let (code, second) = sandbox.run_json(&["db", "migrate"]);
    assert_eq!(code, 0, "{second}");
    assert_eq!(
        second["applied"],
        Value::Array(vec![]),
        "second run applies nothing"
    );

    let (code, status) = sandbox.run_json(&["db", "status"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(count(&status, "pending"), 0);
    assert_eq!(count(&status, "applied"), total);
    let human = sandbox.run(&["db", "status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains(&format!("{total} applied, 0 pending")),
        "{text}"
    );
}

#[test]
fn stop_then_start_reuses_the_clusters_data() {
    let sandbox = Sandbox::new();
    let (code, migrated) = sandbox.run_json(&["db", "migrate"]);
    assert_eq!(code, 0, "{migrated}");

    let (code, stopped) = sandbox.run_json(&["db", "stop"]);
    assert_eq!(code, 0, "{stopped}");
    assert_eq!(stopped["outcome"], "stopped");
    assert!(!sandbox.pg_dir().join("data/postmaster.pid").exists());
    let (_, again) = sandbox.run_json(&["db", "stop"]);
    assert_eq!(again["outcome"], "was_not_running");

    let (code, started) = sandbox.run_json(&["db", "start"]);
    assert_eq!(code, 0, "{started}");
    assert_eq!(
        started["action"], "started",
        "the existing cluster, not a new one"
    );
    let (code, url) = sandbox.run_json(&["db", "url"]);
    assert_eq!(code, 0);
    assert_eq!(started["database_url"], url["database_url"]);

    // the migrations applied before the stop are still there
    let (code, status) = sandbox.run_json(&["db", "status"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(count(&status, "pending"), 0);
}

#[test]
fn concurrent_starts_initialize_the_cluster_once() {
    let sandbox = Sandbox::new();
    let children: Vec<_> = (0..2)
        .map(|_| {
            sandbox
                .command(&["db", "start", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn_guarded()
                .expect("spawn mystira-users")
        })
        .collect();
    let results: Vec<(i32, Value)> = children
        .into_iter()
        .map(|c| json_of(&c.into_inner().wait_with_output().expect("wait")))
        .collect();
    for (code, value) in &results {
        assert_eq!(*code, 0, "{value}");
    }
    assert_eq!(results[0].1["database_url"], results[1].1["database_url"]);
    let mut actions: Vec<&str> = results
        .iter()
        .map(|(_, v)| v["action"].as_str().expect("action"))
        .collect();
    actions.sort_unstable();
    assert_eq!(actions, ["initialized", "reused"]);
}

#[test]
fn missing_server_binaries_give_a_clear_error_and_a_failure_exit_code() {
    let sandbox = Sandbox::new();
    let empty = tempfile::tempdir().expect("empty dir");
    let output = sandbox
        .command(&["db", "start"])
        .env("PATH", "")
        .env("MYSTIRA_PG_BINDIR", empty.path())
        .output()
        .expect("run mystira-users");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found"),
        "{stderr}"
    );
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
    assert!(stderr.contains("--database-url"), "{stderr}");
    assert!(
        !sandbox.pg_dir().join("data").exists(),
        "nothing was initialized"
    );
}

#[test]
fn config_file_url_is_used_below_the_environment_and_unknown_keys_exit_2() {
    let sandbox = Sandbox::new();
    let config = sandbox.cwd.path().join("mystira-users.toml");

    std::fs::write(&config, "database_url = \"postgres://file-host/db\"\n").expect("write");
    let (code, url) = sandbox.run_json(&["db", "url"]);
    assert_eq!(code, 0, "{url}");
    assert_eq!(url["database_source"], "config_file");
    assert_eq!(url["database_url"], "postgres://file-host/db");

    let output = sandbox
        .command(&["db", "url", "--json"])
        .env("DATABASE_URL", "postgres://env-host/db")
        .output()
        .expect("run");
    let (_, url) = json_of(&output);
    assert_eq!(url["database_source"], "env");
    assert_eq!(url["database_url"], "postgres://env-host/db");

    let (_, url) = sandbox.run_json(&["db", "url", "--database-url", "postgres://flag-host/db"]);
    assert_eq!(url["database_source"], "flag");

    std::fs::write(
        &config,
        "database_url = \"postgres://h/db\"\ndatabase_uri = \"x\"\n",
    )
    .expect("write");
    let output = sandbox.run(&["db", "url"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("database_uri"), "{stderr}");
    assert!(stderr.contains("line 2"), "{stderr}");

    let missing = sandbox.run(&["db", "url", "--config", "/nonexistent/mystira.toml"]);
    assert_eq!(missing.status.code(), Some(2));
}

async fn database_exists(server: &str, name: &str) -> bool {
    let mut conn = sqlx::PgConnection::connect(server)
        .await
        .expect("connect to DATABASE_URL");
    let exists = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(name)
        .fetch_one(&mut conn)
        .await
        .expect("query pg_database");
    conn.close().await.expect("close");
    exists
}

async fn execute_on_server(server: &str, statement: String) {
    let mut conn = sqlx::PgConnection::connect(server)
        .await
        .expect("connect to DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
        .execute(&mut conn)
        .await
        .expect("run statement");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn database_url_flag_makes_migrate_create_the_database() {
    let sandbox = Sandbox::new();
    let server = server_url();
    let name = unique_database_name("create");
    let url = database_url(&server, &name);
    assert!(!database_exists(&server, &name).await);

    let missing = sandbox.run(&["db", "status", "--database-url", &url]);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("db migrate"),
        "the error says how to create it: {stderr}"
    );

    let (code, migrated) = sandbox.run_json(&["db", "migrate", "--database-url", &url]);
    assert_eq!(code, 0, "{migrated}");
    assert_eq!(migrated["database_created"], true);
    assert_eq!(migrated["database_source"], "flag");
    assert!(database_exists(&server, &name).await);
    let (code, status) = sandbox.run_json(&["db", "status", "--database-url", &url]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(count(&status, "pending"), 0);
    assert!(
        !sandbox.pg_dir().join("data").exists(),
        "a configured url never starts the private cluster"
    );

    execute_on_server(&server, format!("drop database \"{name}\" with (force)")).await;
}

#[tokio::test]
async fn status_exits_3_while_migrations_are_pending() {
    let sandbox = Sandbox::new();
    let server = server_url();
    let name = unique_database_name("pending");
    execute_on_server(&server, format!("create database \"{name}\"")).await;
    let url = database_url(&server, &name);

    let (code, status) = sandbox.run_json(&["db", "status", "--database-url", &url]);
    assert_eq!(code, 3, "{status}");
    assert!(count(&status, "pending") > 0);
    assert_eq!(count(&status, "applied"), 0);

    let (code, _) = sandbox.run_json(&["db", "migrate", "--database-url", &url]);
    assert_eq!(code, 0);
    let (code, status) = sandbox.run_json(&["db", "status", "--database-url", &url]);
    assert_eq!(code, 0, "{status}");

    execute_on_server(&server, format!("drop database \"{name}\" with (force)")).await;
}

/// A setting of the server behind `url`, as `SHOW` prints it.
async fn show(url: &str, setting: &str) -> String {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the private cluster");
    let value: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("show {setting}")))
        .fetch_one(&mut conn)
        .await
        .expect("show a setting");
    conn.close().await.expect("close");
    value
}

/// The private cluster is created with the shared buffers a load of a whole user domain needs
/// (docs/initial-load.md, "Server settings for a load"), and an operator's `ALTER SYSTEM` still
/// overrides them.
#[tokio::test]
async fn a_new_private_cluster_is_sized_for_a_load_and_alter_system_overrides_it() {
    let sandbox = Sandbox::new();
    let (code, started) = sandbox.run_json(&["db", "start"]);
    assert_eq!(code, 0, "{started}");
    let url = started["database_url"].as_str().expect("a url").to_owned();

    let shared_buffers = show(&url, "shared_buffers").await;
    let memory_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .expect("read /proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("MemTotal in /proc/meminfo");
    if memory_kb >= 1024 * 1024 {
        assert_ne!(
            shared_buffers, "128MB",
            "sized from this machine's memory, not PostgreSQL's default"
        );
    }
    // checkpoints spaced for a load (the default 1GB and 5min are not)
    assert_eq!(show(&url, "max_wal_size").await, "16GB");
    assert_eq!(show(&url, "checkpoint_timeout").await, "30min");

    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("alter system set shared_buffers = '64MB'")
        .execute(&mut conn)
        .await
        .expect("alter system");
    conn.close().await.expect("close");
    let (code, stopped) = sandbox.run_json(&["db", "stop"]);
    assert_eq!(code, 0, "{stopped}");
    let (code, restarted) = sandbox.run_json(&["db", "start"]);
    assert_eq!(code, 0, "{restarted}");
    assert_eq!(show(&url, "shared_buffers").await, "64MB");
}
