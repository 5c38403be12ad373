//! Waiting, bounded, for the outbox relay to empty the outbox before a move that needs it
//! (`--wait-drain`), outside the phase lock.

use std::time::Duration;

use mystira_domain::phase::{Phase, left_on_wrong_side};
use mystira_postgres::phase as store;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::change::{ChangeOptions, PhaseError};
use super::gates::needs_empty_outbox;

/// How waiting for the outbox went.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DrainWait {
    pub waited_seconds: f64,
    /// Whether the outbox was empty when the wait ended.
    pub drained: bool,
}

/// How often waiting for the drain looks at the outbox.
const DRAIN_POLL: Duration = Duration::from_millis(200);

/// How often a `--wait-drain` wait says how many outbox rows are left.
const DRAIN_REPORT_EVERY: Duration = Duration::from_secs(5);

/// Waits (at most `options.wait_drain`) for the outbox to empty when the move needs it. The
/// wait happens before the phase lock is taken: holding the lock while waiting would block
/// every other phase change for as long. The gate decides afterwards, on fresh facts.
pub(super) async fn wait_for_drain(
    pool: &PgPool,
    account: Option<Uuid>,
    to: Option<Phase>,
    options: &ChangeOptions,
) -> Result<Option<DrainWait>, PhaseError> {
    let Some(limit) = options.wait_drain else {
        return Ok(None);
    };
    let (state, overrides) = store::load_all(pool).await?;
    let from = account
        .and_then(|a| overrides.get(&a).copied())
        .unwrap_or(state.phase);
    let to = to.unwrap_or(state.phase);
    // a domain move also moves the overrides it clears
    let cleared_need_it = account.is_none()
        && !options.keep_overrides
        && overrides
            .values()
            .any(|o| left_on_wrong_side(from, to, *o) && needs_empty_outbox(*o, to));
    if !needs_empty_outbox(from, to) && !cleared_need_it {
        return Ok(None);
    }
    let started = tokio::time::Instant::now();
    let deadline = started + limit;
    // an operator watching a wait of minutes sees it move (it printed nothing: issue 34)
    let mut next_report = started;
    loop {
        let backlog = store::outbox_backlog(pool).await?;
        let drained = backlog.rows == 0;
        let now = tokio::time::Instant::now();
        if !drained && now >= next_report {
            tracing::info!(
                outbox_rows = backlog.rows,
                waited_seconds = (now - started).as_secs(),
                left_seconds = deadline.saturating_duration_since(now).as_secs(),
                "waiting for the outbox to drain"
            );
            next_report = now + DRAIN_REPORT_EVERY;
        }
        if drained || now >= deadline {
            if !drained {
                tracing::info!(
                    waited_seconds = limit.as_secs_f64(),
                    "the outbox did not drain in time"
                );
            }
            return Ok(Some(DrainWait {
                waited_seconds: (now - started).as_secs_f64(),
                drained,
            }));
        }
        tokio::time::sleep(DRAIN_POLL.min(deadline - now)).await;
    }
}
