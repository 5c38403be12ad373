//! `mystira-users dev-token --email ADDR [--email-verified BOOL]` (issue 30, item 6): the
//! token carries the `email` and `email_verified` claims `serve` reads as the proof of an
//! address, verified unless said otherwise; `--email-verified` alone is a usage error.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use mystira_server::auth::DevKey;

const BIN: &str = env!("CARGO_BIN_EXE_mystira-users");

fn dev_token(key: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("dev-token")
        .args(args)
        .arg("--dev-key")
        .arg(key)
        .env_remove("MYSTIRA_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// The token's `email` and `email_verified`, as `serve`'s development mode verifies it.
fn email_claims(key: &Path, out: &Output) -> (Option<String>, Option<bool>) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout.clone()).unwrap();
    let claims = DevKey::load_or_create(key)
        .unwrap()
        .authenticator("mystira-users-dev", "mystira-users")
        .verify(token.trim())
        .unwrap();
    (claims.email, claims.email_verified)
}

#[test]
fn dev_token_email_mints_a_verified_address_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("dev.p8");
    let plain = dev_token(&key, &["--sub", "auth0|a"]);
    assert_eq!(email_claims(&key, &plain), (None, None));
    let proving = dev_token(&key, &["--sub", "auth0|a", "--email", "a@example.com"]);
    assert_eq!(
        email_claims(&key, &proving),
        (Some("a@example.com".to_owned()), Some(true))
    );
    let naming = dev_token(
        &key,
        &[
            "--sub",
            "auth0|a",
            "--email",
            "a@example.com",
            "--email-verified",
            "false",
        ],
    );
    assert_eq!(
        email_claims(&key, &naming),
        (Some("a@example.com".to_owned()), Some(false))
    );
    let alone = dev_token(&key, &["--sub", "auth0|a", "--email-verified", "true"]);
    assert_eq!(
        alone.status.code(),
        Some(2),
        "--email-verified needs --email"
    );
}
