//! [`CosmosStore`]: one account + database, wired onto the official SDK with the settings that
//! make it work against both Azure and the Cosmos-protocol test server.
//!
//! SDK settings chosen here, and why:
//! - HTTP/1.1 only (`with_is_http2_allowed(false)`): the test server speaks HTTP/1.1 only, and
//!   the Cosmos gateway serves HTTP/1.1 as well.
//! - Text JSON (`BinaryEncodingOptions` disabled): only Azure's own service understands Cosmos
//!   binary JSON; emulators and the test server do not.
//! - The SDK's own 429 retries (`ThrottlingRetryOptions::max_retry_count = 0`) and region
//!   failover retries (`max_failover_retry_count = 0`) are off: every retry of a 429, 503 or
//!   transport failure happens in `retry.rs` under one [`crate::RetryPolicy`], so the number of
//!   requests per call is at most `max_attempts` instead of `max_attempts` times the SDK's 10.
//! - All of these are set through builder options, not environment variables, so the process
//!   environment cannot silently change them (the SDK gives explicit options precedence).

use std::borrow::Cow;
use std::path::Path;

use azure_data_cosmos::models::{ContainerProperties, PartitionKeyDefinition};
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, OperationOptionsBuilder,
    ServerCertificateValidation, ThrottlingRetryOptionsBuilder,
};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosRuntime, RoutingStrategy,
};

use crate::config::{CosmosConfig, RetryPolicy, TlsTrust};
use crate::container::Container;
use crate::error::{Error, ErrorKind, Result};
use crate::retry::with_retry;

/// A connection to one database of one Cosmos account.
#[derive(Clone)]
pub struct CosmosStore {
    client: CosmosClient,
    database: String,
    retry: RetryPolicy,
    page_size: u32,
}

