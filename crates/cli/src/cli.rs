//! The command line: global flags and the command tree (clap derive). Adding a command means a
//! variant in [`Command`] (or [`DbCommand`]) with a one-sentence doc comment and a match arm in
//! `commands::run`; the top-level `--help` overview is generated from the tree.

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
    /// Manage the database: schema migrations and the private PostgreSQL cluster.
    #[command(subcommand)]
    Db(DbCommand),
}

/// `mystira-users db ...`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply every pending schema migration, creating the database if it does not exist.
    ///
    /// Prints each migration it applied (nothing when all were already applied: running it
    /// again is harmless). With no database configured, starts the private cluster first.
    Migrate,

    /// List the applied and pending schema migrations; exit code 3 when any are pending.
    ///
    /// Exit code 0: every migration is applied. 3: some are pending (run `db migrate`), or an
    /// applied migration's file differs from what was applied (someone edited it). With no
    /// database configured, starts the private cluster first.
    Status,

    /// Start the private PostgreSQL cluster (or reuse it when running) and print its url.
    ///
    /// Creates the cluster on first use (initdb), starts it, waits until it accepts
    /// connections (at most 30 s), creates the `mystira_users` database, and prints its url.
    /// With --json prints {"database_url": ..., "action": "initialized"|"started"|"reused",
    /// "dir": ...}. Always the private cluster, even when a database url is configured.
    Start,

    /// Stop the private PostgreSQL cluster (its data stays for the next start).
    ///
    /// Open sessions are ended; committed data is kept. Doing nothing when it is not running
    /// is not an error.
    Stop,

    /// Print the database url the other commands use, without starting anything.
    ///
    /// The configured url (flag, env or config file), or else the private cluster's url (which
    /// accepts connections only after `db start` or any command that starts it).
    Url,
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
