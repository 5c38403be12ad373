//! The changes a write makes, and the two sides of "a delivery changes exactly what PostgreSQL
//! changed": the property paths at which two documents differ, the paths a change of an
//! aggregate's meaning must touch, and the aggregates' meaning itself.

use super::*;

/// A write the service makes.
#[derive(Debug, Clone)]
pub enum Change {
    /// `AccountRepository::update` with another display name.
    RenameAccount(String),
    /// `AccountRepository::record_login`.
    Login(DateTime<Utc>),
    /// `AccountRepository::update` with another settings theme.
    Theme(String),
    /// `SubscriptionRepository::upsert_for_account`: the stored subscription with another tier
    /// and validity, or a new one when there is none.
    Subscribe {
        tier: String,
        valid_until: DateTime<Utc>,
    },
    /// `CompletedScenarioRepository::mark_completed`.
    Complete(String, DateTime<Utc>),
    /// `ProfileRepository::update` with another name and bio.
    RenameProfile(String, Option<String>),
    /// `ProfileRepository::mark_onboarded`.
    Onboard,
    /// `BadgeRepository::award` of a configuration (held already: nothing changes).
    Award(String, DateTime<Utc>),
    /// `PendingSignupRepository::mark_used`.
    MarkUsed,
    /// `PendingSignupRepository::mark_verified` (a magic-link sign-up; a no-op otherwise).
    MarkVerified(i16, DateTime<Utc>),
    /// An update with what is already stored.
    Same,
}

/// A microsecond instant (a time the service writes), 2026..2027.
fn service_time() -> impl Strategy<Value = DateTime<Utc>> {
    (1_767_225_600i64..1_798_761_600, 0u32..1_000_000)
        .prop_map(|(s, us)| Utc.timestamp_opt(s, us * 1000).unwrap())
}

pub fn account_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        "[A-Za-z]{3,10}".prop_map(Change::RenameAccount),
        service_time().prop_map(Change::Login),
        prop::sample::select(vec!["light", "dark", "sepia"])
            .prop_map(|t| Change::Theme(t.to_owned())),
        (prop::sample::select(vec!["Plus", "Family"]), service_time()).prop_map(
            |(tier, valid_until)| Change::Subscribe {
                tier: tier.to_owned(),
                valid_until
            }
        ),
        (prop::sample::select(SCENARIOS.to_vec()), service_time())
            .prop_map(|(s, at)| Change::Complete(s.to_owned(), at)),
        Just(Change::Same),
    ]
}

pub fn profile_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        ("[A-Za-z]{3,10}", proptest::option::of("[A-Za-z ]{1,10}"))
            .prop_map(|(n, b)| Change::RenameProfile(n, b)),
        Just(Change::Onboard),
        (prop::sample::select(BADGE_CONFIGS.to_vec()), service_time())
            .prop_map(|(c, at)| Change::Award(c.to_owned(), at)),
        Just(Change::Same),
    ]
}

pub fn signup_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        Just(Change::MarkUsed),
        (1i16..5, service_time()).prop_map(|(s, at)| Change::MarkVerified(s, at)),
        Just(Change::Same),
    ]
}

// ---------------------------------------------------------------------------------------------
// comparing

/// The instant PostgreSQL keeps (whole microseconds since 2000, truncated toward zero, as sqlx
/// sends them).
pub fn at_pg(t: DateTime<Utc>) -> DateTime<Utc> {
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    match (t - epoch).num_microseconds() {
        Some(us) => epoch + Duration::microseconds(us),
        None => t,
    }
}

fn opt_at_pg(t: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    t.map(at_pg)
}

/// The document without Cosmos's system properties.
pub fn user_part(doc: &Value) -> Value {
    let mut doc = doc.clone();
    if let Some(o) = doc.as_object_mut() {
        o.retain(|k, _| {
            !["_rid", "_self", "_etag", "_attachments", "_ts", "_lsn"].contains(&k.as_str())
        });
    }
    doc
}

/// The property paths at which `after` differs from `before` (system properties aside): a
/// changed, added or removed property; `Name[i]` for an item changed in place; `Name[+]` once
/// per item appended to an array whose stored items are all still there, in place.
pub fn changed_paths(before: &Value, after: &Value) -> Vec<String> {
    let mut out = Vec::new();
    diff_into(&user_part(before), &user_part(after), "", &mut out);
    out.sort();
    out
}

