//! The six compared entities: which table, which columns (in one order shared by the SQL and
//! the Rust side), how a row is keyed and bucketed, and the rows a mapped source document
//! should have produced.
//!
//! Every row is bucketed by the key of the *document* it came from (an account's
//! subscription and completed scenarios by the account id, a profile's badges by the profile
//! id), so one document's rows all fall in the same key range: descending into a range reads
//! whole documents, and repair re-copies whole documents.

use mystira_postgres::bulk::{AccountDocument, ProfileDocument, SignupDocument};
use serde::Serialize;
use uuid::Uuid;

use super::canonical::{self, Kind};

/// A compared entity (serialized as its table name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    Accounts,
    UserProfiles,
    PendingSignups,
    Subscriptions,
    CompletedScenarios,
    UserBadges,
}

impl Entity {
    /// Document entities first: their rows say whether a document's copy is stale, which
    /// the rows of the entities embedded in it need to know.
    pub const ALL: [Entity; 6] = [
        Self::Accounts,
        Self::UserProfiles,
        Self::PendingSignups,
        Self::Subscriptions,
        Self::CompletedScenarios,
        Self::UserBadges,
    ];

    pub fn table(self) -> &'static str {
        match self {
            Self::Accounts => "accounts",
            Self::UserProfiles => "user_profiles",
            Self::PendingSignups => "pending_signups",
            Self::Subscriptions => "subscriptions",
            Self::CompletedScenarios => "completed_scenarios",
            Self::UserBadges => "user_badges",
        }
    }

    /// The Cosmos container whose documents hold this entity.
    pub fn container(self) -> &'static str {
        match self {
            Self::Accounts | Self::Subscriptions | Self::CompletedScenarios => "Accounts",
            Self::UserProfiles | Self::UserBadges => "UserProfiles",
            Self::PendingSignups => "PendingSignups",
        }
    }

    /// Whether rows of this entity are whole documents (not embedded in one).
    pub fn is_document(self) -> bool {
        matches!(
            self,
            Self::Accounts | Self::UserProfiles | Self::PendingSignups
        )
    }

    /// The document entity of a container.
    pub fn of_container(container: &str) -> Option<Self> {
        match container {
            "Accounts" => Some(Self::Accounts),
            "UserProfiles" => Some(Self::UserProfiles),
            "PendingSignups" => Some(Self::PendingSignups),
            _ => None,
        }
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.table())
    }
}

/// A compared column. `_ts` and `_etag` are the document's source version, from
/// `migration.document_versions`: a copy older than the source is drift even when its values
/// happen to be equal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column {
    pub name: &'static str,
    pub expr: &'static str,
    pub kind: Kind,
}

const fn col(name: &'static str, expr: &'static str, kind: Kind) -> Column {
    Column { name, expr, kind }
}

/// How an entity's rows are read in PostgreSQL.
#[derive(Debug)]
pub(crate) struct Table {
    pub from: &'static str,
    /// The uuid the row is bucketed by: its document's key.
    pub bucket: &'static str,
    pub key: &'static str,
    /// The Cosmos id of the row's document.
    pub document: &'static str,
    pub columns: &'static [Column],
}

const P: Kind = Kind::Plain;
const U: Kind = Kind::Uuid;
const TS: Kind = Kind::Timestamp;

/// One column of table alias `t`: `"name"` (compared as [`Kind::Plain`]) or `"name" => kind`.
macro_rules! column {
    ($name:literal) => {
        col($name, concat!("t.", $name), P)
    };
    ($name:literal => $kind:expr) => {
        col($name, concat!("t.", $name), $kind)
    };
}

/// Columns of table alias `t`, each as in [`column!`].
macro_rules! columns {
    ($($name:literal $(=> $kind:expr)?),* $(,)?) => {
        &[$(column!($name $(=> $kind)?)),*]
    };
}

/// A document entity's table: keyed and bucketed by its own id, with its source version
/// joined from `migration.document_versions`. The listed columns come between the
/// `id, cosmos_id` and the `_ts, _etag` that every document table has.
macro_rules! document_table {
    ($table:literal, $container:literal, [$($name:literal $(=> $kind:expr)?),* $(,)?]) => {
        Table {
            from: concat!(
                $table,
                " t left join migration.document_versions v on v.container = '",
                $container,
                "' and v.document_id = coalesce(t.cosmos_id, t.id::text)"
            ),
            bucket: "t.id",
            key: "t.id::text",
            document: "coalesce(t.cosmos_id, t.id::text)",
            columns: &[
                column!("id" => U),
                column!("cosmos_id"),
                $(column!($name $(=> $kind)?),)*
                col("_ts", "v.source_ts", P),
                col("_etag", "v.source_etag", P),
            ],
        }
    };
}

