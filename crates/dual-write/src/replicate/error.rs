//! Replication's error, and which of its errors are store outages a continuous run waits out.

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicateError {
    #[error("cosmos: {0}")]
    Cosmos(#[from] mystira_cosmos_store::Error),
    #[error("postgresql: {0}")]
    Store(#[from] mystira_domain::RepoError),
    #[error("a stored replication checkpoint is not valid ({0})")]
    BadCheckpoint(&'static str),
}

impl ReplicateError {
    /// The class of a store outage that a continuous run waits out (PostgreSQL unreachable;
    /// Cosmos throttling, unavailable, timing out, dropping connections or failing with a 5xx
    /// past the client's own retries), or `None` for an error that waiting does not fix (a
    /// refused key, a bad request, a corrupt checkpoint). Classes only: never a message.
    pub fn outage_class(&self) -> Option<&'static str> {
        use mystira_cosmos_store::ErrorKind;
        match self {
            ReplicateError::Cosmos(e) => match e.kind() {
                ErrorKind::Throttled => Some("cosmos_throttled"),
                ErrorKind::Unavailable => Some("cosmos_unavailable"),
                ErrorKind::Transport => Some("cosmos_transport"),
                // 501: the server does not implement the request (no change feed): no outage
                ErrorKind::Service if e.status().is_none_or(|(code, _)| code != 501) => {
                    Some("cosmos_service")
                }
                _ => None,
            },
            ReplicateError::Store(e) if e.is_retryable() => Some("postgres_unavailable"),
            _ => None,
        }
    }
}