fn diff_into(before: &Value, after: &Value, path: &str, out: &mut Vec<String>) {
    let join = |k: &str| {
        if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        }
    };
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            for k in b.keys().chain(a.keys().filter(|k| !b.contains_key(*k))) {
                match (b.get(k), a.get(k)) {
                    (Some(x), Some(y)) => diff_into(x, y, &join(k), out),
                    _ => out.push(join(k)),
                }
            }
        }
        (Value::Array(b), Value::Array(a)) if a.len() >= b.len() => {
            if a.len() > b.len() && a[..b.len()] != b[..] {
                out.push(path.to_owned());
                return;
            }
            for (i, (x, y)) in b.iter().zip(a).enumerate() {
                diff_into(x, y, &format!("{path}[{i}]"), out);
            }
            for _ in b.len()..a.len() {
                out.push(format!("{path}[+]"));
            }
        }
        (x, y) => {
            if x != y {
                out.push(path.to_owned());
            }
        }
    }
}

fn push_if(out: &mut Vec<String>, differ: bool, path: impl Into<String>) {
    if differ {
        out.push(path.into());
    }
}

/// Where a property is in `obj`: present (not null), `null`, or missing.
fn has(obj: &Value, name: &str) -> bool {
    obj.get(name).is_some_and(|v| !v.is_null())
}

/// The paths at which a delivery of `after` onto `stored` (whose content is `before`) must
/// change the document: one per mapped property whose meaning differs between the two states
/// (at PostgreSQL's precision), `[+]` per item appended, nothing else.
pub fn expected_account_paths(
    stored: &Value,
    before: &AccountAggregate,
    after: &AccountAggregate,
) -> Vec<String> {
    let (b, a) = (&before.account, &after.account);
    let mut out = Vec::new();
    if b.auth0_user_id != a.auth0_user_id {
        out.push("ExternalUserId".into());
        push_if(&mut out, stored.get("Auth0UserId").is_some(), "Auth0UserId");
    }
    push_if(&mut out, b.email != a.email, "Email");
    push_if(&mut out, b.display_name != a.display_name, "DisplayName");
    push_if(&mut out, b.role != a.role, "Role");
    push_if(
        &mut out,
        at_pg(b.created_at) != at_pg(a.created_at),
        "CreatedAt",
    );
    push_if(
        &mut out,
        at_pg(b.last_login_at) != at_pg(a.last_login_at),
        "LastLoginAt",
    );
    let (bs, as_) = (&b.settings, &a.settings);
    if bs != as_ {
        if !has(stored, "Settings") {
            out.push("Settings".into());
        } else {
            if as_.id.is_some() {
                push_if(&mut out, bs.id != as_.id, "Settings.Id");
            }
            push_if(
                &mut out,
                bs.cache_credentials != as_.cache_credentials,
                "Settings.CacheCredentials",
            );
            push_if(
                &mut out,
                bs.require_auth_on_startup != as_.require_auth_on_startup,
                "Settings.RequireAuthOnStartup",
            );
            push_if(
                &mut out,
                bs.preferred_language != as_.preferred_language,
                "Settings.PreferredLanguage",
            );
            push_if(
                &mut out,
                bs.notifications_enabled != as_.notifications_enabled,
                "Settings.NotificationsEnabled",
            );
            push_if(&mut out, bs.theme != as_.theme, "Settings.Theme");
            for k in bs
                .extra
                .keys()
                .chain(as_.extra.keys().filter(|k| !bs.extra.contains_key(*k)))
            {
                push_if(
                    &mut out,
                    bs.extra.get(k) != as_.extra.get(k),
                    format!("Settings.{k}"),
                );
            }
        }
    }
    match (&before.subscription, &after.subscription) {
        (None, None) => {}
        (Some(x), Some(y)) if x.id == y.id => {
            subscription_paths(&stored["Subscription"], x, y, &mut out)
        }
        _ => out.push("Subscription".into()),
    }
    let held: Vec<&str> = before
        .completed_scenarios
        .iter()
        .map(|c| c.scenario_id.as_str())
        .collect();
    let added = after
        .completed_scenarios
        .iter()
        .filter(|c| !held.contains(&c.scenario_id.as_str()))
        .count();
    if added > 0 {
        if stored
            .get("CompletedScenarioIds")
            .is_some_and(Value::is_array)
        {
            out.extend(std::iter::repeat_n(
                "CompletedScenarioIds[+]".to_owned(),
                added,
            ));
        } else {
            out.push("CompletedScenarioIds".into());
        }
    }
    out.sort();
    out
}

