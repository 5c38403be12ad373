//! The domain tables' schema as a load in pg_restore's order handles it: which tables there
//! are, their unique keys, stripping their secondary indexes, keys, foreign keys and triggers
//! (the definitions recorded) and building them again in parallel sessions, checked against
//! the catalog. The initial load strips and rebuilds with it; `bench`'s restore-order baseline
//! (in the load-test kit) measures the same rebuild.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use sqlx::{PgConnection, PgPool};
use tokio::task::JoinSet;

/// The domain tables in an order that satisfies their foreign keys.
pub const DOMAIN_TABLES: [&str; 6] = [
    "accounts",
    "subscriptions",
    "user_profiles",
    "user_badges",
    "completed_scenarios",
    "pending_signups",
];

/// `maintenance_work_mem` of the sessions that rebuild indexes and constraints, as one would
/// raise it for pg_restore (the default, 64MB, spills the larger sorts to disk).
const REBUILD_MAINTENANCE_WORK_MEM: &str = "256MB";

/// What can make a strip's rebuild fail: the database, or a schema that did not come back as
/// it was.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(
        "after the restore-order rebuild the catalog of the domain tables differs from the \
         migrated one\nmissing:\n  {}\nunexpected:\n  {}",
        missing.join("\n  "),
        unexpected.join("\n  ")
    )]
    CatalogDiffers {
        missing: Vec<String>,
        unexpected: Vec<String>,
    },
    #[error("a worker task failed: {0}")]
    Worker(String),
}

/// The definitions of the domain tables' secondary indexes, keys, foreign keys and triggers,
/// taken from the catalog and dropped by [`strip_tables_in`], to be rebuilt by
/// [`rebuild_schema`]. Serializable: the initial load keeps it in `migration.load_state`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StrippedSchema {
    /// The tables stripped (a record written before this field existed stripped the domain
    /// tables).
    #[serde(default = "table_names")]
    tables: Vec<String>,
    /// The catalog before stripping: what the rebuild must come back to.
    catalog: BTreeSet<String>,
    /// The statements that dropped the objects, each made idempotent (`if exists`), in the
    /// order they ran: run again, they finish a rebuild that a kill left half done.
    drops: Vec<String>,
    indexes: Vec<String>,
    keys: Vec<String>,
    /// One `alter table` per table adding all its foreign keys, each validated as it is added.
    foreign_keys: Vec<String>,
    triggers: Vec<String>,
}

impl StrippedSchema {
    /// Objects dropped.
    pub fn objects(&self) -> usize {
        self.indexes.len()
            + self.keys.len()
            + self.triggers.len()
            + self
                .foreign_keys
                .iter()
                .map(|s| s.matches(" add constraint ").count())
                .sum::<usize>()
    }
}

/// Each object of the domain tables that the restore order drops: its kind, its table, the
/// statement that drops it and the statement (or, for constraints, the `add constraint` clause)
/// that makes it again; in an order in which the drops succeed (a foreign key before the key it
/// references, a constraint before its index).
const DEFINITIONS_QUERY: &str = r#"
with t as (select unnest($1::text[])::regclass as oid)
select kind, tbl, drop_sql, create_sql from (
    select 0 as step, 'trigger' as kind, tg.tgrelid::regclass::text as tbl,
           format('drop trigger if exists %I on %s', tg.tgname, tg.tgrelid::regclass) as drop_sql,
           pg_get_triggerdef(tg.oid) as create_sql
    from pg_trigger tg join t on t.oid = tg.tgrelid
    where not tg.tgisinternal
    union all
    select case when c.contype = 'f' then 1 else 2 end,
           case when c.contype = 'f' then 'foreign key' else 'key' end,
           c.conrelid::regclass::text,
           format('alter table %s drop constraint if exists %I', c.conrelid::regclass, c.conname),
           format('add constraint %I %s', c.conname, pg_get_constraintdef(c.oid))
    from pg_constraint c join t on t.oid = c.conrelid
    where c.contype in ('p', 'u', 'x', 'f')
    union all
    select 3, 'index', i.indrelid::regclass::text,
           format('drop index if exists %s', i.indexrelid::regclass),
           pg_get_indexdef(i.indexrelid)
    from pg_index i join t on t.oid = i.indrelid
    where not exists (
        select 1 from pg_constraint c where c.conindid = i.indexrelid and c.conrelid = i.indrelid
    )
) d
order by step, tbl, drop_sql
"#;

