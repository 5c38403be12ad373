//! `mystira-users serve` as a process, against a fresh database on the server in `DATABASE_URL`
//! and the Cosmos-protocol test server: liveness, readiness by phase (Cosmos needed in phases
//! 0 to 2, not in 3; a phase change seen without a restart), the metrics that read the
//! migration state (and that the alert rules and the Grafana dashboard name only metrics it
//! exposes), problem+json errors, and a clean stop on SIGTERM.
#![allow(clippy::unwrap_used)]

mod support;

use mystira_test_support::process::SpawnGuarded;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mystira_test_support::postgres::fresh_database;
use support::serve::{EMULATOR_KEY, Serve, dev_token, metric};

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");

/// The `mystira_*` metric names in a text (histogram series by their `_bucket` name).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("mystira_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // `mystira_users` is the program's name in comments, not a metric
        if name != "mystira_users" && name != "mystira_" {
            names.insert(name);
        }
    }
    names
}

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(path)
}

/// Asserts that every name in `named` (from `file`) is a series name in the `metrics` text:
/// exactly, so that a prefix of a real name (`mystira_backfill_range`) does not pass. A family
/// the service declares (`# TYPE`) but holds no series of yet (no dual write has failed, no
/// replicator has run) counts with the series names its type gives it.
fn assert_exposed(file: &str, named: &BTreeSet<String>, metrics: &str) {
    let mut exposed: BTreeSet<String> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    for declared in metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = declared.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        exposed.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    // a file that names nothing would pass vacuously: both name many
    assert!(named.len() >= 8, "{file} names only {named:?}");
    for name in named {
        assert!(
            exposed.contains(name.as_str()),
            "{file} names {name}, which /metrics does not expose"
        );
    }
}

/// The PromQL of every target of the Grafana dashboard, after checking the dashboard's
/// structure: unique panel ids, a PromQL `expr` on every target, and every query sent to the
/// data source the `datasource` variable picks (so it works with any Prometheus, whatever its
/// uid).
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(repo_file("deploy/grafana/mystira-users.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let variable = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "datasource")
        .expect("the dashboard has a `datasource` variable");
    assert_eq!(
        (&variable["type"], &variable["query"]),
        (&"datasource".into(), &"prometheus".into())
    );
    let templated = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let mut panels: Vec<&serde_json::Value> = Vec::new();
    let mut pending: Vec<&serde_json::Value> =
        dashboard["panels"].as_array().unwrap().iter().collect();
    while let Some(panel) = pending.pop() {
        // a row holds its panels when collapsed
        if let Some(inner) = panel["panels"].as_array() {
            pending.extend(inner);
        }
        panels.push(panel);
    }
    let mut ids = BTreeSet::new();
    let mut exprs = Vec::new();
    for panel in panels {
        let title = &panel["title"];
        let id = panel["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{title}: no id"));
        assert!(ids.insert(id), "{title}: panel id {id} is used twice");
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"], templated, "{title}");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            assert_eq!(target["datasource"], templated, "{title}");
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "{title}: a target without expr");
            exprs.push(expr.to_owned());
        }
    }
    assert!(ids.len() >= 10, "{ids:?}");
    exprs
}

fn mystira(db: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(BIN)
        .args(args)
        .args(["--database-url", db])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .env_remove("MYSTIRA_CONFIG")
        .env_remove("COSMOS_ENDPOINT")
        .env_remove("COSMOS_KEY")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test]
