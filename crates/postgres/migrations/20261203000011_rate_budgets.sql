-- One read-rate budget per job (e.g. `migrate --max-rps`), shared by every process of the run:
-- each process reserves a slice of the budget's time line with one UPDATE ... RETURNING per
-- page, so N processes together read no more than the rate, however many there are.
-- Append-only: never edit this file once applied; add a new migration instead.

create table migration.rate_budgets (
    job text primary key,
    -- when the budget is next free: a reservation of n documents at r per second moves it
    -- n / r seconds later (from now, when it lies in the past: unused time is not saved up)
    next_free timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
