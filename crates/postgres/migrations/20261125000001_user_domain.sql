-- The user-domain schema of the spec (user-domain-postgresql-migration.md), with the fixes
-- listed in docs/schema.md. Table and column names are the spec's SQL (not its diagram).
-- Append-only: never edit this file once applied; add a new migration instead.

create extension if not exists "uuid-ossp";
create extension if not exists "pgcrypto";

-- =============================================================================
-- Id mapping (docs/schema.md, "Ids that are not UUIDs")
-- =============================================================================

-- The key of a Cosmos id: the id itself when it is a hyphenated 8-4-4-4-12 UUID (any case),
-- otherwise the UUIDv5 of the id under the project's fixed namespace. Must agree with
-- mystira_domain::ids::MappedId::from_source.
create function mystira_key_for_cosmos_id(p_cosmos_id text)
returns uuid
language sql immutable strict parallel safe
as $$
    select case
        when p_cosmos_id ~ '^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$'
            then p_cosmos_id::uuid
        else uuid_generate_v5('adc14b81-b9e5-552e-b105-5694b8c4f3d6'::uuid, p_cosmos_id)
    end
$$;

-- The original Cosmos id to remember: null when it is exactly the key's canonical text.
create function mystira_original_cosmos_id(p_cosmos_id text)
returns text
language sql immutable strict parallel safe
as $$
    select nullif(p_cosmos_id, mystira_key_for_cosmos_id(p_cosmos_id)::text)
$$;

-- =============================================================================
-- ACCOUNTS
-- =============================================================================

create table accounts (
    id uuid primary key default uuid_generate_v4(),
    -- the Cosmos id when it is not the canonical text of id (non-UUID or differently spelled)
    cosmos_id text,
    auth0_user_id varchar(255) unique,
    email varchar(255) not null,
    display_name varchar(255) not null default '',
    role varchar(50) not null default 'Guest',
    settings jsonb not null default '{}',
    created_at timestamptz not null default now(),
    last_login_at timestamptz not null default now(),

    -- relaxed from the spec: apostrophes in the local part, punycode TLDs (docs/schema.md)
    constraint accounts_email_check check (
        email ~* '^[A-Za-z0-9._%+''-]+@[A-Za-z0-9.-]+\.([A-Z]{2,}|xn--[A-Z0-9-]+)$'
    ),
    constraint accounts_role_check check (role in ('Guest', 'User', 'Admin', 'SuperAdmin')),
    constraint accounts_cosmos_id_key unique (cosmos_id)
);

-- lookups by email ignore case; the spec's plain index on email could not serve them
create index idx_accounts_email_lower on accounts (lower(email));
create index idx_accounts_role on accounts (role);
create index idx_accounts_created_at on accounts (created_at);
-- idx_accounts_auth0_user_id dropped: the UNIQUE constraint already indexes auth0_user_id

-- =============================================================================
-- SUBSCRIPTIONS
-- =============================================================================

create type subscription_type as enum ('Free', 'Monthly', 'Annual', 'Lifetime', 'Individual');

create table subscriptions (
    id uuid primary key default uuid_generate_v4(),
    cosmos_id text,
    account_id uuid not null references accounts (id) on delete cascade,
    type subscription_type not null default 'Free',
    product_id varchar(255),
    tier varchar(50) not null default 'Free',
    is_active boolean not null default true,
    valid_until timestamptz,
    start_date timestamptz default now(),
    end_date timestamptz,
    purchase_token text,
    last_verified timestamptz,
    purchased_scenarios text[] default '{}',
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),

    -- one subscription per account
    constraint subscriptions_account_unique unique (account_id),
    constraint subscriptions_cosmos_id_key unique (cosmos_id)
);

-- idx_subscriptions_account_id dropped: subscriptions_account_unique already indexes account_id
create index idx_subscriptions_is_active on subscriptions (is_active);
create index idx_subscriptions_type on subscriptions (type);
create index idx_subscriptions_valid_until on subscriptions (valid_until) where valid_until is not null;

-- =============================================================================
-- USER PROFILES
-- =============================================================================

create table user_profiles (
    id uuid primary key default uuid_generate_v4(),
    cosmos_id text,
    account_id uuid references accounts (id) on delete set null,
    name varchar(255) not null default '',
    age_group varchar(20) not null default '6-9',
    date_of_birth date,
    is_guest boolean not null default false,
    is_npc boolean not null default false,
    pronouns varchar(50),
    bio text,
    avatar_media_id varchar(255),
    selected_avatar_media_id varchar(255),
    preferred_themes jsonb not null default '[]',
    has_completed_onboarding boolean not null default false,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),

    constraint user_profiles_age_group_check check (age_group ~ '^[0-9]+-[0-9]+$'),
    constraint user_profiles_cosmos_id_key unique (cosmos_id)
);

create index idx_user_profiles_account_id on user_profiles (account_id);
create index idx_user_profiles_is_guest on user_profiles (is_guest);
create index idx_user_profiles_is_npc on user_profiles (is_npc);
create index idx_user_profiles_age_group on user_profiles (age_group);
create index idx_user_profiles_created_at on user_profiles (created_at);

-- =============================================================================
-- USER BADGES
-- =============================================================================

create table user_badges (
    id uuid primary key default uuid_generate_v4(),
    cosmos_id text,
    user_profile_id uuid not null references user_profiles (id) on delete cascade,
    badge_configuration_id varchar(255) not null,
    badge_id varchar(255),
    badge_name varchar(255) not null,
    badge_message text not null default '',
    axis varchar(100) not null,
    trigger_value real not null default 0,
    threshold real not null default 0,
    earned_at timestamptz not null default now(),
    game_session_id varchar(255),
    scenario_id varchar(255),
    image_id varchar(255) not null default '',

    -- one badge per configuration per profile
    constraint user_badges_unique unique (user_profile_id, badge_configuration_id),
    constraint user_badges_cosmos_id_key unique (cosmos_id)
);

