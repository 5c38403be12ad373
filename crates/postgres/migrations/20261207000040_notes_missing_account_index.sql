-- A phase-1 copy of an account (every account write the router copies) attaches the profiles
-- waiting for it: the `missing_account` notes of UserProfiles whose `detail->>'account_key'`
-- names the account (`bulk::accounts::attach_waiting_profiles`). Without an index that lookup
-- read every such note, and under write load, with the notes table churning (each copy
-- replaces its document's notes), it took 200-400 ms per call instead of 0.8 ms at rest (issue
-- 33, item 4). This partial index makes it cost in proportion to the call: the statement
-- compares the text form, so no note can make the index's expression fail.
-- Append-only: never edit this file once applied; add a new migration instead.
create index idx_document_notes_missing_account
    on migration.document_notes ((detail->>'account_key'))
    where container = 'UserProfiles' and code = 'missing_account';
