-- Sign-up code guesses per email (`mystira-users serve`, issue 30 item 5), shared by every
-- replica through this table: at most 10 codes compared per email per window, whichever
-- clients guess and however many sign-ups the email has; the last guesses of a window are
-- kept for the client that asked for the newest code (its requester), so that others guessing
-- cannot lock it out; and the newest sign-up this service mailed, which supersedes the ones
-- before it. One row per email that asked for a code or was guessed at; a row is deleted once
-- both its window and its code have ended (`expires_at`, swept as new rows come).
-- No personal value in clear: the email is its SHA-256 (hex, of the normalized address), the
-- requester the SHA-256 of its client bucket (an IPv4 address or an IPv6 /64). No code is
-- stored here. See docs/security.md.
-- Append-only: never edit this file once applied; add a new migration instead.

create table service.signup_guesses (
    email_hash text primary key,
    -- the fixed window `guesses` counts in (a multiple of the window since the epoch)
    window_start timestamptz not null,
    -- codes compared in this window, any client, any sign-up of the email
    guesses integer not null default 0 check (guesses >= 0),
    -- the newest sign-up this service mailed to the email, and who asked for it (null: unknown)
    signup_id uuid,
    requester text,
    code_expires_at timestamptz,
    -- codes compared against that sign-up by its requester, and by every other client
    requester_guesses integer not null default 0 check (requester_guesses >= 0),
    other_guesses integer not null default 0 check (other_guesses >= 0),
    -- when the row is of no more use: its window and its code have both ended
    expires_at timestamptz not null
);

create index idx_signup_guesses_expires_at on service.signup_guesses (expires_at);
