-- The key function names uuid-ossp's uuid_generate_v5 by the schema the extension lives in.
--
-- An index expression is evaluated by autovacuum's ANALYZE, which runs with an empty
-- search_path: the unqualified call failed there ("function uuid_generate_v5(uuid, text) does
-- not exist ... during inlining"), so every automatic ANALYZE of `subscriptions` and
-- `user_badges` (both index mystira_key_for_cosmos_id(cosmos_id)) aborted and those tables got
-- statistics only from an explicit ANALYZE. Found by `bench --accounts 1000000` (server log).
--
-- The extension's schema is looked up rather than assumed (`public` here, `extensions` on some
-- hosted servers). The body is otherwise unchanged, so every stored key and every index entry
-- stays valid; `create or replace` keeps the function's oid, which the indexes reference.
do $do$
declare
    ext_schema name;
begin
    select n.nspname into strict ext_schema
    from pg_extension e join pg_namespace n on n.oid = e.extnamespace
    where e.extname = 'uuid-ossp';
    execute format($f$
        create or replace function public.mystira_key_for_cosmos_id(p_cosmos_id text)
        returns uuid
        language sql immutable strict parallel safe
        as $body$
            select case
                when p_cosmos_id ~ '^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$'
                    then p_cosmos_id::uuid
                else %I.uuid_generate_v5('adc14b81-b9e5-552e-b105-5694b8c4f3d6'::uuid, p_cosmos_id)
            end
        $body$
    $f$, ext_schema);
end
$do$;
