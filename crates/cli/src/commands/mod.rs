//! Runs one command: each submodule turns a command of the tree in `cli` into calls on the
//! library crates and an [`Outcome`]; printing it is `main`'s job.

mod bench;
mod cosmos;
mod db;
mod generate;
mod journal;
mod migrate;
mod quarantine;
mod relay;
mod replicate;
mod source;
mod stop;
mod verify;

pub use journal::JournalCommand;
pub use relay::RelayArgs;
pub use replicate::ReplicateArgs;

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
        Command::Relay(args) => relay::run(args, settings).await,
        Command::Journal(j) => journal::run(j, settings).await,
        Command::Db(db) => db::run(db, settings).await,
        Command::Replicate(args) => replicate::run(args, settings).await,
    }
}
