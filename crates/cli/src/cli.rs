//! The command line: global flags and the command tree (clap derive). Adding a command means a
//! variant in [`Command`] with a one-sentence doc comment, its arguments beside its handler in
//! `commands/<command>.rs`, and a match arm in `commands::run`; the top-level `--help` overview
//! is generated from the tree.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::UrlSource;
use crate::exit::EXIT_CODES_HELP;

/// Moves the user domain of Mystira (accounts, subscriptions, profiles, badges, completed
/// scenarios, pending sign-ups) from Azure Cosmos DB to PostgreSQL.
///
/// With no database configured, a private PostgreSQL cluster is started (and reused) in
/// $MYSTIRA_PG_DIR or ~/.local/share/mystira-users/postgres (as root:
/// /var/lib/mystira-users/postgres). Database precedence: --database-url > $DATABASE_URL >
/// database_url in the config file > the private cluster.
#[derive(Debug, Parser)]
#[command(name = "mystira-users", version)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted before or after any subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// PostgreSQL url of the database to use (default: the private cluster)
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        value_name = "URL",
        // the url may hold a password: never print it in --help
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Config file (TOML) [default: ./mystira-users.toml, else
    /// $XDG_CONFIG_HOME/mystira-users/config.toml, when present]
    #[arg(long, env = "MYSTIRA_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print machine-readable JSON on stdout (and JSON log lines on stderr)
    #[arg(long, global = true)]
    pub json: bool,

    /// Log more on stderr (-v: debug, -vv: trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Log only errors on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy every Cosmos document (from export files or a live account) into PostgreSQL.
    ///
    /// Streams Accounts, then UserProfiles, then PendingSignups through decode, validation and
    /// mapping into the six tables, in batches, idempotently: re-running changes nothing, an
    /// older copy never overwrites newer data. Documents that cannot be migrated go to the
    /// quarantine (see `quarantine list`) with the reason. Resumable: after a crash or kill,
    /// run it again and it continues where it stopped; several processes (on several machines)
    /// running it against one database share the work; a live container is split into ranges
    /// (feed ranges, then `_ts` intervals) that they read in parallel. With no source given, migrates the
    /// bundled sample (examples/sample); with no database configured, into the private cluster.
    /// Exit code 0 when every document read is accounted for (written, unchanged, quarantined
    /// or skipped with a reason), 1 otherwise.
    Migrate(crate::commands::MigrateArgs),

    /// Prove that PostgreSQL holds what the source holds: counts, missing, extra and changed rows.
    ///
    /// Compares a source (export files or a live account) with PostgreSQL per entity, through
    /// the same mapping as `migrate`: per key-range checksums first (hashed inside PostgreSQL
    /// and on the source side), then only the ranges that differ are examined row by row, with
    /// a field-level diff. Streams; memory does not grow with the data. Quarantined documents
    /// are reported as such, not as missing. Values are redacted unless --show-values (personal
    /// data). Each run is recorded in migration.runs. With --repair, re-copies every drifted
    /// document through the backfill's idempotent path (and deletes rows the source does not
    /// have, only with --delete-extra), then verifies again. Exit code 0 clean, 1 drift found
    /// (after --repair: drift left), 2 could not verify.
    Verify(crate::commands::VerifyArgs),

    /// Write a deterministic synthetic data set (every historical document shape, and a share
    /// of problem documents) as export files, or straight into a Cosmos account.
    Generate(crate::commands::GenerateArgs),

    /// Move export files in and out of a Cosmos account.
    #[command(subcommand)]
    Cosmos(crate::commands::CosmosCommand),

    /// Look at documents that could not be migrated, and retry them.
    #[command(subcommand)]
    Quarantine(crate::commands::QuarantineCommand),

    /// Measure the backfill against PostgreSQL's own COPY of the same rows, and its memory.
    ///
    /// Generates N accounts as export files; then, --runs times, each run in fresh databases:
    /// migrates them with a `migrate` child process, times `verify` of the same data, and loads
    /// the same final rows (exported untimed) with binary COPY in as many parallel streams as
    /// `migrate` has workers and 64 KiB send buffers, twice: into the full migrated schema, and
    /// in pg_restore's order (bare tables, then indexes, keys, foreign keys and checks,
    /// triggers, the catalog checked to be the migrated one afterwards). Before each timed
    /// phase, waits for autovacuum and CHECKPOINTs. Fails unless every side loaded the same
    /// rows. Prints each measure's median and spread, the ratios migrate / full-schema COPY,
    /// migrate / restore order and verify / migrate (per run, then median and spread) and the
    /// migrating process's peak memory. With --memory-sizes, also migrates data sets of those
    /// sizes and prints each one's peak memory, to show memory does not grow with the data.
    /// Uses temporary databases on the configured server (or the private cluster).
    Bench(crate::commands::BenchArgs),

    /// Measure what the dual write costs a caller: write latency p50/p99 per phase against
    /// phase 0, and the relay's throughput, in one run.
    ///
    /// Creates a PostgreSQL database and a Cosmos database of its own (on the configured
    /// server and account; dropped afterwards unless --keep), runs the same mix of writes
    /// (account, login, subscription, profile, badge, completed scenario) one call at a time
    /// through the router fixed in phase 0, 1 and 2, interleaved, --runs times after a warm-up,
    /// and a PostgreSQL round trip (`select 1`) the same way; prints the median of the runs and
    /// their spread, and each phase's p99 over phase 0 in PostgreSQL round trips. Then fills the
    /// outbox and times one relay emptying it. See docs/benchmarks.md.
    BenchWrites(crate::commands::BenchWritesArgs),

    /// Deliver the outbox to Cosmos: every change made in PostgreSQL first (phase 2) reaches
    /// Cosmos at least once.
    ///
    /// Takes the aggregates (Cosmos documents) with pending outbox rows, and for each one,
    /// under a lock that serialises deliveries of that aggregate across every relay and
    /// router, reads its state from PostgreSQL afresh and writes it into Cosmos in the shape
    /// the app reads (If-Match on the document's _etag, re-read and merge on a lost race), or
    /// deletes the document when PostgreSQL no longer has it; then records the version Cosmos
    /// answered and removes the rows. Any number of relays may run. A failed delivery stays in
    /// the outbox with a growing back-off. Runs until SIGINT/SIGTERM, or with --drain until the
    /// outbox is empty (exit 0) or --timeout passes (exit 3). Rolling back from phase 2 to 1
    /// waits for an empty outbox (see docs/runbook.md).
    Relay(crate::commands::RelayArgs),

    /// The retry journal of phase 1: writes Cosmos took that PostgreSQL has not yet.
    #[command(subcommand)]
    Journal(crate::commands::JournalCommand),

    /// Drive the dual-write router with a realistic, seeded mix of user-domain calls at a fixed
    /// rate, and record every acknowledged write in a ledger file.
    ///
    /// Hosts a router in the phase PostgreSQL says (seen within 2 s of a `phase set`), with its
    /// journal replay and outbox relay beside it, and makes --rate calls per second for
    /// --duration, open loop, at most --concurrency in flight: sign-up requests and
    /// verifications (right and wrong codes), account creation, logins, profile creation and
    /// edits, onboarding, badges, completed scenarios, subscription changes. Each call's intent
    /// and each acknowledged write go to the ledger (aggregate keys and digests of what was
    /// written, never values: no emails, codes or names). Prints throughput, errors by class
    /// and p50/p99 latency per operation and phase; then drains the journal and outbox (at
    /// most --drain-timeout). Check the ledger with `ledger check`. Creates the Cosmos
    /// containers when missing. Exit code 0; 1 when a ledger write fails: the run stops at that
    /// write (no call is made without its intent, and a call whose acknowledgement could not be
    /// written is not counted as acknowledged) and prints what it did until then.
    Loadgen(crate::commands::LoadgenArgs),

    /// Check a load generator's ledger against both stores: no acknowledged write lost,
    /// nothing duplicated. Exit code 0 pass, 1 lost or duplicated, 3 journal or outbox not
    /// drained, 4 nothing to check.
    #[command(subcommand)]
    Ledger(crate::commands::LedgerCommand),

    /// Show and change the migration phase (0 cosmos-only to 3 postgres-only), through its
    /// gates, with every change audited.
    #[command(subcommand)]
    Phase(crate::commands::PhaseCommand),

    /// Manage the database: schema migrations and the private PostgreSQL cluster.
    #[command(subcommand)]
    Db(crate::commands::DbCommand),

    /// Copy writes that reach Cosmos directly (bypassing the router) into PostgreSQL, from
    /// Cosmos's change feed.
    ///
    /// Per container and feed range: takes the range as a lease (several replicators share
    /// the ranges; a dead one's are taken over), reads the change feed from the continuation
    /// checkpointed in PostgreSQL, applies each page through the backfill's idempotent,
    /// version-guarded writer, then checkpoints. Safe to kill at any moment: a restart resumes
    /// and reaches the same state. Runs until SIGINT/SIGTERM (it then releases its leases), or
    /// with --once catches up to now and exits. Reports counts and lag (seconds behind the
    /// newest change applied, and since it was last caught up). --mode watermark polls a `_ts`
    /// watermark query instead, for servers without a change feed. Deletes (which the
    /// latest-version feed does not carry) are found by comparing key sets and applied only
    /// with --apply-deletes. Exit code 0, 1 when counts do not reconcile, 3 when deletes were
    /// found and not applied. See docs/replication.md.
    Replicate(crate::commands::ReplicateArgs),

    /// Print the migration's sign-off sheet: counts per container, quarantine by reason, notes
    /// by code, derived checks; codes, counts and document ids only, never values.
    ///
    /// Reads PostgreSQL only: the latest backfill run's counts per container (read, written,
    /// unchanged, quarantined, skipped, superseded), the rows per table and the open quarantine
    /// now, the open quarantine by reason code and the notes by code (each with a count and a
    /// few example document ids), and the accounts whose `UserProfileIds` list disagrees with
    /// the profiles' `AccountId`. Markdown, or with --json an object with stable field names
    /// (see docs/report.md). Never creates the database or applies the schema: an unreachable
    /// or unmigrated database is an error (exit code 1). Exit code 0 otherwise.
    Report(crate::commands::ReportArgs),

    /// The whole migration at a glance: the phase, its canary overrides and the gate of the
    /// next move; the retry journal (the table, and this machine's local files); the outbox;
    /// replication lag; the newest verify and backfill runs; the open quarantine; and what
    /// needs attention now. Read-only. With --json an object with stable field names (see
    /// docs/runbook.md). Exit code 0 when nothing needs attention, 3 when something does
    /// (listed under `attention`, each with a stable code).
    Status(crate::commands::StatusArgs),

    /// Serve the user domain over HTTP: the domain API (JWT), admin, OpenAPI, health and metrics.
    ///
    /// Uses the database as every command does (the self-started cluster when none is
    /// configured) and the Cosmos account when one is configured. `/healthz` answers while the
    /// process runs; `/readyz` answers 200 when the stores the current phase needs are
    /// reachable (PostgreSQL always, Cosmos in phases 0 to 2), else 503 with an
    /// application/problem+json naming them; `/metrics` is Prometheus's text format (requests,
    /// the phase, the retry journal, the outbox, the last verify, backfill ranges, store-write
    /// latency, dual-write failures, replication lag). SIGINT or SIGTERM stops accepting and
    /// answers the requests in flight first. Bearer tokens (JWT, RS256/ES256) are verified with
    /// the keys of --jwks-url or --jwks-file, or in development mode with the key of
    /// `mystira-users dev-token`. The domain API is `/v1/...` (`/openapi.json` describes it);
    /// admins also get the phase (show, set through the gates, history), the retry journal, the
    /// outbox, the runs and the quarantine (docs/service.md). Exit code 0 after a clean stop.
    Serve(crate::commands::ServeArgs),

    /// Print a bearer token that `serve` accepts in development mode (no --jwks-url or
    /// --jwks-file).
    ///
    /// Signed with the development key (ES256; created on first use, readable by its owner
    /// only), for --sub (the account's external user id), an optional --role and an optional
    /// --email (with `email_verified: true` unless --email-verified false: the proof an account
    /// needs to take that address). For development and tests only: production tokens come
    /// from the identity provider.
    DevToken(crate::commands::DevTokenArgs),

    /// Print the HTTP API's OpenAPI 3.1 document, as `serve` answers it at `/openapi.json`,
    /// without starting a server or opening a database (for linters and client generators;
    /// `scripts/api-check` lints it and compiles a typed client generated from it).
    Openapi,

    /// Archive every document of the user-domain containers of a Cosmos account into a folder
    /// or Azure Blob Storage: zstd-compressed JSON-lines chunks and a manifest.
    ///
    /// Reads Accounts, UserProfiles and PendingSignups as `migrate` reads a live account (feed
    /// ranges split by `_ts`, then the change feed from the position taken when each
    /// container's archive began) and writes every document exactly as the server returns it,
    /// system properties included, in chunks of at most --chunk-documents documents; the
    /// manifest lists per chunk its SHA-256, bytes and documents, per container its document
    /// count and when its archive began. Resumable: after a kill, run it again with the same
    /// --out and it keeps the finished chunks and continues (a chunk is written under a
    /// temporary name, fsynced and renamed, or uploaded as one blob, then recorded in the
    /// manifest, which is replaced atomically); on a finished archive it does nothing.
    /// `archive verify DIR|URL` checks it; `restore DIR|URL` loads it back (docs/archive.md).
    /// Exit code 0 when the archive is complete.
    Archive(crate::commands::ArchiveArgs),

    /// Load an archive into a Cosmos database: creates the containers with the app's
    /// partition keys and upserts every document, resumably.
    ///
    /// Checks the archive first (as `archive verify` does offline; a damaged or unfinished
    /// archive restores nothing), refuses a target whose containers hold documents unless
    /// --merge (exit code 3, nothing written), creates the database and containers when missing
    /// (Accounts and UserProfiles on /id, PendingSignups on /email), then upserts the chunks in
    /// the manifest's order, checkpointing after each in a state file in the archive: a
    /// re-run after a kill continues, a re-run after a finished restore does nothing
    /// (--restart starts over). System properties (_rid, _self, _etag, _ts, _attachments)
    /// cannot be written: they are stripped, and every document gets a new _ts and _etag.
    /// Finally reads the target back and compares every document with the archive's, system
    /// properties aside (without --merge it must hold nothing else). Exit code 0 restored and
    /// matching, 1 failed or not matching, 3 refused.
    Restore(crate::commands::RestoreArgs),
}

