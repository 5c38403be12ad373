//! `phase show|set|history`, run as the built binary against a fresh database on the server in
//! `DATABASE_URL` (which `./scripts/test` provides): the JSON a script reads, a refused change
//! exiting 3 and naming every unmet condition, a forced change audited as forced, the maximum
//! verify age from the config file, and the gates of issue 34: out of phase 3 only through
//! phase 2 and a PostgreSQL-to-Cosmos verify started after it, into phase 3 only with a clean
//! verify towards Cosmos (real `verify` runs against the Cosmos-protocol test server in
//! `COSMOS_ENDPOINT`), canary overrides that follow domain moves and name real accounts,
//! `--dry-run`, and the confirmation of a move out of phase 3 (exit 5 without a terminal,
//! typed in a pseudo-terminal).

#![allow(clippy::unwrap_used)]

use mystira_test_support::cosmos as support;
use mystira_test_support::process::SpawnGuarded;

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
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

fn messages(unmet: &Value) -> String {
    unmet
        .as_array()
        .expect("unmet is a list")
        .iter()
        .map(|c| c["message"].as_str().expect("message"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Database {
    /// `verify` (`direction`: cosmos-to-pg or pg-to-cosmos) against the Cosmos database
    /// `cosmos_db` of the test server; must be clean.
    fn verify_clean(&self, cosmos_db: &str, direction: &str) {
        let output = self
            .command(&["verify", "--direction", direction])
            .env("COSMOS_KEY", support::EMULATOR_KEY)
            .env("COSMOS_DATABASE", cosmos_db)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run verify");
        assert_eq!(
            output.status.code(),
            Some(0),
            "verify --direction {direction}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// An account row, written as a copy from the source would be (no outbox row).
    fn account(&self) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.execute(&format!(
            "begin;
             set local mystira.keep_source_timestamps = 'on';
             insert into accounts (id, email) values ('{id}', 'canary@example.com');
             commit;"
        ));
        id
    }

    /// `phase set ... --force` that must apply (test setup).
    fn force(&self, args: &[&str]) {
        let mut all = vec!["phase", "set"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--force", "--yes", "--reason", "setup"]);
        let (code, out) = self.run_json(&all);
        assert_eq!(code, 0, "{out}");
    }

    fn transitions(&self) -> usize {
        let (_, history) = self.run_json(&["phase", "history", "--limit", "500"]);
        history["transitions"]
            .as_array()
            .expect("transitions")
            .len()
    }

    fn domain_phase(&self) -> String {
        let (_, show) = self.run_json(&["phase", "show"]);
        show["domain"]["phase"].as_str().expect("phase").to_owned()
    }
}

/// Issue 34, item 2: `phase set dual-write-cosmos-read` went straight from 3 to 1 (exit 0).
#[tokio::test]
async fn leaving_phase_3_goes_through_phase_2_and_a_pg_to_cosmos_verify_started_after_it() {
    let db = Database::new("leave3");
    let (cosmos, _repos) = support::user_domain("phase-leave3").await;
    db.force(&["postgres-only"]);

    let (code, refused) = db.run_json(&["phase", "set", "1", "--reason", "back", "--yes"]);
    assert_eq!(code, 3, "{refused}");
    assert_eq!(
        codes(&refused["unmet"]),
        ["postgres_only_exit_skips_phase_2"]
    );
    let advice = messages(&refused["unmet"]);
    assert!(
        advice.contains("`mystira-users phase set dual-write-postgres-read --reason")
            && advice.contains("`mystira-users verify --direction pg-to-cosmos --repair`"),
        "{advice}"
    );
    assert_eq!(db.domain_phase(), "postgres-only");

    let (code, back) = db.run_json(&["phase", "set", "2", "--reason", "back", "--yes"]);
    assert_eq!(code, 0, "{back}");
    // a verify that starts at once may miss writes of calls that still ran in phase 3
    db.verify_clean(cosmos.database_name(), "pg-to-cosmos");
    let (code, refused) = db.run_json(&["phase", "set", "1", "--reason", "back"]);
    assert_eq!(code, 3, "{refused}");
    assert_eq!(
        codes(&refused["unmet"]),
        ["pg_to_cosmos_unverified_since_phase_3"]
    );
    assert!(
        messages(&refused["unmet"])
            .contains("`mystira-users verify --direction pg-to-cosmos --repair`"),
        "{refused}"
    );

    // as if phase 3 had been left a minute before that verify started: it now counts
    db.execute(
        "update migration.phase_transitions set changed_at = changed_at - interval '60 s'
         where from_phase = 'postgres-only'",
    );
    let (code, applied) = db.run_json(&["phase", "set", "1", "--reason", "back"]);
    assert_eq!(code, 0, "{applied}");
    assert_eq!(applied["result"], "applied");
    assert_eq!(applied["forced"], false);
    drop(cosmos);
}

/// Issue 34, item 3: the gate to postgres-only was open before any pg-to-cosmos verify ran,
/// and drift advice always said `verify --repair`.
#[tokio::test]
async fn phase_3_needs_a_clean_pg_to_cosmos_verify_and_advice_names_that_direction() {
    let db = Database::new("into3");
    let (cosmos, _repos) = support::user_domain("phase-into3").await;
    db.force(&["dual-write-postgres-read"]);
    db.verify_clean(cosmos.database_name(), "cosmos-to-pg");

    let (code, show) = db.run_json(&["phase", "show"]);
    assert_eq!(code, 0, "{show}");
    assert_eq!(show["next"], "postgres-only");
    assert_eq!(codes(&show["next_unmet"]), ["verify_pg_to_cosmos_missing"]);
    assert!(
        messages(&show["next_unmet"]).contains("`mystira-users verify --direction pg-to-cosmos`"),
        "{show}"
    );
    let (code, refused) = db.run_json(&["phase", "set", "3", "--reason", "cutover"]);
    assert_eq!(code, 3, "{refused}");

    db.verify_clean(cosmos.database_name(), "pg-to-cosmos");
    let (_, show) = db.run_json(&["phase", "show"]);
    assert_eq!(show["next_unmet"], Value::Array(vec![]), "{show}");

    // drift found towards Cosmos since: the advice repairs from PostgreSQL, the primary
    db.execute(
        "insert into migration.runs (job, source, started_at, finished_at, status, counts, scope)
         values ('verify', 'test', now(), now() + interval '1 s', 'failed',
                 '{\"outcome\": \"drift\"}', '{\"direction\": \"pg-to-cosmos\"}')",
    );
    let (code, refused) = db.run_json(&["phase", "set", "3", "--reason", "cutover"]);
    assert_eq!(code, 3, "{refused}");
    assert_eq!(
        codes(&refused["unmet"]),
        ["verify_pg_to_cosmos_drift_since_clean"]
    );
    assert!(
        messages(&refused["unmet"])
            .contains("`mystira-users verify --direction pg-to-cosmos --repair`"),
        "{refused}"
    );
    assert_eq!(refused["unmet"][0]["direction"], "pg-to-cosmos");
    drop(cosmos);
}

/// Issue 34, item 4: a canary outlived a 2 -> 1 rollback, and an override for an account that
/// does not exist was accepted.
#[test]
fn canary_overrides_follow_domain_moves_audited_and_must_name_an_account() {
    let db = Database::new("canary");
    db.force(&["dual-write-cosmos-read"]);
    let unknown = uuid::Uuid::new_v4().to_string();
    let (code, refused) = db.run_json(&[
        "phase",
        "set",
        "1",
        "--account",
        &unknown,
        "--reason",
        "pin",
    ]);
    assert_eq!(code, 3, "{refused}");
    assert_eq!(codes(&refused["unmet"]), ["account_not_found"]);

    let canary = db.account();
    db.force(&["dual-write-postgres-read", "--account", &canary]);
    let (_, show) = db.run_json(&["phase", "show"]);
    let listed = &show["overrides"][0];
    assert_eq!(listed["account_id"], canary.as_str(), "{show}");
    assert_eq!(listed["account_exists"], true);
    assert_eq!(listed["position"], "ahead");
    assert_eq!(listed["on_next"]["effect"], "pins");
    assert_eq!(listed["on_rollback"]["effect"], "wrong_side");
    let human = String::from_utf8_lossy(&db.run(&["phase", "show"]).stdout).into_owned();
    assert!(
        human.contains(&canary) && human.contains("on rollback:"),
        "{human}"
    );

    // the domain follows the canary into 2, then rolls back: the canary comes back with it
    db.force(&["dual-write-postgres-read"]);
    let (code, rolled) = db.run_json(&["phase", "set", "1", "--reason", "rollback"]);
    assert_eq!(code, 0, "{rolled}");
    assert_eq!(rolled["overrides"][0]["account_id"], canary.as_str());
    assert_eq!(rolled["overrides"][0]["action"], "cleared");
    assert_eq!(
        rolled["transition"]["overrides_cleared"][0],
        canary.as_str()
    );
    let (_, show) = db.run_json(&["phase", "show"]);
    assert_eq!(show["overrides"], Value::Array(vec![]), "{show}");
    let (_, history) = db.run_json(&["phase", "history", "--limit", "2"]);
    let own = history["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["account_id"] == canary.as_str())
        .expect("the canary's own audit row");
    assert_eq!(
        (own["from_phase"].as_str(), own["to_phase"].as_str()),
        (
            Some("dual-write-postgres-read"),
            Some("dual-write-cosmos-read")
        )
    );

    // --keep-overrides keeps it, and the domain's audit row says so
    db.force(&["dual-write-postgres-read", "--account", &canary]);
    let (code, kept) = db.run_json(&[
        "phase",
        "set",
        "0",
        "--reason",
        "stop dual writing, canary stays",
        "--keep-overrides",
    ]);
    assert_eq!(code, 0, "{kept}");
    assert_eq!(kept["overrides"][0]["action"], "kept");
    let (_, history) = db.run_json(&["phase", "history", "--limit", "1"]);
    assert_eq!(
        history["transitions"][0]["overrides_kept"][0],
        canary.as_str()
    );
    let (_, show) = db.run_json(&["phase", "show"]);
    assert_eq!(show["overrides"][0]["account_id"], canary.as_str());
    // --keep-overrides is about domain moves
    let output = db.run(&[
        "phase",
        "set",
        "1",
        "--account",
        &canary,
        "--keep-overrides",
        "--reason",
        "x",
    ]);
    assert_eq!(output.status.code(), Some(2));
}

/// Issue 34, item 9: `--dry-run` prints what would change, which gates pass, and the
/// overrides affected; it changes nothing.
#[test]
fn a_dry_run_lists_the_change_every_gate_check_and_the_overrides_and_writes_nothing() {
    let db = Database::new("dryrun");
    db.force(&["dual-write-cosmos-read"]);
    let held_back = db.account();
    let (code, _) = db.run_json(&[
        "phase",
        "set",
        "0",
        "--account",
        &held_back,
        "--reason",
        "held back",
    ]);
    assert_eq!(code, 0);
    let before = db.transitions();

    let (code, dry) = db.run_json(&["phase", "set", "2", "--reason", "try", "--dry-run"]);
    assert_eq!(code, 3, "{dry}");
    assert_eq!(dry["result"], "would_refuse");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(
        (&dry["from"], &dry["to"]),
        (
            &json!("dual-write-cosmos-read"),
            &json!("dual-write-postgres-read")
        )
    );
    let gates: Vec<(String, bool)> = dry["gates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["check"].as_str().unwrap().to_owned(), g["passed"] == true))
        .collect();
    assert_eq!(
        gates,
        [
            ("replicator_live".to_owned(), true),
            ("verify_cosmos_to_pg".to_owned(), false),
            ("retry_journal".to_owned(), true),
            ("backfill".to_owned(), false)
        ]
    );
    assert_eq!(dry["overrides"][0]["account_id"], held_back.as_str());
    assert_eq!(dry["overrides"][0]["action"], "cleared");
    assert_eq!(db.transitions(), before, "a dry run writes no audit row");
    assert_eq!(db.domain_phase(), "dual-write-cosmos-read");

    db.execute(
        "insert into migration.runs (job, source, started_at, finished_at, status, counts)
         values ('backfill', 'test', now(), now(), 'succeeded', '{}'),
                ('verify', 'test', now(), now(), 'succeeded', '{\"outcome\": \"clean\"}')",
    );
    let output = db.run(&["phase", "set", "2", "--reason", "try", "--dry-run"]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("DRY RUN")
            && text.contains("pass  verify_cosmos_to_pg")
            && text.contains(&held_back),
        "{text}"
    );
    assert_eq!(db.transitions(), before);
    assert_eq!(db.domain_phase(), "dual-write-cosmos-read");
}

/// `script` runs `args` on a pseudo-terminal (stdin is a terminal), typing `typed`; the exit
/// code, within a bounded wait.
fn run_on_a_terminal(db: &Database, args: &[&str], typed: &str) -> i32 {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = vec![quote(BIN)];
    line.extend(args.iter().map(|a| quote(a)));
    line.extend(["--database-url".to_owned(), quote(&db.url())]);
    let mut child = Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .current_dir(db.cwd.path())
        .env("XDG_CONFIG_HOME", db.cwd.path())
        .env("USER", "cli-test")
        .env_remove("MYSTIRA_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn_guarded()
        .expect("run script(1) from util-linux");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{typed}\n").as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("exit code");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the confirmation prompt did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 34, item 9: a backward move out of phase 3 asks for a typed confirmation or `--yes`;
/// without a terminal it never waits for input.
#[test]
fn leaving_phase_3_needs_a_typed_confirmation_or_yes_and_never_waits_without_a_terminal() {
    let db = Database::new("confirm");
    db.force(&["postgres-only"]);
    let before = db.transitions();

    let started = Instant::now();
    let (code, asked) = db.run_json(&["phase", "set", "2", "--reason", "back"]);
    assert_eq!(code, 5, "{asked}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(asked["result"], "needs_confirmation");
    let output = db.run(&["phase", "set", "2", "--reason", "back"]);
    assert_eq!(output.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let (code, dry) = db.run_json(&["phase", "set", "2", "--reason", "back", "--dry-run"]);
    assert_eq!(code, 0, "{dry}");
    assert_eq!(dry["confirmation_required"], true);
    assert_eq!(db.transitions(), before);
    assert_eq!(db.domain_phase(), "postgres-only");

    // on a terminal: the wrong text is no confirmation, the phase's name is
    let set = ["phase", "set", "2", "--reason", "back"];
    assert_eq!(run_on_a_terminal(&db, &set, "yes"), 5);
    assert_eq!(db.domain_phase(), "postgres-only");
    assert_eq!(run_on_a_terminal(&db, &set, "dual-write-postgres-read"), 0);
    assert_eq!(db.domain_phase(), "dual-write-postgres-read");

    // --yes: no question asked
    db.force(&["postgres-only"]);
    let (code, applied) = db.run_json(&["phase", "set", "2", "--reason", "back", "--yes"]);
    assert_eq!(code, 0, "{applied}");
    assert_eq!(applied["result"], "applied");
}

/// Issue 34, item 10: `--wait-drain` says how many outbox rows are left while it waits (it
/// printed nothing), then decides on what it found.
#[test]
fn wait_drain_reports_the_outbox_while_it_waits() {
    let db = Database::new("waitdrain");
    db.force(&["dual-write-postgres-read"]);
    db.execute(
        "insert into migration.outbox (container, key) values ('Accounts', gen_random_uuid())",
    );
    let output = db.run(&[
        "phase",
        "set",
        "dual-write-cosmos-read",
        "--reason",
        "rollback",
        "--wait-drain",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(3), "refused: the row stays");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("waiting for the outbox to drain") && stderr.contains("outbox_rows=1"),
        "{stderr}"
    );
    assert_eq!(db.domain_phase(), "dual-write-postgres-read");
}
