-- Source versions and per-document notes for the backfill and replication.
-- Append-only: never edit this file once applied; add a new migration instead.

-- The Cosmos version (_ts, _etag) of the last copy of each document. Every copy into the domain
-- tables goes through this table in the same statement: a document is written only when its
-- version is newer than the one recorded (or has the same _ts and another _etag, as _ts has
-- one-second resolution), so a re-run changes nothing and an older copy never overwrites newer
-- data.
create table migration.document_versions (
    container text not null,
    document_id text not null,
    key uuid not null,
    source_ts bigint not null,
    source_etag text,
    written_at timestamptz not null default now(),
    primary key (container, document_id)
);

-- Things an operator should see about documents that did land: a broken reference kept here
-- (a profile whose account does not exist lands detached), a duplicate badge that was not
-- copied, a default that was applied. Replaced whenever the document is copied again.
-- `detail` holds ids and field names only, never personal data.
create table migration.document_notes (
    container text not null,
    document_id text not null,
    code text not null,
    subject text not null default '',
    detail jsonb not null default '{}',
    seen_at timestamptz not null default now(),
    primary key (container, document_id, code, subject)
);

create index idx_document_notes_code on migration.document_notes (code);
