//! The bodies of `/v1/accounts`: an account (its settings), its subscription, its completed
//! scenarios, an email search, and who the caller is (`/v1/me`).

use chrono::{DateTime, Utc};
use mystira_domain::input::{self, check_list, check_text};
use mystira_domain::{
    Account, AccountSettings, CompletedScenario, Email, Role, Secret, Subscription,
    SubscriptionType, ValidationError,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

fn settings(value: Option<serde_json::Value>) -> Result<AccountSettings, ValidationError> {
    match value {
        None => Ok(AccountSettings::default()),
        Some(v) => {
            input::check_settings_size(&v.to_string())?;
            serde_json::from_value(v).map_err(|_| ValidationError::OutOfRange {
                field: "settings",
                rule: "must be an object whose known keys (CacheCredentials, \
                   RequireAuthOnStartup, PreferredLanguage, NotificationsEnabled, Theme, Id) \
                   have their types",
            })
        }
    }
}

/// The settings object with an `Id`, as the app's always has one (EF Core 9 writes
/// `Settings.Id`, and a delivery to Cosmos writes what PostgreSQL holds): the one given, else
/// the one it had, else a new one.
fn with_settings_id(mut s: AccountSettings, had: Option<String>) -> AccountSettings {
    if s.id.is_none() {
        s.id = Some(had.unwrap_or_else(|| Uuid::new_v4().to_string()));
    }
    s
}

/// An account as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountOut {
    pub id: Uuid,
    /// The external (Auth0 or Entra) user id: a token's `sub`.
    pub auth0_user_id: Option<String>,
    pub email: String,
    pub display_name: String,
    /// Guest, User, Admin or SuperAdmin.
    pub role: String,
    /// The app's settings object (PascalCase keys, unknown keys kept).
    #[schema(value_type = Object)]
    pub settings: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub last_login_at: DateTime<Utc>,
}

impl From<&Account> for AccountOut {
    fn from(a: &Account) -> Self {
        Self {
            id: a.id,
            auth0_user_id: a.auth0_user_id.clone(),
            email: a.email.as_str().to_owned(),
            display_name: a.display_name.clone(),
            role: a.role.as_str().to_owned(),
            settings: serde_json::to_value(&a.settings).unwrap_or_default(),
            created_at: a.created_at,
            last_login_at: a.last_login_at,
        }
    }
}

/// A new account. `auth0_user_id` defaults to the caller's `sub`; only admins may name
/// another, or give a role above User.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// A client-chosen id (for a retry that must not create twice); a new one when absent.
    pub id: Option<Uuid>,
    #[schema(max_length = 255)]
    pub auth0_user_id: Option<String>,
    #[schema(format = Email, max_length = 255)]
    pub email: String,
    #[schema(max_length = 255)]
    pub display_name: String,
    #[schema(pattern = "^(Guest|User|Admin|SuperAdmin)$")]
    pub role: Option<String>,
    /// The app's settings object, at most 4096 bytes as JSON.
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
    /// A completed sign-up for `email` (the `signup_id` its verification answered): the proof
    /// that the caller holds the address, when the token's `email` is not it.
    pub signup_id: Option<Uuid>,
}

impl NewAccount {
    pub fn into_account(
        self,
        default_user: &str,
        now: DateTime<Utc>,
    ) -> Result<Account, ValidationError> {
        let account = Account {
            id: self.id.unwrap_or_else(Uuid::new_v4),
            cosmos_id: None,
            auth0_user_id: Some(
                self.auth0_user_id
                    .unwrap_or_else(|| default_user.to_owned()),
            ),
            email: Email::parse(&self.email)?,
            display_name: self.display_name,
            role: self
                .role
                .as_deref()
                .map(Role::parse)
                .transpose()?
                .unwrap_or(Role::User),
            settings: with_settings_id(settings(self.settings)?, None),
            created_at: now,
            last_login_at: now,
        };
        account.validate()?;
        Ok(account)
    }
}

/// Changes to an account: absent fields are kept. Only admins may change `role`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountPatch {
    #[schema(format = Email, max_length = 255)]
    pub email: Option<String>,
    #[schema(max_length = 255)]
    pub display_name: Option<String>,
    #[schema(pattern = "^(Guest|User|Admin|SuperAdmin)$")]
    pub role: Option<String>,
    /// Replaces the whole settings object (at most 4096 bytes as JSON).
    #[schema(value_type = Option<Object>)]
    pub settings: Option<serde_json::Value>,
    /// A completed sign-up for the new `email`: the proof of the address, as for a new account.
    pub signup_id: Option<Uuid>,
}

impl AccountPatch {
    pub fn role(&self) -> Result<Option<Role>, ValidationError> {
        self.role.as_deref().map(Role::parse).transpose()
    }

