-- Heartbeats of the long-running workers (`replicate` and `relay` run continuously): each
-- process upserts its row every few seconds while it runs, also while it waits out a store
-- outage (then `state` is 'retrying' with the failure's class). A row whose `beat_at` is old
-- belongs to a worker that died, hung, or cannot reach PostgreSQL: `serve` exports the age of
-- the newest beat per kind (mystira_worker_heartbeat_age_seconds), the alert rules watch it, and
-- `mystira_postgres::heartbeats::live_workers` is what a phase gate asks. Times are the
-- server's. Rows of workers not heard of for a day are deleted when a worker starts.
-- Append-only: never edit this file once applied; add a new migration instead.

create table migration.worker_heartbeats (
    -- `<kind>@<host>:<pid>`: one row per process
    worker text primary key,
    kind text not null,
    host text not null,
    pid integer not null,
    -- replicate: change-feed, watermark or auto; relay: null
    mode text,
    started_at timestamptz not null default now(),
    beat_at timestamptz not null default now(),
    state text not null default 'running',
    -- the class of the failure being retried ('unavailable', 'cosmos_transport', ...), never a
    -- message or a value
    last_error_class text,
    -- when the outage being retried began (null while running)
    retrying_since timestamptz,
    constraint worker_heartbeats_kind_check check (kind in ('replicate', 'relay')),
    constraint worker_heartbeats_state_check check (state in ('running', 'retrying', 'stopped'))
);

create index idx_worker_heartbeats_kind_beat on migration.worker_heartbeats (kind, beat_at desc);
