-- When a replication range last reached the end of its source (the change feed caught up, or a
-- watermark pass completed). Every change Cosmos committed before that moment is in
-- PostgreSQL, so `now() - caught_up_at` bounds how far PostgreSQL is behind for that range:
-- `serve` exports it as mystira_replication_lag_seconds, and the alert rules watch it.
-- NULL until the range first catches up. Other jobs leave it NULL.
alter table migration.work_ranges add column caught_up_at timestamptz;
