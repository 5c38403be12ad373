//! Issue 34 as an operator meets it, with the real binary against a fresh database on the
//! PostgreSQL server in `DATABASE_URL` and the Cosmos-protocol test server (`COSMOS_ENDPOINT`,
//! `COSMOS_CERT_FILE`, `SSL_CERT_FILE`, as `scripts/test` exports them), for the items whose
//! other tests drive the library rather than the process:
//! - item 7: in phase 2, with Cosmos hanging (the test server's `hang` fault: requests held,
//!   never answered), a PATCH through `serve` is answered within `--delivery-deadline-ms`; the
//!   delivery is left to the outbox, and once Cosmos answers again `relay --drain` delivers it,
//!   its log naming the failure class of each delivery it deferred meanwhile; the admin status
//!   view of the same process shows the waiting row (item 8);
//! - item 5, the gate: a forward move out of phase 1 or 2 is refused while the `replicate`
//!   process the phase needs died (killed, its heartbeat left to go stale), naming it and the
//!   fix; a new replicator opens the gate, `--force` passes it; `status` and `/metrics` show
//!   the dead one; and a continuous `relay` started while Cosmos is out waits for it (it
//!   exited 1);
//! - item 10: `verify --direction pg-to-cosmos --repair` counts what it re-copied, an idle
//!   caught-up `replicate` reports a lag near its poll interval (not the newest change's age),
//!   and `serve --help` no longer calls the service a "first slice".
//!
//! Every wait is bounded; time that must pass (a heartbeat going stale after 30 s) is moved
//! back in the database instead of slept through, except the 5 s of idleness that are the
//! idle-lag test's scenario (a `_ts` is the server's clock). About 30 s in all.
#![allow(clippy::unwrap_used)]

mod support;

use mystira_test_support::cosmos as cosmos_support;
use mystira_test_support::process::{ChildGuard, SpawnGuarded};

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use mystira_cosmos_store::{CosmosStore, QuerySpec};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgConnection};
use support::serve::{Serve, dev_token, metric};

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");

/// A fresh PostgreSQL database, a Cosmos database of the test server with the user-domain
/// containers, and a scratch directory (working directory, journal, keys, logs).
struct World {
    db: String,
    store: CosmosStore,
    work: tempfile::TempDir,
}

impl World {
    async fn new(tag: &str) -> Self {
        let db = mystira_test_support::postgres::fresh_database(&tag.replace('-', "_")).await;
        let (store, _repos) = cosmos_support::user_domain(tag).await;
        Self {
            db,
            store,
            work: tempfile::tempdir().unwrap(),
        }
    }

    fn cosmos_db(&self) -> &str {
        self.store.database_name()
    }

    fn path(&self, name: &str) -> String {
        self.work.path().join(name).to_str().unwrap().to_owned()
    }

    /// The binary on this world's two databases, no config file in reach.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .args(["--database-url", &self.db])
            .current_dir(self.work.path())
            .env("XDG_CONFIG_HOME", self.work.path())
            .env("USER", "gates-test")
            .env("COSMOS_KEY", cosmos_support::EMULATOR_KEY)
            .env("COSMOS_DATABASE", self.cosmos_db())
            .env_remove("MYSTIRA_CONFIG")
            .env_remove("MYSTIRA_MAX_VERIFY_AGE")
            .env("RUST_LOG", "warn");
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs with `--json`: the exit code and the parsed stdout.
    fn run_json(&self, args: &[&str]) -> (i32, Value) {
        let out = self.command(args).arg("--json").output().unwrap();
        let value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?} printed no JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap(), value)
    }

    /// A long-runner started in the background, logging at info level to `log`.
    fn spawn(&self, args: &[&str], log: &str) -> ChildGuard {
        self.command(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(self.path(log)).unwrap())
            .spawn_guarded()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// `phase set ... --force` that must apply (setup).
    fn force(&self, phase: &str) {
        let (code, out) = self.run_json(&[
            "phase", "set", phase, "--force", "--yes", "--reason", "setup",
        ]);
        assert_eq!(code, 0, "{out}");
    }

    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.db).await.unwrap()
    }

    async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut self.connect().await)
            .await
            .unwrap();
    }

    async fn scalar<T>(&self, sql: &str) -> T
    where
        T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
    {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&mut self.connect().await)
            .await
            .unwrap()
    }

    /// A document's property as Cosmos holds it now.
    async fn in_cosmos(&self, container: &str, id: &str, property: &str) -> Value {
        let container = self.store.container(container).await.unwrap();
        let spec = QuerySpec::new("select * from c where c.id = @id").param("@id", id);
        let mut pages = container.query::<Value>(spec, None);
        let page = pages.next_page().await.unwrap().unwrap();
        page.items
            .first()
            .map_or(Value::Null, |d| d[property].clone())
    }
}

