//! `PendingSignupRepository`: create and read back, verifying a code (the newest open
//! sign-up, case-insensitive email, expiry, use), wrong codes counting down to a lockout, the
//! cleanup of expired sign-ups, and the magic-link version found, verified and consumed
//! through its token hash.

use chrono::Duration;
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::VerifyOutcome;
use mystira_domain::{MagicLink, PendingSignup, RepoError, Secret, SignupStatus};
use uuid::Uuid;

use super::Ports;
use super::fixtures::{assert_conflict, assert_invalid, email, now, signup};

pub const LOCKOUT: i32 = PendingSignup::DEFAULT_LOCKOUT_ATTEMPTS;

/// A magic link's token hash (of "password"; any 64 hex digits would do).
pub const HASH: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

/// A sign-up with a code, open for 15 minutes, created through the ports.
pub async fn stored_signup(ports: &Ports<'_>, address: &str, code: &str) -> PendingSignup {
    let s = signup(address, code, now() + Duration::minutes(15));
    ports.signups.create(&s).await.expect("create signup");
    s
}

pub fn link(hash: &str, status: i64) -> MagicLink {
    MagicLink {
        verification_token_hash: Secret::new(hash.to_owned()),
        status: SignupStatus::new("status", status).expect("valid status"),
        verified_at: None,
        consumed_at: None,
    }
}

/// A magic-link sign-up (no code), open for 15 minutes.
pub fn magic_signup(address: &str, hash: &str) -> PendingSignup {
    PendingSignup {
        code: None,
        magic_link: Some(link(hash, 0)),
        ..signup(address, "1", now() + Duration::minutes(15))
    }
}

pub async fn a_created_signup_reads_back_equal_and_its_id_is_unique(ports: &Ports<'_>) {
    let repo = ports.signups;
    let s = stored_signup(ports, "a@example.com", "123456").await;
    assert_eq!(repo.get(s.id).await.expect("get"), Some(s.clone()));
    assert_eq!(repo.get(Uuid::new_v4()).await.expect("missing"), None);
    assert_conflict(repo.create(&s).await, ConflictKind::DuplicateId);
    let mut bad = signup("b@example.com", "1", now());
    bad.failed_attempts = 11;
    assert_invalid(repo.create(&bad).await, "failed_attempts");
}

pub async fn the_right_code_verifies_the_newest_open_signup_ignoring_case(ports: &Ports<'_>) {
    let repo = ports.signups;
    let mut old = signup("Ada@Example.com", "111111", now() + Duration::minutes(15));
    old.created_at = now() - Duration::minutes(5);
    repo.create(&old).await.expect("old");
    let newest = stored_signup(ports, "ada@example.com", "222222").await;
    let verified = repo
        .verify_code(&email("ADA@example.com"), "222222", now(), LOCKOUT)
        .await
        .expect("verify");
    assert_eq!(verified, VerifyOutcome::Verified(newest.clone()));
    // verifying does not use the sign-up up
    assert!(
        !repo
            .get(newest.id)
            .await
            .expect("get")
            .expect("exists")
            .is_used
    );
    // the older sign-up's code is not the newest one's
    assert_eq!(
        repo.verify_code(&email("ada@example.com"), "111111", now(), LOCKOUT)
            .await
            .expect("old code"),
        VerifyOutcome::WrongCode {
            attempts_left: LOCKOUT - 1
        }
    );
    assert!(repo.mark_used(newest.id).await.expect("mark used"));
    assert!(repo.mark_used(newest.id).await.expect("mark used again"));
    assert!(!repo.mark_used(Uuid::new_v4()).await.expect("missing"));
    // with the newest used, the older one stays superseded: its code never verifies
    assert_eq!(
        repo.verify_code(&email("ada@example.com"), "111111", now(), LOCKOUT)
            .await
            .expect("older now"),
        VerifyOutcome::NotFound
    );
    assert!(
        !repo
            .get(old.id)
            .await
            .expect("get")
            .expect("exists")
            .is_used
    );
}

