//! [`PendingSignupRepository`] on table `pending_signups`, including the code check with its
//! lock-out, which runs in one transaction holding the sign-up's row lock so that concurrent
//! guesses are counted one after the other and only the email's newest sign-up is checked (a
//! superseded code never verifies, even once the newest is used), and the magic-link flow (lookup by token hash,
//! verified, consumed). Both versions of a sign-up share the row: `code` for the code version,
//! `verification_token_hash`, `status`, `verified_at`, `consumed_at` for the magic-link one.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_domain::ports::{PendingSignupRepository, RepoResult, VerifyOutcome};
use mystira_domain::{
    CodeCheck, Email, MagicLink, PendingSignup, RepoError, Secret, SignupCode, SignupStatus,
    ValidationError,
};
use sqlx::{Executor, PgPool, Postgres};
use uuid::Uuid;

use super::{column_error, fetch_optional, touched_any};
use crate::map_sqlx_error;

const TABLE: &str = "pending_signups";

/// `select <the columns of a [`SignupRow`]> from pending_signups <rest>` as a query, built with
/// `concat!` so every statement stays a `&'static str`.
macro_rules! select_signups {
    ($rest:literal) => {
        sqlx::query_as::<_, SignupRow>(concat!(
            "select id, cosmos_id, email, display_name, code, verification_token_hash, status, \
             verified_at, consumed_at, created_at, expires_at, is_used, is_signin, \
             failed_attempts from pending_signups ",
            $rest
        ))
    };
}

/// Pending sign-ups in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgPendingSignupRepository {
    pool: PgPool,
}

impl PgPendingSignupRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct SignupRow {
    id: Uuid,
    cosmos_id: Option<String>,
    email: String,
    display_name: String,
    code: Option<String>,
    verification_token_hash: Option<String>,
    status: Option<i16>,
    verified_at: Option<DateTime<Utc>>,
    consumed_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    is_used: bool,
    is_signin: bool,
    failed_attempts: i32,
}

impl TryFrom<SignupRow> for PendingSignup {
    type Error = RepoError;

    fn try_from(row: SignupRow) -> Result<Self, Self::Error> {
        let email = Email::parse(&row.email).map_err(|e| column_error(TABLE, "email", e))?;
        let code = row
            .code
            .as_deref()
            .map(SignupCode::parse)
            .transpose()
            .map_err(|e| column_error(TABLE, "code", e))?;
        let magic_link = match row.verification_token_hash {
            Some(hash) => {
                // The schema lets `status` be NULL; our writers never leave it so. A row that
                // does (written by something else) is refused rather than given a state.
                let status = row.status.ok_or_else(|| {
                    column_error(TABLE, "status", ValidationError::Empty { field: "status" })
                })?;
                Some(MagicLink {
                    verification_token_hash: Secret::new(hash),
                    status: SignupStatus::try_from(status)
                        .map_err(|e| column_error(TABLE, "status", e))?,
                    verified_at: row.verified_at,
                    consumed_at: row.consumed_at,
                })
            }
            // magic-link state without its token would be lost in the domain: refuse it
            None if row.status.is_some()
                || row.verified_at.is_some()
                || row.consumed_at.is_some() =>
            {
                return Err(column_error(
                    TABLE,
                    "verification_token_hash",
                    ValidationError::Empty {
                        field: "verification_token_hash",
                    },
                ));
            }
            None => None,
        };
        Ok(PendingSignup {
            id: row.id,
            cosmos_id: row.cosmos_id,
            email,
            display_name: row.display_name,
            code,
            magic_link,
            created_at: row.created_at,
            expires_at: row.expires_at,
            is_used: row.is_used,
            is_signin: row.is_signin,
            failed_attempts: row.failed_attempts,
        })
    }
}

