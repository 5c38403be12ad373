-- A domain-wide phase change records what it did to the canary overrides it left on the wrong
-- side (an override behind the domain after a forward move, ahead of it after a backward one):
-- cleared (each cleared override also has its own transition row, account_id set) or kept
-- (`phase set --keep-overrides`). Empty for every other change. See docs/phases.md.
-- Append-only: never edit this file once applied; add a new migration instead.

alter table migration.phase_transitions
    add column overrides_kept uuid[] not null default '{}',
    add column overrides_cleared uuid[] not null default '{}';
