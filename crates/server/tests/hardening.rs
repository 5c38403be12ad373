//! The service against hostile clients, in-process over a real PostgreSQL (one fresh database
//! per test): made-up methods do not grow the metrics, and every error, axum's own included,
//! is problem+json with a stable code. (The connection limits and the start-up refusals are
//! the binary's: crates/cli/tests/serve.rs.)
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use mystira_domain::phase::Phase;
use mystira_server::auth::Authenticator;
use mystira_server::{FileMailer, SignupSettings};
use sqlx::PgPool;

mod support;
use support::{AUD, Api, ISS, expect_problem};

/// The application in `phase`, in production with `auth` else in development, with the
/// default sign-up settings (no mailer).
fn service_in(pool: PgPool, phase: Phase, auth: Option<Authenticator>) -> Api {
    Api::with(pool, phase, auth, |s| *s = SignupSettings::default())
}

/// The series lines of a scrape (comments left out).
fn series(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.starts_with('#')).collect()
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn made_up_methods_do_not_grow_the_metrics(pool: PgPool) {
    let service = service_in(pool, Phase::PostgresOnly, None);
    let made_up = |i: usize| {
        // a valid HTTP token, 2 KB long and different every time
        Method::from_bytes(format!("M{i:05}{}", "X".repeat(2_000)).as_bytes()).unwrap()
    };
    let burst = |from: usize| {
        let service = &service;
        async move {
            for i in from..from + 100 {
                for uri in ["/healthz", "/v1/accounts/search", "/no/such/route"] {
                    let reply = service
                        .send(
                            Request::builder()
                                .method(made_up(i))
                                .uri(uri)
                                .body(Body::empty())
                                .unwrap(),
                        )
                        .await;
                    assert!(reply.status.is_client_error(), "{uri}: {}", reply.text);
                }
            }
        }
    };
    burst(0).await;
    // the scrape counts itself: once its own series exist, the count of series is steady
    service.get("/metrics").await;
    let first = service.get("/metrics").await.text;
    burst(100).await;
    let second = service.get("/metrics").await.text;

    // the second burst of 300 new methods added no series: each counted as `other`
    assert_eq!(
        series(&first).len(),
        series(&second).len(),
        "{first}\n---\n{second}"
    );
    assert!(!second.contains("XXXX"), "a made-up method is a label");
    assert!(
        second.contains(
            r#"mystira_http_requests_total{method="other",route="/healthz",status="405"} 200"#
        ),
        "{second}"
    );
    assert!(
        second.contains(
            r#"mystira_http_requests_total{method="other",route="unmatched",status="404"} 200"#
        ),
        "{second}"
    );
    // the whole scrape stays small: every label is from a fixed set
    assert!(second.len() < 64 * 1024, "{} bytes", second.len());
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn every_error_is_problem_json_with_a_stable_code(pool: PgPool) {
    let service = service_in(pool, Phase::PostgresOnly, None);
    let token = service
        .key
        .token("auth0|someone", None, ISS, AUD, 600)
        .unwrap();

    // a method the route does not take: 405 with the methods it does
    let reply = service
        .send(Request::delete("/healthz").body(Body::empty()).unwrap())
        .await;
    expect_problem(&reply, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let allow = reply.headers[header::ALLOW].to_str().unwrap();
    assert!(allow.contains("GET"), "{allow}");

    // axum's path rejection (a segment that is not UTF-8 once decoded) was text/plain
    let reply = service
        .send(
            Request::get("/v1/accounts/%FF%FE")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    expect_problem(&reply, StatusCode::BAD_REQUEST, "bad_request");
    assert!(!reply.text.contains("FF"), "{}", reply.text);

    // a request target over 8 KiB
    let long = format!("/v1/accounts/{}", "a".repeat(9_000));
    expect_problem(
        &service.get(&long).await,
        StatusCode::URI_TOO_LONG,
        "uri_too_long",
    );
    // a head over 16 KiB, and more than 100 header lines
    let secret = "s3cr3t-".repeat(3_000);
    let reply = service
        .send(
            Request::get("/healthz")
                .header("x-padding", &secret)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    expect_problem(
        &reply,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    );
    assert!(!reply.text.contains("s3cr3t"), "{}", reply.text);
    let mut many = Request::get("/healthz");
    for i in 0..120 {
        many = many.header(format!("x-h{i}"), "1");
    }
    expect_problem(
        &service.send(many.body(Body::empty()).unwrap()).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    );

    // no route
    expect_problem(
        &service.get("/no/such/route").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // the service's own problems pass unchanged (the token refusal keeps its challenge)
    let reply = service.get("/v1/me").await;
    expect_problem(&reply, StatusCode::UNAUTHORIZED, "missing_token");
    assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
    let reply = service
        .send(
            Request::post("/v1/signups")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("hello"))
                .unwrap(),
        )
        .await;
    expect_problem(
        &reply,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    // and what is not an error is left alone
    let reply = service.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[header::CONTENT_TYPE], "application/json");
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn readiness_describes_the_stores_this_process_uses(pool: PgPool) {
    // development with no Cosmos account: the API answers from PostgreSQL whatever the phase,
    // so the process is ready in cosmos-only and says what it serves from
    let service = service_in(pool.clone(), Phase::CosmosOnly, None);
    let reply = service.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["phase"], "cosmos-only");
    assert_eq!(reply.body["backend"], "postgresql alone");
    assert_eq!(reply.body["checks"][1]["store"], "cosmos");
    assert_eq!(reply.body["checks"][1]["needed"], false, "{}", reply.text);

    // production (a JWKS) with no Cosmos account: serve starts so only in postgres-only ...
    let jwks = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/auth0-test-jwks.json"
    ));
    let production = || Authenticator::from_jwks_file(jwks, "https://issuer/", AUD).unwrap();
    let service = service_in(pool.clone(), Phase::PostgresOnly, Some(production()));
    let reply = service.get("/readyz").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["checks"][1]["needed"], false, "{}", reply.text);
    // ... and should the phase move back to one that writes Cosmos, it is not ready, and the
    // answer says how to fix it
    let service = service_in(pool, Phase::DualWritePostgresRead, Some(production()));
    let reply = service.get("/readyz").await;
    expect_problem(&reply, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    let detail = reply.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("restart serve with the Cosmos account"),
        "{detail}"
    );
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_client_that_does_not_read_its_answer_is_closed_after_the_idle_timeout(pool: PgPool) {
    use mystira_server::connections::{Limits, serve_connection};
    use tokio::io::AsyncWriteExt as _;
    let service = service_in(pool, Phase::PostgresOnly, None);
    // a pipe of 1 KiB: the OpenAPI document (tens of KiB) cannot be written whole into it
    let (mut client, server) = tokio::io::duplex(1024);
    let limits = Limits {
        idle_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let app = service.app.clone();
    let peer = "192.0.2.1:4000".parse().unwrap();
    let started = std::time::Instant::now();
    let served = tokio::spawn(async move {
        serve_connection(server, peer, app, &limits, std::future::pending()).await
    });
    client
        .write_all(b"GET /openapi.json HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    // the client never reads: the connection ends once no byte was taken for 500 ms
    let ended = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("the connection is closed within 10 s")
        .unwrap();
    let error = ended.expect_err("a stalled write ends the connection with an error");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "ended after {took:?}: {error}"
    );
    let timed_out = std::error::Error::source(&error)
        .and_then(|e| e.downcast_ref::<std::io::Error>())
        .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
    assert!(timed_out, "{error:?}");
    drop(client);
}

/// Whether this test runs as root, who may give a file away (to test a foreign owner).
fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_mail_file_is_never_a_link_another_users_or_open_to_others(pool: PgPool) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    // missing: made 0600
    let fresh = dir.path().join("mail.jsonl");
    FileMailer::new(&fresh).check().unwrap();
    assert_eq!(mode(&fresh), 0o600);

    // a file anyone may read (a planted 0666 one, say): refused, and not written
    let open = dir.path().join("open.jsonl");
    std::fs::write(&open, "").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).unwrap();
    let e = FileMailer::new(&open).check().unwrap_err().to_string();
    assert!(e.contains("open to other users (mode 666)"), "{e}");

    // a link, to wherever: not followed
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, "").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = FileMailer::new(&link).check().unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");

    // another user's
    if root() {
        let theirs = dir.path().join("theirs.jsonl");
        std::fs::write(&theirs, "").unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65_534), None).unwrap();
        let e = FileMailer::new(&theirs).check().unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
    }

    // checked at every mail too: a link put in place of the file after start is not written
    // through, and the request is answered 503 mail_failed
    let service = Api::with(pool, Phase::PostgresOnly, None, |s| {
        *s = SignupSettings {
            mailer: Some(FileMailer::new(&link)),
            ..SignupSettings::default()
        }
    });
    let reply = service
        .send(
            Request::post("/v1/signups")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(
                    r#"{"email": "someone@example.com", "display_name": "S"}"#,
                ))
                .unwrap(),
        )
        .await;
    expect_problem(&reply, StatusCode::SERVICE_UNAVAILABLE, "mail_failed");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "",
        "written through the link"
    );
}
