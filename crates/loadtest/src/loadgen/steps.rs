//! The steps of a simulated user, one function each: the call a step makes, and what the user
//! learns from its outcome.

use chrono::Utc;
use mystira_domain::ports::{
    AccountRepository, AwardOutcome, BadgeRepository, CompletedScenarioRepository,
    PendingSignupRepository, ProfileRepository, SubscriptionRepository, VerifyOutcome,
};
use mystira_domain::{PendingSignup, Subscription, SubscriptionType, UserBadge};

use crate::ledger::{FieldGroups, Groups};

use super::call::{Ctx, Ended, account_target, is_duplicate_id, profile_target, signup_target};
use super::rng::now_ms;
use super::users::{NAMES, Step, THEMES, TIERS, User};

/// Runs the user's next step and updates the user from its outcome.
pub(super) async fn step(ctx: &Ctx, user: &mut User) {
    match user.next_step() {
        Step::SignupCreate => signup_create(ctx, user).await,
        Step::VerifyWrong => verify_wrong(ctx, user).await,
        Step::VerifyRight => verify_right(ctx, user).await,
        Step::MarkUsed => mark_used(ctx, user).await,
        Step::AccountCreate => account_create(ctx, user).await,
        Step::ProfileCreate(i) => profile_create(ctx, user, i).await,
        Step::Login => login(ctx, user).await,
        Step::ProfileUpdate(i) => profile_update(ctx, user, i).await,
        Step::Onboard(i) => onboard(ctx, user, i).await,
        Step::Badge(i) => badge(ctx, user, i).await,
        Step::Scenario => scenario(ctx, user).await,
        Step::Subscription => subscription(ctx, user).await,
        Step::AccountUpdate => account_update(ctx, user).await,
    }
}

/// Requests a sign-up (a pending sign-up with an emailed code); a failure abandons the flow.
async fn signup_create(ctx: &Ctx, user: &mut User) {
    let r = &ctx.router;
    let Some(flow) = user.flow.as_mut() else {
        return;
    };
    let s = flow.signup.clone();
    let g = FieldGroups::signup(&s);
    match ctx
        .call(
            "signup.create",
            signup_target(s.id),
            Some(g.clone()),
            PendingSignupRepository::create(r, &s),
            |_| Some(g),
        )
        .await
    {
        Ended::Acked(..) => flow.created = true,
        _ => user.flow = None,
    }
}

/// Verifies the sign-up with a wrong code (the attempts count goes up); an unknown outcome
/// abandons the flow.
async fn verify_wrong(ctx: &Ctx, user: &mut User) {
    let r = &ctx.router;
    let Some(flow) = user.flow.as_mut() else {
        return;
    };
    let id = flow.signup.id;
    let wrong = if flow.code == "000000" {
        "111111"
    } else {
        "000000"
    };
    let expected = FieldGroups::attempts(id, flow.signup.failed_attempts + 1);
    let lockout = PendingSignup::DEFAULT_LOCKOUT_ATTEMPTS;
    let ended = ctx
        .call(
            "signup.verify_wrong",
            signup_target(id),
            Some(expected),
            PendingSignupRepository::verify_code(r, &flow.signup.email, wrong, Utc::now(), lockout),
            |o| match o {
                VerifyOutcome::WrongCode { attempts_left } => {
                    Some(FieldGroups::attempts(id, lockout - attempts_left))
                }
                _ => None,
            },
        )
        .await;
    match ended {
        Ended::Acked(VerifyOutcome::WrongCode { attempts_left }) => {
            flow.signup.failed_attempts = lockout - attempts_left;
            flow.wrong_left -= 1;
        }
        // an unknown count: this sign-up is abandoned, a new one will be requested
        _ => user.flow = None,
    }
}

/// Verifies the sign-up with its code; a failure abandons the flow.
async fn verify_right(ctx: &Ctx, user: &mut User) {
    let r = &ctx.router;
    let Some(flow) = user.flow.as_mut() else {
        return;
    };
    let id = flow.signup.id;
    let ended = ctx
        .call(
            "signup.verify",
            signup_target(id),
            None,
            PendingSignupRepository::verify_code(
                r,
                &flow.signup.email,
                &flow.code,
                Utc::now(),
                PendingSignup::DEFAULT_LOCKOUT_ATTEMPTS,
            ),
            |o| matches!(o, VerifyOutcome::Verified(s) if s.id == id).then(Groups::new),
        )
        .await;
    match ended {
        Ended::Acked(..) => flow.verified = true,
        _ => user.flow = None,
    }
}

