//! Connection settings: endpoint, account key, database, TLS trust, retry bounds, page size.
//!
//! The key is a [`Secret`]: its `Debug` prints `[redacted]`, and nothing here logs it.

use std::path::PathBuf;
use std::time::Duration;

use mystira_domain::Secret;

/// The database the production app uses.
pub const DEFAULT_DATABASE: &str = "MystiraAppDb";

/// Items per page when streaming a container. The test server rescans on every page, and real
/// Cosmos charges per request, so pages of about a thousand are the sweet spot for both.
pub const DEFAULT_PAGE_SIZE: u32 = 1_000;

/// Which server certificates to trust.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsTrust {
    /// The platform's root certificates (production Azure).
    #[default]
    SystemRoots,
    /// Trust exactly the PEM certificates in this file (the test server's self-signed
    /// certificate).
    ///
    /// `azure_data_cosmos` 1.0.0 has no API for extra roots: its transport trusts what
    /// `rustls-native-certs` loads, which is the file named by the `SSL_CERT_FILE` environment
    /// variable when set. Setting a variable from inside the process is `unsafe` in edition 2024
    /// (and this workspace forbids `unsafe`), so the **process must be started with
    /// `SSL_CERT_FILE` pointing at this file**. [`crate::CosmosStore::connect`] checks that and
    /// fails with [`crate::ErrorKind::Config`] otherwise, instead of silently trusting something
    /// else. Note that with `SSL_CERT_FILE` set, the system roots are *not* loaded.
    CaFile(PathBuf),
    /// Accept any certificate from a local emulator host (`localhost`, `127.0.0.1`, `[::1]`, or
    /// the host in `AZURE_COSMOS_EMULATOR_HOST`); validation stays on for every other host. Only
    /// when explicitly chosen: never a fallback.
    RelaxedForLocalEmulator,
}

/// Bounds for retrying throttled (429), unavailable (503) and transport-failed requests.
///
/// Every retry of those happens in this crate's loop (see `retry.rs`); the SDK's own 429 and
/// region-failover retries are switched off so the two bounds cannot multiply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per request, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Upper bound on the sum of all back-off sleeps for one request.
    pub max_total_wait_ms: u64,
    /// First back-off when the service gives no `x-ms-retry-after-ms`; doubles per attempt.
    pub base_backoff_ms: u64,
    /// Cap on a single computed back-off (a server-sent retry-after is honoured as sent, as
    /// long as it fits into what is left of `max_total_wait_ms`).
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            max_total_wait_ms: 30_000,
            base_backoff_ms: 100,
            max_backoff_ms: 5_000,
        }
    }
}

impl RetryPolicy {
    /// The sleep before attempt `attempt + 1`, given the service's retry-after if any.
    pub(crate) fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(server) = retry_after {
            return server;
        }
        let exp = self
            .base_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        Duration::from_millis(exp.min(self.max_backoff_ms))
    }
}

/// Everything needed to reach one Cosmos account and database.
#[derive(Debug, Clone)]
pub struct CosmosConfig {
    /// Account endpoint, e.g. `https://myaccount.documents.azure.com:443/`.
    pub endpoint: String,
    /// Primary or secondary account key (base64).
    pub key: Secret<String>,
    /// Database name; default [`DEFAULT_DATABASE`].
    pub database: String,
    pub tls: TlsTrust,
    pub retry: RetryPolicy,
    /// Items per page for streamed reads and queries; default [`DEFAULT_PAGE_SIZE`].
    pub page_size: u32,
}

impl CosmosConfig {
    /// A config for `endpoint` and `key` with the defaults for everything else.
    pub fn new(endpoint: impl Into<String>, key: Secret<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            key,
            database: DEFAULT_DATABASE.to_owned(),
            tls: TlsTrust::default(),
            retry: RetryPolicy::default(),
            page_size: DEFAULT_PAGE_SIZE,
        }
    }

    pub fn with_database(mut self, database: impl Into<String>) -> Self {
        self.database = database.into();
        self
    }

    pub fn with_tls(mut self, tls: TlsTrust) -> Self {
        self.tls = tls;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_redacted_in_debug_output() {
        let config = CosmosConfig::new("https://x/", Secret::new("c2VjcmV0LWtleQ==".to_owned()));
        let shown = format!("{config:?}");
        assert!(!shown.contains("c2VjcmV0LWtleQ=="), "{shown}");
        assert!(shown.contains("[redacted]"), "{shown}");
        assert_eq!(config.database, "MystiraAppDb");
    }

    #[test]
    fn backoff_honours_server_retry_after_and_caps_exponential_growth() {
        let policy = RetryPolicy {
            max_attempts: 10,
            max_total_wait_ms: 10_000,
            base_backoff_ms: 100,
            max_backoff_ms: 1_000,
        };
        assert_eq!(
            policy.backoff(3, Some(Duration::from_millis(7))),
            Duration::from_millis(7)
        );
        assert_eq!(policy.backoff(1, None), Duration::from_millis(100));
        assert_eq!(policy.backoff(2, None), Duration::from_millis(200));
        assert_eq!(policy.backoff(3, None), Duration::from_millis(400));
        assert_eq!(policy.backoff(9, None), Duration::from_millis(1_000));
        assert_eq!(policy.backoff(500, None), Duration::from_millis(1_000));
    }
}