pub async fn verify_reports_missing_and_expired_signups(ports: &Ports<'_>) {
    let repo = ports.signups;
    assert_eq!(
        repo.verify_code(&email("nobody@example.com"), "123456", now(), LOCKOUT)
            .await
            .expect("none"),
        VerifyOutcome::NotFound
    );
    let s = stored_signup(ports, "a@example.com", "123456").await;
    assert_eq!(
        repo.verify_code(&email("a@example.com"), "123456", s.expires_at, LOCKOUT)
            .await
            .expect("expired"),
        VerifyOutcome::Expired
    );
    repo.mark_used(s.id).await.expect("mark used");
    assert_eq!(
        repo.verify_code(&email("a@example.com"), "123456", now(), LOCKOUT)
            .await
            .expect("used"),
        VerifyOutcome::NotFound
    );
}

/// Returns the sign-up, locked out after [`LOCKOUT`] wrong codes.
pub async fn wrong_codes_count_down_to_a_lockout_that_refuses_even_the_right_code(
    ports: &Ports<'_>,
) -> Uuid {
    let repo = ports.signups;
    let s = stored_signup(ports, "a@example.com", "123456").await;
    let address = email("a@example.com");
    for left in (0..LOCKOUT).rev() {
        assert_eq!(
            repo.verify_code(&address, "000000", now(), LOCKOUT)
                .await
                .expect("wrong"),
            VerifyOutcome::WrongCode {
                attempts_left: left
            }
        );
    }
    for guess in ["000000", "123456"] {
        assert_eq!(
            repo.verify_code(&address, guess, now(), LOCKOUT)
                .await
                .expect("locked"),
            VerifyOutcome::LockedOut
        );
    }
    let stored = repo.get(s.id).await.expect("get").expect("exists");
    assert_eq!(stored.failed_attempts, LOCKOUT);
    s.id
}

/// Returns the sign-up, locked out at the schema's ceiling of failed attempts.
pub async fn a_lockout_above_the_schema_ceiling_is_clamped_so_the_check_never_fires(
    ports: &Ports<'_>,
) -> Uuid {
    let repo = ports.signups;
    let s = stored_signup(ports, "a@example.com", "123456").await;
    let address = email("a@example.com");
    for _ in 0..PendingSignup::MAX_FAILED_ATTEMPTS {
        let outcome = repo
            .verify_code(&address, "000000", now(), 50)
            .await
            .expect("wrong");
        assert!(
            matches!(outcome, VerifyOutcome::WrongCode { .. }),
            "{outcome:?}"
        );
    }
    assert_eq!(
        repo.verify_code(&address, "000000", now(), 50)
            .await
            .expect("locked"),
        VerifyOutcome::LockedOut
    );
    let stored = repo.get(s.id).await.expect("get").expect("exists");
    assert_eq!(stored.failed_attempts, PendingSignup::MAX_FAILED_ATTEMPTS);
    s.id
}

pub async fn cleanup_deletes_only_signups_expired_more_than_a_day_ago(ports: &Ports<'_>) {
    let repo = ports.signups;
    let long_expired = signup("a@example.com", "1", now() - Duration::hours(25));
    let recently_expired = signup("b@example.com", "2", now() - Duration::hours(23));
    let open = signup("c@example.com", "3", now() + Duration::hours(1));
    for s in [&long_expired, &recently_expired, &open] {
        repo.create(s).await.expect("create");
    }
    assert_eq!(repo.cleanup_expired().await.expect("cleanup"), 1);
    assert_eq!(repo.get(long_expired.id).await.expect("get"), None);
    assert!(repo.get(recently_expired.id).await.expect("get").is_some());
    assert!(repo.get(open.id).await.expect("get").is_some());
    assert_eq!(repo.cleanup_expired().await.expect("cleanup again"), 0);
}

/// What a magic-link case stored, for a store's own checks of its rows.
#[derive(Debug)]
pub struct StoredSignups {
    pub magic: Uuid,
    pub code_only: Uuid,
}

