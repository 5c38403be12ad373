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
