//! The `mystira-users` binary. It only wires things together: parse the command line, set up
//! logging, resolve the settings, run one command, print its outcome, and exit with the code
//! `exit` defines. Everything else lives in the library crates.

mod cli;
mod commands;
mod config;
mod exit;
mod logging;

use std::process::ExitCode;

use anyhow::Context as _;

use crate::commands::Outcome;
use crate::config::{SearchEnv, Settings};
use crate::exit::Exit;

/// Decoding builds and frees a tree of small values per document, on several threads at once;
/// glibc's malloc spent about a quarter of a migration's client CPU on it, mimalloc's
/// per-thread free lists much less (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let (cli, url_source) = cli::parse();
    logging::init(&cli.global);
    let json = cli.global.json;
    match run(&cli, url_source) {
        Ok(outcome) => {
            print_outcome(&outcome, json);
            outcome.exit.into()
        }
        Err(error) => {
            let exit = Exit::for_error(&error);
            eprintln!("error: {error:#}");
            if json {
                println!(
                    "{}",
                    serde_json::json!({"error": format!("{error:#}"), "exit_code": exit.code()})
                );
            }
            exit.into()
        }
    }
}

fn run(cli: &cli::Cli, url_source: Option<config::UrlSource>) -> anyhow::Result<Outcome> {
    let settings = Settings::resolve(
        cli.global.database_url.clone().zip(url_source),
        cli.global.config.as_deref(),
        &SearchEnv::from_process(),
    )?;
    if let Some(file) = &settings.config_file {
        tracing::debug!(config = %file.display(), "read config file");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(commands::run(&cli.command, &settings, cli.global.json))
}

fn print_outcome(outcome: &Outcome, json: bool) {
    if json {
        println!("{}", outcome.json);
    } else {
        print!("{}", outcome.human);
    }
}