/// Inserts `signup`, validated first.
pub async fn insert_signup<'c, E>(exec: E, signup: &PendingSignup) -> RepoResult<()>
where
    E: Executor<'c, Database = Postgres>,
{
    signup.validate()?;
    sqlx::query(
        "insert into pending_signups (id, cosmos_id, email, display_name, code, \
         verification_token_hash, status, verified_at, consumed_at, created_at, expires_at, \
         is_used, is_signin, failed_attempts) \
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(signup.id)
    .bind(signup.cosmos_id.as_deref())
    .bind(signup.email.as_str())
    .bind(&signup.display_name)
    .bind(signup.code.as_ref().map(SignupCode::as_str))
    .bind(signup.token_hash())
    .bind(signup.magic_link.as_ref().map(|m| m.status.get()))
    .bind(signup.magic_link.as_ref().and_then(|m| m.verified_at))
    .bind(signup.magic_link.as_ref().and_then(|m| m.consumed_at))
    .bind(signup.created_at)
    .bind(signup.expires_at)
    .bind(signup.is_used)
    .bind(signup.is_signin)
    .bind(signup.failed_attempts)
    .execute(exec)
    .await
    .map_err(|e| map_sqlx_error(TABLE, e))?;
    Ok(())
}

/// The sign-up with key `id`, on any executor.
pub async fn get_signup<'c, E>(exec: E, id: Uuid) -> RepoResult<Option<PendingSignup>>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    fetch_optional(exec, TABLE, select_signups!("where id = $1").bind(id)).await
}

/// What a right code does to its sign-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnRightCode {
    /// Nothing (`verify_code`).
    Keep,
    /// Marks it used, under the same lock as the check (`redeem_code`).
    MarkUsed,
}

impl PgPendingSignupRepository {
    /// The checks, in order: no sign-up, or the newest one used -> `NotFound` (an older
    /// sign-up is superseded: its code never verifies); expired at `now` -> `Expired`;
    /// `failed_attempts` at the limit -> `LockedOut` (even for the right code); right code ->
    /// `Verified` (and, to redeem, marked used before the lock is released); wrong code -> the
    /// failure is counted and `WrongCode` says how many tries are left. The wrong guess that
    /// reaches the limit returns `WrongCode { attempts_left: 0 }` (the guess was wrong, and it
    /// was counted); every call after it returns `LockedOut`.
    async fn check_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
        on_right_code: OnRightCode,
    ) -> RepoResult<VerifyOutcome> {
        let lockout = PendingSignup::effective_lockout(lockout_attempts);
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| map_sqlx_error(TABLE, e))?;
        // The newest sign-up whatever its state: once it is used, the older ones stay
        // superseded (taking the newest *unused* one would bring an older code back to life).
        // `for update` serializes concurrent checks of one sign-up: a waiting check re-reads the
        // row after the lock holder commits, so it sees the count that one wrote, and a
        // sign-up redeemed meanwhile is seen used (NotFound).
        let row = select_signups!(
            "where lower(email) = lower($1) \
             order by created_at desc, id desc limit 1 for update"
        )
        .bind(email.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| map_sqlx_error(TABLE, e))?;
        let Some(row) = row.filter(|r| !r.is_used) else {
            return Ok(VerifyOutcome::NotFound);
        };
        let signup = PendingSignup::try_from(row)?;
        match signup.check_code(code, now, lockout) {
            // refused before anything is counted: a code cannot complete a magic-link sign-up
            CodeCheck::NoCode => return Ok(VerifyOutcome::NotACodeSignup),
            CodeCheck::Expired => return Ok(VerifyOutcome::Expired),
            CodeCheck::LockedOut => return Ok(VerifyOutcome::LockedOut),
            // nothing was written; dropping the transaction releases the lock
            CodeCheck::Verified if on_right_code == OnRightCode::Keep => {
                return Ok(VerifyOutcome::Verified(signup));
            }
            CodeCheck::Verified => {
                sqlx::query("update pending_signups set is_used = true where id = $1")
                    .bind(signup.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx_error(TABLE, e))?;
                tx.commit().await.map_err(|e| map_sqlx_error(TABLE, e))?;
                return Ok(VerifyOutcome::Verified(PendingSignup {
                    is_used: true,
                    ..signup
                }));
            }
            CodeCheck::Wrong => {}
        }
        // below the limit (checked above under the lock), so the count ends at most at it
        let attempts: i32 = sqlx::query_scalar(
            "update pending_signups set failed_attempts = failed_attempts + 1 where id = $1 \
             returning failed_attempts",
        )
        .bind(signup.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| map_sqlx_error(TABLE, e))?;
        tx.commit().await.map_err(|e| map_sqlx_error(TABLE, e))?;
        Ok(VerifyOutcome::WrongCode {
            attempts_left: (lockout - attempts).max(0),
        })
    }
}