fn subscription_paths(stored: &Value, b: &Subscription, a: &Subscription, out: &mut Vec<String>) {
    let p = |n: &str| format!("Subscription.{n}");
    push_if(out, b.subscription_type != a.subscription_type, p("Type"));
    push_if(out, b.product_id != a.product_id, p("ProductId"));
    push_if(out, b.tier != a.tier, p("Tier"));
    push_if(out, b.is_active != a.is_active, p("IsActive"));
    push_if(
        out,
        opt_at_pg(b.valid_until) != opt_at_pg(a.valid_until),
        p("ValidUntil"),
    );
    push_if(
        out,
        opt_at_pg(b.start_date) != opt_at_pg(a.start_date),
        p("StartDate"),
    );
    push_if(
        out,
        opt_at_pg(b.end_date) != opt_at_pg(a.end_date),
        p("EndDate"),
    );
    push_if(
        out,
        b.purchase_token.as_ref().map(|t| t.expose().clone())
            != a.purchase_token.as_ref().map(|t| t.expose().clone()),
        p("PurchaseToken"),
    );
    push_if(
        out,
        opt_at_pg(b.last_verified) != opt_at_pg(a.last_verified),
        p("LastVerified"),
    );
    push_if(
        out,
        b.purchased_scenarios != a.purchased_scenarios,
        p("PurchasedScenarios"),
    );
    // the app's subscription has no timestamps: only ones already stored are kept up to date
    push_if(
        out,
        has(stored, "CreatedAt") && at_pg(b.created_at) != at_pg(a.created_at),
        p("CreatedAt"),
    );
    push_if(
        out,
        has(stored, "UpdatedAt") && at_pg(b.updated_at) != at_pg(a.updated_at),
        p("UpdatedAt"),
    );
}

/// [`expected_account_paths`] for a profile.
pub fn expected_profile_paths(
    stored: &Value,
    before: &ProfileAggregate,
    after: &ProfileAggregate,
) -> Vec<String> {
    let (b, a) = (&before.profile, &after.profile);
    let mut out = Vec::new();
    push_if(
        &mut out,
        a.account_id.is_some() && b.account_id != a.account_id,
        "AccountId",
    );
    push_if(&mut out, b.name != a.name, "Name");
    push_if(&mut out, b.age_group != a.age_group, "AgeGroupName");
    push_if(
        &mut out,
        b.date_of_birth.as_ref().map(|d| *d.expose())
            != a.date_of_birth.as_ref().map(|d| *d.expose()),
        "DateOfBirth",
    );
    push_if(&mut out, b.is_guest != a.is_guest, "IsGuest");
    push_if(&mut out, b.is_npc != a.is_npc, "IsNpc");
    push_if(&mut out, b.pronouns != a.pronouns, "Pronouns");
    push_if(&mut out, b.bio != a.bio, "Bio");
    push_if(
        &mut out,
        b.avatar_media_id != a.avatar_media_id,
        "AvatarMediaId",
    );
    push_if(
        &mut out,
        b.selected_avatar_media_id != a.selected_avatar_media_id,
        "SelectedAvatarMediaId",
    );
    push_if(
        &mut out,
        b.preferred_themes != a.preferred_themes,
        "PreferredFantasyThemes",
    );
    push_if(
        &mut out,
        b.has_completed_onboarding != a.has_completed_onboarding,
        "HasCompletedOnboarding",
    );
    push_if(
        &mut out,
        at_pg(b.created_at) != at_pg(a.created_at),
        "CreatedAt",
    );
    push_if(
        &mut out,
        at_pg(b.updated_at) != at_pg(a.updated_at),
        "UpdatedAt",
    );
    let added = after
        .badges
        .iter()
        .filter(|x| !before.badges.iter().any(|y| y.id == x.id))
        .count();
    if added > 0 {
        if stored.get("EarnedBadges").is_some_and(Value::is_array) {
            out.extend(std::iter::repeat_n("EarnedBadges[+]".to_owned(), added));
        } else {
            out.push("EarnedBadges".into());
        }
    }
    out.sort();
    out
}

