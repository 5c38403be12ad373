//! What the stores hold for one aggregate, read back through both stores' repositories, and
//! the duplicates that only the raw documents or rows show.

use std::collections::{BTreeMap, HashMap};

use mystira_domain::ports::{
    AccountRepository, BadgeRepository, CompletedScenarioRepository, PendingSignupRepository,
    ProfileRepository, SubscriptionRepository,
};
use mystira_domain::{CompletedScenario, RepoError, UserBadge};
use sqlx::PgPool;
use uuid::Uuid;

use super::groups::FieldGroups;
use super::record::Groups;

/// What one store holds for one aggregate: digest per field group, and what it holds twice.
#[derive(Debug, Default)]
pub(super) struct Held {
    pub(super) groups: Groups,
    pub(super) duplicated: Vec<(String, u64)>,
}

pub(super) fn hold_completions(held: &mut Held, account: Uuid, list: &[CompletedScenario]) {
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for c in list {
        *seen.entry(c.scenario_id.as_str()).or_default() += 1;
        held.groups
            .extend(FieldGroups::completion(account, &c.scenario_id));
    }
    for (scenario, n) in seen {
        if n > 1 {
            held.duplicated.push((format!("completed:{scenario}"), n));
        }
    }
}

pub(super) fn hold_badges(held: &mut Held, list: &[UserBadge]) {
    let mut seen: HashMap<&str, u64> = HashMap::new();
    for b in list {
        *seen.entry(b.badge_configuration_id.as_str()).or_default() += 1;
        // the first award wins; a duplicate is reported, not digested
        if seen[b.badge_configuration_id.as_str()] == 1 {
            held.groups.extend(FieldGroups::badge(b));
        }
    }
    for (config, n) in seen {
        if n > 1 {
            held.duplicated.push((format!("badge:{config}"), n));
        }
    }
}

/// The ports of one store, to read an aggregate the same way from either.
pub(super) struct Reader<'a> {
    pub(super) accounts: &'a (dyn AccountRepository + 'a),
    pub(super) subscriptions: &'a (dyn SubscriptionRepository + 'a),
    pub(super) completed: &'a (dyn CompletedScenarioRepository + 'a),
    pub(super) profiles: &'a (dyn ProfileRepository + 'a),
    pub(super) badges: &'a (dyn BadgeRepository + 'a),
    pub(super) signups: &'a (dyn PendingSignupRepository + 'a),
}

impl Reader<'_> {
    pub(super) async fn held(&self, container: &str, key: Uuid) -> Result<Held, RepoError> {
        let mut held = Held::default();
        match container {
            "Accounts" => {
                if let Some(a) = self.accounts.get(key).await? {
                    held.groups.extend(FieldGroups::account(&a));
                    // one account per auth0 id: the same user's email finds every copy
                    let same_user = self
                        .accounts
                        .find_by_email(&a.email)
                        .await?
                        .into_iter()
                        .filter(|o| a.auth0_user_id.is_some() && o.auth0_user_id == a.auth0_user_id)
                        .count() as u64;
                    if same_user > 1 {
                        held.duplicated.push(("auth0_user_id".into(), same_user));
                    }
                }
                if let Some(s) = self.subscriptions.get_for_account(key).await? {
                    held.groups.extend(FieldGroups::subscription(&s));
                }
                let completed = self.completed.list_by_account(key).await?;
                hold_completions(&mut held, key, &completed);
            }
            "UserProfiles" => {
                if let Some(p) = self.profiles.get(key).await? {
                    held.groups.extend(FieldGroups::profile(&p));
                }
                let badges = self.badges.list_by_profile(key).await?;
                hold_badges(&mut held, &badges);
            }
            "PendingSignups" => {
                if let Some(s) = self.signups.get(key).await? {
                    held.groups.extend(FieldGroups::signup(&s));
                }
            }
            _ => {}
        }
        Ok(held)
    }
}

/// What a Cosmos document holds twice in its embedded lists, read from the raw document: the
/// codec keeps one of each when it decodes (and notes the rest), so the repositories never
/// show a duplicate.
pub(super) fn raw_duplicates(container: &str, doc: &serde_json::Value) -> Vec<(String, u64)> {
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    match container {
        "Accounts" => {
            let ids: Vec<String> = match doc.get("CompletedScenarioIds") {
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                Some(serde_json::Value::String(s)) => s
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            };
            for id in ids {
                *seen.entry(format!("completed:{id}")).or_default() += 1;
            }
        }
        "UserProfiles" => {
            for badge in doc
                .get("EarnedBadges")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(config) = badge
                    .get("BadgeConfigurationId")
                    .and_then(serde_json::Value::as_str)
                {
                    *seen.entry(format!("badge:{config}")).or_default() += 1;
                }
            }
        }
        _ => {}
    }
    seen.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// PostgreSQL rows that share a Cosmos document id (two rows for one document), among `keys`.
pub(super) async fn pg_document_duplicates(
    pool: &PgPool,
    keys: &[Uuid],
) -> Result<Vec<(String, Uuid, i64)>, RepoError> {
    let sql = |e| mystira_postgres::map_sqlx_error("ledger check", e);
    let mut out = Vec::new();
    for (container, table) in [
        ("Accounts", "accounts"),
        ("UserProfiles", "user_profiles"),
        ("PendingSignups", "pending_signups"),
    ] {
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select min(t.id::text)::uuid, count(*) from {table} t
             where coalesce(t.cosmos_id, t.id::text) in
                   (select coalesce(cosmos_id, id::text) from {table} where id = any($1))
             group by coalesce(t.cosmos_id, t.id::text) having count(*) > 1"
        )))
        .bind(keys)
        .fetch_all(pool)
        .await
        .map_err(sql)?;
        out.extend(rows.into_iter().map(|(k, n)| (container.to_owned(), k, n)));
    }
    Ok(out)
}
