//! [`BadgeRepository`] on the `EarnedBadges` array of profile documents. An award appends one
//! badge to the stored array (kept verbatim otherwise, duplicates from the past included) with
//! an `If-Match` replace, so of two concurrent awards of one configuration exactly one lands and
//! the other re-reads and returns it as `AlreadyHeld`.

use async_trait::async_trait;
use mystira_cosmos_codec::codec;
use mystira_domain::error::ConflictKind;
use mystira_domain::ports::{AwardOutcome, BadgeRepository, RepoResult};
use mystira_domain::{RepoError, UserBadge};
use uuid::Uuid;

use super::{Docs, Step, conflict, undecodable};

const ENTITY: &str = "UserProfiles.EarnedBadges";

/// Badges in Cosmos.
#[derive(Debug, Clone)]
pub struct CosmosBadgeRepository {
    docs: Docs,
}

impl CosmosBadgeRepository {
    /// On an open `UserProfiles` container.
    pub fn new(profiles: crate::Container) -> Self {
        Self::from_docs(Docs::new(profiles, codec::Container::UserProfiles))
    }

    pub(crate) fn from_docs(docs: Docs) -> Self {
        Self { docs }
    }
}

#[async_trait]
impl BadgeRepository for CosmosBadgeRepository {
    async fn award(&self, badge: &UserBadge) -> RepoResult<AwardOutcome> {
        badge.validate()?;
        let docs = &self.docs;
        let outcome = docs
            .modify(badge.user_profile_id, |found| {
                let decoded =
                    codec::decode_profile(&found.doc).map_err(|e| undecodable(docs.kind(), &e))?;
                // The codec keeps the earliest of stored duplicates: that is the held badge.
                if let Some(held) = decoded
                    .badges
                    .iter()
                    .find(|b| b.badge_configuration_id == badge.badge_configuration_id)
                {
                    return Ok(Step::Keep(AwardOutcome::AlreadyHeld(held.clone())));
                }
                let new = UserBadge {
                    user_profile_id: decoded.profile.id,
                    ..badge.clone()
                };
                // appended at the end of `EarnedBadges`, as the app appends it; the stored
                // badges (duplicates included) stay as they are
                let mut badges = decoded.badges.clone();
                badges.push(new);
                let doc =
                    codec::profile_document(Some(&found.doc), &decoded.profile, &badges, None);
                let written = codec::decode_profile(&doc)
                    .map_err(|e| undecodable(docs.kind(), &e))?
                    .badges
                    .into_iter()
                    .find(|b| b.badge_configuration_id == badge.badge_configuration_id)
                    .ok_or_else(|| RepoError::Store("a badge did not read back".to_owned()))?;
                Ok(Step::Write(doc, AwardOutcome::Awarded(written)))
            })
            .await?;
        outcome.ok_or_else(|| conflict(ENTITY, ConflictKind::MissingReference, "UserProfileId"))
    }

    /// The profile's badges (one per configuration, as the codec keeps them), earliest first.
    async fn list_by_profile(&self, profile_id: Uuid) -> RepoResult<Vec<UserBadge>> {
        let Some(found) = self.docs.locate(profile_id).await? else {
            return Ok(Vec::new());
        };
        let mut badges = codec::decode_profile(&found.doc)
            .map_err(|e| undecodable(self.docs.kind(), &e))?
            .badges;
        badges.sort_by_key(|b| (b.earned_at, b.id));
        Ok(badges)
    }
}
