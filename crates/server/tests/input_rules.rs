//! What a client may send (issue 30, items 6 and 9), in-process against a real PostgreSQL: an
//! account's email must be one its owner proved (a verified `email` claim or a completed
//! sign-up), also to change it; free text and lists are capped; an age group is a real range
//! and a date of birth a past one. Every refusal is problem+json naming the field, never the
//! value; values stored before these rules still load and do not block other changes.
#![allow(clippy::unwrap_used)]

use axum::http::StatusCode;
use mystira_domain::phase::Phase;
use mystira_domain::ports::ProfileRepository as _;
use mystira_domain::{AgeGroup, Secret, UserProfile};
use mystira_postgres::PgProfileRepository;
use mystira_server::auth::Authenticator;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

mod support;
use support::{Api, Reply};

/// What these tests ask of the application besides the shared calls.
impl Api {
    /// Creates `sub`'s account with `email`, proven by a verified `email` claim; its id.
    async fn account(&self, sub: &str, email: &str) -> String {
        let token = self.token_with(sub, email, true);
        let created = self
            .call(
                "POST",
                "/v1/accounts",
                Some(&token),
                Some(json!({"email": email, "display_name": "D"})),
            )
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
        created.body["id"].as_str().unwrap().to_owned()
    }

    /// Requests a sign-up for `email` and types its mailed code back: the sign-up's id.
    async fn completed_signup(&self, email: &str) -> String {
        let id = self.requested_signup(email).await;
        let code = self.mailed_code(email);
        let verified = self
            .call(
                "POST",
                "/v1/signups/verify",
                None,
                Some(json!({"email": email, "code": code})),
            )
            .await;
        assert_eq!(verified.status, StatusCode::OK, "{}", verified.text);
        assert_eq!(verified.body["signup_id"], id.as_str());
        id
    }

    async fn requested_signup(&self, email: &str) -> String {
        let accepted = self
            .call(
                "POST",
                "/v1/signups",
                None,
                Some(json!({"email": email, "display_name": "S"})),
            )
            .await;
        assert_eq!(accepted.status, StatusCode::ACCEPTED, "{}", accepted.text);
        accepted.body["id"].as_str().unwrap().to_owned()
    }

