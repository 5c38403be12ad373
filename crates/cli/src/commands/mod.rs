//! Runs one command: each submodule turns a command of the tree in `cli` into calls on the
//! library crates and an [`Outcome`]; printing it is `main`'s job.

mod archive;
mod bench;
mod bench_writes;
mod cosmos;
mod database;
mod db;
mod generate;
mod journal;
mod ledger;
mod loadgen;
mod migrate;
mod phase;
mod quarantine;
mod relay;
mod replicate;
mod report;
mod serve;
mod source;
mod status;
mod stop;
mod verify;

pub use archive::{ArchiveArgs, RestoreArgs};
pub use bench::BenchArgs;
pub use bench_writes::BenchWritesArgs;
pub use cosmos::CosmosCommand;
pub use db::DbCommand;
pub use generate::GenerateArgs;
pub use journal::JournalCommand;
pub use ledger::LedgerCommand;
pub use loadgen::LoadgenArgs;
pub use migrate::MigrateArgs;
pub use phase::PhaseCommand;
pub use quarantine::QuarantineCommand;
pub use relay::RelayArgs;
pub use replicate::ReplicateArgs;
pub use report::ReportArgs;
pub use serve::{DevTokenArgs, ServeArgs};
pub use status::StatusArgs;
pub use verify::VerifyArgs;

use crate::cli::Command;
use crate::config::Settings;
use crate::exit::Exit;

/// What a command produced: the exit code, and its output in both forms (human text for a
/// terminal, JSON for `--json`).
#[derive(Debug)]
pub struct Outcome {
    pub exit: Exit,
    pub human: String,
    pub json: serde_json::Value,
}

/// Runs `command` with the resolved settings.
pub async fn run(command: &Command, settings: &Settings, json: bool) -> anyhow::Result<Outcome> {
    match command {
        Command::Migrate(args) => migrate::run(args, settings, json).await,
        Command::Verify(args) => verify::run(args, settings).await,
        Command::Generate(args) => generate::run(args, settings).await,
        Command::Cosmos(cosmos) => cosmos::run(cosmos, settings).await,
        Command::Quarantine(q) => quarantine::run(q, settings).await,
        Command::Bench(args) => bench::run(args, settings).await,
        Command::BenchWrites(args) => bench_writes::run(args, settings).await,
        Command::Relay(args) => relay::run(args, settings).await,
        Command::Journal(j) => journal::run(j, settings).await,
        Command::Loadgen(args) => loadgen::run(args, settings).await,
        Command::Ledger(l) => ledger::run(l, settings).await,
        Command::Phase(p) => phase::run(p, settings).await,
        Command::Db(db) => db::run(db, settings).await,
        Command::Replicate(args) => replicate::run(args, settings).await,
        Command::Report(args) => report::run(args, settings).await,
        Command::Status(args) => status::run(args, settings).await,
        Command::Serve(args) => serve::run(args, settings).await,
        Command::DevToken(args) => serve::dev_token(args, settings).await,
        Command::Openapi => {
            let document = mystira_server::api::openapi::json();
            Ok(Outcome {
                exit: Exit::Ok,
                human: document.to_owned(),
                json: serde_json::from_str(document)?,
            })
        }
        Command::Archive(args) => archive::run(args, settings).await,
        Command::Restore(args) => archive::restore(args, settings).await,
    }
}