static ACCOUNTS: Table = document_table!(
    "accounts",
    "Accounts",
    [
        "auth0_user_id",
        "email",
        "display_name",
        "role",
        "settings" => Kind::Json,
        "created_at" => TS,
        "last_login_at" => TS,
    ]
);

/// Whether row `t` of `$table` lost its embedded id to another document's row: its `id` is a
/// derived key, `cosmos_id` keeps the original (which maps to another key), and its document
/// has the writer's `embedded_id_collision` note about that id (`$subject`). Only then does
/// the row count as carrying the original id; a derived id without the note is drift.
macro_rules! lost_embedded_id {
    ($container:literal, $document:expr, $subject:literal) => {
        concat!(
            "(t.cosmos_id is not null and t.id <> mystira_key_for_cosmos_id(t.cosmos_id) \
             and exists (select 1 from migration.document_notes n where n.container = '",
            $container,
            "' and n.document_id = ",
            $document,
            " and n.code = 'embedded_id_collision' and n.subject = ",
            $subject,
            "))"
        )
    };
}

/// The `id` and `cosmos_id` columns of an embedded row, as the document spelled them: a row
/// that lost its id to another document's row (see [`lost_embedded_id!`]) compares as the id
/// its original maps to, and as the `cosmos_id` the decoder gives that original.
macro_rules! embedded_id_columns {
    ($lost:expr) => {
        [
            col(
                "id",
                concat!(
                    "case when ",
                    $lost,
                    " then mystira_key_for_cosmos_id(t.cosmos_id) else t.id end"
                ),
                U,
            ),
            col(
                "cosmos_id",
                concat!(
                    "case when ",
                    $lost,
                    " then mystira_original_cosmos_id(t.cosmos_id) else t.cosmos_id end"
                ),
                P,
            ),
        ]
    };
}

/// The `Accounts` document of subscription `t` (literal, for the macros above).
macro_rules! account_document {
    () => {
        "(select coalesce(a.cosmos_id, a.id::text) from accounts a where a.id = t.account_id)"
    };
}

/// The `UserProfiles` document of badge `t`.
macro_rules! profile_document {
    () => {
        "(select coalesce(p.cosmos_id, p.id::text) from user_profiles p where p.id = t.user_profile_id)"
    };
}

/// The Cosmos id of the `Accounts` document an embedded row (`t.account_id`) belongs to.
const ACCOUNT_DOCUMENT: &str = account_document!();

const SUBSCRIPTION_IDS: [Column; 2] = embedded_id_columns!(lost_embedded_id!(
    "Accounts",
    account_document!(),
    "'Subscription.Id'"
));
const BADGE_IDS: [Column; 2] = embedded_id_columns!(lost_embedded_id!(
    "UserProfiles",
    profile_document!(),
    "'EarnedBadges[' || t.badge_configuration_id || '].Id'"
));

// Keyed by the account (an account has at most one subscription), not by the embedded
// `Subscription.Id`: two accounts may carry the same one, and then one of them holds it under
// a derived key (see `lost_embedded_id!`).
static SUBSCRIPTIONS: Table = Table {
    from: "subscriptions t",
    bucket: "t.account_id",
    key: "t.account_id::text",
    document: ACCOUNT_DOCUMENT,
    columns: &[
        SUBSCRIPTION_IDS[0],
        SUBSCRIPTION_IDS[1],
        column!("account_id" => U),
        column!("type"),
        column!("product_id"),
        column!("tier"),
        column!("is_active"),
        column!("valid_until" => TS),
        column!("start_date" => TS),
        column!("end_date" => TS),
        column!("purchase_token"),
        column!("last_verified" => TS),
        column!("purchased_scenarios" => Kind::TextArray),
        // `created_at` / `updated_at` are not compared: the app's `Subscription` has no
        // timestamps, so a document holds none (the backfill derives them) and a delivery
        // writes none (docs/dual-write.md, "What a delivery may change")
    ],
};

