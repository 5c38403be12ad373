-- The initial-load path (docs/initial-load.md): a first `migrate` into empty tables copies rows
-- with COPY into the domain tables stripped of their keys, indexes, foreign keys and triggers,
-- then builds them again. While that is under way, the definitions dropped are on record here
-- (so a process killed at any moment leaves either the full schema, or a stripped one whose
-- definitions can be rebuilt), and every other writer of the domain tables waits.
-- Append-only: never edit this file once applied; add a new migration instead.

create table migration.load_state (
    singleton boolean primary key default true check (singleton),
    -- loading: ranges are being copied into the stripped tables; rebuilding: the documents set
    -- aside are chosen and the schema is being built again; redoing: the schema is whole and
    -- the documents set aside go through the version-guarded upserts
    stage text not null,
    -- what was dropped: the statements that drop and make again each object, and the catalog
    -- the rebuild must come back to (mystira_postgres::copy_baseline::StrippedSchema)
    stripped jsonb not null,
    started_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint load_state_stage_check check (stage in ('loading', 'rebuilding', 'redoing'))
);

-- Documents of the initial load that compete with another document for a row or a unique
-- value (or point at an account that did not land): their COPY rows are taken out before the
-- keys come back, and they go through the upsert path's written rules after the rebuild.
create table migration.load_redo (
    container text not null,
    document_id text not null,
    -- the constraint (or rule) that put it here
    reason text not null,
    primary key (container, document_id)
);

-- The `AccountId` of a copied profile as its document spells it, when that is not the key's
-- canonical text: what the `missing_account` note of a profile whose account did not land
-- keeps (written set-based, before the keys come back).
create table migration.load_refs (
    document_id text primary key,
    account_ref text not null
);