#[async_trait]
impl PendingSignupRepository for PgPendingSignupRepository {
    async fn create(&self, signup: &PendingSignup) -> RepoResult<()> {
        insert_signup(&self.pool, signup).await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<PendingSignup>> {
        get_signup(&self.pool, id).await
    }

    async fn verify_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
    ) -> RepoResult<VerifyOutcome> {
        self.check_code(email, code, now, lockout_attempts, OnRightCode::Keep)
            .await
    }

    async fn redeem_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
    ) -> RepoResult<VerifyOutcome> {
        self.check_code(email, code, now, lockout_attempts, OnRightCode::MarkUsed)
            .await
    }

    async fn mark_used(&self, id: Uuid) -> RepoResult<bool> {
        touched_any(
            &self.pool,
            TABLE,
            sqlx::query("update pending_signups set is_used = true where id = $1").bind(id),
        )
        .await
    }

    async fn find_by_token_hash(&self, token_hash: &str) -> RepoResult<Option<PendingSignup>> {
        // `idx_pending_signups_token_hash` serves the lookup
        fetch_optional(
            &self.pool,
            TABLE,
            select_signups!(
                "where verification_token_hash = $1 order by created_at desc, id desc limit 1"
            )
            .bind(token_hash),
        )
        .await
    }

    async fn mark_verified(
        &self,
        id: Uuid,
        status: SignupStatus,
        at: DateTime<Utc>,
    ) -> RepoResult<bool> {
        mark_link(&self.pool, id, status, LinkTime::Verified, at).await
    }

    async fn mark_consumed(
        &self,
        id: Uuid,
        status: SignupStatus,
        at: DateTime<Utc>,
    ) -> RepoResult<bool> {
        mark_link(&self.pool, id, status, LinkTime::Consumed, at).await
    }

    async fn cleanup_expired(&self) -> RepoResult<u64> {
        // the schema's function, so that a scheduled job calling it directly deletes the same
        let deleted: i32 = sqlx::query_scalar("select cleanup_expired_signups()")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| map_sqlx_error(TABLE, e))?;
        Ok(u64::try_from(deleted).unwrap_or(0))
    }
}

/// The magic-link times a sign-up records once.
#[derive(Debug, Clone, Copy)]
enum LinkTime {
    Verified,
    Consumed,
}

/// Sets a magic-link sign-up's status and, the first time, one of its times (a repeated call
/// keeps the first time: the marks are idempotent). `false` when `id` is not a magic-link
/// sign-up.
async fn mark_link(
    pool: &sqlx::PgPool,
    id: Uuid,
    status: SignupStatus,
    time: LinkTime,
    at: DateTime<Utc>,
) -> RepoResult<bool> {
    // the column comes from the enum above, never from input
    let column = match time {
        LinkTime::Verified => "verified_at",
        LinkTime::Consumed => "consumed_at",
    };
    touched_any(
        pool,
        TABLE,
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "update pending_signups set status = $2, {column} = coalesce({column}, $3) \
             where id = $1 and verification_token_hash is not null"
        )))
        .bind(id)
        .bind(status.get())
        .bind(at),
    )
    .await
}
