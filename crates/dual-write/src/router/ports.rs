//! The user domain's repository ports on the router: each call names its operation, the account
//! it concerns and the aggregate it changes, and hands both stores' calls to the phase dispatch
//! (`write`, `read`, `list`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_cosmos_codec::codec::Container;
use mystira_domain::phase::Phase;
use mystira_domain::ports::{
    AccountRepository, AwardOutcome, BadgeRepository, CompletedScenarioRepository, Page,
    PageRequest, PendingSignupRepository, ProfileRepository, RepoResult, SubscriptionRepository,
    VerifyOutcome,
};
use mystira_domain::{
    Account, CompletedScenario, Email, PendingSignup, SignupStatus, Subscription, UserBadge,
    UserProfile,
};
use uuid::Uuid;

use super::DualWriteRouter;

#[async_trait]
impl AccountRepository for DualWriteRouter {
    async fn create(&self, account: &Account) -> RepoResult<()> {
        let pg = &self.0.pg.accounts;
        let cosmos = &self.0.cosmos.accounts;
        self.write(
            "accounts.create",
            Some(account.id),
            Some((Container::Accounts, account.id)),
            cosmos.create(account),
            pg.create(account),
        )
        .await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<Account>> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.read(
            Some(id),
            Container::Accounts,
            |a: &Account| a.id,
            cosmos.get(id),
            pg.get(id),
        )
        .await
    }

    async fn get_by_cosmos_id(&self, cosmos_id: &str) -> RepoResult<Option<Account>> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.read(
            None,
            Container::Accounts,
            |a: &Account| a.id,
            cosmos.get_by_cosmos_id(cosmos_id),
            pg.get_by_cosmos_id(cosmos_id),
        )
        .await
    }

    async fn get_by_auth0_id(&self, auth0_user_id: &str) -> RepoResult<Option<Account>> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.read(
            None,
            Container::Accounts,
            |a: &Account| a.id,
            cosmos.get_by_auth0_id(auth0_user_id),
            pg.get_by_auth0_id(auth0_user_id),
        )
        .await
    }

    /// In phase 2, an email PostgreSQL has no account for is looked up in Cosmos, and what is
    /// found there is back-filled.
    async fn find_by_email(&self, email: &Email) -> RepoResult<Vec<Account>> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        match self.phase_for(None) {
            Phase::DualWritePostgresRead => {
                let found = pg.find_by_email(email).await?;
                if !found.is_empty() {
                    return Ok(found);
                }
                let found = cosmos.find_by_email(email).await?;
                for account in &found {
                    self.count(|c| &c.fallback_reads, 1);
                    self.backfill_from_cosmos(Container::Accounts, account.id)
                        .await;
                }
                Ok(found)
            }
            _ => {
                self.list(None, cosmos.find_by_email(email), pg.find_by_email(email))
                    .await
            }
        }
    }

    async fn update(&self, account: &Account) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.write(
            "accounts.update",
            Some(account.id),
            Some((Container::Accounts, account.id)),
            cosmos.update(account),
            pg.update(account),
        )
        .await
    }

    async fn record_login(&self, id: Uuid, at: DateTime<Utc>) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.write(
            "accounts.record_login",
            Some(id),
            Some((Container::Accounts, id)),
            cosmos.record_login(id, at),
            pg.record_login(id, at),
        )
        .await
    }

    async fn delete(&self, id: Uuid) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.write(
            "accounts.delete",
            Some(id),
            Some((Container::Accounts, id)),
            cosmos.delete(id),
            pg.delete(id),
        )
        .await
    }

    async fn list(&self, page: PageRequest) -> RepoResult<Page<Account>> {
        let (pg, cosmos) = (&self.0.pg.accounts, &self.0.cosmos.accounts);
        self.list(None, cosmos.list(page), pg.list(page)).await
    }
}

