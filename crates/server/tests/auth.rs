//! Token verification without a server: every refusal the service makes has its own code, and
//! a JWKS document verifies the tokens of the key it publishes.
#![allow(clippy::unwrap_used)]

use mystira_server::auth::{Authenticator, DevKey};

const ISS: &str = "https://issuer.example/";
const AUD: &str = "mystira-users";

fn key(dir: &tempfile::TempDir, name: &str) -> DevKey {
    DevKey::load_or_create(&dir.path().join(name)).unwrap()
}

fn refusal(auth: &Authenticator, token: &str) -> String {
    auth.verify(token).unwrap_err().code
}

#[test]
fn each_bad_token_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let ours = key(&dir, "ours.p8");
    let theirs = key(&dir, "theirs.p8");
    let auth = ours.authenticator(ISS, AUD);

    let good = ours
        .token("auth0|kid", Some("Admin"), ISS, AUD, 60)
        .unwrap();
    let claims = auth.verify(&good).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.role.as_deref()),
        ("auth0|kid", Some("Admin"))
    );

    let expired = ours.token("auth0|kid", None, ISS, AUD, -600).unwrap();
    assert_eq!(refusal(&auth, &expired), "token_expired");
    let other_audience = ours
        .token("auth0|kid", None, ISS, "another-api", 60)
        .unwrap();
    assert_eq!(refusal(&auth, &other_audience), "wrong_audience");
    let other_issuer = ours
        .token("auth0|kid", None, "https://evil/", AUD, 60)
        .unwrap();
    assert_eq!(refusal(&auth, &other_issuer), "wrong_issuer");
    // the same key id and algorithm, signed by another key
    let forged = theirs
        .token("auth0|kid", Some("SuperAdmin"), ISS, AUD, 60)
        .unwrap();
    assert_eq!(refusal(&auth, &forged), "bad_signature");
    // a token whose payload was edited after signing (the signature is checked first)
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].chars().rev().collect();
    assert_eq!(refusal(&auth, &parts.join(".")), "bad_signature");
    assert_eq!(refusal(&auth, "not a jwt"), "invalid_token");
    // an HS256 token (a shared secret: not accepted, whatever it claims)
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "x", "iss": ISS, "aud": AUD, "exp": 4_000_000_000_i64, "nbf": 0}),
        &jsonwebtoken::EncodingKey::from_secret(b"guess"),
    )
    .unwrap();
    assert_eq!(refusal(&auth, &hs), "unknown_key");
}

#[test]
fn a_jwks_file_verifies_the_tokens_of_the_key_it_publishes_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let ours = key(&dir, "ours.p8");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, ours.jwks().to_string()).unwrap();
    let auth = Authenticator::from_jwks_file(&jwks, ISS, AUD).unwrap();
    let token = ours.token("auth0|kid", None, ISS, AUD, 60).unwrap();
    assert_eq!(auth.verify(&token).unwrap().sub, "auth0|kid");
    let theirs = key(&dir, "theirs.p8");
    let forged = theirs.token("auth0|kid", None, ISS, AUD, 60).unwrap();
    assert_eq!(refusal(&auth, &forged), "bad_signature");

    // a key file is reused, not replaced: the same key verifies after a reload
    let again = key(&dir, "ours.p8");
    assert!(again.authenticator(ISS, AUD).verify(&token).is_ok());

    std::fs::write(&jwks, r#"{"keys": []}"#).unwrap();
    let e = Authenticator::from_jwks_file(&jwks, ISS, AUD).unwrap_err();
    assert!(e.to_string().contains("no RSA or P-256 key"), "{e}");
}

