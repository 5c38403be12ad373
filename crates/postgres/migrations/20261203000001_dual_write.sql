-- Phases and dual write: phase overrides and change notification, the retry journal (phase 1:
-- Cosmos writes that PostgreSQL has not taken yet), the outbox (PostgreSQL writes that Cosmos
-- has not taken yet) and delete tombstones for the version guard.
-- Append-only: never edit this file once applied; add a new migration instead.

-- A transition can be forced past its gate, and can concern one account (a canary override)
-- rather than the whole domain.
alter table migration.phase_transitions add column forced boolean not null default false;
alter table migration.phase_transitions add column account_id uuid;

-- Canary accounts that run in another phase than the rest of the domain.
create table migration.phase_overrides (
    account_id uuid primary key,
    phase text not null,
    changed_at timestamptz not null default now(),
    changed_by text not null,
    reason text not null,
    constraint phase_overrides_phase_check check (
        phase in ('cosmos-only', 'dual-write-cosmos-read', 'dual-write-postgres-read', 'postgres-only')
    )
);

-- Every running process LISTENs on `mystira_phase` (and polls as a fallback), so a change is
-- seen everywhere within seconds. The payload names only the table that changed.
create function migration.notify_phase_change()
returns trigger as $$
begin
    perform pg_notify('mystira_phase', tg_table_name);
    return null;
end;
$$ language plpgsql;

create trigger phase_state_notify
    after insert or update or delete on migration.phase_state
    for each statement execute function migration.notify_phase_change();

create trigger phase_overrides_notify
    after insert or update or delete on migration.phase_overrides
    for each statement execute function migration.notify_phase_change();

-- A document deleted in Cosmos keeps its version row as a tombstone, so that a late copy of
-- the document from before the delete (a journal replay, a change-feed page read twice) cannot
-- bring it back.
alter table migration.document_versions add column deleted boolean not null default false;

-- Phase 1: a write that reached Cosmos (the primary) but not PostgreSQL, kept until it lands.
-- `document` is the document exactly as Cosmos stored it (with `_ts` and `_etag`), so replaying
-- goes through the backfill's version guard and is idempotent; a delete carries no document.
create table migration.retry_journal (
    id bigserial primary key,
    container text not null,
    document_id text not null,
    key uuid,
    op text not null,
    document jsonb,
    source_ts bigint,
    -- 'router' (written by the router directly) or 'file:<name>' (moved from a local journal file)
    origin text not null default 'router',
    enqueued_at timestamptz not null default now(),
    attempts integer not null default 0,
    -- names the failure class, never a value
    last_error text,
    next_attempt_at timestamptz not null default now(),
    constraint retry_journal_op_check check (op in ('upsert', 'delete')),
    constraint retry_journal_document_check check ((op = 'upsert') = (document is not null))
);

create index idx_retry_journal_due on migration.retry_journal (next_attempt_at, id);

-- Phase 2 (and any write made in PostgreSQL first): an aggregate whose state Cosmos has not
-- taken yet. A row only names the aggregate (the Cosmos document): the relay reads the current
-- state from PostgreSQL and writes it to Cosmos, so delivering twice, or out of order, still
-- ends with Cosmos holding the newest state. Rows are written by the trigger below, in the same
-- transaction as the change, so no write can commit without one.
create table migration.outbox (
    id bigserial primary key,
    container text not null,
    key uuid not null,
    enqueued_at timestamptz not null default now(),
    attempts integer not null default 0,
    last_error text,
    next_attempt_at timestamptz not null default now(),
    constraint outbox_container_check check (container in ('Accounts', 'UserProfiles', 'PendingSignups'))
);

create index idx_outbox_due on migration.outbox (next_attempt_at, id);
create index idx_outbox_aggregate on migration.outbox (container, key);

-- Adds an outbox row for the Cosmos document that a changed row belongs to. Skipped for copies
-- that come from Cosmos (the backfill, replication, journal replay and repair set
-- `mystira.keep_source_timestamps`), which must not echo back, and in `postgres-only`, where
-- Cosmos is archived (domain-wide, or for the canary account that owns the row).
create function migration.enqueue_outbox()
returns trigger as $$
declare
    changed record;
    aggregate_container text;
    aggregate_key uuid;
    owner_account uuid;
    effective_phase text;
begin
    if coalesce(current_setting('mystira.keep_source_timestamps', true), '') = 'on' then
        return null;
    end if;
    if tg_op = 'DELETE' then
        changed := old;
    else
        changed := new;
    end if;
    case tg_table_name
        when 'accounts' then
            aggregate_container := 'Accounts';
            aggregate_key := changed.id;
            owner_account := changed.id;
        when 'subscriptions', 'completed_scenarios' then
            aggregate_container := 'Accounts';
            aggregate_key := changed.account_id;
            owner_account := changed.account_id;
        when 'user_profiles' then
            aggregate_container := 'UserProfiles';
            aggregate_key := changed.id;
            owner_account := changed.account_id;
        when 'user_badges' then
            aggregate_container := 'UserProfiles';
            aggregate_key := changed.user_profile_id;
            owner_account := null;
        when 'pending_signups' then
            aggregate_container := 'PendingSignups';
            aggregate_key := changed.id;
            owner_account := null;
    end case;
    select phase into effective_phase from migration.phase_state;
    if owner_account is not null then
        select coalesce(
            (select o.phase from migration.phase_overrides o where o.account_id = owner_account),
            effective_phase
        ) into effective_phase;
    end if;
    if effective_phase = 'postgres-only' then
        return null;
    end if;
    insert into migration.outbox (container, key) values (aggregate_container, aggregate_key);
    return null;
end;
$$ language plpgsql;

create trigger accounts_outbox after insert or update or delete on accounts
    for each row execute function migration.enqueue_outbox();
create trigger subscriptions_outbox after insert or update or delete on subscriptions
    for each row execute function migration.enqueue_outbox();
create trigger completed_scenarios_outbox after insert or update or delete on completed_scenarios
    for each row execute function migration.enqueue_outbox();
create trigger user_profiles_outbox after insert or update or delete on user_profiles
    for each row execute function migration.enqueue_outbox();
create trigger user_badges_outbox after insert or update or delete on user_badges
    for each row execute function migration.enqueue_outbox();
create trigger pending_signups_outbox after insert or update or delete on pending_signups
    for each row execute function migration.enqueue_outbox();