pub async fn a_magic_link_signup_is_stored_found_verified_and_consumed(
    ports: &Ports<'_>,
) -> StoredSignups {
    let repo = ports.signups;
    let s = magic_signup("ml@example.com", HASH);
    repo.create(&s).await.expect("create");
    assert_eq!(repo.get(s.id).await.expect("get"), Some(s.clone()));
    assert_eq!(
        repo.find_by_token_hash(HASH).await.expect("find"),
        Some(s.clone())
    );
    assert_eq!(repo.find_by_token_hash("0000").await.expect("find"), None);
    // exactly as stored: a hash in another case is another hash
    assert_eq!(
        repo.find_by_token_hash(&HASH.to_uppercase())
            .await
            .expect("find"),
        None
    );

    // a code is refused without counting anything
    assert_eq!(
        repo.verify_code(&email("ML@example.com"), "123456", now(), 5)
            .await
            .expect("verify"),
        VerifyOutcome::NotACodeSignup
    );
    assert_eq!(
        repo.get(s.id)
            .await
            .expect("get")
            .expect("row")
            .failed_attempts,
        0
    );

    let verified_at = now() - Duration::minutes(1);
    let one = SignupStatus::new("status", 1).expect("valid");
    assert!(
        repo.mark_verified(s.id, one, verified_at)
            .await
            .expect("verify")
    );
    // again, later: idempotent, the first time is kept
    assert!(repo.mark_verified(s.id, one, now()).await.expect("again"));
    let three = SignupStatus::new("status", 3).expect("valid");
    let consumed_at = now();
    assert!(
        repo.mark_consumed(s.id, three, consumed_at)
            .await
            .expect("consume")
    );
    let stored = repo.get(s.id).await.expect("get").expect("row");
    assert_eq!(
        stored.magic_link,
        Some(MagicLink {
            status: three,
            verified_at: Some(verified_at),
            consumed_at: Some(consumed_at),
            ..link(HASH, 0)
        })
    );
    // the code version's state is untouched by the link's
    assert!(!stored.is_used);
    assert_eq!(
        repo.find_by_token_hash(HASH).await.expect("find"),
        Some(stored)
    );

    // no link to mark: a code-only sign-up, or none at all
    let code_only = signup("c@example.com", "123456", now() + Duration::minutes(15));
    repo.create(&code_only).await.expect("create");
    assert!(
        !repo
            .mark_verified(code_only.id, one, now())
            .await
            .expect("code")
    );
    assert!(
        !repo
            .mark_consumed(code_only.id, one, now())
            .await
            .expect("code")
    );
    assert!(
        !repo
            .mark_verified(Uuid::new_v4(), one, now())
            .await
            .expect("none")
    );
    StoredSignups {
        magic: s.id,
        code_only: code_only.id,
    }
}

/// Returns the sign-up, which holds a code and a magic link.
pub async fn a_signup_with_both_versions_keeps_both(ports: &Ports<'_>) -> Uuid {
    let repo = ports.signups;
    let both = PendingSignup {
        magic_link: Some(MagicLink {
            verified_at: Some(now()),
            ..link(HASH, 2)
        }),
        ..signup("both@example.com", "123456", now() + Duration::minutes(15))
    };
    repo.create(&both).await.expect("create");
    assert_eq!(repo.get(both.id).await.expect("get"), Some(both.clone()));
    // either flow finds it
    assert_eq!(
        repo.verify_code(&email("both@example.com"), "123456", now(), 5)
            .await
            .expect("verify"),
        VerifyOutcome::Verified(both.clone())
    );
    assert_eq!(
        repo.find_by_token_hash(HASH).await.expect("find"),
        Some(both.clone())
    );
    both.id
}

/// The domain's rules for a sign-up, checked before anything is written.
pub async fn a_signup_without_code_or_token_is_refused(ports: &Ports<'_>) {
    let repo = ports.signups;
    let neither = PendingSignup {
        code: None,
        ..signup("n@example.com", "1", now())
    };
    match repo.create(&neither).await {
        Err(RepoError::Invalid(v)) => assert_eq!(v.code(), "no_code_or_token", "{v}"),
        other => panic!("expected no_code_or_token, got {other:?}"),
    }
    assert_invalid(
        repo.create(&magic_signup("e@example.com", "")).await,
        "verification_token_hash",
    );
}
