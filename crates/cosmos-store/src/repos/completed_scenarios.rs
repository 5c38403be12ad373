//! [`CompletedScenarioRepository`] on the `CompletedScenarioIds` array of account documents.
//!
//! Limitation: Cosmos keeps no completion time. The codec derives `completed_at` from the
//! account's `LastLoginAt` (every completion happened in a session no later than that), so the
//! `at` given to `mark_completed` is not stored, the returned row carries the derived time, and
//! that time changes with every `record_login`. Keys are the codec's (and PostgreSQL's)
//! `derived_key("completed_scenario", account, scenario)`, so both stores agree on them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use mystira_cosmos_codec::codec;
use mystira_domain::error::ConflictKind;
use mystira_domain::ids::derived_key;
use mystira_domain::ports::{CompletedScenarioRepository, RepoResult};
use mystira_domain::{CompletedScenario, RepoError};
use uuid::Uuid;

use super::accounts::{decode_found, write_account};
use super::{Docs, Step, conflict, undecodable};

const ENTITY: &str = "Accounts.CompletedScenarioIds";

/// The kind passed to [`derived_key`] for completed scenarios (as the codec and PostgreSQL).
const KEY_KIND: &str = "completed_scenario";

/// Completed scenarios in Cosmos.
#[derive(Debug, Clone)]
pub struct CosmosCompletedScenarioRepository {
    docs: Docs,
}

impl CosmosCompletedScenarioRepository {
    /// On an open `Accounts` container.
    pub fn new(accounts: crate::Container) -> Self {
        Self::from_docs(Docs::new(accounts, codec::Container::Accounts))
    }

    pub(crate) fn from_docs(docs: Docs) -> Self {
        Self { docs }
    }
}

#[async_trait]
impl CompletedScenarioRepository for CosmosCompletedScenarioRepository {
    /// Appends the scenario id unless it is there. `at` is not stored (see the module docs);
    /// the returned row has the derived `completed_at` a later read returns.
    async fn mark_completed(
        &self,
        account_id: Uuid,
        scenario_id: &str,
        at: DateTime<Utc>,
    ) -> RepoResult<CompletedScenario> {
        CompletedScenario {
            id: derived_key(KEY_KIND, account_id, scenario_id),
            account_id,
            scenario_id: scenario_id.to_owned(),
            completed_at: at,
        }
        .validate()?;
        let docs = &self.docs;
        let stored = docs
            .modify(account_id, |found| {
                let mut decoded = decode_found(docs, found)?;
                if let Some(done) = decoded
                    .completed_scenarios
                    .iter()
                    .find(|c| c.scenario_id == scenario_id)
                {
                    return Ok(Step::Keep(done.clone()));
                }
                decoded.completed_scenarios.push(CompletedScenario {
                    id: derived_key(KEY_KIND, decoded.account.id, scenario_id),
                    account_id: decoded.account.id,
                    scenario_id: scenario_id.to_owned(),
                    completed_at: at,
                });
                let doc = write_account(found, &decoded);
                let written = codec::decode_account(&doc)
                    .map_err(|e| undecodable(docs.kind(), &e))?
                    .completed_scenarios
                    .into_iter()
                    .find(|c| c.scenario_id == scenario_id)
                    .ok_or_else(|| {
                        RepoError::Store("an encoded completion did not read back".to_owned())
                    })?;
                Ok(Step::Write(doc, written))
            })
            .await?;
        stored.ok_or_else(|| conflict(ENTITY, ConflictKind::MissingReference, "AccountId"))
    }

    /// In the order they were recorded (the array's order): all share one derived time, so this
    /// is the only order that still says which came first.
    async fn list_by_account(&self, account_id: Uuid) -> RepoResult<Vec<CompletedScenario>> {
        match self.docs.locate(account_id).await? {
            Some(found) => Ok(decode_found(&self.docs, &found)?.completed_scenarios),
            None => Ok(Vec::new()),
        }
    }
}
