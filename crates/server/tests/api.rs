//! The domain API in-process against a real PostgreSQL (one fresh database per test): who may
//! touch what, the refusals of bad tokens and bad bodies, and the sign-up flow with its lock-out
//! and rate limits. The binary's own test (crates/cli/tests/serve.rs) drives the same routes
//! over a socket.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use mystira_server::auth::DevKey;
use mystira_server::{RateLimit, TrustedProxies};
use serde_json::{Value, json};
use sqlx::PgPool;

mod support;
use support::{AUD, Api, ISS, expect_problem as expect};

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_user_reaches_only_their_own_account_profiles_badges_and_scenarios(pool: PgPool) {
    let api = Api::new(pool);
    let alice = api.token_proving("auth0|alice", "alice@example.com");
    let bob = api.token("auth0|bob", None);
    let admin = api.token("auth0|ops", Some("Admin"));

    let created = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&alice),
            Some(json!({
                "email": "alice@example.com", "display_name": "Alice"
            })),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    assert_eq!(created.body["auth0_user_id"], "auth0|alice");
    assert_eq!(created.body["role"], "User");
    let account = created.body["id"].as_str().unwrap().to_owned();
    let me = api.call("GET", "/v1/me", Some(&alice), None).await;
    assert_eq!(me.body["account_id"], account.as_str());

    let profile = api
        .call(
            "POST",
            &format!("/v1/accounts/{account}/profiles"),
            Some(&alice),
            Some(json!({
                "name": "Kid", "age_group": "6-9", "date_of_birth": "2018-04-01"
            })),
        )
        .await;
    assert_eq!(profile.status, StatusCode::CREATED, "{}", profile.text);
    let profile = profile.body["id"].as_str().unwrap().to_owned();
    let badge =
        json!({"badge_configuration_id": "brave-1", "badge_name": "Brave", "axis": "courage"});
    let awarded = api
        .call(
            "POST",
            &format!("/v1/profiles/{profile}/badges"),
            Some(&alice),
            Some(badge.clone()),
        )
        .await;
    assert_eq!(awarded.status, StatusCode::CREATED, "{}", awarded.text);
    let again = api
        .call(
            "POST",
            &format!("/v1/profiles/{profile}/badges"),
            Some(&alice),
            Some(badge.clone()),
        )
        .await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "the second award is the first badge"
    );
    assert_eq!(again.body["id"], awarded.body["id"]);
    let done = api
        .call(
            "POST",
            &format!("/v1/accounts/{account}/completed-scenarios"),
            Some(&alice),
            Some(json!({"scenario_id": "forest-1"})),
        )
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);

    // bob, another user, is refused each of alice's rows, by method
    let denied_account = [
        ("GET", format!("/v1/accounts/{account}"), None),
        (
            "PATCH",
            format!("/v1/accounts/{account}"),
            Some(json!({"display_name": "Mallory"})),
        ),
        ("DELETE", format!("/v1/accounts/{account}"), None),
        ("POST", format!("/v1/accounts/{account}/login"), None),
        ("GET", format!("/v1/accounts/{account}/subscription"), None),
        (
            "GET",
            format!("/v1/accounts/{account}/completed-scenarios"),
            None,
        ),
        (
            "POST",
            format!("/v1/accounts/{account}/completed-scenarios"),
            Some(json!({"scenario_id": "x"})),
        ),
        ("GET", format!("/v1/accounts/{account}/profiles"), None),
        (
            "POST",
            format!("/v1/accounts/{account}/profiles"),
            Some(json!({"name": "Intruder", "age_group": "6-9"})),
        ),
        (
            "GET",
            "/v1/external-users/auth0%7Calice/account".to_owned(),
            None,
        ),
    ];
    for (method, uri, body) in denied_account {
        let reply = api.call(method, &uri, Some(&bob), body).await;
        expect(&reply, StatusCode::FORBIDDEN, "not_your_account");
    }
    let denied_profile = [
        ("GET", format!("/v1/profiles/{profile}"), None),
        (
            "PATCH",
            format!("/v1/profiles/{profile}"),
            Some(json!({"name": "Renamed"})),
        ),
        ("DELETE", format!("/v1/profiles/{profile}"), None),
        ("POST", format!("/v1/profiles/{profile}/onboarded"), None),
        ("GET", format!("/v1/profiles/{profile}/badges"), None),
        (
            "POST",
            format!("/v1/profiles/{profile}/badges"),
            Some(badge.clone()),
        ),
    ];
    for (method, uri, body) in denied_profile {
        let reply = api.call(method, &uri, Some(&bob), body).await;
        expect(&reply, StatusCode::FORBIDDEN, "not_your_profile");
    }
    // nothing bob tried changed anything
    let still = api
        .call(
            "GET",
            &format!("/v1/accounts/{account}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(still.body["display_name"], "Alice");
    let badges = api
        .call(
            "GET",
            &format!("/v1/profiles/{profile}/badges"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(badges.body.as_array().unwrap().len(), 1);

    // no creating an account for someone else, and no granting oneself a role
    let for_alice = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&bob),
            Some(json!({
                "email": "bob@example.com", "display_name": "Bob", "auth0_user_id": "auth0|alice"
            })),
        )
        .await;
    expect(&for_alice, StatusCode::FORBIDDEN, "not_your_account");
    let as_admin = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&bob),
            Some(json!({
                "email": "bob@example.com", "display_name": "Bob", "role": "admin"
            })),
        )
        .await;
    expect(&as_admin, StatusCode::FORBIDDEN, "role_not_allowed");
    let promote = api
        .call(
            "PATCH",
            &format!("/v1/accounts/{account}"),
            Some(&alice),
            Some(json!({"role": "SuperAdmin"})),
        )
        .await;
    expect(&promote, StatusCode::FORBIDDEN, "role_not_allowed");
    // a subscription is the purchase verification's (an admin's) to write
    let sub = json!({"subscription_type": "Annual", "tier": "family", "is_active": true,
        "purchase_token": "tok-secret-123", "purchased_scenarios": ["forest-1"]});
    let own_sub = api
        .call(
            "PUT",
            &format!("/v1/accounts/{account}/subscription"),
            Some(&alice),
            Some(sub.clone()),
        )
        .await;
    expect(&own_sub, StatusCode::FORBIDDEN, "forbidden");
    let search = api
        .call(
            "POST",
            "/v1/accounts/search",
            Some(&alice),
            Some(json!({"email": "alice@example.com"})),
        )
        .await;
    expect(&search, StatusCode::FORBIDDEN, "forbidden");
    let admin_routes = [
        ("GET", "/v1/admin/phase"),
        ("GET", "/v1/admin/migration"),
        ("GET", "/v1/admin/status"),
        ("GET", "/v1/admin/quarantine?container=Accounts"),
        ("DELETE", "/v1/admin/signups/expired"),
    ];
    for (method, uri) in admin_routes {
        let reply = api.call(method, uri, Some(&alice), None).await;
        expect(&reply, StatusCode::FORBIDDEN, "forbidden");
        let reply = api.call(method, uri, Some(&admin), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.text);
    }
    let state = api
        .call("GET", "/v1/admin/migration", Some(&admin), None)
        .await;
    assert_eq!(state.body["retry_journal_entries"], 0, "{}", state.text);
    // the status view: the service reads no local journal files (they are per machine)
    let status = api
        .call("GET", "/v1/admin/status", Some(&admin), None)
        .await;
    assert_eq!(
        status.body["phase"]["domain"]["phase"], "cosmos-only",
        "{}",
        status.text
    );
    assert_eq!(
        status.body["journal"]["table"]["entries"], 0,
        "{}",
        status.text
    );
    assert!(status.body["journal"]["files"].is_null(), "{}", status.text);

    // an admin may act on anyone's
    let seen = api
        .call(
            "GET",
            &format!("/v1/accounts/{account}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(seen.status, StatusCode::OK);
    let set = api
        .call(
            "PUT",
            &format!("/v1/accounts/{account}/subscription"),
            Some(&admin),
            Some(sub),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.text);
    let read = api
        .call(
            "GET",
            &format!("/v1/accounts/{account}/subscription"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(read.body["subscription_type"], "Annual");
    assert_eq!(read.body["has_purchase_token"], true);
    assert!(
        !read.text.contains("tok-secret-123"),
        "the purchase token is write-only"
    );
    let found = api
        .call(
            "POST",
            "/v1/accounts/search",
            Some(&admin),
            Some(json!({"email": "ALICE@example.com"})),
        )
        .await;
    assert_eq!(found.body.as_array().unwrap().len(), 1, "{}", found.text);
    let renamed = api
        .call(
            "PATCH",
            &format!("/v1/profiles/{profile}"),
            Some(&admin),
            Some(json!({"bio": null, "pronouns": "they"})),
        )
        .await;
    assert_eq!(renamed.body["pronouns"], "they", "{}", renamed.text);

    // once alice's account is gone, her profile is detached: no user reaches it
    let gone = api
        .call(
            "DELETE",
            &format!("/v1/accounts/{account}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let detached = api
        .call(
            "GET",
            &format!("/v1/profiles/{profile}"),
            Some(&alice),
            None,
        )
        .await;
    expect(&detached, StatusCode::FORBIDDEN, "not_your_profile");
    let by_admin = api
        .call(
            "GET",
            &format!("/v1/profiles/{profile}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(by_admin.body["account_id"], Value::Null);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn bad_tokens_are_refused_before_anything_is_read(pool: PgPool) {
    let api = Api::new(pool);
    let dir = tempfile::tempdir().unwrap();
    let stranger = DevKey::load_or_create(&dir.path().join("other.p8")).unwrap();
    let uri = "/v1/accounts/00000000-0000-4000-8000-000000000001";
    let cases = [
        (None, "missing_token"),
        (
            Some(api.key.token("auth0|a", None, ISS, AUD, -600).unwrap()),
            "token_expired",
        ),
        (
            Some(
                api.key
                    .token("auth0|a", None, ISS, "another-api", 600)
                    .unwrap(),
            ),
            "wrong_audience",
        ),
        (
            Some(
                api.key
                    .token("auth0|a", None, "https://evil/", AUD, 600)
                    .unwrap(),
            ),
            "wrong_issuer",
        ),
        (
            Some(
                stranger
                    .token("auth0|a", Some("Admin"), ISS, AUD, 600)
                    .unwrap(),
            ),
            "bad_signature",
        ),
    ];
    for (token, code) in cases {
        let reply = api.call("GET", uri, token.as_deref(), None).await;
        expect(&reply, StatusCode::UNAUTHORIZED, code);
        assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer");
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn bad_bodies_are_named_without_quoting_what_was_sent(pool: PgPool) {
    let api = Api::new(pool);
    let alice = api.token_proving("auth0|alice", "alice@example.com");
    let cases = [
        (
            json!({"email": "very-private@@example", "display_name": "A"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_email",
        ),
        (
            json!({"email": "a@example.com", "display_name": "very-private-name", "role": "Overlord"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_role",
        ),
        (
            json!({"email": "a@example.com", "display_name": {"very-private": 1}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"email": "a@example.com", "display_name": "A", "very-private": true}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"email": "a@example.com", "display_name": "x".repeat(256)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "too_long",
        ),
    ];
    for (body, status, code) in cases {
        let reply = api
            .call("POST", "/v1/accounts", Some(&alice), Some(body))
            .await;
        expect(&reply, status, code);
        let detail = reply.body["detail"].as_str().unwrap();
        assert!(!detail.contains("very-private"), "{detail}");
    }
    let unknown = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&alice),
            Some(json!({"email": "a@example.com", "display_name": "A", "colour": 1})),
        )
        .await;
    assert!(
        unknown.body["detail"]
            .as_str()
            .unwrap()
            .contains("`colour`"),
        "{}",
        unknown.text
    );
    let request = Request::post("/v1/accounts")
        .header(header::AUTHORIZATION, format!("Bearer {alice}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"email\": "))
        .unwrap();
    expect(
        &api.send(request).await,
        StatusCode::BAD_REQUEST,
        "malformed_json",
    );
    let request = Request::post("/v1/accounts")
        .header(header::AUTHORIZATION, format!("Bearer {alice}"))
        .body(Body::from("{}"))
        .unwrap();
    expect(
        &api.send(request).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let not_uuid = api
        .call("GET", "/v1/accounts/not-a-uuid", Some(&alice), None)
        .await;
    expect(&not_uuid, StatusCode::NOT_FOUND, "not_found");
    let age = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&alice),
            Some(json!({"email": "alice@example.com", "display_name": "A"})),
        )
        .await;
    let account = age.body["id"].as_str().unwrap().to_owned();
    let bad_group = api
        .call(
            "POST",
            &format!("/v1/accounts/{account}/profiles"),
            Some(&alice),
            Some(json!({"name": "K", "age_group": "toddlers"})),
        )
        .await;
    expect(
        &bad_group,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_age_group",
    );
    assert_eq!(bad_group.body["field"], "age_group");
    let twice = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&alice),
            Some(json!({"email": "alice@example.com", "display_name": "A"})),
        )
        .await;
    expect(&twice, StatusCode::CONFLICT, "duplicate_external_user_id");
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_signup_code_verifies_once_and_locks_after_wrong_guesses(pool: PgPool) {
    let api = Api::new(pool);
    let request = json!({"email": "new@example.com", "display_name": "New"});
    let accepted = api
        .call("POST", "/v1/signups", None, Some(request.clone()))
        .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text);
    let code = api.mailed_code("new@example.com");
    assert_eq!(code.len(), 6);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for left in [4, 3] {
        let reply = api
            .call(
                "POST",
                "/v1/signups/verify",
                None,
                Some(json!({"email": "new@example.com", "code": wrong})),
            )
            .await;
        expect(&reply, StatusCode::BAD_REQUEST, "wrong_code");
        assert_eq!(reply.body["attempts_left"], left);
    }
    let right = api
        .call(
            "POST",
            "/v1/signups/verify",
            None,
            Some(json!({"email": "NEW@example.com", "code": code})),
        )
        .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.text);
    assert_eq!(right.body["signup_id"], accepted.body["id"]);
    let reused = api
        .call(
            "POST",
            "/v1/signups/verify",
            None,
            Some(json!({"email": "new@example.com", "code": code})),
        )
        .await;
    expect(&reused, StatusCode::NOT_FOUND, "no_pending_signup");

    // the same code sent six times at once completes the sign-up once
    api.call("POST", "/v1/signups", None, Some(request.clone()))
        .await;
    let code_again = api.mailed_code("new@example.com");
    let body = json!({"email": "new@example.com", "code": code_again});
    let replies = futures::future::join_all(
        (0..6).map(|_| api.call("POST", "/v1/signups/verify", None, Some(body.clone()))),
    )
    .await;
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    let gone = replies
        .iter()
        .filter(|r| r.status == StatusCode::NOT_FOUND && r.body["code"] == "no_pending_signup")
        .count();
    assert_eq!((ok, gone), (1, 5), "one 200, the rest find it used");

    api.call("POST", "/v1/signups", None, Some(request)).await;
    let code = api.mailed_code("new@example.com");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        api.call(
            "POST",
            "/v1/signups/verify",
            None,
            Some(json!({"email": "new@example.com", "code": wrong})),
        )
        .await;
    }
    let locked = api
        .call(
            "POST",
            "/v1/signups/verify",
            None,
            Some(json!({"email": "new@example.com", "code": code})),
        )
        .await;
    expect(&locked, StatusCode::LOCKED, "locked_out");
    let malformed = api
        .call(
            "POST",
            "/v1/signups/verify",
            None,
            Some(json!({"email": "new@example.com", "code": "12 34"})),
        )
        .await;
    expect(
        &malformed,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_signup_code",
    );
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn signups_are_rate_limited_per_email_and_per_client(pool: PgPool) {
    let api = Api::tuned(pool.clone(), |s| {
        s.per_email = RateLimit {
            max: 2,
            window: Duration::from_secs(600),
        };
        s.per_client = RateLimit {
            max: 3,
            window: Duration::from_secs(600),
        };
    });
    let one: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let two: SocketAddr = "192.0.2.2:5000".parse().unwrap();
    let ask = |client, email: &str| {
        api.call_from(
            Some(client),
            "POST",
            "/v1/signups",
            None,
            Some(json!({"email": email, "display_name": "N"})),
        )
    };
    assert_eq!(ask(one, "a@example.com").await.status, StatusCode::ACCEPTED);
    assert_eq!(ask(two, "A@example.com").await.status, StatusCode::ACCEPTED);
    // the email's budget, whichever client asks and however it is spelled
    let third = ask(two, "a@EXAMPLE.com").await;
    expect(&third, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let wait: u64 = third.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&wait), "{wait}");
    // the client's budget (3 per window), whatever the emails
    assert_eq!(ask(one, "b@example.com").await.status, StatusCode::ACCEPTED);
    assert_eq!(ask(one, "c@example.com").await.status, StatusCode::ACCEPTED);
    expect(
        &ask(one, "d@example.com").await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    assert_eq!(ask(two, "d@example.com").await.status, StatusCode::ACCEPTED);
    // the budget lives in PostgreSQL (one for every replica); no email is in it in clear
    let buckets: Vec<String> = sqlx::query_scalar("select bucket from service.rate_limit_hits")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(buckets.iter().any(|b| b.starts_with("signup-email:")));
    assert!(
        buckets.iter().all(|b| !b.contains("example.com")),
        "{buckets:?}"
    );
    // a refused request created nothing: five sign-ups, for the five accepted
    let signups: i64 = sqlx::query_scalar("select count(*) from pending_signups")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(signups, 5);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn behind_a_trusted_proxy_the_forwarded_client_has_the_budget(pool: PgPool) {
    let api = Api::tuned(pool, |s| {
        s.per_client = RateLimit {
            max: 1,
            window: Duration::from_secs(600),
        };
        s.trusted_proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
    });
    let ask = |peer: &str, forwarded: Option<&str>, email: &str| {
        let mut request = Request::builder()
            .method("POST")
            .uri("/v1/signups")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(f) = forwarded {
            request = request.header("x-forwarded-for", f);
        }
        let mut request = request
            .body(Body::from(
                json!({"email": email, "display_name": "N"}).to_string(),
            ))
            .unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        api.send(request)
    };
    let proxy = "10.0.0.5:40000";
    // two clients behind one proxy: a budget each, not one shared by all
    let one = ask(proxy, Some("198.51.100.1"), "a@example.com").await;
    assert_eq!(one.status, StatusCode::ACCEPTED);
    let two = ask(proxy, Some("198.51.100.2"), "b@example.com").await;
    assert_eq!(two.status, StatusCode::ACCEPTED);
    // a client cannot choose its bucket: what it writes left of itself is not believed
    let spoofed = ask(proxy, Some("192.0.2.99, 198.51.100.1"), "c@example.com").await;
    expect(&spoofed, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    // nor from outside the trusted block, where the peer is the client whatever it sends
    let direct = ask("203.0.113.7:5000", Some("198.51.100.3"), "d@example.com").await;
    assert_eq!(direct.status, StatusCode::ACCEPTED);
    let again = ask("203.0.113.7:5000", Some("198.51.100.4"), "e@example.com").await;
    expect(&again, StatusCode::TOO_MANY_REQUESTS, "rate_limited");
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_openapi_document_describes_every_route(pool: PgPool) {
    let api = Api::new(pool);
    let doc = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc.body["paths"].as_object().unwrap();
    for path in [
        "/v1/me",
        "/v1/accounts",
        "/v1/accounts/{id}",
        "/v1/accounts/search",
        "/v1/external-users/{external_user_id}/account",
        "/v1/accounts/{id}/subscription",
        "/v1/accounts/{id}/completed-scenarios",
        "/v1/accounts/{id}/profiles",
        "/v1/profiles/{id}",
        "/v1/profiles/{id}/badges",
        "/v1/signups",
        "/v1/signups/verify",
        "/v1/admin/phase",
    ] {
        assert!(paths.contains_key(path), "{path} is not in the document");
    }
    assert_eq!(
        doc.body["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    // what a client generator needs (scripts/api-check lints the document and compiles a
    // client generated from it): unique operation ids, open operations marked as open, and
    // every error answer typed as a problem
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(ids.insert(id), "operationId {id} is used twice");
            assert!(
                operation["security"].is_array(),
                "{method} {path} does not say what security it needs"
            );
            for (status, response) in operation["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/problem+json"]["schema"]["$ref"],
                        "#/components/schemas/Problem",
                        "{method} {path} {status} is not typed as a problem"
                    );
                }
            }
        }
    }
    assert_eq!(
        doc.body["paths"]["/v1/signups"]["post"]["security"],
        json!([])
    );
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn admins_move_the_phase_through_the_gates_and_read_the_backlogs_without_values(
    pool: PgPool,
) {
    let api = Api::new(pool.clone());
    let admin = api.token("auth0|ops", Some("Admin"));
    let user = api.token_proving("auth0|alice", "alice@example.com");
    let to_phase_1 = json!({"phase": "dual-write-cosmos-read", "reason": "canary week"});

    // users may not, whatever they send
    let denied = api
        .call(
            "PUT",
            "/v1/admin/phase",
            Some(&user),
            Some(to_phase_1.clone()),
        )
        .await;
    expect(&denied, StatusCode::FORBIDDEN, "forbidden");

    // no backfill has run: the gate into 1 refuses, names why, and writes nothing
    let refused = api
        .call(
            "PUT",
            "/v1/admin/phase",
            Some(&admin),
            Some(to_phase_1.clone()),
        )
        .await;
    expect(&refused, StatusCode::CONFLICT, "gate_refused");
    let unmet: Vec<&str> = refused.body["unmet"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap())
        .collect();
    assert_eq!(unmet, ["backfill_never_run"], "{}", refused.text);
    let history = api
        .call("GET", "/v1/admin/phase/history", Some(&admin), None)
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    let before = history.body.as_array().unwrap().len();

    // forced: applied, audited as forced, with the token's subject as the actor
    let mut forced = to_phase_1.clone();
    forced["force"] = json!(true);
    let applied = api
        .call("PUT", "/v1/admin/phase", Some(&admin), Some(forced.clone()))
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{}", applied.text);
    assert_eq!(
        (&applied.body["result"], &applied.body["forced"]),
        (&json!("applied"), &json!(true))
    );
    let history = api
        .call("GET", "/v1/admin/phase/history?limit=5", Some(&admin), None)
        .await;
    let newest = &history.body[0];
    assert_eq!(history.body.as_array().unwrap().len(), before + 1);
    assert_eq!(newest["changed_by"], "api:auth0|ops");
    assert_eq!(newest["to_phase"], "dual-write-cosmos-read");
    assert_eq!(newest["forced"], true);
    assert_eq!(newest["reason"], "canary week");
    let stored: String = sqlx::query_scalar("select phase from migration.phase_state")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, "dual-write-cosmos-read");
    // the same move again changes nothing
    let again = api
        .call("PUT", "/v1/admin/phase", Some(&admin), Some(forced))
        .await;
    assert_eq!(again.body["result"], "unchanged", "{}", again.text);

    // bad requests say which field, and change nothing
    for (body, code) in [
        (
            json!({"phase": "phase-nine", "reason": "x"}),
            "invalid_body",
        ),
        (
            json!({"phase": "postgres-only", "reason": "  "}),
            "invalid_body",
        ),
        (
            json!({"phase": "postgres-only", "reason": "x", "wait_drain_seconds": 3600}),
            "invalid_body",
        ),
    ] {
        let r = api
            .call("PUT", "/v1/admin/phase", Some(&admin), Some(body))
            .await;
        expect(&r, StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    let stored: String = sqlx::query_scalar("select phase from migration.phase_state")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, "dual-write-cosmos-read");

    // the retry journal lists where an entry is from, never the document it carries
    let document = json!({"id": "a-1", "email": "secret.person@example.com", "_ts": 1});
    mystira_postgres::journal::append(
        &pool,
        &[mystira_postgres::journal::JournalRecord {
            container: "Accounts".into(),
            document_id: "a-1".into(),
            op: mystira_postgres::journal::JournalOp::Upsert { document },
        }],
        "router",
    )
    .await
    .unwrap();
    let journal = api
        .call("GET", "/v1/admin/journal", Some(&admin), None)
        .await;
    assert_eq!(journal.status, StatusCode::OK, "{}", journal.text);
    assert_eq!(journal.body[0]["document_id"], "a-1");
    assert_eq!(journal.body[0]["op"], "upsert");
    assert!(!journal.text.contains("secret.person"), "{}", journal.text);

    // an account written to PostgreSQL leaves an outbox row for Cosmos
    let created = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&user),
            Some(json!({"email": "alice@example.com", "display_name": "Alice"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let outbox = api
        .call("GET", "/v1/admin/outbox?limit=10", Some(&admin), None)
        .await;
    assert_eq!(outbox.status, StatusCode::OK, "{}", outbox.text);
    let waiting = outbox.body.as_array().unwrap();
    assert!(
        waiting
            .iter()
            .any(|a| a["container"] == "Accounts" && a["key"] == created.body["id"]),
        "{}",
        outbox.text
    );
    assert!(!outbox.text.contains("alice@"), "{}", outbox.text);

    // the newest runs of a job, newest first
    for outcome in ["drift", "clean"] {
        sqlx::query(
            "insert into migration.runs (job, source, status, finished_at, counts)
             values ('verify', 'test', 'succeeded', now(), jsonb_build_object('outcome', $1::text))",
        )
        .bind(outcome)
        .execute(&pool)
        .await
        .unwrap();
    }
    let runs = api.call("GET", "/v1/admin/runs", Some(&admin), None).await;
    assert_eq!(runs.status, StatusCode::OK, "{}", runs.text);
    assert_eq!(runs.body.as_array().unwrap().len(), 2);
    assert_eq!(runs.body[0]["counts"]["outcome"], "clean");
    let backfills = api
        .call("GET", "/v1/admin/runs?job=backfill", Some(&admin), None)
        .await;
    assert_eq!(backfills.body, json!([]));
    let bad = api
        .call("GET", "/v1/admin/journal?limit=0", Some(&admin), None)
        .await;
    expect(&bad, StatusCode::BAD_REQUEST, "invalid_query");
    for path in [
        "/v1/admin/journal",
        "/v1/admin/outbox",
        "/v1/admin/runs",
        "/v1/admin/phase/history",
    ] {
        let r = api.call("GET", path, Some(&user), None).await;
        expect(&r, StatusCode::FORBIDDEN, "forbidden");
    }
}

/// What the app's documents hold, so that a delivery to Cosmos writes it (issue 28): a new
/// account's settings get an `Id`, which an update replacing the settings without one keeps;
/// a sign-up's email is stored lower-cased (the app's partition key for it).
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn account_settings_keep_an_id_and_signup_emails_are_stored_lower_cased(pool: PgPool) {
    let api = Api::new(pool.clone());
    let carol = api.token_proving("auth0|carol", "carol@example.com");
    let created = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&carol),
            Some(json!({"email": "carol@example.com", "display_name": "Carol"})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let settings_id = created.body["settings"]["Id"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&settings_id).is_ok());
    let account = created.body["id"].as_str().unwrap();
    let patched = api
        .call(
            "PATCH",
            &format!("/v1/accounts/{account}"),
            Some(&carol),
            Some(json!({"settings": {"Theme": "dark"}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.body["settings"]["Id"], settings_id.as_str());
    assert_eq!(patched.body["settings"]["Theme"], "dark");

    let accepted = api
        .call(
            "POST",
            "/v1/signups",
            None,
            Some(json!({"email": " New.User@Example.COM ", "display_name": "New"})),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text);
    let stored: String = sqlx::query_scalar("select email from pending_signups where id = $1")
        .bind(uuid::Uuid::parse_str(accepted.body["id"].as_str().unwrap()).unwrap())
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, "new.user@example.com");
}
