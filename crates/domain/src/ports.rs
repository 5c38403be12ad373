//! Repository ports: what the app does with the user domain, one trait per aggregate. Every
//! store (PostgreSQL, Cosmos) implements them, so the dual-write router can put either behind
//! the same traits.
//!
//! Shared contract, unless a method says otherwise:
//! * a lookup that finds nothing returns `Ok(None)` (or an empty list), never an error;
//! * an update or delete of a row that does not exist returns `Ok(false)`;
//! * an entity that breaks a schema rule is refused with [`RepoError::Invalid`] before anything
//!   is written, and a write that collides with existing data with [`RepoError::Conflict`];
//! * every method is safe to call concurrently from many tasks; single-row writes are atomic;
//! * [`RepoError::Unavailable`] means nothing is known about the outcome, and the call may be
//!   retried; idempotent methods say so, and retrying them is always safe.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::entities::{
    Account, CompletedScenario, PendingSignup, Subscription, UserBadge, UserProfile,
};
use crate::error::RepoError;
use crate::values::{Email, SignupStatus};

pub type RepoResult<T> = Result<T, RepoError>;

/// Keyset paging: rows ordered by id, strictly after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<Uuid>,
    pub limit: u32,
}

impl PageRequest {
    pub fn first(limit: u32) -> Self {
        Self { after: None, limit }
    }
}

/// One page of rows and the request for the next one (`None` when this was the last).
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<PageRequest>,
}

/// Accounts.
#[async_trait]
pub trait AccountRepository: Send + Sync {
    /// Inserts a new account. `Conflict(DuplicateId)` if the id (or Cosmos id) exists,
    /// `Conflict(DuplicateAuth0UserId)` if another account has the auth0 id.
    async fn create(&self, account: &Account) -> RepoResult<()>;
    async fn get(&self, id: Uuid) -> RepoResult<Option<Account>>;
    /// By the id the account has in Cosmos: its original string if it had one, else the
    /// canonical text of its key.
    async fn get_by_cosmos_id(&self, cosmos_id: &str) -> RepoResult<Option<Account>>;
    async fn get_by_auth0_id(&self, auth0_user_id: &str) -> RepoResult<Option<Account>>;
    /// Every account whose email equals `email` ignoring case, oldest first. Cosmos holds
    /// duplicates that differ only by case, so this can return more than one.
    async fn find_by_email(&self, email: &Email) -> RepoResult<Vec<Account>>;
    /// Replaces every field but `id` and `created_at`. `Ok(false)` if there is no such account.
    async fn update(&self, account: &Account) -> RepoResult<bool>;
    /// Sets `last_login_at`. Idempotent. `Ok(false)` if there is no such account.
    async fn record_login(&self, id: Uuid, at: DateTime<Utc>) -> RepoResult<bool>;
    /// Deletes the account, its subscription and its completed scenarios; its profiles stay,
    /// detached (`account_id` becomes `None`). Idempotent: `Ok(false)` the second time.
    async fn delete(&self, id: Uuid) -> RepoResult<bool>;
    /// Accounts in id order.
    async fn list(&self, page: PageRequest) -> RepoResult<Page<Account>>;
}

/// An account's subscription (at most one per account).
#[async_trait]
pub trait SubscriptionRepository: Send + Sync {
    async fn get_for_account(&self, account_id: Uuid) -> RepoResult<Option<Subscription>>;
    /// Creates or replaces the account's subscription and returns what is stored. Idempotent.
    /// The stored row keeps its existing id and `created_at` when one exists.
    /// `Conflict(MissingReference)` if the account does not exist.
    /// `created_at`/`updated_at` are the store's, not the caller's: PostgreSQL keeps
    /// `created_at` and sets `updated_at` to the time of the write; the app's Cosmos document
    /// has no place for them, so there (unless an older writer left them in the document) they
    /// are derived on every read (`StartDate`, else the account's `CreatedAt`; the document's
    /// `_ts`) and `created_at` follows `StartDate`.
    async fn upsert_for_account(&self, subscription: &Subscription) -> RepoResult<Subscription>;
    /// Subscriptions active at `now` (active and not past `valid_until`), in id order.
    async fn list_active(
        &self,
        now: DateTime<Utc>,
        page: PageRequest,
    ) -> RepoResult<Page<Subscription>>;
}

/// User profiles.
#[async_trait]
pub trait ProfileRepository: Send + Sync {
    /// `Conflict(DuplicateId)` if the id exists; `Conflict(MissingReference)` if `account_id`
    /// names an account that does not exist.
    async fn create(&self, profile: &UserProfile) -> RepoResult<()>;
    async fn get(&self, id: Uuid) -> RepoResult<Option<UserProfile>>;
    /// The account's profiles, oldest first.
    async fn list_by_account(&self, account_id: Uuid) -> RepoResult<Vec<UserProfile>>;
    /// Replaces every field but `id` and `created_at`; `updated_at` is set to the time of the
    /// write. `Ok(false)` if there is no such profile.
    async fn update(&self, profile: &UserProfile) -> RepoResult<bool>;
    /// Deletes the profile and its badges. `Ok(false)` if there was none.
    async fn delete(&self, id: Uuid) -> RepoResult<bool>;
    /// Sets `has_completed_onboarding`. Idempotent. `Ok(false)` if there is no such profile.
    async fn mark_onboarded(&self, id: Uuid) -> RepoResult<bool>;
}