async fn without_cosmos_in_development_it_is_ready_on_postgresql_alone_and_its_metrics_read_the_state()
 {
    let db = fresh_database("serve_pg").await;
    // the main job first: the backfill's ranges are what the metrics report
    mystira(&db, &["--quiet", "migrate"]);
    let serve = Serve::start(&db, None);

    let (status, _, body) = serve.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"alive"}"#));

    // phase 0, no Cosmos account, development mode: the API answers from PostgreSQL alone
    // (whatever the phase), so that is what readiness describes
    let (status, _, body) = serve.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["phase"], "cosmos-only");
    assert_eq!(ready["backend"], "postgresql alone");
    assert_eq!(ready["checks"][1]["store"], "cosmos");
    assert_eq!(ready["checks"][1]["needed"], false);
    assert!(
        ready["checks"][1]["detail"]
            .as_str()
            .unwrap()
            .contains("development mode"),
        "{ready}"
    );

    let (_, content_type, text) = serve.get("/metrics").await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert_eq!(metric(&text, "mystira_phase"), 0.0);
    assert_eq!(metric(&text, "mystira_postgres_up"), 1.0);
    assert_eq!(metric(&text, "mystira_outbox_rows"), 0.0);
    assert_eq!(metric(&text, "mystira_verify_last_clean_age_seconds"), -1.0);
    let ranges = metric(&text, "mystira_backfill_ranges");
    assert!(ranges > 0.0);
    assert_eq!(metric(&text, "mystira_backfill_ranges_done"), ranges);
    // no long-runner has beaten in this database: -1 for each kind
    for kind in ["replicate", "relay"] {
        let age = format!("mystira_worker_heartbeat_age_seconds{{kind=\"{kind}\"}}");
        assert_eq!(metric(&text, &age), -1.0, "{text}");
    }
    // every metric the alert rules and the dashboard name is one the service exposes
    let rules = std::fs::read_to_string(repo_file("deploy/prometheus/alerts.yml")).unwrap();
    assert_exposed("alerts.yml", &metric_names(&rules), &text);
    let named = dashboard_exprs()
        .iter()
        .flat_map(|expr| metric_names(expr))
        .collect();
    assert_exposed("mystira-users.json", &named, &text);
    // the requests so far are counted by route pattern and status
    assert!(
        text.contains(
            r#"mystira_http_requests_total{method="GET",route="/readyz",status="200"} 1"#
        ),
        "{text}"
    );

    // the phase moves: seen without a restart
    mystira(
        &db,
        &[
            "phase",
            "set",
            "postgres-only",
            "--force",
            "--reason",
            "serve test",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let ready = loop {
        let (status, _, body) = serve.get("/readyz").await;
        assert_eq!(status, 200, "{body}");
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
        if ready["phase"] == "postgres-only" || Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready["phase"], "postgres-only");
    assert_eq!(ready["checks"][0]["store"], "postgresql");
    assert_eq!(ready["checks"][0]["ok"], true);
    assert_eq!(ready["checks"][1]["needed"], false);
    let (_, _, text) = serve.get("/metrics").await;
    assert_eq!(metric(&text, "mystira_phase"), 3.0);

    let (status, content_type, body) = serve.get("/no/such/route").await;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/problem+json")
    );
    assert!(body.contains(r#""code":"not_found""#), "{body}");

    let (exit, stdout) = serve.stop();
    assert!(exit.success(), "{exit:?}");
    assert!(stdout.contains("stopped serving"), "{stdout}");
}

#[tokio::test]
async fn with_the_cosmos_test_server_it_is_ready_in_cosmos_only() {
    let db = fresh_database("serve_cosmos").await;
    let cosmos_db = format!("serve-{}", uuid::Uuid::new_v4().simple());
    // an empty account is not ready (no container): fill one with a few generated documents
    let generated = Command::new(BIN)
        .args(["generate", "--accounts", "3"])
        .env("COSMOS_DATABASE", &cosmos_db)
        .env("COSMOS_KEY", EMULATOR_KEY)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("dev.p8");
    let journal = keys.path().join("journal");
    let serve = Serve::start_with(
        &db,
        Some(&cosmos_db),
        &[
            "--dev-key",
            key.to_str().unwrap(),
            "--journal-dir",
            journal.to_str().unwrap(),
        ],
    );
    let (status, _, body) = serve.until("/readyz", 200, Duration::from_secs(10)).await;
    assert_eq!(status, 200, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["phase"], "cosmos-only");
    assert_eq!(ready["checks"][1]["store"], "cosmos");
    assert_eq!(ready["checks"][1]["needed"], true);
    assert_eq!(ready["checks"][1]["ok"], true, "{ready}");

    // the domain API goes through the router: in cosmos-only, to Cosmos and not PostgreSQL
    // the token proves the address the account takes (issue 30, item 6)
    let user = dev_token(
        &key,
        &["--sub", "auth0|routed", "--email", "routed@example.com"],
    );
    let (status, created) = serve
        .send(
            reqwest::Method::POST,
            "/v1/accounts",
            &user,
            serde_json::json!({"email": "routed@example.com", "display_name": "Routed"}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap();
    let (status, _, body) = serve
        .get_as(&format!("/v1/accounts/{id}"), Some(&user))
        .await;
    assert_eq!(status, 200, "{body}");
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let in_postgres: i64 =
        sqlx::query_scalar("select count(*) from accounts where auth0_user_id = 'auth0|routed'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(in_postgres, 0, "phase 0 writes Cosmos only");
    let in_cosmos = Command::new(BIN)
        .args(["cosmos", "export", "--out"])
        .arg(keys.path().join("export"))
        .env("COSMOS_DATABASE", &cosmos_db)
        .env("COSMOS_KEY", EMULATOR_KEY)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        in_cosmos.status.success(),
        "{}",
        String::from_utf8_lossy(&in_cosmos.stderr)
    );
    let accounts =
        std::fs::read_to_string(keys.path().join("export").join("Accounts.jsonl")).unwrap();
    assert!(accounts.contains(id), "the account is in Cosmos");

    // the router timed that write, on Cosmos alone
    let (_, _, text) = serve.get("/metrics").await;
    let cosmos_create = r#"mystira_store_write_duration_seconds_count{store="cosmos",operation="accounts.create",outcome="ok"}"#;
    assert_eq!(metric(&text, cosmos_create), 1.0, "{text}");
    assert!(!text.contains(r#"store="postgres",operation="accounts.create""#));

    // an admin moves the phase over HTTP (forced: no backfill ran); the next write is copied
    // into PostgreSQL by the router, and timed as such
    let admin = dev_token(&key, &["--sub", "auth0|ops", "--role", "Admin"]);
    let (status, decision) = serve
        .send(
            reqwest::Method::PUT,
            "/v1/admin/phase",
            &admin,
            serde_json::json!({"phase": 1, "reason": "serve test", "force": true}),
        )
        .await;
    assert_eq!(status, 422, "a number is not a phase name: {decision}");
    let (status, decision) = serve
        .send(
            reqwest::Method::PUT,
            "/v1/admin/phase",
            &admin,
            serde_json::json!({"phase": "1", "reason": "serve test", "force": true}),
        )
        .await;
    assert_eq!(status, 200, "{decision}");
    assert_eq!(decision["to"], "dual-write-cosmos-read");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = serve.get("/readyz").await;
        if body.contains("dual-write-cosmos-read") || std::time::Instant::now() > deadline {
            assert!(body.contains("dual-write-cosmos-read"), "{body}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, patched) = serve
        .send(
            reqwest::Method::PATCH,
            &format!("/v1/accounts/{id}"),
            &user,
            serde_json::json!({"display_name": "Routed twice"}),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    let (_, _, text) = serve.get("/metrics").await;
    let copied = r#"mystira_store_write_duration_seconds_count{store="postgres",operation="phase1_copy",outcome="ok"}"#;
    assert_eq!(metric(&text, copied), 1.0, "{text}");
    let in_postgres: String = sqlx::query_scalar(
        "select display_name from accounts where auth0_user_id = 'auth0|routed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(in_postgres, "Routed twice");

    // replication lag: no series before a replicator ran; a bound of seconds after it caught up
    assert!(!text.contains("mystira_replication_lag_seconds{"), "{text}");
    let replicated = Command::new(BIN)
        .args(["--quiet", "replicate", "--once", "--database-url", &db])
        .env("COSMOS_DATABASE", &cosmos_db)
        .env("COSMOS_KEY", EMULATOR_KEY)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        replicated.status.success(),
        "{}",
        String::from_utf8_lossy(&replicated.stderr)
    );
    let (_, _, text) = serve.get("/metrics").await;
    let lag = metric(
        &text,
        r#"mystira_replication_lag_seconds{container="Accounts"}"#,
    );
    assert!((0.0..30.0).contains(&lag), "lag {lag}\n{text}");
    let (exit, _) = serve.stop();
    assert!(exit.success());
}

#[tokio::test]
async fn bearer_tokens_from_dev_token_are_checked_and_admin_endpoints_refuse_users() {
    let db = fresh_database("serve_auth").await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("dev.p8");
    let key_arg = key.to_str().unwrap();
    let serve = Serve::start_with(&db, None, &["--dev-key", key_arg]);

    // no token: 401, problem+json, and the scheme to use
    let response = reqwest::get(format!("{}/v1/me", serve.base)).await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains(r#""code":"missing_token""#)
    );

    let user = dev_token(&key, &["--sub", "auth0|parent-1"]);
    let (status, _, body) = serve.get_as("/v1/me", Some(&user)).await;
    assert_eq!(status, 200, "{body}");
    let me: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (me["user_id"].as_str(), me["role"].as_str()),
        (Some("auth0|parent-1"), Some("User"))
    );

    // a user may not read the migration's phase; an admin may
    let (status, _, body) = serve.get_as("/v1/admin/phase", Some(&user)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(r#""code":"forbidden""#), "{body}");
    let admin = dev_token(&key, &["--sub", "auth0|ops", "--role", "admin"]);
    let (status, _, body) = serve.get_as("/v1/admin/phase", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    let phase: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(phase["domain"]["phase"], "cosmos-only");

    // refused: expired, another audience, and a token signed with another key
    let expired = dev_token(&key, &["--sub", "auth0|parent-1", "--ttl-seconds", "-600"]);
    let other_audience = dev_token(&key, &["--sub", "auth0|parent-1", "--audience", "other"]);
    let forged = dev_token(
        &keys.path().join("other.p8"),
        &["--sub", "auth0|parent-1", "--role", "SuperAdmin"],
    );
    for (token, code) in [
        (&expired, "token_expired"),
        (&other_audience, "wrong_audience"),
        (&forged, "bad_signature"),
    ] {
        let (status, _, body) = serve.get_as("/v1/admin/phase", Some(token)).await;
        assert_eq!(status, 401, "{code}: {body}");
        assert!(
            body.contains(&format!(r#""code":"{code}""#)),
            "{code}: {body}"
        );
    }
    // each refusal is logged with its class and route pattern, never the token or the path's
    // ids (the 401s above, the 403 before them, and a user on another's account)
    let (status, theirs) = serve
        .send(
            reqwest::Method::POST,
            "/v1/accounts",
            &admin,
            serde_json::json!({"email": "other.parent@example.com", "display_name": "O",
                               "auth0_user_id": "auth0|parent-2"}),
        )
        .await;
    assert_eq!(status, 201, "{theirs}");
    let theirs = theirs["id"].as_str().unwrap();
    let (status, _, body) = serve
        .get_as(&format!("/v1/accounts/{theirs}"), Some(&user))
        .await;
    assert_eq!(status, 403, "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = |log: &str, code: &str, route: &str| {
        log.lines()
            .any(|l| l.contains("request refused") && l.contains(code) && l.contains(route))
    };
    loop {
        let log = serve.logged();
        let all = [
            ("forbidden", "/v1/admin/phase"),
            ("not_your_account", "/v1/accounts/{id}"),
            ("token_expired", "/v1/admin/phase"),
            ("wrong_audience", "/v1/admin/phase"),
            ("bad_signature", "/v1/admin/phase"),
        ]
        .iter()
        .all(|(code, route)| refused(&log, code, route));
        if all {
            break;
        }
        assert!(Instant::now() < deadline, "refusals not logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = serve.logged();
    for secret in [&user, &expired, &other_audience, &forged] {
        // the signature part is what would let someone replay a token
        let signature = secret.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token is in the log:\n{log}");
    }
    assert!(
        !log.contains(theirs),
        "an id from a path is in the log:\n{log}"
    );
    assert!(
        !log.contains("other.parent"),
        "a value is in the log:\n{log}"
    );
    // a sign-up code goes to the development mail file beside the key, and verifies once
    let response = reqwest::Client::new()
        .post(format!("{}/v1/signups", serve.base))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"email": "kid.parent@example.com", "display_name": "P"}).to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let mail = keys.path().join("dev-mail.jsonl");
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&mail)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let verify = |code: serde_json::Value| {
        reqwest::Client::new()
            .post(format!("{}/v1/signups/verify", serve.base))
            .header("content-type", "application/json")
            .body(serde_json::json!({"email": "kid.parent@example.com", "code": code}).to_string())
            .send()
    };
    assert_eq!(
        verify(line["code"].clone())
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        verify(line["code"].clone())
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );

    // the signing key and the mail never leave their owner
    use std::os::unix::fs::PermissionsExt as _;
    for secret in [&key, &mail] {
        assert_eq!(
            std::fs::metadata(secret).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (exit, _) = serve.stop();
    assert!(exit.success());
}

/// Runs `serve` with `args` (and no Cosmos settings) expecting it to refuse to start: its exit
/// code and stderr. Fails if it starts serving, or is still running after 30 s.
fn refused(db: &str, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(BIN)
        .arg("serve")
        .args(args)
        .args(["--database-url", db])
        .env_remove("MYSTIRA_CONFIG")
        .env_remove("COSMOS_ENDPOINT")
        .env_remove("COSMOS_KEY")
        .env_remove("COSMOS_DATABASE")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_guarded()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve {args:?} did not exit within 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains("serving"), "{args:?} started:\n{stderr}");
    (status.code().unwrap_or(-1), stderr)
}

#[tokio::test]
async fn it_refuses_to_start_when_what_it_would_serve_is_unsafe() {
    let db = fresh_database("serve_refusals").await;
    let jwks = repo_file("crates/server/tests/fixtures/auth0-test-jwks.json");
    let production = [
        "--jwks-file",
        jwks.to_str().unwrap(),
        "--issuer",
        "https://mystira-test.eu.auth0.com/",
        "--audience",
        "https://api.mystira.app",
        "--listen",
        "127.0.0.1:0",
    ];

    // production with no Cosmos account while the phase writes Cosmos: it would answer from
    // PostgreSQL alone while Cosmos is the primary
    let (code, stderr) = refused(&db, &production);
    assert_eq!(code, 2, "{stderr}");
    for named in ["cosmos-only", "COSMOS_ENDPOINT", "postgres-only"] {
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
    // once the phase is postgres-only, PostgreSQL alone is right: it starts, and is ready
    mystira(
        &db,
        &[
            "phase",
            "set",
            "postgres-only",
            "--force",
            "--yes",
            "--reason",
            "serve test",
        ],
    );
    let serve = Serve::start_with(&db, None, &production[..6]);
    let (status, _, body) = serve.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""backend":"postgresql alone""#), "{body}");
    let (exit, _) = serve.stop();
    assert!(exit.success());

    // a clock leeway beyond the ceiling is a configuration error
    let (code, stderr) = refused(&db, &["--jwt-leeway-seconds", "301"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("at most 300"), "{stderr}");

    // development mode on a network address: refused unless said so explicitly
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("dev.p8");
    let key_arg = key.to_str().unwrap();
    let (code, stderr) = refused(&db, &["--listen", "0.0.0.0:0", "--dev-key", key_arg]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--allow-dev-on-network"), "{stderr}");
    assert!(stderr.contains("--jwks-url"), "{stderr}");
    let serve = Serve::start_with(
        &db,
        None,
        &[
            "--listen",
            "0.0.0.0:0",
            "--allow-dev-on-network",
            "--dev-key",
            key_arg,
        ],
    );
    let (status, _, _) = serve.get("/healthz").await;
    assert_eq!(status, 200);
    assert!(serve.logged().contains("--allow-dev-on-network"));
    let (exit, _) = serve.stop();
    assert!(exit.success());

    // a development key open to others (planted, or left so) is not trusted
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, stderr) = refused(&db, &["--listen", "127.0.0.1:0", "--dev-key", key_arg]);
    assert_ne!(code, 0, "{stderr}");
    assert!(
        stderr.contains("open to other users (mode 644)"),
        "{stderr}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // a mail file that is a link is not followed
    let elsewhere = keys.path().join("elsewhere");
    std::fs::write(&elsewhere, "").unwrap();
    let link = keys.path().join("mail.jsonl");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let (code, stderr) = refused(
        &db,
        &[
            "--listen",
            "127.0.0.1:0",
            "--dev-key",
            key_arg,
            "--mail-file",
            link.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
}

/// A raw connection to `serve` (what a hostile client does is below any HTTP client).
struct Raw(tokio::net::TcpStream);

impl Raw {
    async fn connect(serve: &Serve) -> Raw {
        let address = serve.base.trim_start_matches("http://");
        Raw(tokio::net::TcpStream::connect(address).await.unwrap())
    }

    async fn send(&mut self, bytes: &str) {
        use tokio::io::AsyncWriteExt as _;
        self.0.write_all(bytes.as_bytes()).await.unwrap();
    }

    /// Everything the server sends until it closes the connection (or resets it), within
    /// `within`; `None` if it is still open then.
    async fn until_closed(&mut self, within: Duration) -> Option<String> {
        use tokio::io::AsyncReadExt as _;
        let mut received = Vec::new();
        let read = tokio::time::timeout(within, async {
            let mut buffer = [0_u8; 4096];
            loop {
                match self.0.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await;
        read.ok()
            .map(|()| String::from_utf8_lossy(&received).into_owned())
    }

    /// One answer on a kept-alive connection: reads until the body its content-length
    /// announces is in.
    async fn answer(&mut self) -> String {
        use tokio::io::AsyncReadExt as _;
        let mut received = Vec::new();
        let mut buffer = [0_u8; 4096];
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let n = self.0.read(&mut buffer).await.unwrap();
                assert!(n > 0, "closed: {}", String::from_utf8_lossy(&received));
                received.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&received).to_lowercase();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let length: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if received.len() >= head_end + 4 + length {
                        break;
                    }
                }
            }
        })
        .await
        .expect("an answer within 10 s");
        String::from_utf8_lossy(&received).into_owned()
    }
}

#[tokio::test]
async fn a_half_sent_head_and_a_stalled_body_are_closed_within_the_configured_timeouts() {
    let db = fresh_database("serve_timeouts").await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("dev.p8");
    let serve = Serve::start_with(
        &db,
        None,
        &[
            "--dev-key",
            key.to_str().unwrap(),
            "--header-read-timeout-seconds",
            "1",
            "--idle-timeout-seconds",
            "1",
        ],
    );

    // half a request head, then nothing: closed, unanswered, after the header-read timeout
    let started = Instant::now();
    let mut half = Raw::connect(&serve).await;
    half.send("GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        .await;
    let answered = half
        .until_closed(Duration::from_secs(30))
        .await
        .expect("a half-sent head is closed within 30 s");
    let took = started.elapsed();
    assert_eq!(answered, "", "no answer to a head that never ended");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}, the timeout is 1 s"
    );

    // a kept-alive connection is answered, then closed once idle for the same timeout
    let mut kept = Raw::connect(&serve).await;
    kept.send("GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    assert!(kept.answer().await.starts_with("HTTP/1.1 200"));
    assert_eq!(
        kept.until_closed(Duration::from_secs(5)).await.as_deref(),
        Some(""),
        "an idle kept-alive connection is closed"
    );

    // a body that stops coming: 408 problem+json after the idle timeout
    let started = Instant::now();
    let mut stalled = Raw::connect(&serve).await;
    stalled
        .send(
            "POST /v1/signups HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{\"email\": ",
        )
        .await;
    let answer = stalled
        .until_closed(Duration::from_secs(30))
        .await
        .expect("a stalled body is answered and closed within 30 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // and the service still answers
    let (status, _, _) = serve.get("/healthz").await;
    assert_eq!(status, 200);
    let (exit, _) = serve.stop();
    assert!(exit.success());
}

#[tokio::test]
async fn connections_over_the_cap_are_refused_and_sigterm_ends_it_within_the_deadline() {
    let db = fresh_database("serve_cap").await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("dev.p8");
    let serve = Serve::start_with(
        &db,
        None,
        &[
            "--dev-key",
            key.to_str().unwrap(),
            "--max-connections",
            "2",
            "--shutdown-timeout-seconds",
            "1",
            // long enough that nothing below is closed by them
            "--header-read-timeout-seconds",
            "60",
            "--idle-timeout-seconds",
            "60",
        ],
    );

    // two connections, each answered once and kept alive: the cap is reached
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut connection = Raw::connect(&serve).await;
        connection
            .send("GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await;
        assert!(connection.answer().await.starts_with("HTTP/1.1 200"));
        held.push(connection);
    }
    // a third is answered 503 problem+json and closed at once
    let mut over = Raw::connect(&serve).await;
    let answer = over
        .until_closed(Duration::from_secs(10))
        .await
        .expect("refused and closed");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        answer.contains(r#""code":"too_many_connections""#),
        "{answer}"
    );
    assert!(answer.to_lowercase().contains("retry-after: 1"), "{answer}");

    // one closes: a slot is free again (seen as soon as the server notices the close)
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let mut probe = Raw::connect(&serve).await;
        probe
            .send("GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await;
        let answer = probe.until_closed(Duration::from_secs(10)).await.unwrap();
        if answer.starts_with("HTTP/1.1 200") {
            break answer;
        }
        assert!(Instant::now() < deadline, "no slot freed: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metric(&metrics, "mystira_http_connections_refused_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "mystira_http_connections_open"),
        2.0,
        "{metrics}"
    );

    // SIGTERM with a request in flight whose body never comes, and a half-sent head on
    // another connection: the process ends within the 1 s deadline, cutting them
    let mut in_flight = held.pop().unwrap();
    in_flight
        .send(
            "POST /v1/signups HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
             Content-Length: 100\r\n\r\n{",
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut half = loop {
        // the slot of the metrics probe is freed as the server notices its close
        let mut half = Raw::connect(&serve).await;
        half.send("GET /healthz HTTP/1.1\r\nHost: te").await;
        if half
            .until_closed(Duration::from_millis(200))
            .await
            .is_none()
        {
            break half;
        }
        assert!(Instant::now() < deadline, "no slot for the half-sent head");
    };
    let started = Instant::now();
    let (exit, stdout) = serve.stop();
    let took = started.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    assert!(stdout.contains("were cut"), "{stdout}");
    assert_eq!(
        in_flight
            .until_closed(Duration::from_secs(5))
            .await
            .as_deref(),
        Some("")
    );
    assert!(half.until_closed(Duration::from_secs(5)).await.is_some());
}