/// Parses the process's arguments (exiting with code 2 on a usage error, 0 for --help) and
/// says where the database url came from.
pub fn parse() -> (Cli, Option<UrlSource>) {
    let matches = command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let source = url_source(&matches);
    (cli, source)
}

/// The clap command, with the overview of every (sub)command and the exit codes appended to
/// the top-level help.
pub fn command() -> clap::Command {
    let command = Cli::command();
    let overview = overview(&command);
    command.after_help(format!("{overview}\n{EXIT_CODES_HELP}"))
}

fn url_source(matches: &clap::ArgMatches) -> Option<UrlSource> {
    // a global flag given after a subcommand is recorded in the subcommand's matches too;
    // clap propagates it to the top level, so the top level is enough
    match matches.value_source("database_url")? {
        ValueSource::CommandLine => Some(UrlSource::Flag),
        ValueSource::EnvVariable => Some(UrlSource::Env),
        _ => None,
    }
}

/// "Every command:" followed by one line per leaf command with its one-sentence summary.
fn overview(command: &clap::Command) -> String {
    let mut lines = Vec::new();
    collect_leaves(command, "", &mut lines);
    let width = lines.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut text = String::from("Every command:\n");
    for (name, about) in lines {
        text.push_str(&format!("  {name:width$}  {about}\n"));
    }
    text
}

