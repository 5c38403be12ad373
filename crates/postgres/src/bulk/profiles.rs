//! Writing `UserProfiles` documents: the profile and its badges.

use std::collections::HashSet;

use async_trait::async_trait;
use mystira_domain::{UserBadge, UserProfile};
use sqlx::PgConnection;
use uuid::Uuid;

use super::embedded::{self, EmbeddedTable, Incoming};
use super::{BulkDocument, DocumentNote, NotesFor, ProfileDocument, Result, SourceVersion, column};
use crate::error::map_sqlx_error;

#[async_trait]
impl BulkDocument for ProfileDocument {
    const CONTAINER: &'static str = "UserProfiles";
    document_accessors!(profile);
    const SNAPSHOT_SQL: &'static str = "select jsonb_build_object(
             'profile', to_jsonb(p),
             'badges', coalesce((select jsonb_agg(to_jsonb(b) order by b.badge_configuration_id)
                                 from user_badges b where b.user_profile_id = p.id), '[]'))
         from user_profiles p where p.id = $1";

    fn validate(&self) -> Result<()> {
        self.profile.validate()?;
        for b in &self.badges {
            b.validate()?;
        }
        Ok(())
    }

    async fn write_rows(conn: &mut PgConnection, docs: &[&Self]) -> Result<Vec<NotesFor>> {
        let map = |e| map_sqlx_error("user_profiles", e);
        // A profile whose account does not exist lands detached; the reference it had is kept
        // in a note so an operator can see and repair it.
        let referenced: Vec<Uuid> = docs.iter().filter_map(|d| d.profile.account_id).collect();
        let existing: HashSet<Uuid> =
            sqlx::query_scalar("select id from accounts where id = any($1)")
                .bind(&referenced)
                .fetch_all(&mut *conn)
                .await
                .map_err(map)?
                .into_iter()
                .collect();
        let mut notes = Vec::new();
        let account_ids: Vec<Option<Uuid>> = docs
            .iter()
            .map(|d| match d.profile.account_id {
                Some(a) if existing.contains(&a) => Some(a),
                Some(a) => {
                    notes.push(NotesFor {
                        document_id: d.version.document_id.clone(),
                        note: DocumentNote {
                            code: "missing_account".into(),
                            subject: "AccountId".into(),
                            detail: serde_json::json!({
                                "account_ref": d.account_ref.clone().unwrap_or_else(|| a.to_string()),
                                "account_key": a,
                            }),
                            // the reference as stored: the link PostgreSQL could not keep
                            original: Some(serde_json::Value::String(
                                d.account_ref.clone().unwrap_or_else(|| a.to_string()),
                            )),
                        },
                    });
                    None
                }
                None => None,
            })
            .collect();
        let profiles: Vec<&UserProfile> = docs.iter().map(|d| &d.profile).collect();
        sqlx::query(
            "insert into user_profiles
                 (id, cosmos_id, account_id, name, age_group, date_of_birth, is_guest, is_npc,
                  pronouns, bio, avatar_media_id, selected_avatar_media_id, preferred_themes,
                  has_completed_onboarding, created_at, updated_at)
             select * from unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                                  $6::date[], $7::bool[], $8::bool[], $9::text[], $10::text[],
                                  $11::text[], $12::text[], $13::jsonb[], $14::bool[],
                                  $15::timestamptz[], $16::timestamptz[])
             on conflict (id) do update set
                 cosmos_id = excluded.cosmos_id, account_id = excluded.account_id,
                 name = excluded.name, age_group = excluded.age_group,
                 date_of_birth = excluded.date_of_birth, is_guest = excluded.is_guest,
                 is_npc = excluded.is_npc, pronouns = excluded.pronouns, bio = excluded.bio,
                 avatar_media_id = excluded.avatar_media_id,
                 selected_avatar_media_id = excluded.selected_avatar_media_id,
                 preferred_themes = excluded.preferred_themes,
                 has_completed_onboarding = excluded.has_completed_onboarding,
                 created_at = excluded.created_at, updated_at = excluded.updated_at",
        )
        .bind(column(&profiles, |p| p.id))
        .bind(column(&profiles, |p| p.cosmos_id.clone()))
        .bind(account_ids)
        .bind(column(&profiles, |p| p.name.clone()))
        .bind(column(&profiles, |p| p.age_group.as_str().to_owned()))
        .bind(column(&profiles, |p| {
            p.date_of_birth.as_ref().map(|d| *d.expose())
        }))
        .bind(column(&profiles, |p| p.is_guest))
        .bind(column(&profiles, |p| p.is_npc))
        .bind(column(&profiles, |p| p.pronouns.clone()))
        .bind(column(&profiles, |p| p.bio.clone()))
        .bind(column(&profiles, |p| p.avatar_media_id.clone()))
        .bind(column(&profiles, |p| p.selected_avatar_media_id.clone()))
        .bind(column(&profiles, |p| serde_json::json!(p.preferred_themes)))
        .bind(column(&profiles, |p| p.has_completed_onboarding))
        .bind(column(&profiles, |p| p.created_at))
        .bind(column(&profiles, |p| p.updated_at))
        .execute(&mut *conn)
        .await
        .map_err(map)?;

        let profile_ids: Vec<Uuid> = profiles.iter().map(|p| p.id).collect();
        notes.extend(write_badges(conn, &profile_ids, docs).await?);
        Ok(notes)
    }
}

