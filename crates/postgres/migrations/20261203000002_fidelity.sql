-- Fidelity on messy real data: embedded ids that repeat across documents, two documents that
-- map to one row, the original of every value the codec changed, magic-link sign-ups, and runs
-- that were killed. Additive; the reasons are in docs/schema.md and docs/cosmos-mapping.md.
-- Append-only: never edit this file once applied; add a new migration instead.

-- The original of a value the codec changed or dropped (a trimmed email, a legacy age-group
-- name, a duplicate badge whole), so nothing is changed without a record of what it was. It
-- can hold personal data, like the domain tables it sits beside: it is never logged, and
-- `report` prints only codes, counts and document ids. `detail` stays ids and field names.
alter table migration.document_notes add column original jsonb;

-- Two documents of one container can map to one key (EF Core 8's `Account|<guid>` id and EF
-- Core 9's `<guid>`, or one GUID in two letter cases): the version guard looks up the other
-- documents of a key to let only the newest one own the row.
create index idx_document_versions_key on migration.document_versions (container, key);

-- An embedded id (`Subscription.Id`, a badge's `Id`) is not a document id, and real data
-- repeats them across documents (copied defaults, cloned test data). One row keeps the id, the
-- others get a derived key and keep the original spelling in `cosmos_id`, so `cosmos_id` is
-- not unique here. Rows are found by the key their original id maps to, hence the index on it.
alter table subscriptions drop constraint subscriptions_cosmos_id_key;
create index idx_subscriptions_source_key on subscriptions (mystira_key_for_cosmos_id(cosmos_id))
    where cosmos_id is not null;
alter table user_badges drop constraint user_badges_cosmos_id_key;
create index idx_user_badges_source_key on user_badges (mystira_key_for_cosmos_id(cosmos_id))
    where cosmos_id is not null;

-- The magic-link version of PendingSignup (the app writes it today): no code, a hash of the
-- emailed token, a status and the times it was verified and consumed. Either a code or a token
-- hash identifies a sign-up.
alter table pending_signups alter column code drop not null;
alter table pending_signups
    add column verification_token_hash text,
    add column status smallint,
    add column verified_at timestamptz,
    add column consumed_at timestamptz,
    add constraint pending_signups_code_or_token_check
        check (code is not null or verification_token_hash is not null),
    add constraint pending_signups_status_check check (status between 0 and 4);
create index idx_pending_signups_token_hash on pending_signups (verification_token_hash)
    where verification_token_hash is not null;

-- A run whose process died (kill -9, a lost machine) is closed as `abandoned` once its leases
-- have expired or the next run of the job starts, instead of staying `running` for ever.
alter table migration.runs drop constraint runs_status_check;
alter table migration.runs add constraint runs_status_check
    check (status in ('running', 'succeeded', 'failed', 'interrupted', 'abandoned'));