/// A JWKS endpoint on loopback (what an identity provider publishes): its document can be
/// replaced, as a provider does when it rotates keys, and it counts its fetches.
struct JwksEndpoint {
    url: String,
    document: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksEndpoint {
    async fn start(document: String) -> Self {
        use std::sync::atomic::Ordering;
        let document = std::sync::Arc::new(std::sync::Mutex::new(document));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (doc, count) = (document.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (doc, count) = (doc.clone(), count.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    doc.lock().unwrap().clone()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            document,
            fetches,
        }
    }

    fn publish(&self, document: String) {
        *self.document.lock().unwrap() = document;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_jwks_url_is_cached_and_fetched_again_for_a_rotated_key_but_not_for_every_made_up_kid() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let old = key(&dir, "old.p8").with_kid("2026-11");
    let new = key(&dir, "new.p8").with_kid("2026-12");
    let endpoint = JwksEndpoint::start(old.jwks().to_string()).await;
    let min_refresh = Duration::from_millis(300);
    let auth = Authenticator::from_jwks_url_with(
        &endpoint.url,
        ISS,
        AUD,
        min_refresh,
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(endpoint.fetches(), 1);

    // cached: many verifications, no fetch
    let token = old.token("auth0|kid", None, ISS, AUD, 60).unwrap();
    for _ in 0..20 {
        assert_eq!(auth.verify_current(&token).await.unwrap().sub, "auth0|kid");
    }
    assert_eq!(endpoint.fetches(), 1);

    // the provider rotates: a token of the new key is refused by the cache alone, and
    // accepted once its unknown kid made the service fetch the document again
    endpoint.publish(new.jwks().to_string());
    tokio::time::sleep(min_refresh).await;
    let rotated = new.token("auth0|kid", None, ISS, AUD, 60).unwrap();
    assert_eq!(auth.verify(&rotated).unwrap_err().code, "unknown_key");
    assert_eq!(
        auth.verify_current(&rotated).await.unwrap().sub,
        "auth0|kid"
    );
    assert_eq!(endpoint.fetches(), 2);
    // the old key is gone with the old document
    assert_eq!(
        auth.verify_current(&token).await.unwrap_err().code,
        "unknown_key"
    );

    // tokens with made-up key ids: at most one fetch per interval, however many arrive
    let before = endpoint.fetches();
    for i in 0..50 {
        let made_up = key(&dir, "stranger.p8")
            .with_kid(&format!("made-up-{i}"))
            .token("auth0|kid", None, ISS, AUD, 60)
            .unwrap();
        assert_eq!(
            auth.verify_current(&made_up).await.unwrap_err().code,
            "unknown_key"
        );
    }
    assert!(
        endpoint.fetches() - before <= 1,
        "{} fetches for 50 unknown kids in well under {min_refresh:?}",
        endpoint.fetches() - before
    );

    // a provider that answers something else: the keys held stay in use
    endpoint.publish("<html>maintenance</html>".to_owned());
    tokio::time::sleep(min_refresh).await;
    let unknown = key(&dir, "stranger.p8")
        .with_kid("after-outage")
        .token("auth0|kid", None, ISS, AUD, 60)
        .unwrap();
    assert_eq!(
        auth.verify_current(&unknown).await.unwrap_err().code,
        "unknown_key"
    );
    assert_eq!(
        auth.verify_current(&rotated).await.unwrap().sub,
        "auth0|kid"
    );

    // at start, a url that does not serve keys is an error naming the url
    let e = Authenticator::from_jwks_url(&endpoint.url, ISS, AUD)
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&endpoint.url), "{e}");
    assert!(e.to_string().contains("not a usable JWKS document"), "{e}");
}

/// An Auth0 tenant as the tests see it: its issuer, an API's audience, and the RS256 key of a
/// test tenant (tests/fixtures: a key made for these tests, published as Auth0 publishes its
/// keys, with `x5c` and `x5t`).
const AUTH0_ISS: &str = "https://mystira-test.eu.auth0.com/";
const AUTH0_API: &str = "https://api.mystira.app";
const AUTH0_KID: &str = "auth0-test-2026";

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(name)
}

/// A token signed with the test tenant's key: the header Auth0 writes (RS256, JWT, its kid)
/// over `claims` as given.
fn auth0_token(claims: &serde_json::Value) -> String {
    let pem = std::fs::read(fixture("auth0-test-rsa.pem")).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.typ = Some("JWT".to_owned());
    header.kid = Some(AUTH0_KID.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The access token Auth0 issues a user who logged in through the app with `openid` among the
/// scopes: `aud` a list (the API, then Auth0's own `/userinfo`), `iat` and `exp`, `azp` and
/// `scope`, and no `nbf`.
fn auth0_user_claims() -> serde_json::Value {
    let now = now();
    serde_json::json!({
        "iss": AUTH0_ISS,
        "sub": "auth0|6571f0c2a8d4e1b3c9f01234",
        "aud": [AUTH0_API, "https://mystira-test.eu.auth0.com/userinfo"],
        "iat": now,
        "exp": now + 86_400,
        "scope": "openid profile email offline_access",
        "azp": "x8dWq3kLmN0pR7sT2uV5yZ1aB4cD6eF9",
    })
}

#[tokio::test]
async fn access_tokens_shaped_as_auth0_issues_them_are_accepted() {
    let jwks = std::fs::read_to_string(fixture("auth0-test-jwks.json")).unwrap();
    // the tenant's jwks_uri, as serve is configured in production
    let endpoint = JwksEndpoint::start(jwks).await;
    let auth = Authenticator::from_jwks_url(&endpoint.url, AUTH0_ISS, AUTH0_API)
        .await
        .unwrap();
    assert!(!auth.is_development());

    // a user's token: aud is a list holding the API, and there is no nbf
    let user = auth0_user_claims();
    assert!(user.get("nbf").is_none());
    let claims = auth.verify_current(&auth0_token(&user)).await.unwrap();
    assert_eq!(claims.sub, "auth0|6571f0c2a8d4e1b3c9f01234");
    assert_eq!(claims.role, None);
    assert!(claims.aud.contains(AUTH0_API));

    // a machine-to-machine token (client credentials): aud is a single string, no nbf
    let now = now();
    let machine = serde_json::json!({
        "iss": AUTH0_ISS,
        "sub": "x8dWq3kLmN0pR7sT2uV5yZ1aB4cD6eF9@clients",
        "aud": AUTH0_API,
        "iat": now,
        "exp": now + 86_400,
        "scope": "read:users",
        "gty": "client-credentials",
        "azp": "x8dWq3kLmN0pR7sT2uV5yZ1aB4cD6eF9",
    });
    let claims = auth.verify_current(&auth0_token(&machine)).await.unwrap();
    assert_eq!(claims.sub, "x8dWq3kLmN0pR7sT2uV5yZ1aB4cD6eF9@clients");

    // the list must hold the configured audience: a token for another API of the tenant (its
    // /userinfo audience alone, as an ID-token-only login gives) is refused
    let mut elsewhere = auth0_user_claims();
    elsewhere["aud"] = serde_json::json!([
        "https://other-api.example",
        "https://mystira-test.eu.auth0.com/userinfo"
    ]);
    assert_eq!(
        auth.verify_current(&auth0_token(&elsewhere))
            .await
            .unwrap_err()
            .code,
        "wrong_audience"
    );
    // nbf is optional, but checked when present
    let mut later = auth0_user_claims();
    later["nbf"] = serde_json::json!(now + 3_600);
    assert_eq!(
        auth.verify_current(&auth0_token(&later))
            .await
            .unwrap_err()
            .code,
        "token_not_yet_valid"
    );
    // exp stays required
    let mut endless = auth0_user_claims();
    endless.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        auth.verify_current(&auth0_token(&endless))
            .await
            .unwrap_err()
            .code,
        "missing_claim"
    );
    // another issuer with the same key id is refused
    let mut foreign = auth0_user_claims();
    foreign["iss"] = serde_json::json!("https://someone-else.eu.auth0.com/");
    assert_eq!(
        auth.verify_current(&auth0_token(&foreign))
            .await
            .unwrap_err()
            .code,
        "wrong_issuer"
    );
    // the keys were fetched once, at start
    assert_eq!(endpoint.fetches(), 1);
}

#[test]
fn the_clock_leeway_is_a_setting_with_a_ceiling() {
    use std::time::Duration;
    let jwks = fixture("auth0-test-jwks.json");
    let with = |leeway: Option<u64>| {
        let auth = Authenticator::from_jwks_file(&jwks, AUTH0_ISS, AUTH0_API).unwrap();
        match leeway {
            Some(s) => auth.with_leeway(Duration::from_secs(s)),
            None => auth,
        }
    };
    let mut expired_30s_ago = auth0_user_claims();
    expired_30s_ago["exp"] = serde_json::json!(now() - 30);
    let expired_30s_ago = auth0_token(&expired_30s_ago);
    let mut valid_in_30s = auth0_user_claims();
    valid_in_30s["nbf"] = serde_json::json!(now() + 30);
    let valid_in_30s = auth0_token(&valid_in_30s);

    // the default: 60 s either way
    let default = with(None);
    assert_eq!(default.leeway(), Duration::from_secs(60));
    assert!(default.verify(&expired_30s_ago).is_ok());
    assert!(default.verify(&valid_in_30s).is_ok());
    // none: the clocks must agree
    let strict = with(Some(0));
    assert_eq!(
        strict.verify(&expired_30s_ago).unwrap_err().code,
        "token_expired"
    );
    assert_eq!(
        strict.verify(&valid_in_30s).unwrap_err().code,
        "token_not_yet_valid"
    );
    // a leeway larger than the ceiling is cut to it: a token expired 400 s ago stays refused
    let loose = with(Some(3_600));
    assert_eq!(loose.leeway(), mystira_server::auth::MAX_LEEWAY);
    let mut expired_400s_ago = auth0_user_claims();
    expired_400s_ago["exp"] = serde_json::json!(now() - 400);
    assert_eq!(
        loose
            .verify(&auth0_token(&expired_400s_ago))
            .unwrap_err()
            .code,
        "token_expired"
    );
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

#[test]
fn a_development_key_that_is_a_link_not_ours_or_open_to_others_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.p8");
    let made = DevKey::load_or_create(&path).unwrap();
    let token = made.token("auth0|kid", None, ISS, AUD, 60).unwrap();
    // reused as it was made (0600, ours)
    let again = DevKey::load_or_create(&path).unwrap();
    assert!(again.authenticator(ISS, AUD).verify(&token).is_ok());

    // a planted world-readable key (or one left so): refused, with the fix
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = DevKey::load_or_create(&path).unwrap_err().to_string();
    assert!(e.contains("open to other users (mode 644)"), "{e}");
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(DevKey::load_or_create(&path).is_err());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    // a symbolic link to a key is not followed
    let link = dir.path().join("link.p8");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    let e = DevKey::load_or_create(&link).unwrap_err().to_string();
    assert!(e.contains("symbolic link"), "{e}");

    // a key of another user (only root can make one to test with)
    if root() {
        std::os::unix::fs::chown(&path, Some(65_534), None).unwrap();
        let e = DevKey::load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
    } else {
        eprintln!("not root: the foreign-owner case is not tested here");
    }
}