impl std::fmt::Debug for CosmosStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CosmosStore")
            .field("endpoint", &self.client.endpoint().as_str())
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl CosmosStore {
    /// Builds the SDK client. Does not touch the network beyond what the SDK does to learn the
    /// account's regions; a wrong endpoint or key shows up here or on the first operation.
    pub async fn connect(config: CosmosConfig) -> Result<Self> {
        const OP: &str = "connect";
        if config.page_size == 0 {
            return Err(Error::new(
                ErrorKind::Config,
                OP,
                "page_size must be at least 1",
            ));
        }
        let endpoint: AccountEndpoint = config.endpoint.parse().map_err(|e| {
            Error::new(ErrorKind::Config, OP, "endpoint is not a valid URL").with_source(e)
        })?;
        let validation = match &config.tls {
            TlsTrust::SystemRoots => ServerCertificateValidation::Required,
            TlsTrust::CaFile(path) => {
                check_ca_file_is_trusted(path)?;
                ServerCertificateValidation::Required
            }
            TlsTrust::RelaxedForLocalEmulator => {
                tracing::warn!(
                    "cosmos certificate validation relaxed for local emulator hosts, as configured"
                );
                ServerCertificateValidation::RequiredUnlessEmulator
            }
        };
        let sdk = |e| Error::from_sdk(OP, "", e);
        let pool = ConnectionPoolOptions::builder()
            .with_is_http2_allowed(false)
            .with_server_certificate_validation(validation)
            .build()
            .map_err(sdk)?;
        let operation = OperationOptionsBuilder::new()
            .with_throttling_retry_options(
                ThrottlingRetryOptionsBuilder::new()
                    .with_max_retry_count(0)
                    .build(),
            )
            .with_max_failover_retry_count(0)
            .build();
        let runtime = CosmosRuntime::builder()
            .with_connection_pool(pool)
            .with_default_operation_options(operation)
            .build()
            .await
            .map_err(sdk)?;
        let key = azure_core::credentials::Secret::new(config.key.expose().clone());
        let account = AccountReference::with_authentication_key(endpoint, key);
        let client = CosmosClient::builder()
            .with_runtime(runtime)
            .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false))
            .build(account, RoutingStrategy::PreferredRegions(Vec::new()))
            .await
            .map_err(sdk)?;
        Ok(Self {
            client,
            database: config.database,
            retry: config.retry,
            page_size: config.page_size,
        })
    }

    pub fn database_name(&self) -> &str {
        &self.database
    }

    /// Creates the database unless it exists. Returns whether it was created.
    pub async fn ensure_database(&self) -> Result<bool> {
        let result = with_retry(&self.retry, || async move {
            self.client
                .create_database(&self.database, None)
                .await
                .map_err(|e| Error::from_sdk("create database", &self.database, e))
        })
        .await;
        created_or_existing(result)
    }

    /// Deletes the database and everything in it. Missing is not an error.
    pub async fn delete_database(&self) -> Result<()> {
        let db = &self.client.database_client(self.database.as_str());
        let result = with_retry(&self.retry, || async move {
            db.delete(None)
                .await
                .map_err(|e| Error::from_sdk("delete database", &self.database, e))
        })
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the container with a single-path partition key (e.g. `/id`) unless it exists,
    /// then opens it. An existing container keeps its own partition key: read it back with
    /// [`Container::partition_key_paths`] rather than assuming `partition_key_path`.
    pub async fn ensure_container(
        &self,
        name: &str,
        partition_key_path: &str,
    ) -> Result<Container> {
        const OP: &str = "create container";
        if !partition_key_path.starts_with('/') {
            return Err(Error::new(
                ErrorKind::Config,
                OP,
                "partition_key_path must start with '/'",
            ));
        }
        let target = &self.target(name);
        let db = &self.client.database_client(self.database.as_str());
        let result = with_retry(&self.retry, || async move {
            let pk = PartitionKeyDefinition::new(vec![Cow::Owned(partition_key_path.to_owned())]);
            let properties = ContainerProperties::new(name.to_owned(), pk);
            db.create_container(properties, None)
                .await
                .map_err(|e| Error::from_sdk(OP, target, e))
        })
        .await;
        created_or_existing(result)?;
        self.container(name).await
    }

    /// Opens an existing container and reads its partition-key definition.
    pub async fn container(&self, name: &str) -> Result<Container> {
        let target = &self.target(name);
        let db = &self.client.database_client(self.database.as_str());
        let client = with_retry(&self.retry, || async move {
            db.container_client(name, None)
                .await
                .map_err(|e| Error::from_sdk("open container", target, e))
        })
        .await?;
        Container::open(client, target.clone(), self.retry.clone(), self.page_size).await
    }

    fn target(&self, container: &str) -> String {
        format!("{}/{}", self.database, container)
    }
}

/// `Ok(true)` when created, `Ok(false)` when it already existed (409).
fn created_or_existing<T>(result: Result<T>) -> Result<bool> {
    match result {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::Conflict => Ok(false),
        Err(e) => Err(e),
    }
}

/// The SDK trusts extra roots only through `SSL_CERT_FILE` (see [`TlsTrust::CaFile`]); refuse
/// to start unless the process was started with it pointing at `path`.
fn check_ca_file_is_trusted(path: &Path) -> Result<()> {
    const OP: &str = "connect";
    let pem = std::fs::read_to_string(path).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            OP,
            format!("tls ca file {} cannot be read", path.display()),
        )
        .with_source(e)
    })?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(Error::new(
            ErrorKind::Config,
            OP,
            format!("tls ca file {} holds no PEM certificate", path.display()),
        ));
    }
    let wanted = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let env = std::env::var_os("SSL_CERT_FILE");
    let actual = env
        .as_ref()
        .map(|v| std::fs::canonicalize(v).unwrap_or_else(|_| Path::new(v).to_path_buf()));
    if actual.as_deref() != Some(wanted.as_path()) {
        return Err(Error::new(
            ErrorKind::Config,
            OP,
            format!(
                "azure_data_cosmos 1.0.0 trusts extra certificates only via SSL_CERT_FILE; start \
                 the process with SSL_CERT_FILE={} (currently {})",
                path.display(),
                env.map_or_else(|| "unset".to_owned(), |v| v.to_string_lossy().into_owned()),
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_ca_file_is_a_config_error_naming_the_file() {
        let err =
            check_ca_file_is_trusted(Path::new("/nonexistent/cert.pem")).expect_err("missing file");
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