// `completed_at` is not compared: Cosmos keeps no completion time, the backfill derives one
// and deliberately keeps the first copy's value (a re-copy must not move it).
static COMPLETED_SCENARIOS: Table = Table {
    from: "completed_scenarios t",
    bucket: "t.account_id",
    key: "t.id::text",
    document: ACCOUNT_DOCUMENT,
    columns: columns!["id" => U, "account_id" => U, "scenario_id",],
};

static USER_PROFILES: Table = document_table!(
    "user_profiles",
    "UserProfiles",
    [
        "account_id" => U,
        "name",
        "age_group",
        "date_of_birth" => Kind::Date,
        "is_guest",
        "is_npc",
        "pronouns",
        "bio",
        "avatar_media_id",
        "selected_avatar_media_id",
        "preferred_themes" => Kind::Json,
        "has_completed_onboarding",
        "created_at" => TS,
        "updated_at" => TS,
    ]
);

// Keyed by (profile, badge configuration): a profile earns a configuration once, and a badge
// `Id` may repeat across profiles (then one holds it under a derived key).
static USER_BADGES: Table = Table {
    from: "user_badges t",
    bucket: "t.user_profile_id",
    key: "t.user_profile_id::text || ':' || t.badge_configuration_id",
    document: profile_document!(),
    columns: &[
        BADGE_IDS[0],
        BADGE_IDS[1],
        column!("user_profile_id" => U),
        column!("badge_configuration_id"),
        column!("badge_id"),
        column!("badge_name"),
        column!("badge_message"),
        column!("axis"),
        column!("trigger_value" => Kind::Real),
        column!("threshold" => Kind::Real),
        column!("earned_at" => TS),
        column!("game_session_id"),
        column!("scenario_id"),
        column!("image_id"),
    ],
};

static PENDING_SIGNUPS: Table = document_table!(
    "pending_signups",
    "PendingSignups",
    [
        "email",
        "display_name",
        "code",
        "verification_token_hash",
        "status",
        "verified_at" => TS,
        "consumed_at" => TS,
        "created_at" => TS,
        "expires_at" => TS,
        "is_used",
        "is_signin",
        "failed_attempts",
    ]
);

pub(crate) fn table(entity: Entity) -> &'static Table {
    match entity {
        Entity::Accounts => &ACCOUNTS,
        Entity::UserProfiles => &USER_PROFILES,
        Entity::PendingSignups => &PENDING_SIGNUPS,
        Entity::Subscriptions => &SUBSCRIPTIONS,
        Entity::CompletedScenarios => &COMPLETED_SCENARIOS,
        Entity::UserBadges => &USER_BADGES,
    }
}

impl Table {
    fn canonical_columns(&self) -> Vec<String> {
        self.columns.iter().map(|c| c.kind.sql(c.expr)).collect()
    }

    /// The canonical expressions with the fixed width of their text, if any.
    fn canonical_columns_with_widths(&self) -> Vec<(String, Option<usize>)> {
        self.columns
            .iter()
            .map(|c| (c.kind.sql(c.expr), c.kind.width()))
            .collect()
    }

    fn row_text_sql(&self) -> String {
        canonical::row_text_sql(&self.canonical_columns_with_widths())
    }

    /// Per-bucket aggregates; binds `$1`, `$2` = the first and last bucket (int4).
    pub(crate) fn aggregate_sql(&self) -> String {
        canonical::aggregate_sql(
            self.from,
            self.bucket,
            &self.canonical_columns_with_widths(),
        )
    }

    /// A key range's rows as (key, document key, document id, hash); binds `$1` (and `$2`
    /// unless `open_end`) = the range's uuid bounds.
    pub(crate) fn bucket_rows_sql(&self, open_end: bool) -> String {
        format!(
            "select {key}, {bucket}, {document}, {hash} from {from} where {range}",
            key = self.key,
            bucket = self.bucket,
            document = self.document,
            hash = canonical::row_hash_sql(&self.row_text_sql()),
            from = self.from,
            range = self.range_sql(open_end),
        )
    }

    /// Some rows' canonical values: (key, values...); binds the range as above and then the
    /// keys (text[]).
    pub(crate) fn values_sql(&self, open_end: bool) -> String {
        let keys = if open_end { "$2" } else { "$3" };
        format!(
            "select {key}, {cols} from {from} where {range} and {key} = any({keys})",
            key = self.key,
            cols = self.canonical_columns().join(", "),
            from = self.from,
            range = self.range_sql(open_end),
        )
    }

