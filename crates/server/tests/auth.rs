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