/// The result of awarding a badge.
#[derive(Debug, Clone, PartialEq)]
pub enum AwardOutcome {
    /// The badge is new and stored as given.
    Awarded(UserBadge),
    /// The profile already held a badge of this configuration; that earlier badge is returned
    /// and nothing changed.
    AlreadyHeld(UserBadge),
}

/// Badges.
#[async_trait]
pub trait BadgeRepository: Send + Sync {
    /// Awards a badge. Idempotent per (profile, badge configuration): the first award wins, a
    /// second returns `AlreadyHeld` with the stored badge, also under concurrency.
    /// `Conflict(MissingReference)` if the profile does not exist.
    async fn award(&self, badge: &UserBadge) -> RepoResult<AwardOutcome>;
    /// The profile's badges, earliest first.
    async fn list_by_profile(&self, profile_id: Uuid) -> RepoResult<Vec<UserBadge>>;
}

/// Completed scenarios.
#[async_trait]
pub trait CompletedScenarioRepository: Send + Sync {
    /// Records that the account completed the scenario and returns the stored row. Idempotent:
    /// completing again returns the first completion unchanged.
    /// `Conflict(MissingReference)` if the account does not exist.
    async fn mark_completed(
        &self,
        account_id: Uuid,
        scenario_id: &str,
        at: DateTime<Utc>,
    ) -> RepoResult<CompletedScenario>;
    /// The account's completed scenarios, earliest first.
    async fn list_by_account(&self, account_id: Uuid) -> RepoResult<Vec<CompletedScenario>>;
}

/// The result of checking a sign-up code.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifyOutcome {
    /// The code matched an open sign-up, which is returned (not yet marked used).
    Verified(PendingSignup),
    /// Wrong code; the failure was counted. `attempts_left` more tries before lock-out.
    WrongCode { attempts_left: i32 },
    /// Too many wrong codes: the sign-up is locked and no code is accepted any more.
    LockedOut,
    /// The newest open sign-up for this email has expired.
    Expired,
    /// The email has no sign-up, or its newest is used: only the newest sign-up's code can
    /// verify, so an older (superseded) one never does.
    NotFound,
    /// The newest unused sign-up for this email has no code: it is a magic-link sign-up, which
    /// only its link completes ([`PendingSignupRepository::find_by_token_hash`]). Refused and
    /// nothing written: a code guessed against it is not counted.
    NotACodeSignup,
}

/// Pending sign-ups.
#[async_trait]
pub trait PendingSignupRepository: Send + Sync {
    /// `Conflict(DuplicateId)` if the id exists.
    async fn create(&self, signup: &PendingSignup) -> RepoResult<()>;
    async fn get(&self, id: Uuid) -> RepoResult<Option<PendingSignup>>;
    /// Checks `code` against the newest unused sign-up for `email` (ignoring case) at `now`.
    /// A wrong code increments `failed_attempts` atomically; at `lockout_attempts` failures (at
    /// most [`PendingSignup::MAX_FAILED_ATTEMPTS`], so the CHECK never fires) the sign-up is
    /// locked. Concurrent wrong guesses are each counted; the count never passes the limit.
    async fn verify_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
    ) -> RepoResult<VerifyOutcome>;
    /// [`verify_code`](Self::verify_code), and a right code also marks the sign-up used in the
    /// same atomic step: of concurrent calls with the right code exactly one is `Verified`,
    /// the others find the sign-up used (`NotFound`), so one code completes one sign-up. What
    /// the service's verify endpoint calls.
    async fn redeem_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
    ) -> RepoResult<VerifyOutcome>;
    /// Marks the sign-up used. Idempotent. `Ok(false)` if there is no such sign-up.
    async fn mark_used(&self, id: Uuid) -> RepoResult<bool>;
    /// The magic-link flow's lookup: the newest sign-up whose token hash is `token_hash`
    /// (compared exactly, as stored), whatever its state: used, expired, verified or consumed
    /// (the caller decides what that state allows). `token_hash` is a secret: never log it.
    async fn find_by_token_hash(&self, token_hash: &str) -> RepoResult<Option<PendingSignup>>;
    /// Records that the sign-up's link was followed: sets its `status` to `status` (the app's
    /// number, see [`SignupStatus`]) and `verified_at` to `at` unless already set (the first
    /// verification's time is kept). Idempotent. `Ok(false)` if there is no magic-link
    /// sign-up with this id (none at all, or a code-only one, which has no link).
    async fn mark_verified(
        &self,
        id: Uuid,
        status: SignupStatus,
        at: DateTime<Utc>,
    ) -> RepoResult<bool>;
    /// Records that the sign-up's link was used up: sets `status` and `consumed_at` (unless
    /// already set), like [`mark_verified`](Self::mark_verified). Idempotent. `Ok(false)` if
    /// there is no magic-link sign-up with this id.
    async fn mark_consumed(
        &self,
        id: Uuid,
        status: SignupStatus,
        at: DateTime<Utc>,
    ) -> RepoResult<bool>;
    /// Deletes sign-ups that expired more than 24 hours ago (by the store's clock) and returns
    /// how many.
    async fn cleanup_expired(&self) -> RepoResult<u64>;
}