    pub fn apply(self, mut account: Account) -> Result<Account, ValidationError> {
        if let Some(email) = &self.email {
            account.email = Email::parse(email)?;
        }
        if let Some(role) = self.role()? {
            account.role = role;
        }
        if let Some(name) = self.display_name {
            account.display_name = name;
        }
        if self.settings.is_some() {
            account.settings = with_settings_id(settings(self.settings)?, account.settings.id);
        }
        account.validate()?;
        Ok(account)
    }
}

/// A subscription as the API returns it (without its purchase token).
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionOut {
    pub id: Uuid,
    pub account_id: Uuid,
    /// Free, Monthly, Annual, Lifetime or Individual.
    pub subscription_type: String,
    pub product_id: Option<String>,
    pub tier: String,
    pub is_active: bool,
    /// Whether it grants access now (active and not past `valid_until`).
    pub active_now: bool,
    pub valid_until: Option<DateTime<Utc>>,
    pub start_date: Option<DateTime<Utc>>,
    /// `null`: no end.
    pub end_date: Option<DateTime<Utc>>,
    pub has_purchase_token: bool,
    pub last_verified: Option<DateTime<Utc>>,
    pub purchased_scenarios: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl SubscriptionOut {
    pub fn new(s: &Subscription, now: DateTime<Utc>) -> Self {
        Self {
            id: s.id,
            account_id: s.account_id,
            subscription_type: s.subscription_type.as_str().to_owned(),
            product_id: s.product_id.clone(),
            tier: s.tier.clone(),
            is_active: s.is_active,
            active_now: s.is_active_at(now),
            valid_until: s.valid_until,
            start_date: s.start_date,
            end_date: s.end_date,
            has_purchase_token: s.purchase_token.is_some(),
            last_verified: s.last_verified,
            purchased_scenarios: s.purchased_scenarios.clone(),
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// The account's subscription, replaced whole.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionIn {
    #[schema(pattern = "^(Free|Monthly|Annual|Lifetime|Individual)$")]
    pub subscription_type: String,
    #[schema(max_length = 255)]
    pub product_id: Option<String>,
    #[serde(default)]
    #[schema(max_length = 50)]
    pub tier: String,
    pub is_active: bool,
    pub valid_until: Option<DateTime<Utc>>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    /// The store's purchase token (write-only: never returned).
    #[schema(max_length = 8192)]
    pub purchase_token: Option<String>,
    pub last_verified: Option<DateTime<Utc>>,
    /// Scenario ids, each 1 to 255 characters with no comma.
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub purchased_scenarios: Vec<String>,
}

impl SubscriptionIn {
    pub fn into_subscription(
        self,
        account_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Subscription, ValidationError> {
        check_text(
            "purchase_token",
            self.purchase_token.as_deref(),
            input::PURCHASE_TOKEN_MAX,
        )?;
        check_list(
            "purchased_scenarios",
            &self.purchased_scenarios,
            input::PURCHASED_SCENARIOS_MAX_ITEMS,
            input::SCENARIO_ID_MAX,
        )?;
        let subscription = Subscription {
            id: Uuid::new_v4(),
            cosmos_id: None,
            account_id,
            subscription_type: SubscriptionType::parse(&self.subscription_type)?,
            product_id: self.product_id,
            tier: self.tier,
            is_active: self.is_active,
            valid_until: self.valid_until,
            start_date: self.start_date,
            end_date: self.end_date,
            purchase_token: self.purchase_token.map(Secret::new),
            last_verified: self.last_verified,
            purchased_scenarios: self.purchased_scenarios,
            created_at: now,
            updated_at: now,
        };
        subscription.validate()?;
        Ok(subscription)
    }
}

/// A completed scenario as the API returns it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompletedOut {
    pub id: Uuid,
    pub account_id: Uuid,
    pub scenario_id: String,
    pub completed_at: DateTime<Utc>,
}

impl From<&CompletedScenario> for CompletedOut {
    fn from(c: &CompletedScenario) -> Self {
        Self {
            id: c.id,
            account_id: c.account_id,
            scenario_id: c.scenario_id.clone(),
            completed_at: c.completed_at,
        }
    }
}

/// That the account completed a scenario (idempotent: the first completion is kept).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Completion {
    #[schema(min_length = 1, max_length = 255)]
    pub scenario_id: String,
    /// When; now when absent.
    pub completed_at: Option<DateTime<Utc>>,
}

/// Who the caller is.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The token's `sub` (an account's `auth0_user_id`).
    pub user_id: String,
    pub role: String,
    /// The caller's account, when one has their `sub`.
    pub account_id: Option<Uuid>,
}

/// An email to look accounts up by.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSearch {
    #[schema(format = Email, max_length = 255)]
    pub email: String,
}