/// Takes the definitions of the secondary indexes, primary/unique keys, foreign keys and
/// triggers of `tables` (names as `regclass` reads them) from the catalog and drops them,
/// inside the caller's transaction (so that the caller can record the definitions in the same
/// commit that drops the objects), leaving the tables pg_restore creates before it loads data:
/// columns, defaults, NOT NULL and checks. The checks stay because pg_dump writes them into
/// CREATE TABLE, and because one of ours does not survive a round trip through its definition
/// text: `pg_get_constraintdef` of `accounts_role_check` (`role in (...)` on a varchar), added
/// again, is stored as a different expression, so the schema would not come back. The initial
/// load strips the domain tables and `migration.document_versions`, whose keys cost more per
/// row than a domain table's.
pub async fn strip_tables_in(
    conn: &mut PgConnection,
    tables: Vec<String>,
) -> Result<StrippedSchema, sqlx::Error> {
    let catalog = catalog_of(&mut *conn, &tables).await?;
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(DEFINITIONS_QUERY)
        .bind(&tables)
        .fetch_all(&mut *conn)
        .await?;
    let mut stripped = StrippedSchema {
        tables,
        catalog,
        drops: Vec::new(),
        indexes: Vec::new(),
        keys: Vec::new(),
        foreign_keys: Vec::new(),
        triggers: Vec::new(),
    };
    let mut per_table: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (kind, table, drop_sql, create_sql) in rows {
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop_sql.clone()))
            .execute(&mut *conn)
            .await?;
        stripped.drops.push(drop_sql);
        match kind.as_str() {
            "trigger" => stripped.triggers.push(create_sql),
            "index" => stripped.indexes.push(create_sql),
            "key" => stripped
                .keys
                .push(format!("alter table {table} {create_sql}")),
            _ => per_table.entry(table).or_default().push(create_sql),
        }
    }
    stripped.foreign_keys = per_table
        .into_iter()
        .map(|(table, clauses)| format!("alter table {table} {}", clauses.join(", ")))
        .collect();
    Ok(stripped)
}

/// A primary or unique key of a domain table: what a set-based check for duplicates needs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UniqueKey {
    pub table: String,
    pub name: String,
    pub columns: Vec<String>,
}

/// The primary and unique keys of the domain tables (by the catalog). Fails when a table has a
/// unique index that is not a plain key (partial, on an expression): a check by `group by` on
/// its columns would not be that index's rule.
pub async fn unique_keys(conn: &mut PgConnection) -> Result<Vec<UniqueKey>, sqlx::Error> {
    let odd: Option<String> = sqlx::query_scalar(
        "with t as (select unnest($1::text[])::regclass as oid)
         select i.indexrelid::regclass::text from pg_index i join t on t.oid = i.indrelid
         where i.indisunique and (i.indpred is not null or i.indexprs is not null)
         limit 1",
    )
    .bind(table_names())
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(index) = odd {
        return Err(sqlx::Error::Protocol(format!(
            "unique index `{index}` is partial or on an expression; the initial load's              duplicate check does not cover it"
        )));
    }
    let rows: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "with t as (select unnest($1::text[])::regclass as oid)
         select c.conrelid::regclass::text, c.conname::text,
                array_agg(a.attname::text order by k.ord)
         from pg_constraint c join t on t.oid = c.conrelid
         cross join unnest(c.conkey) with ordinality as k(attnum, ord)
         join pg_attribute a on a.attrelid = c.conrelid and a.attnum = k.attnum
         where c.contype in ('p', 'u')
         group by 1, 2 order by 1, 2",
    )
    .bind(table_names())
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(table, name, columns)| UniqueKey {
            table,
            name,
            columns,
        })
        .collect())
}

/// Makes again what [`strip_tables_in`] dropped, as pg_restore does: the secondary indexes (in
/// parallel sessions), the primary and unique keys, the foreign keys (validated as they are
/// added, one `alter table` per table), the triggers; `streams` sessions at a time, each with
/// `maintenance_work_mem` raised. A rebuild that a kill left half done is finished by running
/// this again: the drops run first (each `if exists`), so every object is made once.
/// Then checks that the catalog of the tables is the one [`strip_tables_in`] found.
pub async fn rebuild_schema(
    pool: &PgPool,
    schema: &StrippedSchema,
    streams: usize,
) -> Result<(), SchemaError> {
    let mut tx = pool.begin().await?;
    // most of the objects are gone already: no notice per `if exists` that finds nothing
    sqlx::query("set local client_min_messages = warning")
        .execute(&mut *tx)
        .await?;
    for drop in &schema.drops {
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop.clone()))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    rebuild_objects(pool, schema, streams).await?;
    check_catalog(pool, schema).await
}