    /// The ids of the accounts whose email is `email` (ignoring case), as an admin finds them.
    async fn search(&self, email: &str) -> Vec<String> {
        let found = self
            .call(
                "POST",
                "/v1/accounts/search",
                Some(&self.admin()),
                Some(json!({ "email": email })),
            )
            .await;
        assert_eq!(found.status, StatusCode::OK, "{}", found.text);
        found
            .body
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// A problem+json refusal with `code` about `field`, whose text holds none of `values`.
#[track_caller]
fn refused(reply: &Reply, status: StatusCode, code: &str, field: &str, values: &[&str]) {
    // an accepted oversize body would print megabytes
    let shown: String = reply.text.chars().take(400).collect();
    assert_eq!(reply.status, status, "{shown}");
    assert_eq!(reply.content_type(), "application/problem+json", "{shown}");
    assert_eq!(reply.body["code"], code, "{shown}");
    assert_eq!(reply.body["field"], field, "{shown}");
    for value in values {
        assert!(
            !reply.text.contains(value),
            "the answer quotes a value: {shown}"
        );
    }
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn an_account_takes_only_an_email_its_owner_proved(pool: PgPool) {
    let api = Api::new(pool);
    let bob = api.account("auth0|bob", "bob@example.com").await;

    // mallory types bob's address: without a claim, with an unverified one, with her own
    let attempts = [
        api.token("auth0|mallory", None),
        api.token_with("auth0|mallory", "bob@example.com", false),
        api.token_with("auth0|mallory", "mallory@example.com", true),
    ];
    for token in &attempts {
        let taken = api
            .call(
                "POST",
                "/v1/accounts",
                Some(token),
                Some(json!({"email": "bob@example.com", "display_name": "M"})),
            )
            .await;
        refused(
            &taken,
            StatusCode::FORBIDDEN,
            "email_not_proven",
            "email",
            &["bob@"],
        );
    }
    // a made-up sign-up id proves nothing either
    let guessed = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&attempts[0]),
            Some(json!({"email": "bob@example.com", "display_name": "M",
                        "signup_id": Uuid::new_v4()})),
        )
        .await;
    refused(
        &guessed,
        StatusCode::FORBIDDEN,
        "email_not_proven",
        "email",
        &["bob@"],
    );

    // her own verified address is hers, whatever its case in the token
    let mallory_token = api.token_with("auth0|mallory", "Mallory@Example.COM", true);
    let mallory = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&mallory_token),
            Some(json!({"email": "mallory@example.com", "display_name": "M"})),
        )
        .await;
    assert_eq!(mallory.status, StatusCode::CREATED, "{}", mallory.text);
    let mallory = mallory.body["id"].as_str().unwrap().to_owned();

    // a PATCH to bob's address is refused; another case of her own is no new address
    let moved = api
        .call(
            "PATCH",
            &format!("/v1/accounts/{mallory}"),
            Some(&mallory_token),
            Some(json!({"email": "BOB@example.com"})),
        )
        .await;
    refused(
        &moved,
        StatusCode::FORBIDDEN,
        "email_not_proven",
        "email",
        &["bob@", "BOB@"],
    );
    let recased = api
        .call(
            "PATCH",
            &format!("/v1/accounts/{mallory}"),
            Some(&api.token("auth0|mallory", None)),
            Some(json!({"email": "MALLORY@example.com", "display_name": "Mal"})),
        )
        .await;
    assert_eq!(recased.status, StatusCode::OK, "{}", recased.text);
    assert_eq!(recased.body["email"], "MALLORY@example.com");

    // so bob's address finds bob's account alone
    assert_eq!(api.search("bob@example.com").await, vec![bob.clone()]);
    let bobs = api
        .call(
            "GET",
            &format!("/v1/accounts/{bob}"),
            Some(&api.admin()),
            None,
        )
        .await;
    assert_eq!(bobs.body["email"], "bob@example.com");

    // an admin is not asked for a proof (support and the purchase service act on anyone's)
    let by_admin = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&api.admin()),
            Some(json!({"email": "carer@example.com", "display_name": "C",
                        "auth0_user_id": "auth0|carer"})),
        )
        .await;
    assert_eq!(by_admin.status, StatusCode::CREATED, "{}", by_admin.text);
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn a_completed_signup_proves_its_address_for_an_hour_after_its_code_expires(pool: PgPool) {
    let api = Api::new(pool.clone());
    let carol = api.token("auth0|carol", None);
    let create = |signup: &str, email: &str| json!({"email": email, "display_name": "Carol", "signup_id": signup});

    // requested but not completed: no proof yet
    let open = api.requested_signup("carol@example.com").await;
    let early = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&carol),
            Some(create(&open, "carol@example.com")),
        )
        .await;
    refused(
        &early,
        StatusCode::FORBIDDEN,
        "email_not_proven",
        "email",
        &["carol@"],
    );

    let done = api.completed_signup("carol@example.com").await;
    // it proves its own address only
    let other = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&carol),
            Some(create(&done, "dave@example.com")),
        )
        .await;
    refused(
        &other,
        StatusCode::FORBIDDEN,
        "email_not_proven",
        "email",
        &["dave@"],
    );
    let created = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&carol),
            Some(create(&done, "Carol@Example.com")),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let account = created.body["id"].as_str().unwrap().to_owned();

    // a change of address needs a proof of the new one
    let unproven = api
        .call(
            "PATCH",
            &format!("/v1/accounts/{account}"),
            Some(&carol),
            Some(json!({"email": "carol.new@example.com"})),
        )
        .await;
    refused(
        &unproven,
        StatusCode::FORBIDDEN,
        "email_not_proven",
        "email",
        &["carol.new@"],
    );
    let again = api.completed_signup("carol.new@example.com").await;
    let moved = api
        .call(
            "PATCH",
            &format!("/v1/accounts/{account}"),
            Some(&carol),
            Some(json!({"email": "carol.new@example.com", "signup_id": again})),
        )
        .await;
    assert_eq!(moved.status, StatusCode::OK, "{}", moved.text);
    assert_eq!(moved.body["email"], "carol.new@example.com");

    // an hour after its code expired, a sign-up proves nothing any more
    sqlx::query(
        "update pending_signups set expires_at = now() - interval '61 minutes' where id = $1",
    )
    .bind(Uuid::parse_str(&done).unwrap())
    .execute(&pool)
    .await
    .unwrap();
    let late = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&api.token("auth0|carol-2", None)),
            Some(create(&done, "carol@example.com")),
        )
        .await;
    refused(
        &late,
        StatusCode::FORBIDDEN,
        "email_not_proven",
        "email",
        &["carol@"],
    );
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn oversize_text_and_lists_are_refused_naming_the_field(pool: PgPool) {
    let api = Api::new(pool);
    let alice = api.token_with("auth0|alice", "alice@example.com", true);
    let account = api.account("auth0|alice", "alice@example.com").await;
    let profiles = format!("/v1/accounts/{account}/profiles");
    let marker = "very-private";
    let big_bio = format!("{marker}{}", "b".repeat(1_500_000));
    let many_themes: Vec<String> = (0..100_000).map(|i| format!("{marker}{i}")).collect();
    let profile = |extra: Value| {
        let mut p = json!({"name": "Kid", "age_group": "6-9"});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    let cases = [
        (json!({ "bio": big_bio }), "too_long", "bio"),
        (json!({ "bio": "b".repeat(2_001) }), "too_long", "bio"),
        (
            json!({ "preferred_themes": many_themes }),
            "too_many",
            "preferred_themes",
        ),
        (
            json!({ "preferred_themes": vec!["space"; 21] }),
            "too_many",
            "preferred_themes",
        ),
        (
            json!({ "preferred_themes": [format!("{marker},sea")] }),
            "out_of_range",
            "preferred_themes",
        ),
        (
            json!({ "preferred_themes": ["x".repeat(51)] }),
            "too_long",
            "preferred_themes",
        ),
        (
            json!({ "preferred_themes": [""] }),
            "empty",
            "preferred_themes",
        ),
    ];
    for (extra, code, field) in &cases {
        let reply = api
            .call(
                "POST",
                &profiles,
                Some(&alice),
                Some(profile(extra.clone())),
            )
            .await;
        refused(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            field,
            &[marker],
        );
    }
    let listed = api.call("GET", &profiles, Some(&alice), None).await;
    assert_eq!(listed.body, json!([]), "nothing refused was stored");

    // at the caps, accepted; a PATCH past them refused, field by field
    let at_caps = json!({"bio": "b".repeat(2_000), "preferred_themes": vec!["t".repeat(50); 20]});
    let kid = api
        .call("POST", &profiles, Some(&alice), Some(profile(at_caps)))
        .await;
    assert_eq!(kid.status, StatusCode::CREATED, "{}", kid.text);
    let kid = format!("/v1/profiles/{}", kid.body["id"].as_str().unwrap());
    for (patch, code, field) in cases {
        let reply = api.call("PATCH", &kid, Some(&alice), Some(patch)).await;
        refused(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            field,
            &[marker],
        );
    }

    // a badge's message, the settings object, a subscription's lists and token
    let badge = api
        .call(
            "POST",
            &format!("{kid}/badges"),
            Some(&alice),
            Some(json!({"badge_configuration_id": "b-1", "badge_name": "B",
                        "badge_message": format!("{marker}{}", "m".repeat(1_000))})),
        )
        .await;
    refused(
        &badge,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_long",
        "badge_message",
        &[marker],
    );
    let settings = json!({"Theme": format!("{marker}{}", "s".repeat(5_000))});
    let patched = api
        .call(
            "PATCH",
            &format!("/v1/accounts/{account}"),
            Some(&alice),
            Some(json!({ "settings": settings })),
        )
        .await;
    refused(
        &patched,
        StatusCode::UNPROCESSABLE_ENTITY,
        "out_of_range",
        "settings",
        &[marker],
    );
    let created = api
        .call(
            "POST",
            "/v1/accounts",
            Some(&api.admin()),
            Some(json!({"email": "x@example.com", "display_name": "X",
                        "auth0_user_id": "auth0|x", "settings": settings})),
        )
        .await;
    refused(
        &created,
        StatusCode::UNPROCESSABLE_ENTITY,
        "out_of_range",
        "settings",
        &[marker],
    );
    let subscription = |extra: Value| {
        let mut s = json!({"subscription_type": "Annual", "is_active": true});
        s.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s
    };
    let sub_cases = [
        (
            json!({"purchased_scenarios": vec![format!("{marker}-scenario"); 1_001]}),
            "too_many",
            "purchased_scenarios",
        ),
        (
            json!({"purchased_scenarios": [format!("{marker},forest-2")]}),
            "out_of_range",
            "purchased_scenarios",
        ),
        (
            json!({"purchase_token": format!("{marker}{}", "t".repeat(8_192))}),
            "too_long",
            "purchase_token",
        ),
    ];
    for (extra, code, field) in sub_cases {
        let reply = api
            .call(
                "PUT",
                &format!("/v1/accounts/{account}/subscription"),
                Some(&api.admin()),
                Some(subscription(extra)),
            )
            .await;
        refused(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            field,
            &[marker],
        );
    }
    // an admin's reason for a phase change goes to the audit trail: capped too
    let reason = format!("{marker}{}", "r".repeat(1_000));
    let phase = api
        .call(
            "PUT",
            "/v1/admin/phase",
            Some(&api.admin()),
            Some(json!({"phase": "dual-write-cosmos-read", "reason": reason})),
        )
        .await;
    refused(
        &phase,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_long",
        "reason",
        &[marker],
    );
    let cleared = api
        .call(
            "POST",
            &format!("/v1/admin/phase/overrides/{account}/clear"),
            Some(&api.admin()),
            Some(json!({ "reason": reason })),
        )
        .await;
    refused(
        &cleared,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_long",
        "reason",
        &[marker],
    );
}

#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn age_groups_are_real_ranges_and_births_are_in_the_past(pool: PgPool) {
    let api = Api::new(pool);
    let alice = api.token_with("auth0|alice", "alice@example.com", true);
    let account = api.account("auth0|alice", "alice@example.com").await;
    let profiles = format!("/v1/accounts/{account}/profiles");
    let cases = [
        (
            json!({"age_group": "9-1"}),
            "invalid_age_group",
            "age_group",
            "9-1",
        ),
        (
            json!({"age_group": "06-9"}),
            "invalid_age_group",
            "age_group",
            "06-9",
        ),
        (
            json!({"age_group": "19-151"}),
            "invalid_age_group",
            "age_group",
            "19-151",
        ),
        (
            json!({"age_group": "6-9", "date_of_birth": "2999-01-01"}),
            "out_of_range",
            "date_of_birth",
            "2999",
        ),
        (
            json!({"age_group": "6-9", "date_of_birth": "1812-05-04"}),
            "out_of_range",
            "date_of_birth",
            "1812",
        ),
    ];
    for (body, code, field, value) in &cases {
        let mut body = body.clone();
        body["name"] = json!("Kid");
        let reply = api.call("POST", &profiles, Some(&alice), Some(body)).await;
        refused(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            field,
            &[value],
        );
    }
    let kid = api
        .call(
            "POST",
            &profiles,
            Some(&alice),
            Some(json!({"name": "Kid", "age_group": "0-2", "date_of_birth": "2025-02-03"})),
        )
        .await;
    assert_eq!(kid.status, StatusCode::CREATED, "{}", kid.text);
    let kid = format!("/v1/profiles/{}", kid.body["id"].as_str().unwrap());
    for (body, code, field, value) in cases {
        let reply = api.call("PATCH", &kid, Some(&alice), Some(body)).await;
        refused(
            &reply,
            StatusCode::UNPROCESSABLE_ENTITY,
            code,
            field,
            &[value],
        );
    }
    let unchanged = api.call("GET", &kid, Some(&alice), None).await;
    assert_eq!(unchanged.body["age_group"], "0-2");
    assert_eq!(unchanged.body["date_of_birth"], "2025-02-03");
}

