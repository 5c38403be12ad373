//! The one bounded retry loop: retries what [`Error::is_retryable`] says is transient, sleeping
//! the service's `x-ms-retry-after-ms` when it sent one and an exponential back-off otherwise,
//! until either `max_attempts` or `max_total_wait_ms` would be exceeded; then the last error is
//! surfaced with its kind and the number of attempts.

use std::time::Duration;

use crate::config::RetryPolicy;
use std::future::Future;

use crate::error::{Error, Result};

/// Runs `attempt` until it succeeds, fails permanently, or the policy's budget is spent.
///
/// `attempt` is a plain closure returning a future (not an async closure): futures of async
/// closures that borrow their captures are not provably `Send` today, and callers need `Send`.
pub(crate) async fn with_retry<T, F, Fut>(policy: &RetryPolicy, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => backoff.after_failure(err).await?,
        }
    }
}

/// The retry budget of one logical request, for loops that cannot be a closure (they need
/// `&mut self` in every attempt).
pub(crate) struct Backoff<'a> {
    policy: &'a RetryPolicy,
    made: u32,
    waited: Duration,
}

impl<'a> Backoff<'a> {
    pub(crate) fn new(policy: &'a RetryPolicy) -> Self {
        Self {
            policy,
            made: 0,
            waited: Duration::ZERO,
        }
    }

    /// Called with a failed attempt's error: sleeps and returns `Ok(())` if another attempt is
    /// allowed, or returns the error (with the attempt count) to surface.
    pub(crate) async fn after_failure(&mut self, err: Error) -> Result<()> {
        self.made += 1;
        if !err.is_retryable() || self.made >= self.policy.max_attempts.max(1) {
            return Err(err.with_attempts(self.made));
        }
        let delay = self.policy.backoff(self.made, err.retry_after());
        if self.waited + delay > Duration::from_millis(self.policy.max_total_wait_ms) {
            return Err(err.with_attempts(self.made));
        }
        tracing::debug!(
            kind = ?err.kind(),
            attempt = self.made,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "cosmos request failed transiently; retrying"
        );
        tokio::time::sleep(delay).await;
        self.waited += delay;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use std::cell::Cell;

    fn policy(max_attempts: u32, max_total_wait_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            max_total_wait_ms,
            base_backoff_ms: 1,
            max_backoff_ms: 4,
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let calls = Cell::new(0);
        let result = with_retry(&policy(5, 1_000), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(Error::new(ErrorKind::Unavailable, "test", "down"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result.expect("third attempt succeeds"), 3);
    }

    #[tokio::test]
    async fn attempts_bound_surfaces_the_classified_error() {
        let calls = Cell::new(0);
        let err = with_retry(&policy(4, 1_000), || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(Error::new(ErrorKind::Throttled, "test", "busy")) }
        })
        .await
        .expect_err("never succeeds");
        assert_eq!(calls.get(), 4);
        assert_eq!(err.kind(), ErrorKind::Throttled);
        assert_eq!(err.attempts(), 4);
    }

    #[tokio::test]
    async fn wait_budget_stops_retries_before_the_attempt_bound() {
        let calls = Cell::new(0);
        // Back-offs 1, 2, 4, 4 ms: a budget of 5 ms allows the first two sleeps only.
        let err = with_retry(&policy(100, 5), || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(Error::new(ErrorKind::Transport, "test", "reset")) }
        })
        .await
        .expect_err("never succeeds");
        assert_eq!(calls.get(), 3);
        assert_eq!(err.kind(), ErrorKind::Transport);
    }

    #[tokio::test]
    async fn permanent_errors_are_not_retried() {
        let calls = Cell::new(0);
        let err = with_retry(&policy(5, 1_000), || {
            calls.set(calls.get() + 1);
            async { Err::<(), _>(Error::new(ErrorKind::PreconditionFailed, "test", "stale")) }
        })
        .await
        .expect_err("fails");
        assert_eq!(calls.get(), 1);
        assert_eq!(err.kind(), ErrorKind::PreconditionFailed);
    }
}