/// Makes the badges of `profile_ids` exactly those of `docs`. Earliest first, so that if a
/// duplicate configuration slipped through, the earliest badge is the one kept. Their ids are
/// decided by [`embedded::resolve`]: a badge id another profile's document also carries is kept
/// by one of them only. Returns the collision notes of `docs`.
async fn write_badges(
    conn: &mut PgConnection,
    profile_ids: &[Uuid],
    docs: &[&ProfileDocument],
) -> Result<Vec<NotesFor>> {
    let map = |e| map_sqlx_error("user_badges", e);
    let mut owned: Vec<(&ProfileDocument, &UserBadge)> = docs
        .iter()
        .flat_map(|d| d.badges.iter().map(move |b| (*d, b)))
        .collect();
    owned.sort_by_key(|(_, b)| b.earned_at);
    let incoming: Vec<Incoming> = owned
        .iter()
        .map(|(d, b)| Incoming {
            natural: b.id,
            original: b
                .cosmos_id
                .clone()
                .unwrap_or_else(|| b.id.hyphenated().to_string()),
            owner: b.user_profile_id,
            owner_document: d.version.document_id.clone(),
            sub_key: b.badge_configuration_id.clone(),
            rank_at: b.earned_at,
        })
        .collect();
    let (assigned, notes) =
        embedded::resolve(conn, EmbeddedTable::Badges, profile_ids, &[], &incoming).await?;
    // By key whatever the statistics: each profile's badges are found by one descent of the
    // unique index that leads with `user_profile_id` (a lateral subquery the planner may not
    // flatten, `offset 0`, costs one lookup per profile), and deleted by their primary keys
    // (an array the planner cannot count, so it expects a few). `user_profile_id = any($1)`
    // with a batch's 1,000 ids, on a table autovacuum had not analyzed yet (an upsert run
    // into an empty database), was estimated at every row and planned as a sequential scan:
    // 640 ms a batch at 2.5 million badges (issue 33).
    sqlx::query(
        "delete from user_badges
         where id = any(array(
             select b.id from unnest($1::uuid[]) as k(id)
             cross join lateral (select id from user_badges where user_profile_id = k.id
                                 offset 0) as b))",
    )
    .bind(profile_ids)
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    if owned.is_empty() {
        return Ok(notes);
    }
    let badges: Vec<UserBadge> = owned
        .iter()
        .zip(&assigned)
        .map(|((_, b), a)| {
            let mut b = (*b).clone();
            b.id = a.id;
            if let Some(original) = &a.cosmos_id_override {
                b.cosmos_id = Some(original.clone());
            }
            b
        })
        .collect();
    sqlx::query(
        "insert into user_badges
             (id, cosmos_id, user_profile_id, badge_configuration_id, badge_id, badge_name,
              badge_message, axis, trigger_value, threshold, earned_at, game_session_id,
              scenario_id, image_id)
         select id, cosmos_id, user_profile_id, badge_configuration_id, badge_id, badge_name,
                badge_message, axis, trigger_value, threshold, earned_at, game_session_id,
                scenario_id, image_id
         from unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::text[], $9::real[], $10::real[],
                              $11::timestamptz[], $12::text[], $13::text[], $14::text[])
              with ordinality as b(id, cosmos_id, user_profile_id, badge_configuration_id,
                                   badge_id, badge_name, badge_message, axis, trigger_value,
                                   threshold, earned_at, game_session_id, scenario_id, image_id, n)
         order by n
         on conflict (user_profile_id, badge_configuration_id) do nothing",
    )
    .bind(column(&badges, |b| b.id))
    .bind(column(&badges, |b| b.cosmos_id.clone()))
    .bind(column(&badges, |b| b.user_profile_id))
    .bind(column(&badges, |b| b.badge_configuration_id.clone()))
    .bind(column(&badges, |b| b.badge_id.clone()))
    .bind(column(&badges, |b| b.badge_name.clone()))
    .bind(column(&badges, |b| b.badge_message.clone()))
    .bind(column(&badges, |b| b.axis.clone()))
    .bind(column(&badges, |b| b.trigger_value))
    .bind(column(&badges, |b| b.threshold))
    .bind(column(&badges, |b| b.earned_at))
    .bind(column(&badges, |b| b.game_session_id.clone()))
    .bind(column(&badges, |b| b.scenario_id.clone()))
    .bind(column(&badges, |b| b.image_id.clone()))
    .execute(&mut *conn)
    .await
    .map_err(map)?;
    Ok(notes)
}