-- idx_user_badges_profile_id dropped: user_badges_unique leads with user_profile_id
create index idx_user_badges_axis on user_badges (axis);
create index idx_user_badges_earned_at on user_badges (earned_at);
create index idx_user_badges_badge_config_id on user_badges (badge_configuration_id);

-- =============================================================================
-- COMPLETED SCENARIOS
-- =============================================================================

create table completed_scenarios (
    id uuid primary key default uuid_generate_v4(),
    account_id uuid not null references accounts (id) on delete cascade,
    scenario_id varchar(255) not null,
    completed_at timestamptz not null default now(),

    constraint completed_scenarios_unique unique (account_id, scenario_id)
);

-- idx_completed_scenarios_account_id dropped: completed_scenarios_unique leads with account_id
create index idx_completed_scenarios_scenario_id on completed_scenarios (scenario_id);

-- =============================================================================
-- PENDING SIGNUPS
-- =============================================================================

create table pending_signups (
    id uuid primary key default uuid_generate_v4(),
    cosmos_id text,
    email varchar(255) not null,
    display_name varchar(255) not null default '',
    code varchar(10) not null,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    is_used boolean not null default false,
    is_signin boolean not null default false,
    failed_attempts integer not null default 0,

    constraint pending_signups_email_check check (
        email ~* '^[A-Za-z0-9._%+''-]+@[A-Za-z0-9.-]+\.([A-Z]{2,}|xn--[A-Z0-9-]+)$'
    ),
    constraint pending_signups_failed_attempts_check check (failed_attempts >= 0 and failed_attempts <= 10),
    constraint pending_signups_cosmos_id_key unique (cosmos_id)
);

-- verification looks up the newest sign-up for an email, ignoring case
create index idx_pending_signups_email_lower on pending_signups (lower(email), created_at desc);
create index idx_pending_signups_code on pending_signups (code);
create index idx_pending_signups_expires_at on pending_signups (expires_at);
create index idx_pending_signups_is_used on pending_signups (is_used);

-- Cleanup old pending signups (can be called by a scheduled job)
create function cleanup_expired_signups()
returns integer as $$
declare
    deleted_count integer;
begin
    delete from pending_signups
    where expires_at < now() - interval '24 hours';

    get diagnostics deleted_count = row_count;
    return deleted_count;
end;
$$ language plpgsql;

-- =============================================================================
-- AUDIT TRIGGERS
-- =============================================================================

-- Sets updated_at on every update, except in a transaction that copies values from the source
-- (the backfill and replication set `mystira.keep_source_timestamps` to 'on' with SET LOCAL):
-- there the source's UpdatedAt is the truth and must not be replaced by the time of the copy.
create function update_updated_at_column()
returns trigger as $$
begin
    if coalesce(current_setting('mystira.keep_source_timestamps', true), '') <> 'on' then
        new.updated_at = now();
    end if;
    return new;
end;
$$ language plpgsql;

create trigger update_subscriptions_updated_at
    before update on subscriptions
    for each row execute function update_updated_at_column();

create trigger update_user_profiles_updated_at
    before update on user_profiles
    for each row execute function update_updated_at_column();

-- =============================================================================
-- VIEWS
-- =============================================================================

create view active_subscriptions as
select
    s.*,
    a.email,
    a.display_name
from subscriptions s
join accounts a on s.account_id = a.id
where s.is_active = true
  and (s.valid_until is null or s.valid_until > now());

create view user_profiles_with_account as
select
    p.*,
    a.email as account_email,
    a.display_name as account_display_name,
    a.role as account_role,
    s.type as subscription_type,
    s.tier as subscription_tier,
    s.is_active as subscription_active
from user_profiles p
left join accounts a on p.account_id = a.id
left join subscriptions s on a.id = s.account_id;

-- =============================================================================
-- migrate_account_from_cosmos
-- =============================================================================

-- The spec's function, fixed (docs/schema.md): non-UUID ids map through
-- mystira_key_for_cosmos_id instead of failing on `::uuid`, the original id is kept, an empty
-- auth0 id means none, and the role is matched ignoring case (null means Guest).
create function migrate_account_from_cosmos(
    p_cosmos_id varchar(255),
    p_auth0_user_id varchar(255),
    p_email varchar(255),
    p_display_name varchar(255),
    p_role varchar(50),
    p_settings jsonb,
    p_created_at timestamptz,
    p_last_login_at timestamptz
) returns uuid as $$
declare
    new_id uuid;
    v_role varchar(50);
begin
    select r into v_role
    from unnest(array['Guest', 'User', 'Admin', 'SuperAdmin']) as r
    where lower(r) = lower(trim(coalesce(p_role, 'Guest')));
    -- an unknown role is left as given, so accounts_role_check reports it
    v_role := coalesce(v_role, p_role);

    insert into accounts (
        id, cosmos_id, auth0_user_id, email, display_name, role, settings, created_at, last_login_at
    ) values (
        mystira_key_for_cosmos_id(p_cosmos_id), mystira_original_cosmos_id(p_cosmos_id),
        nullif(p_auth0_user_id, ''), trim(p_email), coalesce(p_display_name, ''), v_role,
        coalesce(p_settings, '{}'), coalesce(p_created_at, now()), coalesce(p_last_login_at, now())
    )
    on conflict (id) do update set
        auth0_user_id = excluded.auth0_user_id,
        email = excluded.email,
        display_name = excluded.display_name,
        role = excluded.role,
        settings = excluded.settings,
        last_login_at = excluded.last_login_at
    returning id into new_id;

    return new_id;
end;
$$ language plpgsql;