fn collect_leaves(command: &clap::Command, prefix: &str, out: &mut Vec<(String, String)>) {
    for sub in command.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = format!("{prefix}{}", sub.get_name());
        if sub.has_subcommands() {
            // a command that also runs without a subcommand (`archive`) is listed itself too
            if !sub.is_subcommand_required_set() {
                let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
                out.push((name.clone(), about));
            }
            collect_leaves(sub, &format!("{name} "), out);
        } else {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            out.push((name, about));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::DbCommand;

    #[test]
    fn the_command_tree_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn top_level_help_lists_every_leaf_command_and_the_exit_codes() {
        let help = command().render_help().to_string();
        for name in ["db migrate", "db status", "db start", "db stop", "db url"] {
            assert!(help.contains(name), "{name} missing from:\n{help}");
        }
        assert!(help.contains("Exit codes:"), "{help}");
    }

    #[test]
    fn the_database_url_flag_is_recorded_as_given_on_the_command_line() {
        let matches = command()
            .try_get_matches_from([
                "mystira-users",
                "db",
                "url",
                "--database-url",
                "postgres://x/y",
            ])
            .expect("valid arguments");
        assert_eq!(url_source(&matches), Some(UrlSource::Flag));
        let cli = Cli::from_arg_matches(&matches).expect("cli");
        assert_eq!(cli.global.database_url.as_deref(), Some("postgres://x/y"));
        assert!(matches!(cli.command, Command::Db(DbCommand::Url)));
    }

    #[test]
    fn verbose_and_quiet_conflict() {
        let result =
            command().try_get_matches_from(["mystira-users", "-v", "--quiet", "db", "url"]);
        assert!(result.is_err());
    }
}