#[async_trait]
impl SubscriptionRepository for DualWriteRouter {
    async fn get_for_account(&self, account_id: Uuid) -> RepoResult<Option<Subscription>> {
        let (pg, cosmos) = (&self.0.pg.subscriptions, &self.0.cosmos.subscriptions);
        self.read(
            Some(account_id),
            Container::Accounts,
            |s: &Subscription| s.account_id,
            cosmos.get_for_account(account_id),
            pg.get_for_account(account_id),
        )
        .await
    }

    async fn upsert_for_account(&self, subscription: &Subscription) -> RepoResult<Subscription> {
        let (pg, cosmos) = (&self.0.pg.subscriptions, &self.0.cosmos.subscriptions);
        let account = subscription.account_id;
        self.write(
            "subscriptions.upsert_for_account",
            Some(account),
            Some((Container::Accounts, account)),
            cosmos.upsert_for_account(subscription),
            pg.upsert_for_account(subscription),
        )
        .await
    }

    async fn list_active(
        &self,
        now: DateTime<Utc>,
        page: PageRequest,
    ) -> RepoResult<Page<Subscription>> {
        let (pg, cosmos) = (&self.0.pg.subscriptions, &self.0.cosmos.subscriptions);
        self.list(
            None,
            cosmos.list_active(now, page),
            pg.list_active(now, page),
        )
        .await
    }
}

#[async_trait]
impl ProfileRepository for DualWriteRouter {
    async fn create(&self, profile: &UserProfile) -> RepoResult<()> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.write(
            "profiles.create",
            profile.account_id,
            Some((Container::UserProfiles, profile.id)),
            cosmos.create(profile),
            pg.create(profile),
        )
        .await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<UserProfile>> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.read(
            None,
            Container::UserProfiles,
            |p: &UserProfile| p.id,
            cosmos.get(id),
            pg.get(id),
        )
        .await
    }

    async fn list_by_account(&self, account_id: Uuid) -> RepoResult<Vec<UserProfile>> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.list(
            Some(account_id),
            cosmos.list_by_account(account_id),
            pg.list_by_account(account_id),
        )
        .await
    }

    async fn update(&self, profile: &UserProfile) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.write(
            "profiles.update",
            None,
            Some((Container::UserProfiles, profile.id)),
            cosmos.update(profile),
            pg.update(profile),
        )
        .await
    }

    async fn delete(&self, id: Uuid) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.write(
            "profiles.delete",
            None,
            Some((Container::UserProfiles, id)),
            cosmos.delete(id),
            pg.delete(id),
        )
        .await
    }

    async fn mark_onboarded(&self, id: Uuid) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.profiles, &self.0.cosmos.profiles);
        self.write(
            "profiles.mark_onboarded",
            None,
            Some((Container::UserProfiles, id)),
            cosmos.mark_onboarded(id),
            pg.mark_onboarded(id),
        )
        .await
    }
}

#[async_trait]
impl BadgeRepository for DualWriteRouter {
    async fn award(&self, badge: &UserBadge) -> RepoResult<AwardOutcome> {
        let (pg, cosmos) = (&self.0.pg.badges, &self.0.cosmos.badges);
        self.write(
            "badges.award",
            None,
            Some((Container::UserProfiles, badge.user_profile_id)),
            cosmos.award(badge),
            pg.award(badge),
        )
        .await
    }

    async fn list_by_profile(&self, profile_id: Uuid) -> RepoResult<Vec<UserBadge>> {
        let (pg, cosmos) = (&self.0.pg.badges, &self.0.cosmos.badges);
        self.list(
            None,
            cosmos.list_by_profile(profile_id),
            pg.list_by_profile(profile_id),
        )
        .await
    }
}

#[async_trait]
impl CompletedScenarioRepository for DualWriteRouter {
    async fn mark_completed(
        &self,
        account_id: Uuid,
        scenario_id: &str,
        at: DateTime<Utc>,
    ) -> RepoResult<CompletedScenario> {
        let (pg, cosmos) = (&self.0.pg.completed, &self.0.cosmos.completed_scenarios);
        self.write(
            "completed_scenarios.mark_completed",
            Some(account_id),
            Some((Container::Accounts, account_id)),
            cosmos.mark_completed(account_id, scenario_id, at),
            pg.mark_completed(account_id, scenario_id, at),
        )
        .await
    }

