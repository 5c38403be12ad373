-- Copies from the source (the backfill, replication, journal replay, repair, and the COPY
-- baselines of `bench`) set `mystira.keep_source_timestamps` to 'on' with SET LOCAL. The outbox
-- trigger function returned at once for them and the updated_at one changed nothing, but
-- PostgreSQL still called the plpgsql function for every row, and for the outbox (an AFTER
-- trigger) first queued an event per row: about a tenth of the server time of a COPY of badges
-- into the full schema, measured (docs/benchmarks.md). A WHEN clause is evaluated as the row is
-- written; when false, no function runs and no event is queued. The functions keep their own
-- check, so behaviour is the same with or without the clause.
-- Append-only: never edit this file once applied; add a new migration instead.

do $$
begin
    -- a stripped schema on record would be rebuilt with the old definitions
    if exists (select 1 from migration.load_state) then
        raise exception 'an initial load is under way (migration.load_state): finish it with the version that began it (run its migrate again), then upgrade';
    end if;
end
$$;

drop trigger accounts_outbox on accounts;
drop trigger subscriptions_outbox on subscriptions;
drop trigger completed_scenarios_outbox on completed_scenarios;
drop trigger user_profiles_outbox on user_profiles;
drop trigger user_badges_outbox on user_badges;
drop trigger pending_signups_outbox on pending_signups;

create trigger accounts_outbox after insert or update or delete on accounts
    for each row when (coalesce(current_setting('mystira.keep_source_timestamps', true), '') <> 'on')
    execute function migration.enqueue_outbox();
create trigger subscriptions_outbox after insert or update or delete on subscriptions
    for each row when (coalesce(current_setting('mystira.keep_source_timestamps', true), '') <> 'on')
    execute function migration.enqueue_outbox();
create trigger completed_scenarios_outbox after insert or update or delete on completed_scenarios
    for each row when (coalesce(current_setting('mystira.keep_source_timestamps', true), '') <> 'on')
    execute function migration.enqueue_outbox();
create trigger user_profiles_outbox after insert or update or delete on user_profiles
    for each row when (coalesce(current_setting('mystira.keep_source_timestamps', true), '') <> 'on')
    execute function migration.enqueue_outbox();
create trigger user_badges_outbox after insert or update or delete on user_badges
    for each row when (coalesce(current_setting('mystira.keep_source_timestamps', true), '') <> 'on')
    execute function migration.enqueue_outbox();
create trigger pending_signups_outbox after insert or update or delete on pending_signups
    for each row when (coalesce(current_setting('mystira.keep_source_timestamps', true), '') <> 'on')
    execute function migration.enqueue_outbox();

drop trigger update_subscriptions_updated_at on subscriptions;
drop trigger update_user_profiles_updated_at on user_profiles;

create trigger update_subscriptions_updated_at before update on subscriptions
    for each row when (coalesce(current_setting('mystira.keep_source_timestamps', true), '') <> 'on')
    execute function update_updated_at_column();
create trigger update_user_profiles_updated_at before update on user_profiles
    for each row when (coalesce(current_setting('mystira.keep_source_timestamps', true), '') <> 'on')
    execute function update_updated_at_column();
