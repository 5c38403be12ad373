//! `phase show|set|history`, run as the built binary against a fresh database on the server in
//! `DATABASE_URL` (which `./scripts/test` provides): the JSON a script reads, a refused change
//! exiting 3 and naming every unmet condition, a forced change audited as forced, and the
//! maximum verify age from the config file.

use std::process::{Command, Output};

use serde_json::Value;
use sqlx::Connection as _;

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");

/// A fresh database, dropped when the test ends (also when it panics), and a scratch working
/// directory with no config file in reach.
struct Database {
    server: url::Url,
    name: String,
    cwd: tempfile::TempDir,
}

impl Database {
    fn new(purpose: &str) -> Self {
        let server = url::Url::parse(
            &std::env::var("DATABASE_URL")
                .expect("DATABASE_URL must point at a PostgreSQL server (./scripts/test sets it)"),
        )
        .expect("DATABASE_URL is a url");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        Self {
            server,
            name: format!("mystira_cli_phase_{purpose}_{}_{nanos}", std::process::id()),
            cwd: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn url(&self) -> String {
        let mut url = self.server.clone();
        url.set_path(&format!("/{}", self.name));
        url.to_string()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .args(["--database-url", &self.url()])
            .current_dir(self.cwd.path())
            .env("XDG_CONFIG_HOME", self.cwd.path())
            .env("USER", "cli-test")
            .env_remove("MYSTIRA_CONFIG")
            .env_remove("MYSTIRA_MAX_VERIFY_AGE")
            .env_remove("RUST_LOG");
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run mystira-users")
    }

    /// Runs with `--json`: the exit code and the parsed stdout.
    fn run_json(&self, args: &[&str]) -> (i32, Value) {
        let mut all = args.to_vec();
        all.push("--json");
        json_of(&self.run(&all))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let statement = format!("drop database if exists \"{}\" with (force)", self.name);
        if execute(self.server.to_string(), statement).is_err() {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

impl Database {
    /// Runs `sql` in the test database (seeding what the gates read).
    fn execute(&self, sql: &str) {
        execute(self.url(), sql.to_owned()).expect("run statement");
    }
}

/// Runs one statement on `url`, from a thread of its own (the tests are synchronous).
fn execute(url: String, statement: String) -> Result<(), String> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| "the statement's thread panicked".to_owned())?
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

fn codes(unmet: &Value) -> Vec<&str> {
    unmet
        .as_array()
        .expect("unmet is a list")
        .iter()
        .map(|c| c["code"].as_str().expect("code"))
        .collect()
}

#[test]
fn show_json_reports_the_phase_and_the_next_gate() {
    let db = Database::new("show");
    let (code, show) = db.run_json(&["phase", "show"]);
    assert_eq!(code, 0, "{show}");
    assert_eq!(show["domain"]["phase"], "cosmos-only");
    assert_eq!(show["domain"]["changed_by"], "schema");
    assert_eq!(show["overrides"], Value::Array(vec![]));
    assert_eq!(show["next"], "dual-write-cosmos-read");
    assert_eq!(codes(&show["next_unmet"]), ["backfill_never_run"]);
    assert_eq!(show["outbox"]["rows"], 0);
    assert_eq!(show["retry_journal_rows"], 0);
}

#[test]
fn a_refused_set_exits_3_naming_every_unmet_condition_and_force_is_audited() {
    let db = Database::new("set");
    let (code, refused) =
        db.run_json(&["phase", "set", "dual-write-postgres-read", "--reason", "go"]);
    assert_eq!(code, 3, "{refused}");
    assert_eq!(refused["result"], "refused");
    assert_eq!(
        codes(&refused["unmet"]),
        ["backfill_never_run", "verify_missing"]
    );
    let human = db.run(&["phase", "set", "2", "--reason", "go"]);
    assert_eq!(human.status.code(), Some(3));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("REFUSED") && text.contains("backfill"),
        "{text}"
    );

    let (code, forced) = db.run_json(&["phase", "set", "1", "--reason", "incident 7", "--force"]);
    assert_eq!(code, 0, "{forced}");
    assert_eq!(forced["result"], "applied");
    assert_eq!(forced["forced"], true);
    assert_eq!(
        forced["transition"]["changed_by"], "cli-test",
        "the OS user"
    );

    let (code, history) = db.run_json(&["phase", "history", "--limit", "5"]);
    assert_eq!(code, 0, "{history}");
    let rows = history["transitions"].as_array().expect("transitions");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["from_phase"], "cosmos-only");
    assert_eq!(rows[0]["to_phase"], "dual-write-cosmos-read");
    assert_eq!(rows[0]["reason"], "incident 7");
    assert_eq!(rows[0]["forced"], true);

    // backward needs nothing; --actor names someone else
    let (code, back) = db.run_json(&["phase", "set", "0", "--reason", "undo", "--actor", "ops"]);
    assert_eq!(code, 0, "{back}");
    assert_eq!(back["forced"], false);
    assert_eq!(back["transition"]["changed_by"], "ops");
}

#[test]
fn set_without_a_reason_is_a_usage_error() {
    let db = Database::new("reason");
    let output = db.run(&["phase", "set", "1"]);
    assert_eq!(output.status.code(), Some(2));
    let output = db.run(&["phase", "set", "1", "--reason", " "]);
    assert_eq!(output.status.code(), Some(2));
    let output = db.run(&["phase", "set", "9", "--reason", "x"]);
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn max_verify_age_comes_from_the_config_file_and_a_bad_one_exits_2() {
    let db = Database::new("config");
    let config = db.cwd.path().join("mystira-users.toml");
    std::fs::write(&config, "[phase]\nmax_verify_age = \"soon\"\n").expect("write config");
    let output = db.run(&["phase", "show"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("max_verify_age"), "{stderr}");

    std::fs::write(&config, "[phase]\nmax_verify_age = \"12h\"\n").expect("write config");
    let (code, _) = db.run_json(&["phase", "set", "1", "--reason", "x", "--force"]);
    assert_eq!(code, 0);
    db.execute(
        "insert into migration.runs (job, source, started_at, finished_at, status, counts)
         values ('verify', 'test', now() - interval '13 h', now() - interval '13 h',
                 'succeeded', '{\"outcome\": \"clean\"}')",
    );
    let (code, show) = db.run_json(&["phase", "show"]);
    assert_eq!(code, 0, "{show}");
    assert_eq!(codes(&show["next_unmet"]), ["verify_too_old"]);
    assert_eq!(show["next_unmet"][0]["max_age_seconds"], 12 * 3600);

    // the environment beats the file, and the flag beats the environment
    let show = |env: &str, flag: Option<&str>| {
        let mut command = db.command(&["phase", "show", "--json"]);
        command.env("MYSTIRA_MAX_VERIFY_AGE", env);
        if let Some(flag) = flag {
            command.args(["--max-verify-age", flag]);
        }
        json_of(&command.output().expect("run"))
    };
    let (code, open) = show("24h", None);
    assert_eq!(code, 0, "{open}");
    assert_eq!(open["next_unmet"], Value::Array(vec![]));
    let (_, closed) = show("24h", Some("1h"));
    assert_eq!(codes(&closed["next_unmet"]), ["verify_too_old"]);
    let output = db
        .command(&["phase", "show"])
        .env("MYSTIRA_MAX_VERIFY_AGE", "bogus")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
}
