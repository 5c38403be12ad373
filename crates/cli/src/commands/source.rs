//! Turning the source flags (`--export-dir`, `--cosmos-*`, `[cosmos]` in the config file) into
//! a document source or a Cosmos connection.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Args;
use mystira_cosmos_store::{CosmosConfig, CosmosStore, TlsTrust};
use mystira_domain::Secret;
use mystira_migrate::{CosmosSource, DocumentSource, ExportDirSource};

use crate::config::{ConfigError, Settings};

/// Where documents come from: export files, or a live Cosmos account.
#[derive(Debug, Args, Clone, Default)]
pub struct SourceArgs {
    /// A directory of export files (<Container>.jsonl, optional manifest.json); wins over any
    /// Cosmos settings from the environment or the config file
    #[arg(long, value_name = "DIR")]
    pub export_dir: Option<PathBuf>,

    #[command(flatten)]
    pub cosmos: CosmosArgs,
}

/// A Cosmos account (flags > environment > `[cosmos]` in the config file).
#[derive(Debug, Args, Clone, Default)]
pub struct CosmosArgs {
    /// Cosmos account endpoint, e.g. https://myaccount.documents.azure.com:443/
    #[arg(long, env = "COSMOS_ENDPOINT", value_name = "URL")]
    pub cosmos_endpoint: Option<String>,

    /// Cosmos account key (never printed)
    #[arg(long, env = "COSMOS_KEY", value_name = "KEY", hide_env_values = true)]
    pub cosmos_key: Option<String>,

    /// Cosmos database [default: MystiraAppDb]
    #[arg(long, env = "COSMOS_DATABASE", value_name = "NAME")]
    pub cosmos_database: Option<String>,

    /// PEM certificate to trust for the Cosmos endpoint (an emulator or test server); the
    /// process must also be started with SSL_CERT_FILE set to it (an SDK limitation)
    #[arg(long, env = "COSMOS_CERT_FILE", value_name = "FILE")]
    pub cosmos_ca_file: Option<PathBuf>,
}

/// The sample data set `migrate` uses when no source is given.
pub fn bundled_sample() -> Option<PathBuf> {
    let candidates = [
        PathBuf::from("examples/sample"),
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/sample"
        )),
    ];
    candidates
        .into_iter()
        .find(|p| p.join("Accounts.jsonl").is_file())
}

/// The source the flags name: export files, a Cosmos account, or (nothing given) the bundled
/// sample.
pub async fn document_source(
    args: &SourceArgs,
    settings: &Settings,
) -> anyhow::Result<Box<dyn DocumentSource>> {
    if let Some(dir) = &args.export_dir {
        if !dir.is_dir() {
            bail!(ConfigError::Usage(format!(
                "--export-dir {} is not a directory",
                dir.display()
            )));
        }
        return Ok(Box::new(ExportDirSource::new(dir)));
    }
    if cosmos_endpoint(&args.cosmos, settings).is_some() {
        let store = connect_cosmos(&args.cosmos, settings).await?;
        return Ok(Box::new(CosmosSource::new(store)));
    }
    let sample = bundled_sample().ok_or_else(|| {
        ConfigError::Usage(
            "no source given and the bundled sample (examples/sample) is not here: \
             pass --export-dir DIR or --cosmos-endpoint URL"
                .into(),
        )
    })?;
    tracing::info!(dir = %sample.display(), "no source given: migrating the bundled sample");
    Ok(Box::new(ExportDirSource::new(sample)))
}

pub(crate) fn cosmos_endpoint(args: &CosmosArgs, settings: &Settings) -> Option<String> {
    let file = settings.file.cosmos.as_ref();
    args.cosmos_endpoint
        .clone()
        .or_else(|| file.and_then(|c| c.endpoint.clone()))
}

/// Connects to the Cosmos account the flags (or environment, or config file) name.
pub async fn connect_cosmos(args: &CosmosArgs, settings: &Settings) -> anyhow::Result<CosmosStore> {
    let file = settings.file.cosmos.clone().unwrap_or_default();
    let endpoint = cosmos_endpoint(args, settings).ok_or_else(|| {
        ConfigError::Usage(
            "no Cosmos endpoint: pass --cosmos-endpoint or set COSMOS_ENDPOINT".into(),
        )
    })?;
    let key = args.cosmos_key.clone().or(file.key).ok_or_else(|| {
        ConfigError::Usage("no Cosmos key: set COSMOS_KEY (or --cosmos-key)".into())
    })?;
    let mut config = CosmosConfig::new(endpoint, Secret::new(key));
    if let Some(database) = args.cosmos_database.clone().or(file.database) {
        config = config.with_database(database);
    }
    if let Some(ca) = args.cosmos_ca_file.clone().or(file.ca_file) {
        config = config.with_tls(TlsTrust::CaFile(ca));
    }
    CosmosStore::connect(config)
        .await
        .context("cannot connect to Cosmos")
}
