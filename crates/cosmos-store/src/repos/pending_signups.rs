//! [`PendingSignupRepository`] on the `PendingSignups` container (partition key `/email`).
//!
//! `verify_code` has no row lock to hold: it reads the newest unused sign-up with its ETag,
//! decides, and counts a wrong guess with an `If-Match` replace. When another guess wrote first
//! the replace fails, and the whole check runs again on fresh data, so every concurrent wrong
//! guess is counted once and the count never passes the limit (a guess that finds the limit
//! reached is `LockedOut` and writes nothing).
//!
//! Both versions of the entity live in the container: the code version and the magic-link
//! version (`VerificationTokenHash`, `Status`, `VerifiedAt`, `ConsumedAt`). Every method reads
//! and writes both through the codec; writes merge over the stored document, so a field of
//! either version that a write does not change stays as it was.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use mystira_cosmos_codec::codec::{self, DecodedPendingSignup};
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::{PendingSignupRepository, RepoResult, VerifyOutcome};
use mystira_domain::{CodeCheck, Email, MagicLink, PendingSignup, SignupStatus};
use uuid::Uuid;

use super::{Docs, Found, Step, WRITE_ATTEMPTS, backoff, conflict, undecodable, warn_skipped};
use crate::container::QuerySpec;

const ENTITY: &str = "PendingSignups";

/// Pending sign-ups in Cosmos.
#[derive(Debug, Clone)]
pub struct CosmosPendingSignupRepository {
    docs: Docs,
}

impl CosmosPendingSignupRepository {
    /// On an open `PendingSignups` container.
    pub fn new(signups: crate::Container) -> Self {
        Self::from_docs(Docs::new(signups, codec::Container::PendingSignups))
    }

    pub(crate) fn from_docs(docs: Docs) -> Self {
        Self { docs }
    }

    /// The newest sign-up for `email` (ignoring case; `Email` is the legacy spelling of the
    /// property), with the document it came from, if it is unused: an older one is superseded
    /// and never checked, even once the newest is used.
    async fn newest_open(
        &self,
        email: &Email,
    ) -> RepoResult<Option<(Found, DecodedPendingSignup)>> {
        let spec = QuerySpec::new(
            "select * from c where lower(c.email) = @email or lower(c.Email) = @email",
        )
        .param("@email", email.normalized());
        let found = self.docs.query_found(spec).await?;
        Ok(found
            .into_iter()
            .filter_map(|f| match codec::decode_pending_signup(&f.doc) {
                Ok(d) => Some((f, d)),
                Err(e) => {
                    warn_skipped(self.docs.kind(), &e);
                    None
                }
            })
            .filter(|(_, d)| d.signup.email.normalized() == email.normalized())
            .max_by_key(|(_, d)| (d.signup.created_at, d.signup.id))
            .filter(|(_, d)| !d.signup.is_used))
    }

    /// The same checks, in the same order, as PostgreSQL: no sign-up, or the newest used ->
    /// `NotFound`;
    /// expired -> `Expired`; at the limit -> `LockedOut`; right code -> `Verified` (with
    /// `redeem`, marked used by a replace conditional on the ETag read, so of concurrent right
    /// codes one wins); wrong code -> counted, `WrongCode` with the tries left (0 for the
    /// guess that reaches the limit). A lost race re-reads: a sign-up redeemed by another
    /// call meanwhile is `NotFound`, as in PostgreSQL, rather than a check of an older one.
    async fn check_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
        redeem: bool,
    ) -> RepoResult<VerifyOutcome> {
        let lockout = PendingSignup::effective_lockout(lockout_attempts);
        let mut first_seen: Option<Uuid> = None;
        for attempt in 0..WRITE_ATTEMPTS {
            let Some((found, decoded)) = self.newest_open(email).await? else {
                return Ok(VerifyOutcome::NotFound);
            };
            let signup = decoded.signup;
            if *first_seen.get_or_insert(signup.id) != signup.id {
                // the sign-up this call started on was used by another call meanwhile
                return Ok(VerifyOutcome::NotFound);
            }
            let written = match signup.check_code(code, now, lockout) {
                CodeCheck::NoCode => return Ok(VerifyOutcome::NotACodeSignup),
                CodeCheck::Expired => return Ok(VerifyOutcome::Expired),
                CodeCheck::LockedOut => return Ok(VerifyOutcome::LockedOut),
                CodeCheck::Verified if !redeem => return Ok(VerifyOutcome::Verified(signup)),
                CodeCheck::Verified => PendingSignup {
                    is_used: true,
                    ..signup
                },
                CodeCheck::Wrong => PendingSignup {
                    failed_attempts: signup.failed_attempts + 1,
                    ..signup
                },
            };
            if self
                .docs
                .replace(&found, &self.write(&found, &written))
                .await?
            {
                return Ok(if written.is_used {
                    VerifyOutcome::Verified(written)
                } else {
                    VerifyOutcome::WrongCode {
                        attempts_left: (lockout - written.failed_attempts).max(0),
                    }
                });
            }
            backoff(attempt).await;
        }
        Err(self.docs.contended())
    }

    /// Read-modify-write of the magic-link part of sign-up `id`: `Ok(false)` when there is no
    /// such sign-up or it has no link (a code-only one); no write when nothing changes.
    async fn update_link(
        &self,
        id: Uuid,
        change: impl Fn(MagicLink) -> MagicLink + Send + Sync,
    ) -> RepoResult<bool> {
        let done = self
            .docs
            .modify(id, |found| {
                let signup = codec::decode_pending_signup(&found.doc)
                    .map_err(|e| undecodable(self.docs.kind(), &e))?
                    .signup;
                let Some(link) = signup.magic_link.clone() else {
                    return Ok(Step::Keep(false));
                };
                let changed = change(link);
                if signup.magic_link.as_ref() == Some(&changed) {
                    return Ok(Step::Keep(true));
                }
                let updated = PendingSignup {
                    magic_link: Some(changed),
                    ..signup
                };
                Ok(Step::Write(self.write(found, &updated), true))
            })
            .await?;
        Ok(done == Some(true))
    }

    fn write(&self, found: &Found, signup: &PendingSignup) -> serde_json::Value {
        codec::signup_document(Some(&found.doc), signup)
    }
}