/// The rebuild of [`rebuild_schema`] without its drops and check: the secondary indexes, keys,
/// foreign keys and triggers of `schema`, in that order, `streams` sessions at a time.
pub async fn rebuild_objects(
    pool: &PgPool,
    schema: &StrippedSchema,
    streams: usize,
) -> Result<(), SchemaError> {
    for stage in [
        &schema.indexes,
        &schema.keys,
        &schema.foreign_keys,
        &schema.triggers,
    ] {
        let pool = pool.clone();
        in_parallel(stage.clone(), streams, move |sql| {
            rebuild(pool.clone(), sql)
        })
        .await?;
    }
    Ok(())
}

/// `ANALYZE` of `tables`, `streams` sessions at a time: what one runs after pg_restore (which
/// leaves no statistics), so that the first queries are not planned for empty tables.
pub async fn analyze_tables(
    pool: &PgPool,
    tables: Vec<String>,
    streams: usize,
) -> Result<(), SchemaError> {
    let pool = pool.clone();
    in_parallel(tables, streams, move |table| {
        let pool = pool.clone();
        async move {
            // names come from the caller's constants, never from input
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("analyze {table}")))
                .execute(&pool)
                .await
                .map(|_| ())
        }
    })
    .await?;
    Ok(())
}

/// Checks that the catalog of the stripped tables is again the one [`strip_tables_in`] found.
pub async fn check_catalog(pool: &PgPool, schema: &StrippedSchema) -> Result<(), SchemaError> {
    let after = catalog_of(pool, &schema.tables).await?;
    if after != schema.catalog {
        return Err(SchemaError::CatalogDiffers {
            missing: schema.catalog.difference(&after).cloned().collect(),
            unexpected: after.difference(&schema.catalog).cloned().collect(),
        });
    }
    Ok(())
}

async fn rebuild(pool: PgPool, sql: String) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "set local maintenance_work_mem = '{REBUILD_MAINTENANCE_WORK_MEM}'"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The indexes (with their validity), constraints (with the index each uses) and triggers
/// (with whether they are enabled) of the domain tables, one text line each: two databases
/// with equal sets have the same schema where the restore order touches it.
pub async fn domain_catalog<'e>(
    conn: impl sqlx::PgExecutor<'e>,
) -> Result<BTreeSet<String>, sqlx::Error> {
    catalog_of(conn, &table_names()).await
}

/// [`domain_catalog`] of `tables`.
async fn catalog_of<'e>(
    conn: impl sqlx::PgExecutor<'e>,
    tables: &[String],
) -> Result<BTreeSet<String>, sqlx::Error> {
    let lines: Vec<String> = sqlx::query_scalar(
        r#"
        with t as (select unnest($1::text[])::regclass as oid)
        select 'index ' || pg_get_indexdef(i.indexrelid)
               || case when i.indisvalid then '' else ' (invalid)' end
        from pg_index i join t on t.oid = i.indrelid
        union all
        select 'constraint ' || c.conrelid::regclass::text || '.' || c.conname || ' '
               || pg_get_constraintdef(c.oid)
               || case when c.conindid <> 0 then ' using ' || c.conindid::regclass::text
                       else '' end
        from pg_constraint c join t on t.oid = c.conrelid
        union all
        select 'trigger ' || pg_get_triggerdef(tg.oid) || ' enabled ' || tg.tgenabled::text
        from pg_trigger tg join t on t.oid = tg.tgrelid
        where not tg.tgisinternal
        "#,
    )
    .bind(tables)
    .fetch_all(conn)
    .await?;
    Ok(lines.into_iter().collect())
}

/// [`DOMAIN_TABLES`] as owned names, as [`strip_tables_in`] takes them.
pub fn table_names() -> Vec<String> {
    DOMAIN_TABLES.iter().map(|t| (*t).to_owned()).collect()
}

/// Runs `work` on every job, `workers` at a time (each worker takes the next job when it is
/// done with one, so a long job does not hold the others back); the results in no particular
/// order. The first failure is returned and the other workers are stopped.
pub async fn in_parallel<T, R, F, Fut>(
    jobs: Vec<T>,
    workers: usize,
    work: F,
) -> Result<Vec<R>, SchemaError>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, sqlx::Error>> + Send,
{
    let queue = Arc::new(Mutex::new(jobs.into_iter()));
    let work = Arc::new(work);
    let mut set = JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = Arc::clone(&queue);
        let work = Arc::clone(&work);
        set.spawn(async move {
            let mut done = Vec::new();
            loop {
                // a poisoned lock only means another worker panicked: its iterator is intact
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some(job) = next else { break };
                done.push(work(job).await?);
            }
            Ok::<_, sqlx::Error>(done)
        });
    }
    let mut results = Vec::new();
    while let Some(joined) = set.join_next().await {
        let done = joined.map_err(|e| SchemaError::Worker(e.to_string()))??;
        results.extend(done);
    }
    Ok(results)
}