    async fn list_by_account(&self, account_id: Uuid) -> RepoResult<Vec<CompletedScenario>> {
        let (pg, cosmos) = (&self.0.pg.completed, &self.0.cosmos.completed_scenarios);
        self.list(
            Some(account_id),
            cosmos.list_by_account(account_id),
            pg.list_by_account(account_id),
        )
        .await
    }
}

#[async_trait]
impl PendingSignupRepository for DualWriteRouter {
    async fn create(&self, signup: &PendingSignup) -> RepoResult<()> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.create",
            None,
            Some((Container::PendingSignups, signup.id)),
            cosmos.create(signup),
            pg.create(signup),
        )
        .await
    }

    async fn get(&self, id: Uuid) -> RepoResult<Option<PendingSignup>> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.read(
            None,
            Container::PendingSignups,
            |s: &PendingSignup| s.id,
            cosmos.get(id),
            pg.get(id),
        )
        .await
    }

    /// The sign-up a wrong code counts against is not known before the call: in phase 2 its
    /// outbox row is delivered by the relay rather than inline.
    async fn verify_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
    ) -> RepoResult<VerifyOutcome> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.verify_code",
            None,
            None,
            cosmos.verify_code(email, code, now, lockout_attempts),
            pg.verify_code(email, code, now, lockout_attempts),
        )
        .await
    }

    /// The check and the mark happen in one store (the primary), atomically there; in phase
    /// 1 the document Cosmos wrote is copied as any other.
    async fn redeem_code(
        &self,
        email: &Email,
        code: &str,
        now: DateTime<Utc>,
        lockout_attempts: i32,
    ) -> RepoResult<VerifyOutcome> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.redeem_code",
            None,
            None,
            cosmos.redeem_code(email, code, now, lockout_attempts),
            pg.redeem_code(email, code, now, lockout_attempts),
        )
        .await
    }

    async fn mark_used(&self, id: Uuid) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.mark_used",
            None,
            Some((Container::PendingSignups, id)),
            cosmos.mark_used(id),
            pg.mark_used(id),
        )
        .await
    }

    /// A point lookup like `get`: in phase 2 a sign-up PostgreSQL lacks is looked up in Cosmos
    /// and back-filled (a link emailed before the copy caught up still works).
    async fn find_by_token_hash(&self, token_hash: &str) -> RepoResult<Option<PendingSignup>> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.read(
            None,
            Container::PendingSignups,
            |s: &PendingSignup| s.id,
            cosmos.find_by_token_hash(token_hash),
            pg.find_by_token_hash(token_hash),
        )
        .await
    }

    async fn mark_verified(
        &self,
        id: Uuid,
        status: SignupStatus,
        at: DateTime<Utc>,
    ) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.mark_verified",
            None,
            Some((Container::PendingSignups, id)),
            cosmos.mark_verified(id, status, at),
            pg.mark_verified(id, status, at),
        )
        .await
    }

    async fn mark_consumed(
        &self,
        id: Uuid,
        status: SignupStatus,
        at: DateTime<Utc>,
    ) -> RepoResult<bool> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.mark_consumed",
            None,
            Some((Container::PendingSignups, id)),
            cosmos.mark_consumed(id, status, at),
            pg.mark_consumed(id, status, at),
        )
        .await
    }

    async fn cleanup_expired(&self) -> RepoResult<u64> {
        let (pg, cosmos) = (&self.0.pg.signups, &self.0.cosmos.pending_signups);
        self.write(
            "signups.cleanup_expired",
            None,
            None,
            cosmos.cleanup_expired(),
            pg.cleanup_expired(),
        )
        .await
    }
}
