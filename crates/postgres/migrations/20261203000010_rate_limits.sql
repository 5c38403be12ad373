-- The service's rate limits (`mystira-users serve`): fixed-window hit counters, shared by every
-- replica through this table, so that N replicas still allow one budget, not N.
-- A bucket names what is limited and for whom, never a personal value in clear: an email is
-- kept as its SHA-256 (`signup-email:<hex>`), a client by its address (`signup-client:<ip>`).
create schema service;

create table service.rate_limit_hits (
    bucket text not null,
    window_start timestamptz not null,
    hits integer not null check (hits > 0),
    primary key (bucket, window_start)
);