/// Marks the verified sign-up used; then a sign-up becomes an account to create, a sign-in a
/// login.
async fn mark_used(ctx: &Ctx, user: &mut User) {
    let r = &ctx.router;
    let Some(flow) = user.flow.take() else { return };
    let id = flow.signup.id;
    let g = FieldGroups::used(id, true);
    let ended = ctx
        .call(
            "signup.mark_used",
            signup_target(id),
            Some(g.clone()),
            PendingSignupRepository::mark_used(r, id),
            |found| found.then_some(g),
        )
        .await;
    if let Ended::Acked(..) = ended {
        if user.account.is_none() {
            let a = user.new_account(flow.signup.display_name.clone());
            user.account = Some(a);
        } else if user.account_created {
            // a sign-in ends in a login
            login(ctx, user).await;
        }
    }
}

/// Creates the user's account (a conflict on its id means an earlier try landed).
async fn account_create(ctx: &Ctx, user: &mut User) {
    let r = &ctx.router;
    let Some(a) = user.account.clone() else {
        return;
    };
    let g = FieldGroups::account(&a);
    match ctx
        .call(
            "account.create",
            account_target(a.id),
            Some(g.clone()),
            AccountRepository::create(r, &a),
            |_| Some(g),
        )
        .await
    {
        Ended::Acked(..) => user.account_created = true,
        // a retry of a create that had landed
        Ended::Failed(e) if is_duplicate_id(&e) => user.account_created = true,
        _ => {}
    }
}

/// Creates the user's `i`th profile (a conflict on its id means an earlier try landed).
async fn profile_create(ctx: &Ctx, user: &mut User, i: usize) {
    let r = &ctx.router;
    let p = user.profiles[i].profile.clone();
    let g = FieldGroups::profile(&p);
    match ctx
        .call(
            "profile.create",
            profile_target(p.id, p.account_id),
            Some(g.clone()),
            ProfileRepository::create(r, &p),
            |_| Some(g),
        )
        .await
    {
        Ended::Acked(..) => user.profiles[i].created = true,
        Ended::Failed(e) if is_duplicate_id(&e) => user.profiles[i].created = true,
        _ => {}
    }
}

/// Edits the `i`th profile's name, bio and themes.
async fn profile_update(ctx: &Ctx, user: &mut User, i: usize) {
    let r = &ctx.router;
    user.edits += 1;
    let mut p = user.profiles[i].profile.clone();
    p.name = format!("{} {}", user.rng.pick(&NAMES), user.edits);
    p.bio = Some(format!("likes {}", user.rng.pick(&THEMES).to_lowercase()));
    p.preferred_themes = vec![user.rng.pick(&THEMES).to_owned()];
    let g = FieldGroups::profile(&p);
    if let Ended::Acked(..) = ctx
        .call(
            "profile.update",
            profile_target(p.id, None),
            Some(g.clone()),
            ProfileRepository::update(r, &p),
            |found| found.then_some(g),
        )
        .await
    {
        user.profiles[i].profile = p;
    }
}

/// Marks the `i`th profile onboarded.
async fn onboard(ctx: &Ctx, user: &mut User, i: usize) {
    let r = &ctx.router;
    let id = user.profiles[i].profile.id;
    let g = FieldGroups::onboarded(id, true);
    if let Ended::Acked(..) = ctx
        .call(
            "profile.onboard",
            profile_target(id, None),
            Some(g.clone()),
            ProfileRepository::mark_onboarded(r, id),
            |found| found.then_some(g),
        )
        .await
    {
        user.profiles[i].profile.has_completed_onboarding = true;
    }
}

