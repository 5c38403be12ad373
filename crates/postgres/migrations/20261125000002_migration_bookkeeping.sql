-- Bookkeeping for moving the user domain (backfill, verification, replication, phase control).
-- It lives in its own schema so the domain tables stay exactly the domain.
-- Append-only: never edit this file once applied; add a new migration instead.

create schema migration;

-- One row per run of a job (backfill, verify, replicate...), with what it counted.
create table migration.runs (
    id uuid primary key default gen_random_uuid(),
    job text not null,
    source text not null,
    started_at timestamptz not null default now(),
    finished_at timestamptz,
    status text not null default 'running',
    -- per container: read, written, quarantined, skipped (by reason)
    counts jsonb not null default '{}',
    -- what the run covered and how it was configured (no secrets, no personal data)
    scope jsonb not null default '{}',
    constraint runs_status_check check (status in ('running', 'succeeded', 'failed', 'interrupted'))
);

create index idx_runs_job_started on migration.runs (job, started_at desc);

-- Where a job stopped, so a re-run continues there: a continuation token, a file offset, or a
-- key-range cursor, per job and per unit of work (container, key range).
create table migration.checkpoints (
    job text not null,
    unit text not null,
    position jsonb not null,
    updated_at timestamptz not null default now(),
    primary key (job, unit)
);

-- Documents that could not be migrated, kept whole with the reason, until an operator fixes the
-- data or the code and retries them. Keyed by (container, document id): the newest failure of a
-- document replaces the older one.
create table migration.quarantine (
    container text not null,
    document_id text not null,
    reason_code text not null,
    -- names the field and the rule; never contains the document's values
    message text not null,
    document jsonb not null,
    source_ts bigint,
    first_seen_at timestamptz not null default now(),
    last_seen_at timestamptz not null default now(),
    attempts integer not null default 1,
    resolved_at timestamptz,
    primary key (container, document_id)
);

create index idx_quarantine_open on migration.quarantine (container, reason_code) where resolved_at is null;

-- The migration phase every instance of the service obeys (a single row).
create table migration.phase_state (
    singleton boolean primary key default true check (singleton),
    phase text not null default 'cosmos-only',
    changed_at timestamptz not null default now(),
    changed_by text not null default 'schema',
    reason text not null default 'initial state',
    constraint phase_state_phase_check check (
        phase in ('cosmos-only', 'dual-write-cosmos-read', 'dual-write-postgres-read', 'postgres-only')
    )
);

insert into migration.phase_state default values;

-- Every phase change: who, when, why.
create table migration.phase_transitions (
    id bigserial primary key,
    from_phase text not null,
    to_phase text not null,
    changed_at timestamptz not null default now(),
    changed_by text not null,
    reason text not null
);