/// The backfill and the repositories keep the schema's rules: a profile stored with a reversed
/// age group, a future birth date and a long bio and list (as Cosmos may hold them) loads, and
/// a PATCH of another field keeps them; only a field the client sets is held to the caps.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn values_stored_before_the_rules_stay_and_do_not_block_other_changes(pool: PgPool) {
    let api = Api::new(pool.clone());
    let alice = api.token_with("auth0|alice", "alice@example.com", true);
    let account = Uuid::parse_str(&api.account("auth0|alice", "alice@example.com").await).unwrap();
    let now = chrono::Utc::now();
    let stored = UserProfile {
        id: Uuid::new_v4(),
        cosmos_id: None,
        account_id: Some(account),
        name: "Legacy".into(),
        age_group: AgeGroup::from_source("9-1").unwrap(),
        date_of_birth: Some(Secret::new(
            chrono::NaiveDate::from_ymd_opt(2999, 1, 1).unwrap(),
        )),
        is_guest: false,
        is_npc: false,
        pronouns: None,
        bio: Some("b".repeat(5_000)),
        avatar_media_id: None,
        selected_avatar_media_id: None,
        preferred_themes: (0..30).map(|i| format!("t{i}")).collect(),
        has_completed_onboarding: false,
        created_at: now,
        updated_at: now,
    };
    PgProfileRepository::new(pool)
        .create(&stored)
        .await
        .unwrap();
    let renamed = api
        .call(
            "PATCH",
            &format!("/v1/profiles/{}", stored.id),
            Some(&alice),
            Some(json!({"name": "Renamed"})),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{}", renamed.text);
    assert_eq!(renamed.body["name"], "Renamed");
    assert_eq!(renamed.body["age_group"], "9-1");
    assert_eq!(renamed.body["date_of_birth"], "2999-01-01");
    assert_eq!(renamed.body["bio"].as_str().unwrap().len(), 5_000);
    assert_eq!(
        renamed.body["preferred_themes"].as_array().unwrap().len(),
        30
    );
}

