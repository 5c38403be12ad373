//! One classified error for every Cosmos operation, and the one place that decides whether an
//! error is worth retrying.
//!
//! Messages name the operation and container, never a document id, partition-key value or
//! document content: partition keys can be email addresses (`PendingSignups` uses `/email`).

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use azure_data_cosmos::CosmosError;

/// What went wrong, in the terms callers act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 404: the database, container or item does not exist.
    NotFound,
    /// 409: an item or resource with that id already exists.
    Conflict,
    /// 412: an `If-Match` ETag did not match (someone else wrote first).
    PreconditionFailed,
    /// 429: the service asked us to slow down, and the retry budget is spent.
    Throttled,
    /// 503 (or 408/410/449 from the service): temporarily unavailable, budget spent.
    Unavailable,
    /// 401/403: the key or the signature was refused.
    Auth,
    /// 400/413 and other 4xx: the request itself is wrong; retrying will not help.
    InvalidRequest,
    /// The request never got a service answer: connection refused or dropped, TLS failure,
    /// timeout.
    Transport,
    /// A response body (or a request body) could not be (de)serialised.
    Serialization,
    /// Our configuration is unusable (bad endpoint, certificate file, missing env var).
    Config,
    /// A 5xx other than 503, or anything the SDK reports that fits none of the above.
    Service,
}

impl ErrorKind {
    fn describe(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not found",
            ErrorKind::Conflict => "conflict: already exists",
            ErrorKind::PreconditionFailed => "precondition failed: the etag is stale",
            ErrorKind::Throttled => "throttled by the service",
            ErrorKind::Unavailable => "service unavailable",
            ErrorKind::Auth => "authorization refused",
            ErrorKind::InvalidRequest => "invalid request",
            ErrorKind::Transport => "transport failure",
            ErrorKind::Serialization => "serialization failure",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::Service => "service error",
        }
    }
}

/// The error of every fallible call in this crate.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    operation: &'static str,
    target: String,
    status: Option<(u16, Option<u32>)>,
    retry_after: Option<Duration>,
    attempts: u32,
    detail: Option<String>,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// An error raised by this crate itself (not by the SDK).
    pub(crate) fn new(kind: ErrorKind, operation: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            operation,
            target: String::new(),
            status: None,
            retry_after: None,
            attempts: 1,
            detail: Some(detail.into()),
            source: None,
        }
    }

    /// Classifies an SDK error. `target` names the database/container (never an item).
    pub(crate) fn from_sdk(operation: &'static str, target: &str, err: CosmosError) -> Self {
        let status = err.status();
        let code = u16::from(status.status_code());
        let sub = status.sub_status().map(|s| u32::from(u16::from(s)));
        let from_wire = err.is_from_wire();
        let kind = classify(code, sub, from_wire);
        let retry_after = err
            .response()
            .and_then(|r| r.headers().retry_after_ms)
            .map(Duration::from_millis);
        Self {
            kind,
            operation,
            target: target.to_owned(),
            status: Some((code, sub)),
            retry_after,
            attempts: 1,
            detail: None,
            source: Some(Box::new(err)),
        }
    }

    pub(crate) fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The HTTP status (and Cosmos sub-status) behind this error, if it came from the SDK.
    /// Transport failures carry the SDK's synthetic 503 with a sub-status of 20000 or above.
    pub fn status(&self) -> Option<(u16, Option<u32>)> {
        self.status
    }

    /// The service's `x-ms-retry-after-ms`, if it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// How many attempts were made before giving up (1 when no retry happened).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether trying the same request again later can succeed: throttling, unavailability and
    /// transport failures. The single decision point for every retry loop (ours and callers').
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Throttled | ErrorKind::Unavailable | ErrorKind::Transport
        )
    }
}

/// Maps an HTTP status (plus sub-status) to a kind. `from_wire` is false for errors the SDK
/// synthesised without a service answer.
fn classify(code: u16, sub: Option<u32>, from_wire: bool) -> ErrorKind {
    // The SDK reports transport failures as synthetic 503s with sub-statuses 20000..=20999
    // (TRANSPORT_GENERATED_503, TRANSPORT_CONNECTION_FAILED, ...) and its own timeouts as 408.
    let synthetic_transport = sub.is_some_and(|s| (20_000..21_000).contains(&s));
    if !from_wire && (synthetic_transport || code == 408) {
        return ErrorKind::Transport;
    }
    match code {
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        412 => ErrorKind::PreconditionFailed,
        429 => ErrorKind::Throttled,
        401 | 403 => ErrorKind::Auth,
        408 | 410 | 449 | 503 => ErrorKind::Unavailable,
        400..=499 => ErrorKind::InvalidRequest,
        _ => ErrorKind::Service,
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cosmos {}", self.operation)?;
        if !self.target.is_empty() {
            write!(f, " on {}", self.target)?;
        }
        write!(f, " failed: {}", self.kind.describe())?;
        if let Some((code, sub)) = self.status {
            match sub {
                Some(sub) if sub != 0 => write!(f, " (status {code}/{sub})")?,
                _ => write!(f, " (status {code})")?,
            }
        }
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// The crate's result alias.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_statuses_map_to_their_kinds() {
        assert_eq!(classify(404, None, true), ErrorKind::NotFound);
        assert_eq!(classify(409, None, true), ErrorKind::Conflict);
        assert_eq!(classify(412, None, true), ErrorKind::PreconditionFailed);
        assert_eq!(classify(429, Some(3200), true), ErrorKind::Throttled);
        assert_eq!(classify(503, None, true), ErrorKind::Unavailable);
        assert_eq!(classify(401, None, true), ErrorKind::Auth);
        assert_eq!(classify(400, None, true), ErrorKind::InvalidRequest);
        assert_eq!(classify(500, None, true), ErrorKind::Service);
    }

    #[test]
    fn synthetic_transport_statuses_are_transport_not_unavailable() {
        // TRANSPORT_CONNECTION_FAILED is a synthetic 503/20010.
        assert_eq!(classify(503, Some(20_010), false), ErrorKind::Transport);
        assert_eq!(classify(408, Some(20_008), false), ErrorKind::Transport);
        // A real 503 from the service stays Unavailable.
        assert_eq!(classify(503, None, true), ErrorKind::Unavailable);
    }

    #[test]
    fn only_transient_kinds_are_retryable() {
        let retryable = |kind| Error::new(kind, "test", "x").is_retryable();
        assert!(retryable(ErrorKind::Throttled));
        assert!(retryable(ErrorKind::Unavailable));
        assert!(retryable(ErrorKind::Transport));
        assert!(!retryable(ErrorKind::PreconditionFailed));
        assert!(!retryable(ErrorKind::NotFound));
        assert!(!retryable(ErrorKind::InvalidRequest));
        assert!(!retryable(ErrorKind::Auth));
    }

    #[test]
    fn display_names_operation_target_status_and_attempts() {
        let mut err =
            Error::new(ErrorKind::Throttled, "read item", "budget spent").with_attempts(4);
        err.target = "MystiraAppDb/Accounts".to_owned();
        err.status = Some((429, Some(3200)));
        assert_eq!(
            err.to_string(),
            "cosmos read item on MystiraAppDb/Accounts failed: throttled by the service \
             (status 429/3200) after 4 attempts: budget spent"
        );
    }
}
