//! [`PendingSignupRepository`] on the `PendingSignups` container (partition key `/email`).
//!
//! `verify_code` has no row lock to hold: it reads the newest unused sign-up with its ETag,
//! decides, and counts a wrong guess with an `If-Match` replace. When another guess wrote first
//! the replace fails, and the whole check runs again on fresh data, so every concurrent wrong
//! guess is counted once and the count never passes the limit (a guess that finds the limit
//! reached is `LockedOut` and writes nothing).

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use mystira_cosmos::codec::{self, DecodedPendingSignup};
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::{PendingSignupRepository, RepoResult, VerifyOutcome};
use mystira_domain::{CodeCheck, Email, PendingSignup};
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

    /// The newest unused sign-up for `email` (ignoring case; `Email` is the legacy spelling of
    /// the property), with the document it came from.
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
            .filter(|(_, d)| !d.signup.is_used && d.signup.email.normalized() == email.normalized())
            .max_by_key(|(_, d)| (d.signup.created_at, d.signup.id)))
    }

    fn write(&self, found: &Found, signup: &PendingSignup) -> serde_json::Value {
        self.docs
            .merge(&found.doc, codec::encode_pending_signup(signup), &[])
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

    /// The same checks, in the same order, as PostgreSQL: no unused sign-up -> `NotFound`;
    /// expired -> `Expired`; at the limit -> `LockedOut`; right code -> `Verified` (nothing
    /// written); wrong code -> counted, `WrongCode` with the tries left (0 for the guess that
    /// reaches the limit).
    async fn verify_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
    ) -> RepoResult<VerifyOutcome> {
        let lockout = PendingSignup::effective_lockout(lockout_attempts);
        for attempt in 0..WRITE_ATTEMPTS {
            let Some((found, decoded)) = self.newest_open(email).await? else {
                return Ok(VerifyOutcome::NotFound);
            };
            let signup = decoded.signup;
            match signup.check_code(code, now, lockout) {
                CodeCheck::Expired => return Ok(VerifyOutcome::Expired),
                CodeCheck::LockedOut => return Ok(VerifyOutcome::LockedOut),
                CodeCheck::Verified => return Ok(VerifyOutcome::Verified(signup)),
                CodeCheck::Wrong => {}
            }
            let counted = PendingSignup {
                failed_attempts: signup.failed_attempts + 1,
                ..signup
            };
            if self
                .docs
                .replace(&found, &self.write(&found, &counted))
                .await?
            {
                return Ok(VerifyOutcome::WrongCode {
                    attempts_left: (lockout - counted.failed_attempts).max(0),
                });
            }
            backoff(attempt).await;
        }
        Err(self.docs.contended())
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

    /// Reads every sign-up (the container holds only short-lived documents) and deletes those
    /// whose `ExpiresAt` is more than 24 hours before this process's clock. Documents that do
    /// not decode (the magic-link version) are left alone.
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