const AUTH0_ISS: &str = "https://mystira-test.eu.auth0.com/";
const AUTH0_API: &str = "https://api.mystira.app";

/// An access token as an Auth0 tenant whose post-login Action adds `email` and
/// `email_verified` issues it (signed with the test tenant's key, tests/fixtures).
fn auth0_token(sub: &str, email: Value, verified: Value) -> String {
    let fixture = |name: &str| {
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
    };
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": AUTH0_ISS, "sub": sub,
        "aud": [AUTH0_API, "https://mystira-test.eu.auth0.com/userinfo"],
        "iat": now, "exp": now + 600, "scope": "openid profile email",
        "email": email, "email_verified": verified,
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("auth0-test-2026".to_owned());
    let pem = std::fs::read(fixture("auth0-test-rsa.pem")).unwrap();
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

/// The claims as providers send them: `email_verified` a boolean or the string `"true"`
/// proves the address; `false`, `"false"`, a number or an odd `email` (not a string) prove
/// nothing and still leave the token good for everything else.
#[sqlx::test(migrator = "mystira_postgres::MIGRATOR")]
async fn the_providers_email_claims_prove_an_address_only_when_verified(pool: PgPool) {
    let jwks = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/auth0-test-jwks.json"
    ));
    let auth = Authenticator::from_jwks_file(jwks, AUTH0_ISS, AUTH0_API).unwrap();
    let api = Api::with(pool, Phase::PostgresOnly, Some(auth), |_| {});
    let create = |email: &str| json!({"email": email, "display_name": "P"});
    for (n, (email, verified)) in [
        (json!("p0@example.com"), json!(false)),
        (json!("p1@example.com"), json!("false")),
        (json!("p2@example.com"), json!(1)),
        (json!("p3@example.com"), Value::Null),
        (json!(["p4@example.com"]), json!(true)),
    ]
    .into_iter()
    .enumerate()
    {
        let token = auth0_token(&format!("auth0|p{n}"), email, verified);
        let me = api.call("GET", "/v1/me", Some(&token), None).await;
        assert_eq!(me.status, StatusCode::OK, "{n}: {}", me.text);
        let refused_one = api
            .call(
                "POST",
                "/v1/accounts",
                Some(&token),
                Some(create(&format!("p{n}@example.com"))),
            )
            .await;
        refused(
            &refused_one,
            StatusCode::FORBIDDEN,
            "email_not_proven",
            "email",
            &["@example"],
        );
    }
    for (n, verified) in [json!(true), json!("true")].into_iter().enumerate() {
        let email = format!("v{n}@example.com");
        let token = auth0_token(&format!("auth0|v{n}"), json!(email), verified);
        let created = api
            .call("POST", "/v1/accounts", Some(&token), Some(create(&email)))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    }
}
