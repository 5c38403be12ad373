-- Work split into key ranges and handed out as leases, so that any number of worker tasks and
-- processes (on any number of machines) share one job, and a dead worker's range is taken over
-- when its lease expires. Each range carries its own resume position.
-- Append-only: never edit this file once applied; add a new migration instead.

create table migration.work_ranges (
    job text not null,
    unit text not null,
    range_no integer not null,
    -- where the range starts and ends in the source (a byte offset, a token...), as the source
    -- defines it; `position` is how far it has been copied
    range_start jsonb not null,
    range_end jsonb,
    position jsonb,
    owner text,
    lease_until timestamptz,
    done boolean not null default false,
    -- what the range's documents came to: read, written, unchanged, quarantined, skipped
    counts jsonb not null default '{}',
    updated_at timestamptz not null default now(),
    primary key (job, unit, range_no)
);

create index idx_work_ranges_open on migration.work_ranges (job, unit, range_no) where not done;