/// Polls `check` every 100 ms until it holds, for at most `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (bounded) for `child` to exit; kills it and fails past `within`.
fn wait_exit(child: &mut Child, within: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits (bounded) until the log `log` of `child` holds `needle`; fails with the log when the
/// child exits first.
async fn until_logged(w: &World, child: &mut Child, log: &str, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !w.log(log).contains(needle) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "exited ({status}) before logging {needle:?}:\n{}",
                w.log(log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged within {within:?}:\n{}",
            w.log(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then (bounded) the exit status.
fn terminate(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    wait_exit(
        child,
        Duration::from_secs(20),
        &format!("{what} after SIGTERM"),
    )
}

fn codes(unmet: &Value) -> Vec<&str> {
    unmet
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// item 7: phase 2 with Cosmos hanging

/// The inline delivery's deadline given to `serve`.
const DEADLINE: Duration = Duration::from_millis(500);

/// Room above the deadline for the PostgreSQL write and the HTTP round trip on a test machine
/// loaded by the whole suite (3 s was once too little); waiting for the hanging Cosmos
/// instead takes until the client gives up (90 s).
const MARGIN: Duration = Duration::from_secs(8);

/// Phase 2, served by `serve` with the delivery deadline (and `extra` flags), and an account
/// delivered to Cosmos: the server, the account's id and its owner's token.
async fn serving_phase2(w: &World, extra: &[&str]) -> (Serve, String, String) {
    w.force("dual-write-postgres-read");
    let key = w.path("dev.p8");
    let deadline_ms = DEADLINE.as_millis().to_string();
    let journal = w.path("journal");
    let mut args = vec![
        "--dev-key",
        &key,
        "--journal-dir",
        &journal,
        "--delivery-deadline-ms",
        &deadline_ms,
    ];
    args.extend_from_slice(extra);
    let serve = Serve::start_with(&w.db, Some(w.cosmos_db()), &args);
    let (status, _, body) = serve.until("/readyz", 200, Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    // the token proves the address the account takes
    let user = dev_token(
        Path::new(&key),
        &["--sub", "auth0|hang", "--email", "hang@example.com"],
    );
    let (status, created) = serve
        .send(
            reqwest::Method::POST,
            "/v1/accounts",
            &user,
            json!({"email": "hang@example.com", "display_name": "Before"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    until(
        "the account's delivery",
        Duration::from_secs(10),
        || async {
            w.scalar::<i64>("select count(*) from migration.outbox")
                .await
                == 0
        },
    )
    .await;
    assert_eq!(w.in_cosmos("Accounts", &id, "DisplayName").await, "Before");
    (serve, id, user)
}

/// A PATCH of the account's name while Cosmos hangs: answered 200 within the delivery
/// deadline (plus room for a loaded machine), not when the hanging Cosmos gives up.
async fn patch_answered_within_the_deadline(serve: &Serve, id: &str, user: &str) {
    let started = Instant::now();
    let patched = tokio::time::timeout(
        Duration::from_secs(30),
        serve.send(
            reqwest::Method::PATCH,
            &format!("/v1/accounts/{id}"),
            user,
            json!({"display_name": "During the hang"}),
        ),
    )
    .await;
    let took = started.elapsed();
    let (status, body) = patched.expect("a phase-2 PATCH waited for the hanging Cosmos");
    assert_eq!(status, 200, "{body}");
    assert!(
        took < DEADLINE + MARGIN,
        "the PATCH took {took:?} with a {DEADLINE:?} delivery deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phase2_patch_is_answered_within_the_deadline_while_cosmos_hangs_and_the_relay_delivers_it_after()
 {
    let w = World::new("gates-hang").await;
    let (serve, id, user) = serving_phase2(&w, &[]).await;
    let key = w.path("dev.p8");
    let admin = dev_token(Path::new(&key), &["--sub", "auth0|ops", "--role", "Admin"]);

    // Cosmos stops answering. Behind the hang, a Cosmos that answers the documents' requests
    // with 503 (armed now, reached only once the hang is removed): the held delivery then
    // fails instead of succeeding on its retry, so what happens next is the relay's work, as
    // after a long outage.
    let faults = cosmos_support::Faults::new();
    let hang = faults
        .arm(json!({
            "pathContains": format!("/dbs/{}/", w.cosmos_db()), "count": 1_000_000,
            "action": "hang"
        }))
        .await;
    let unavailable = faults
        .arm(json!({
            "pathContains": format!("/dbs/{}/colls/Accounts/docs", w.cosmos_db()),
            "count": 1_000_000, "action": "respond", "status": 503, "retryAfterMs": 10
        }))
        .await;

    patch_answered_within_the_deadline(&serve, &id, &user).await;
    assert!(
        faults.hits(&hang).await > 0,
        "the delivery never reached Cosmos"
    );
    // committed in PostgreSQL with its outbox row; Cosmos still has the old name
    let name: String = w
        .scalar(&format!(
            "select display_name from accounts where id = '{id}'"
        ))
        .await;
    assert_eq!(name, "During the hang");
    assert_eq!(
        w.scalar::<i64>("select count(*) from migration.outbox")
            .await,
        1
    );
    until(
        "the deadline's log line",
        Duration::from_secs(5),
        || async {
            serve
                .logged()
                .contains("inline delivery to cosmos passed its deadline")
        },
    )
    .await;

    // item 8: the admin status view of the same process, from PostgreSQL alone while Cosmos
    // hangs, shows the phase and the waiting row
    let (status, view) = tokio::time::timeout(
        Duration::from_secs(10),
        serve.send(reqwest::Method::GET, "/v1/admin/status", &admin, json!({})),
    )
    .await
    .expect("the admin status view waited for the hanging Cosmos");
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["phase"]["domain"]["phase"], "dual-write-postgres-read");
    assert_eq!(view["outbox"]["rows"], 1, "{view}");

    // the hang ends into the 503s: the held delivery fails and defers its row, by class
    faults.disarm(&hang).await;
    until("the deferred delivery", Duration::from_secs(20), || async {
        w.scalar::<Option<String>>("select max(last_error) from migration.outbox")
            .await
            .is_some()
    })
    .await;
    let serve_log = serve.logged();
    assert!(
        serve_log.contains("delivery to cosmos deferred to the relay"),
        "{serve_log}"
    );
    let (exit, _) = serve.stop();
    assert!(exit.success(), "{exit:?}");

    // the relay: while Cosmos refuses, it defers and names the class; once Cosmos answers
    // again, it delivers
    let mut relay = w.spawn(&["relay", "--drain", "--timeout", "40"], "relay.log");
    until_logged(
        &w,
        &mut relay,
        "relay.log",
        "outbox delivery deferred",
        Duration::from_secs(20),
    )
    .await;
    faults.disarm(&unavailable).await;
    let status = wait_exit(&mut relay, Duration::from_secs(45), "relay --drain");
    let log = w.log("relay.log");
    assert!(status.success(), "relay --drain: {status}\n{log}");
    let deferred = log
        .lines()
        .find(|l| l.contains("outbox delivery deferred"))
        .unwrap();
    assert!(
        deferred.contains("class") && deferred.contains("unavailable"),
        "the relay's log does not name the failure class: {deferred}"
    );
    assert!(!log.contains("hang@example.com"), "an email in the log");
    assert_eq!(
        w.scalar::<i64>("select count(*) from migration.outbox")
            .await,
        0
    );
    assert_eq!(
        w.in_cosmos("Accounts", &id, "DisplayName").await,
        "During the hang"
    );
    w.store.delete_database().await.unwrap();
}

/// Item 7, and issue 30's bounded shutdown: SIGTERM while Cosmos hangs ends `serve` within
/// its deadlines. The request was answered, but the delivery the deadline left behind (and
/// the relay pass in the process) waited on the hanging Cosmos, and the process waited for
/// them and their database connections: it did not end until the Cosmos client gave up.
/// The change stays in PostgreSQL with its outbox row, for the next relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_cosmos_hangs_ends_serve_within_its_deadlines_and_keeps_the_outbox_row() {
    let w = World::new("gates-hang-stop").await;
    let (serve, id, user) = serving_phase2(&w, &["--shutdown-timeout-seconds", "2"]).await;
    let faults = cosmos_support::Faults::new();
    let hang = faults
        .arm(json!({
            "pathContains": format!("/dbs/{}/", w.cosmos_db()), "count": 1_000_000,
            "action": "hang"
        }))
        .await;
    patch_answered_within_the_deadline(&serve, &id, &user).await;
    assert!(
        faults.hits(&hang).await > 0,
        "the delivery never reached Cosmos"
    );
    // `stop` fails unless the process ends within 10 s of SIGTERM (requests: none in
    // flight; the background pass and the connections: 2 s each)
    let (exit, _) = serve.stop();
    assert!(exit.success(), "{exit:?}");
    faults.disarm(&hang).await;
    let name: String = w
        .scalar(&format!(
            "select display_name from accounts where id = '{id}'"
        ))
        .await;
    assert_eq!(name, "During the hang");
    assert_eq!(
        w.scalar::<i64>("select count(*) from migration.outbox")
            .await,
        1,
        "the undelivered change's outbox row"
    );
    w.store.delete_database().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// item 5: the replicator gate

/// The heartbeat row of the process `pid`: (worker, state).
async fn heartbeat_of(w: &World, pid: u32) -> Option<(String, String)> {
    sqlx::query_as("select worker, state from migration.worker_heartbeats where pid = $1")
        .bind(i32::try_from(pid).unwrap())
        .fetch_optional(&mut w.connect().await)
        .await
        .unwrap()
}

/// Waits (bounded) until the heartbeat of the process `pid` says `state`.
async fn until_beats(w: &World, pid: u32, state: &str) {
    until(
        &format!("the heartbeat to say {state}"),
        Duration::from_secs(20),
        || async { heartbeat_of(w, pid).await.is_some_and(|(_, s)| s == state) },
    )
    .await;
}

/// A continuous `replicate`, once it beats; returns the child and its heartbeat's worker name.
async fn live_replicator(w: &World, log: &str) -> (ChildGuard, String) {
    let mut child = w.spawn(
        &[
            "replicate",
            "--poll-ms",
            "200",
            "--delete-check-seconds",
            "0",
        ],
        log,
    );
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("replicate exited ({status}): {}", w.log(log));
        }
        if let Some((worker, state)) = heartbeat_of(w, pid).await
            && state == "running"
        {
            return (child, worker);
        }
        assert!(Instant::now() < deadline, "replicate never beat");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kills the replicator without letting it stop cleanly (SIGKILL: its row still says
/// `running`), then moves its last beat a minute back: the 30 s of silence that make a
/// heartbeat stale, without sleeping through them.
async fn dies(w: &World, mut child: ChildGuard) {
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    w.execute(&format!(
        "update migration.worker_heartbeats set beat_at = beat_at - interval '60 s'
         where pid = {pid}"
    ))
    .await;
    let (_, state) = heartbeat_of(w, pid).await.unwrap();
    assert_eq!(
        state, "running",
        "a killed replicator cannot say it stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_move_out_of_phase_1_or_2_waits_for_a_dead_replicator_to_be_replaced_or_force() {
    let w = World::new("gates-replicator").await;
    w.force("dual-write-cosmos-read");
    // every other gate into phase 2 open: the backfill ran and a verify was clean
    w.execute(
        "insert into migration.runs (job, source, started_at, finished_at, status, counts)
         values ('backfill', 'test', now(), now(), 'succeeded', '{}'),
                ('verify', 'test', now(), now(), 'succeeded', '{\"outcome\": \"clean\"}')",
    )
    .await;
    let (first, worker) = live_replicator(&w, "replicate-1.log").await;
    let (code, dry) = w.run_json(&["phase", "set", "2", "--reason", "go", "--dry-run"]);
    assert_eq!(code, 0, "a live replicator passes: {dry}");

    dies(&w, first).await;
    let (code, refused) = w.run_json(&["phase", "set", "2", "--reason", "go"]);
    assert_eq!(code, 3, "{refused}");
    assert_eq!(codes(&refused["unmet"]), ["replicator_dead"], "{refused}");
    let message = refused["unmet"][0]["message"].as_str().unwrap();
    assert!(
        message.contains(&worker) && message.contains("Start `mystira-users replicate` again"),
        "{message}"
    );
    // `status` names the silent worker too, and /metrics gives its age (the alert's input)
    let (code, status) = w.run_json(&["status", "--journal-dir", &w.path("journal")]);
    assert_eq!(code, 3, "{status}");
    assert!(
        status["attention"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["code"] == "worker_silent"),
        "{status}"
    );
    let key = w.path("dev.p8");
    let serve = Serve::start_with(&w.db, None, &["--dev-key", &key]);
    let (_, _, text) = serve.get("/metrics").await;
    let age = metric(
        &text,
        r#"mystira_worker_heartbeat_age_seconds{kind="replicate"}"#,
    );
    assert!(age >= 60.0, "the dead replicator's heartbeat age: {age}");
    drop(serve);

    // the fix the refusal names: a replicator beating again opens the gate
    let (second, _) = live_replicator(&w, "replicate-2.log").await;
    // and `status` no longer asks for attention for the dead one, which stays listed
    let (_, status) = w.run_json(&["status", "--journal-dir", &w.path("journal")]);
    let attention = status["attention"].as_array().unwrap();
    assert!(
        !attention.iter().any(|a| a["code"] == "worker_silent"),
        "a replaced worker still needs attention: {status}"
    );
    assert!(status["workers"].to_string().contains(&worker), "{status}");
    let (code, applied) = w.run_json(&["phase", "set", "2", "--reason", "go"]);
    assert_eq!(code, 0, "{applied}");
    assert_eq!(applied["forced"], false);

    // out of phase 2 the same; --force passes
    dies(&w, second).await;
    let (code, refused) = w.run_json(&["phase", "set", "3", "--reason", "cutover"]);
    assert_eq!(code, 3, "{refused}");
    assert!(
        codes(&refused["unmet"]).contains(&"replicator_dead"),
        "{refused}"
    );
    let (code, forced) = w.run_json(&["phase", "set", "3", "--reason", "cutover", "--force"]);
    assert_eq!(code, 0, "{forced}");
    assert_eq!(forced["result"], "applied");
    assert_eq!(forced["forced"], true);
    w.store.delete_database().await.unwrap();
}

/// Item 5: `relay` exited 1 when Cosmos was out as it started (it opened its containers once,
/// without the retries it gives a delivery); a continuous relay must wait it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_relay_started_while_cosmos_is_out_waits_for_it_and_then_delivers() {
    let w = World::new("gates-relay-start").await;
    generate(&w, "2");
    let out = w.run(&["migrate"]);
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // a PostgreSQL write (an admin's SQL: the trigger queues it for Cosmos all the same)
    let id: String = w
        .scalar("select coalesce(cosmos_id, id::text) from accounts order by id limit 1")
        .await;
    w.execute(&format!(
        "update accounts set display_name = 'Relayed late'
         where coalesce(cosmos_id, id::text) = '{id}'"
    ))
    .await;
    assert!(
        w.scalar::<i64>("select count(*) from migration.outbox")
            .await
            > 0
    );

    let faults = cosmos_support::Faults::new();
    let out_rule = faults
        .arm(json!({
            "pathContains": format!("/dbs/{}/", w.cosmos_db()), "count": 1_000_000,
            "action": "respond", "status": 503, "retryAfterMs": 10
        }))
        .await;
    let mut relay = w.spawn(
        &["relay", "--json", "--max-retry-wait-seconds", "1"],
        "relay.log",
    );
    until_logged(
        &w,
        &mut relay,
        "relay.log",
        "cannot open the Cosmos containers; retrying",
        Duration::from_secs(20),
    )
    .await;
    let pid = relay.id();
    until_beats(&w, pid, "retrying").await;
    let class: Option<String> = w
        .scalar(&format!(
            "select last_error_class from migration.worker_heartbeats where pid = {pid}"
        ))
        .await;
    assert_eq!(class.as_deref(), Some("cosmos_unavailable"));

    faults.disarm(&out_rule).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.in_cosmos("Accounts", &id, "DisplayName").await != "Relayed late" {
        if let Some(status) = relay.try_wait().unwrap() {
            panic!("the relay exited ({status}):\n{}", w.log("relay.log"));
        }
        assert!(
            Instant::now() < deadline,
            "not delivered:\n{}",
            w.log("relay.log")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_beats(&w, pid, "running").await;
    let exit = terminate(&mut relay, "relay");
    assert!(exit.success(), "{}", w.log("relay.log"));
    w.store.delete_database().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// item 10: output

/// Generated documents written into the world's Cosmos database by the binary.
fn generate(w: &World, accounts: &str) {
    let out = w.run(&["generate", "--accounts", accounts]);
    assert!(
        out.status.success(),
        "generate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_towards_cosmos_with_repair_counts_the_documents_it_re_copied() {
    let w = World::new("gates-repair").await;
    generate(&w, "3");
    let out = w.run(&["migrate"]);
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // one account changed in Cosmos behind PostgreSQL's back
    let accounts = w.store.container("Accounts").await.unwrap();
    let mut pages = accounts.query::<Value>(QuerySpec::new("select * from c"), None);
    let mut doc = pages.next_page().await.unwrap().unwrap().items.remove(0);
    let id = doc["id"].as_str().unwrap().to_owned();
    let kept = doc["DisplayName"].clone();
    doc["DisplayName"] = json!("edited in cosmos");
    accounts.upsert(id.clone(), &id, &doc).await.unwrap();

    let drift = w.run(&["verify", "--direction", "pg-to-cosmos"]);
    assert_ne!(drift.status.code(), Some(0), "the edit is drift");
    let repair = w.run(&["verify", "--direction", "pg-to-cosmos", "--repair"]);
    let text = String::from_utf8_lossy(&repair.stdout);
    assert_eq!(repair.status.code(), Some(0), "{text}");
    assert!(
        text.contains("repair round 1: 1 documents re-copied"),
        "the summary does not count the repair: {text}"
    );
    assert_eq!(w.in_cosmos("Accounts", &id, "DisplayName").await, kept);
    w.store.delete_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_caught_up_replicator_reports_a_lag_near_its_poll_not_the_newest_change_age() {
    let w = World::new("gates-lag").await;
    let out = w.run(&["db", "migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    generate(&w, "2");
    let written = Instant::now();
    let mut child = w.spawn(
        &[
            "replicate",
            "--json",
            "--poll-ms",
            "200",
            "--delete-check-seconds",
            "0",
        ],
        "replicate.log",
    );
    until("the catch-up", Duration::from_secs(30), || async {
        w.scalar::<i64>("select count(*) from accounts").await == 2
    })
    .await;
    // idle: nothing is written to Cosmos for a while (the scenario itself, not a race), so
    // the newest change grows older than the caught-up replicator's lag may be
    let idle = Duration::from_secs(5);
    tokio::time::sleep(idle.saturating_sub(written.elapsed())).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "{}",
        w.log("replicate.log")
    );
    let exit = terminate(&mut child, "replicate");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(exit.success(), "{stdout}{}", w.log("replicate.log"));
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let accounts = &report["containers"]["Accounts"];
    let age = accounts["newest_change_age_seconds"].as_f64().unwrap();
    assert!(age >= 4.0, "the replicator did not stay idle: {accounts}");
    let lag = accounts["lag_seconds"].as_f64().expect("caught up");
    assert!(
        lag < 2.0,
        "an idle, caught-up replicator reports a lag of {lag} s (its newest change is {age} s \
         old): {accounts}"
    );
    w.store.delete_database().await.unwrap();
}

#[test]
fn serve_help_describes_the_service_and_its_delivery_deadline() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .env_remove("MYSTIRA_CONFIG")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    assert!(!help.contains("first slice"), "{help}");
    assert!(help.contains("--delivery-deadline-ms"), "{help}");
}
