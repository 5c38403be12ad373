-- The change feed's cross-check, per replication range: `replicate` compares what a range's
-- change feed delivered with a `_ts` query of the same range (the probe). Everything changed in
-- Cosmos with a `_ts` below `probed_to` was found in PostgreSQL (or delivered by the feed) at the
-- last probe that agreed; the next probe reads from there. A probe that finds documents the
-- feed never delivered is a disagreement: `agreed` false, `missing` how many, counted in
-- `disagreements`, and in the default mode (auto) the range is read from the `_ts` watermark
-- instead (`fallback`). `serve` exports the disagreeing ranges per container
-- (mystira_replication_feed_disagreeing_ranges) and an alert watches them. Ids and values are
-- never stored here: counts and times only. See docs/replication.md.
-- Append-only: never edit this file once applied; add a new migration instead.

create table migration.feed_checks (
    job text not null,
    unit text not null,
    range_no integer not null,
    -- epoch seconds (Cosmos `_ts`): the end of the window the last agreeing probe covered
    probed_to bigint,
    checked_at timestamptz,
    -- the last probe's verdict (null: no probe yet)
    agreed boolean,
    -- documents the last disagreeing probe found missing from the feed
    missing bigint not null default 0,
    disagreements bigint not null default 0,
    last_disagreement_at timestamptz,
    -- auto mode reads this range from the `_ts` watermark (the feed disagreed or cannot be read)
    fallback boolean not null default false,
    primary key (job, unit, range_no)
);