/// Awards the `i`th profile its next badge.
async fn badge(ctx: &Ctx, user: &mut User, i: usize) {
    let r = &ctx.router;
    user.profiles[i].badges += 1;
    let n = user.profiles[i].badges;
    let axis = ["courage", "kindness", "wisdom"][n as usize % 3];
    let badge = UserBadge {
        id: user.rng.uuid(),
        cosmos_id: None,
        user_profile_id: user.profiles[i].profile.id,
        badge_configuration_id: format!("badge-{axis}-{n}"),
        badge_id: None,
        badge_name: format!("{axis} {n}"),
        badge_message: String::new(),
        axis: axis.to_owned(),
        trigger_value: 1.0,
        threshold: 0.5,
        earned_at: now_ms(),
        game_session_id: None,
        scenario_id: None,
        image_id: String::new(),
    };
    ctx.call(
        "badge.award",
        profile_target(badge.user_profile_id, None),
        Some(FieldGroups::badge(&badge)),
        BadgeRepository::award(r, &badge),
        |o| match o {
            AwardOutcome::Awarded(b) | AwardOutcome::AlreadyHeld(b) => Some(FieldGroups::badge(b)),
        },
    )
    .await;
}

/// Records the account's next completed scenario.
async fn scenario(ctx: &Ctx, user: &mut User) {
    let r = &ctx.router;
    let Some(account) = user.account.as_ref().map(|a| a.id) else {
        return;
    };
    user.scenarios += 1;
    let scenario = format!("scenario-{:04}", user.scenarios);
    let g = FieldGroups::completion(account, &scenario);
    ctx.call(
        "scenario.complete",
        account_target(account),
        Some(g.clone()),
        CompletedScenarioRepository::mark_completed(r, account, &scenario, now_ms()),
        |_| Some(g),
    )
    .await;
}

/// Sets the account's subscription (a new kind and tier).
async fn subscription(ctx: &Ctx, user: &mut User) {
    let r = &ctx.router;
    let Some(account) = user.account.as_ref().map(|a| a.id) else {
        return;
    };
    let now = now_ms();
    let kinds = [
        SubscriptionType::Monthly,
        SubscriptionType::Annual,
        SubscriptionType::Free,
    ];
    let kind = kinds[user.rng.below(3) as usize];
    let s = Subscription {
        id: user
            .subscription
            .as_ref()
            .map_or_else(|| user.rng.uuid(), |s| s.id),
        cosmos_id: None,
        account_id: account,
        subscription_type: kind,
        product_id: Some(format!("{}-plan", kind.as_str().to_lowercase())),
        tier: user.rng.pick(&TIERS).to_owned(),
        is_active: kind != SubscriptionType::Free,
        valid_until: Some(now + chrono::Duration::days(30)),
        start_date: Some(now),
        end_date: None,
        purchase_token: None,
        last_verified: None,
        purchased_scenarios: Vec::new(),
        created_at: now,
        updated_at: now,
    };
    let g = FieldGroups::subscription(&s);
    if let Ended::Acked(stored) = ctx
        .call(
            "subscription.upsert",
            account_target(account),
            Some(g.clone()),
            SubscriptionRepository::upsert_for_account(r, &s),
            |_| Some(g),
        )
        .await
    {
        user.subscription = Some(stored);
    }
}

/// Edits the account's display name and theme.
async fn account_update(ctx: &Ctx, user: &mut User) {
    let r = &ctx.router;
    let Some(mut a) = user.account.clone() else {
        return;
    };
    user.edits += 1;
    a.display_name = format!("{} {}", user.rng.pick(&NAMES), user.edits);
    a.settings.theme = user.rng.pick(&["light", "dark", "system"]).to_owned();
    let g = FieldGroups::account(&a);
    if let Ended::Acked(..) = ctx
        .call(
            "account.update",
            account_target(a.id),
            Some(g.clone()),
            AccountRepository::update(r, &a),
            |found| found.then_some(g),
        )
        .await
    {
        user.account = Some(a);
    }
}

/// Records a login strictly later than the last one.
pub(super) async fn login(ctx: &Ctx, user: &mut User) {
    let Some(a) = user.account.as_mut() else {
        return;
    };
    // strictly later than the last login: a later login never looks older
    let at = now_ms().max(a.last_login_at + chrono::Duration::milliseconds(1));
    let g = FieldGroups::login(a.id, at);
    if let Ended::Acked(..) = ctx
        .call(
            "account.login",
            account_target(a.id),
            Some(g.clone()),
            AccountRepository::record_login(&ctx.router, a.id, at),
            |found| found.then_some(g),
        )
        .await
    {
        a.last_login_at = at;
    }
}