#[async_trait]
impl PendingSignupRepository for CosmosPendingSignupRepository {
    /// Ids are unique per email partition only in Cosmos, so the id is looked up across
    /// partitions first (racily); Cosmos refuses a duplicate within the partition itself.
    async fn create(&self, signup: &PendingSignup) -> RepoResult<()> {
        signup.validate()?;
        if self.docs.locate(signup.id).await?.is_some() {
            return Err(conflict(ENTITY, ConflictKind::DuplicateId, "id"));
        }
        self.docs
            .create(&codec::encode_pending_signup(signup))
            .await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<PendingSignup>> {
        match self.docs.locate(id).await? {
            Some(found) => Ok(Some(
                codec::decode_pending_signup(&found.doc)
                    .map_err(|e| undecodable(self.docs.kind(), &e))?
                    .signup,
            )),
            None => Ok(None),
        }
    }

    async fn verify_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
    ) -> RepoResult<VerifyOutcome> {
        self.check_code(email, code, now, lockout_attempts, false)
            .await
    }

    async fn redeem_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
    ) -> RepoResult<VerifyOutcome> {
        self.check_code(email, code, now, lockout_attempts, true)
            .await
    }

    async fn mark_used(&self, id: Uuid) -> RepoResult<bool> {
        let done = self
            .docs
            .modify(id, |found| {
                let signup = codec::decode_pending_signup(&found.doc)
                    .map_err(|e| undecodable(self.docs.kind(), &e))?
                    .signup;
                if signup.is_used {
                    return Ok(Step::Keep(()));
                }
                let used = PendingSignup {
                    is_used: true,
                    ..signup
                };
                Ok(Step::Write(self.write(found, &used), ()))
            })
            .await?;
        Ok(done.is_some())
    }

    /// A cross-partition query on the hash (the container is partitioned by email, which the
    /// link's holder may not know); the newest match by `CreatedAt`, then key, as in PostgreSQL.
    async fn find_by_token_hash(&self, token_hash: &str) -> RepoResult<Option<PendingSignup>> {
        let spec = QuerySpec::new("select * from c where c.VerificationTokenHash = @hash")
            .param("@hash", token_hash);
        let found = self.docs.query_found(spec).await?;
        Ok(found
            .into_iter()
            .filter_map(|f| match codec::decode_pending_signup(&f.doc) {
                Ok(d) => Some(d.signup),
                Err(e) => {
                    warn_skipped(self.docs.kind(), &e);
                    None
                }
            })
            .filter(|s| s.token_hash() == Some(token_hash))
            .max_by_key(|s| (s.created_at, s.id)))
    }

    async fn mark_verified(
        &self,
        id: Uuid,
        status: SignupStatus,
        at: DateTime<Utc>,
    ) -> RepoResult<bool> {
        self.update_link(id, |link| MagicLink {
            status,
            verified_at: link.verified_at.or(Some(at)),
            ..link
        })
        .await
    }

    async fn mark_consumed(
        &self,
        id: Uuid,
        status: SignupStatus,
        at: DateTime<Utc>,
    ) -> RepoResult<bool> {
        self.update_link(id, |link| MagicLink {
            status,
            consumed_at: link.consumed_at.or(Some(at)),
            ..link
        })
        .await
    }

    /// Reads every sign-up (the container holds only short-lived documents) and deletes those
    /// whose `ExpiresAt` is more than 24 hours before this process's clock, of either version.
    /// Documents that do not decode are left alone (and logged without values): they are the
    /// backfill's quarantine to show, not this job's to delete unseen.
    async fn cleanup_expired(&self) -> RepoResult<u64> {
        let cutoff = Utc::now() - Duration::hours(24);
        let found = self
            .docs
            .query_found(QuerySpec::new("select * from c"))
            .await?;
        let mut deleted = 0;
        for f in found {
            match codec::decode_pending_signup(&f.doc) {
                Ok(d) if d.signup.expires_at < cutoff => {
                    if self.docs.delete(&f).await? {
                        deleted += 1;
                    }
                }
                Ok(_) => {}
                Err(e) => warn_skipped(self.docs.kind(), &e),
            }
        }
        Ok(deleted)
    }
}