/// [`expected_account_paths`] for a sign-up.
pub fn expected_signup_paths(before: &PendingSignup, after: &PendingSignup) -> Vec<String> {
    let mut out = Vec::new();
    push_if(
        &mut out,
        before.display_name != after.display_name,
        "DisplayName",
    );
    push_if(&mut out, before.code != after.code, "Code");
    push_if(
        &mut out,
        at_pg(before.created_at) != at_pg(after.created_at),
        "CreatedAt",
    );
    push_if(
        &mut out,
        at_pg(before.expires_at) != at_pg(after.expires_at),
        "ExpiresAt",
    );
    push_if(&mut out, before.is_used != after.is_used, "IsUsed");
    push_if(&mut out, before.is_signin != after.is_signin, "IsSignin");
    push_if(
        &mut out,
        before.failed_attempts != after.failed_attempts,
        "FailedAttempts",
    );
    if let (Some(b), Some(a)) = (&before.magic_link, &after.magic_link) {
        push_if(&mut out, b.status != a.status, "Status");
        push_if(
            &mut out,
            opt_at_pg(b.verified_at) != opt_at_pg(a.verified_at),
            "VerifiedAt",
        );
        push_if(
            &mut out,
            opt_at_pg(b.consumed_at) != opt_at_pg(a.consumed_at),
            "ConsumedAt",
        );
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// states at PostgreSQL's precision, for comparing what a document decodes to with a state

/// The account aggregate as PostgreSQL would hold it, with what the app's shape cannot say
/// left out: completion times, and the subscription's timestamps (`keep_sub_times`: unless the
/// document has them).
pub fn account_meaning(a: &AccountAggregate, keep_sub_times: bool) -> AccountAggregate {
    let mut a = a.clone();
    a.account.created_at = at_pg(a.account.created_at);
    a.account.last_login_at = at_pg(a.account.last_login_at);
    if let Some(s) = a.subscription.as_mut() {
        s.valid_until = opt_at_pg(s.valid_until);
        s.start_date = opt_at_pg(s.start_date);
        s.end_date = opt_at_pg(s.end_date);
        s.last_verified = opt_at_pg(s.last_verified);
        if keep_sub_times {
            s.created_at = at_pg(s.created_at);
            s.updated_at = at_pg(s.updated_at);
        } else {
            s.created_at = DateTime::UNIX_EPOCH;
            s.updated_at = DateTime::UNIX_EPOCH;
        }
    }
    let mut ids: Vec<CompletedScenario> = a
        .completed_scenarios
        .into_iter()
        .map(|mut c| {
            c.completed_at = DateTime::UNIX_EPOCH;
            c
        })
        .collect();
    ids.sort_by(|x, y| x.scenario_id.cmp(&y.scenario_id));
    a.completed_scenarios = ids;
    a
}

/// The profile aggregate at PostgreSQL's precision, badges in key order; the account reference
/// only when `with_account`.
pub fn profile_meaning(p: &ProfileAggregate, with_account: bool) -> (UserProfile, Vec<UserBadge>) {
    let mut profile = p.profile.clone();
    profile.created_at = at_pg(profile.created_at);
    profile.updated_at = at_pg(profile.updated_at);
    if !with_account {
        profile.account_id = None;
    }
    let mut badges: Vec<UserBadge> = p
        .badges
        .iter()
        .cloned()
        .map(|mut b| {
            b.earned_at = at_pg(b.earned_at);
            b
        })
        .collect();
    badges.sort_by_key(|b| b.id);
    (profile, badges)
}

pub fn signup_meaning(s: &PendingSignup) -> PendingSignup {
    let mut s = s.clone();
    s.created_at = at_pg(s.created_at);
    s.expires_at = at_pg(s.expires_at);
    if let Some(l) = s.magic_link.as_mut() {
        l.verified_at = opt_at_pg(l.verified_at);
        l.consumed_at = opt_at_pg(l.consumed_at);
    }
    // a sign-up's email is compared ignoring case (the app stores it lower-cased)
    s.email = mystira_domain::Email::parse(&s.email.normalized()).unwrap();
    s
}

/// A subscription the service creates for `account`.
pub fn new_subscription(account: Uuid, tier: &str, valid_until: DateTime<Utc>) -> Subscription {
    Subscription {
        id: Uuid::new_v4(),
        cosmos_id: None,
        account_id: account,
        subscription_type: SubscriptionType::Monthly,
        product_id: Some("monthly".to_owned()),
        tier: tier.to_owned(),
        is_active: true,
        valid_until: Some(valid_until),
        start_date: Some(valid_until - Duration::days(30)),
        end_date: None,
        purchase_token: None,
        last_verified: None,
        purchased_scenarios: Vec::new(),
        created_at: valid_until - Duration::days(30),
        updated_at: valid_until - Duration::days(30),
    }
}

/// A badge the service awards.
pub fn new_badge(profile: Uuid, config: &str, at: DateTime<Utc>) -> UserBadge {
    UserBadge {
        id: Uuid::new_v4(),
        cosmos_id: None,
        user_profile_id: profile,
        badge_configuration_id: config.to_owned(),
        badge_id: None,
        badge_name: "Brave".to_owned(),
        badge_message: "Well done".to_owned(),
        axis: "courage".to_owned(),
        trigger_value: 0.75,
        threshold: 0.5,
        earned_at: at,
        game_session_id: None,
        scenario_id: Some("dragons".to_owned()),
        image_id: "img".to_owned(),
    }
}