    /// Deletes the row of key `$1` (text).
    pub(crate) fn delete_sql(&self, entity: Entity) -> String {
        format!(
            "delete from {table} t where {key} = $1",
            table = entity.table(),
            key = self.key
        )
    }

    /// Uuid range predicates, so the tables' key indexes serve them.
    fn range_sql(&self, open_end: bool) -> String {
        if open_end {
            format!("{b} >= $1", b = self.bucket)
        } else {
            format!("{b} >= $1 and {b} < $2", b = self.bucket)
        }
    }
}

/// A row a source document should have produced in PostgreSQL.
#[derive(Debug, Clone)]
pub(crate) struct SourceRow {
    pub entity: Entity,
    /// The key of the document the row belongs to (what it is bucketed by).
    pub document_key: Uuid,
    pub key: String,
    pub values: Vec<Option<String>>,
    /// The hash of the canonical text ([`canonical::row_hash`]), computed with the row (on the
    /// thread that maps the page).
    pub hash: canonical::RowHash,
}

impl SourceRow {
    fn new(
        entity: Entity,
        document_key: Uuid,
        key: String,
        fields: Vec<(&'static str, Option<String>)>,
    ) -> Self {
        debug_assert!(
            fields
                .iter()
                .map(|f| f.0)
                .eq(table(entity).columns.iter().map(|c| c.name)),
            "the Rust columns of {entity} are not the SQL columns"
        );
        let values: Vec<Option<String>> = fields.into_iter().map(|f| f.1).collect();
        Self {
            entity,
            document_key,
            key,
            hash: canonical::row_hash(&values),
            values,
        }
    }

    pub(crate) fn bucket(&self) -> u8 {
        self.document_key.as_bytes()[0]
    }
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

/// A uuid's text (what `to_string` gives, without the formatting machinery: two or three per
/// row of the source pass).
fn uuid_text(u: Uuid) -> String {
    u.hyphenated()
        .encode_lower(&mut Uuid::encode_buffer())
        .to_owned()
}

fn uid(u: Uuid) -> Option<String> {
    Some(uuid_text(u))
}

fn boolean(b: bool) -> Option<String> {
    Some(if b { "true" } else { "false" }.to_owned())
}

fn ts(t: &chrono::DateTime<chrono::Utc>) -> Option<String> {
    Some(canonical::timestamp(t))
}

fn opt_ts(t: Option<&chrono::DateTime<chrono::Utc>>) -> Option<String> {
    t.map(canonical::timestamp)
}

fn json(v: &impl Serialize) -> Option<String> {
    serde_json::to_value(v).ok().map(|v| canonical::json(&v))
}

fn version(v: &mystira_postgres::bulk::SourceVersion) -> [(&'static str, Option<String>); 2] {
    [("_ts", s(v.ts)), ("_etag", v.etag.clone())]
}

pub(crate) fn account_rows(d: &AccountDocument) -> Vec<SourceRow> {
    let a = &d.account;
    let mut fields = vec![
        ("id", uid(a.id)),
        ("cosmos_id", a.cosmos_id.clone()),
        ("auth0_user_id", a.auth0_user_id.clone()),
        ("email", s(a.email.as_str())),
        ("display_name", s(&a.display_name)),
        ("role", s(a.role.as_str())),
        ("settings", json(&a.settings)),
        ("created_at", ts(&a.created_at)),
        ("last_login_at", ts(&a.last_login_at)),
    ];
    fields.extend(version(&d.version));
    let mut rows = vec![SourceRow::new(
        Entity::Accounts,
        a.id,
        uuid_text(a.id),
        fields,
    )];
    if let Some(sub) = &d.subscription {
        rows.push(SourceRow::new(
            Entity::Subscriptions,
            a.id,
            uuid_text(sub.account_id),
            vec![
                ("id", uid(sub.id)),
                ("cosmos_id", sub.cosmos_id.clone()),
                ("account_id", uid(sub.account_id)),
                ("type", s(sub.subscription_type.as_str())),
                ("product_id", sub.product_id.clone()),
                ("tier", s(&sub.tier)),
                ("is_active", boolean(sub.is_active)),
                ("valid_until", opt_ts(sub.valid_until.as_ref())),
                ("start_date", opt_ts(sub.start_date.as_ref())),
                ("end_date", opt_ts(sub.end_date.as_ref())),
                (
                    "purchase_token",
                    sub.purchase_token.as_ref().map(|t| t.expose().clone()),
                ),
                ("last_verified", opt_ts(sub.last_verified.as_ref())),
                ("purchased_scenarios", json(&sub.purchased_scenarios)),
            ],
        ));
    }
    rows.extend(d.completed_scenarios.iter().map(|c| {
        SourceRow::new(
            Entity::CompletedScenarios,
            a.id,
            uuid_text(c.id),
            vec![
                ("id", uid(c.id)),
                ("account_id", uid(c.account_id)),
                ("scenario_id", s(&c.scenario_id)),
            ],
        )
    }));
    rows
}

/// `account_attached`: whether the referenced account exists, as the writer decides (a
/// profile whose account does not exist lands detached).
pub(crate) fn profile_rows(d: &ProfileDocument, account_attached: bool) -> Vec<SourceRow> {
    let p = &d.profile;
    let mut fields = vec![
        ("id", uid(p.id)),
        ("cosmos_id", p.cosmos_id.clone()),
        (
            "account_id",
            p.account_id.filter(|_| account_attached).map(uuid_text),
        ),
        ("name", s(&p.name)),
        ("age_group", s(p.age_group.as_str())),
        (
            "date_of_birth",
            p.date_of_birth
                .as_ref()
                .map(|d| canonical::date(d.expose())),
        ),
        ("is_guest", boolean(p.is_guest)),
        ("is_npc", boolean(p.is_npc)),
        ("pronouns", p.pronouns.clone()),
        ("bio", p.bio.clone()),
        ("avatar_media_id", p.avatar_media_id.clone()),
        (
            "selected_avatar_media_id",
            p.selected_avatar_media_id.clone(),
        ),
        ("preferred_themes", json(&p.preferred_themes)),
        (
            "has_completed_onboarding",
            boolean(p.has_completed_onboarding),
        ),
        ("created_at", ts(&p.created_at)),
        ("updated_at", ts(&p.updated_at)),
    ];
    fields.extend(version(&d.version));
    let mut rows = vec![SourceRow::new(
        Entity::UserProfiles,
        p.id,
        uuid_text(p.id),
        fields,
    )];
    rows.extend(d.badges.iter().map(|b| {
        SourceRow::new(
            Entity::UserBadges,
            p.id,
            {
                let mut key = uuid_text(b.user_profile_id);
                key.push(':');
                key.push_str(&b.badge_configuration_id);
                key
            },
            vec![
                ("id", uid(b.id)),
                ("cosmos_id", b.cosmos_id.clone()),
                ("user_profile_id", uid(b.user_profile_id)),
                ("badge_configuration_id", s(&b.badge_configuration_id)),
                ("badge_id", b.badge_id.clone()),
                ("badge_name", s(&b.badge_name)),
                ("badge_message", s(&b.badge_message)),
                ("axis", s(&b.axis)),
                ("trigger_value", Some(canonical::real(b.trigger_value))),
                ("threshold", Some(canonical::real(b.threshold))),
                ("earned_at", ts(&b.earned_at)),
                ("game_session_id", b.game_session_id.clone()),
                ("scenario_id", b.scenario_id.clone()),
                ("image_id", s(&b.image_id)),
            ],
        )
    }));
    rows
}

pub(crate) fn signup_rows(d: &SignupDocument) -> Vec<SourceRow> {
    let g = &d.signup;
    let mut fields = vec![
        ("id", uid(g.id)),
        ("cosmos_id", g.cosmos_id.clone()),
        ("email", s(g.email.as_str())),
        ("display_name", s(&g.display_name)),
        ("code", g.code.as_ref().map(|c| c.as_str().to_owned())),
        ("verification_token_hash", g.token_hash().map(str::to_owned)),
        (
            "status",
            g.magic_link.as_ref().map(|m| m.status.get().to_string()),
        ),
        (
            "verified_at",
            opt_ts(g.magic_link.as_ref().and_then(|m| m.verified_at.as_ref())),
        ),
        (
            "consumed_at",
            opt_ts(g.magic_link.as_ref().and_then(|m| m.consumed_at.as_ref())),
        ),
        ("created_at", ts(&g.created_at)),
        ("expires_at", ts(&g.expires_at)),
        ("is_used", boolean(g.is_used)),
        ("is_signin", boolean(g.is_signin)),
        ("failed_attempts", s(g.failed_attempts)),
    ];
    fields.extend(version(&d.version));
    vec![SourceRow::new(
        Entity::PendingSignups,
        g.id,
        uuid_text(g.id),
        fields,
    )]
}
