//! One call through the router: its intent and acknowledgement in the ledger, its latency and
//! outcome in the tally.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mystira_domain::RepoError;
use mystira_domain::error::ConflictKind;
use mystira_domain::phase::Phase;
use mystira_domain::ports::RepoResult;
use uuid::Uuid;

use crate::ledger::{Groups, LedgerError, LedgerWriter};
use mystira_dual_write::router::DualWriteRouter;

pub(super) fn error_class(e: &RepoError) -> &'static str {
    match e {
        RepoError::Unavailable(_) => "unavailable",
        RepoError::Invalid(_) => "invalid",
        RepoError::Conflict { .. } => "conflict",
        _ => "store",
    }
}

#[derive(Debug, Default)]
pub(super) struct Tally {
    pub(super) latencies: BTreeMap<(&'static str, Phase), (Vec<Duration>, u64)>,
    pub(super) errors: BTreeMap<String, u64>,
    pub(super) calls: u64,
    pub(super) acked: u64,
    pub(super) failed: u64,
    pub(super) unrecorded: u64,
}

/// Everything a call needs (shared by every task).
pub(super) struct Ctx {
    pub(super) router: DualWriteRouter,
    pub(super) ledger: LedgerWriter,
    pub(super) tally: Mutex<Tally>,
    /// The first ledger write that failed: once set, no call is started.
    pub(super) ledger_failure: Mutex<Option<LedgerError>>,
    /// Wakes the run's loop when the ledger failed.
    pub(super) stop: tokio::sync::Notify,
}

/// The aggregate a call writes and the phase lookup the router makes for it.
pub(super) struct Target {
    pub(super) container: &'static str,
    pub(super) key: Uuid,
    pub(super) account: Option<Uuid>,
}

/// How a call ended, for the user's state.
pub(super) enum Ended<T> {
    /// Ok, and recorded as acknowledged.
    Acked(T),
    /// Ok, but not what the flow expected (nothing recorded as acknowledged).
    Unexpected,
    Failed(RepoError),
    /// The ledger failed: the call was not made (its intent could not be written, or the run
    /// is stopping), or it was made and its acknowledgement could not be written.
    Stopped,
}

impl Ctx {
    pub(super) fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn failure(&self) -> std::sync::MutexGuard<'_, Option<LedgerError>> {
        self.ledger_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn ledger_failed(&self) -> bool {
        self.failure().is_some()
    }

    /// Keeps the first ledger failure and stops the run.
    pub(super) fn fail(&self, e: LedgerError) {
        let mut first = self.failure();
        if first.is_none() {
            tracing::error!(error = %e, "a ledger write failed: stopping the run");
            *first = Some(e);
        }
        drop(first);
        self.stop.notify_one();
    }

    /// Makes one call: intent, the call, then (when acknowledged) its ack; counts and times it.
    /// `groups` is what the call leaves if it lands (`None`: it writes nothing checkable); the
    /// acknowledged groups are what `judge` derives from the answer.
    pub(super) async fn call<T, F>(
        &self,
        op: &'static str,
        target: Target,
        groups: Option<Groups>,
        fut: F,
        judge: impl FnOnce(&T) -> Option<Groups>,
    ) -> Ended<T>
    where
        F: Future<Output = RepoResult<T>>,
    {
        if self.ledger_failed() {
            return Ended::Stopped;
        }
        let intent = match groups {
            Some(g) => match self.ledger.intent(op, target.container, target.key, g) {
                Ok(seq) => Some(seq),
                Err(e) => {
                    // without its intent the call must not be made: it could land unrecorded
                    self.fail(e);
                    return Ended::Stopped;
                }
            },
            None => None,
        };
        let phase = self.router.phase_for(target.account);
        let started = Instant::now();
        let result = fut.await;
        let elapsed = started.elapsed();
        let phase_after = self.router.phase_for(target.account);
        let ended = match result {
            Ok(v) => match judge(&v) {
                Some(acked) => match intent {
                    Some(call) => match self.ledger.ack(
                        call,
                        phase,
                        phase_after,
                        op,
                        target.container,
                        target.key,
                        acked,
                    ) {
                        Ok(()) => Ended::Acked(v),
                        Err(e) => {
                            self.fail(e);
                            Ended::Stopped
                        }
                    },
                    None => Ended::Acked(v),
                },
                None => Ended::Unexpected,
            },
            Err(e) => Ended::Failed(e),
        };
        let mut t = self.tally();
        t.calls += 1;
        let entry = t.latencies.entry((op, phase)).or_default();
        match &ended {
            Ended::Acked(..) => {
                entry.0.push(elapsed);
                t.acked += 1;
            }
            Ended::Unexpected => {
                entry.1 += 1;
                t.failed += 1;
                *t.errors.entry("unexpected".into()).or_default() += 1;
            }
            Ended::Failed(e) => {
                entry.1 += 1;
                t.failed += 1;
                *t.errors.entry(error_class(e).into()).or_default() += 1;
            }
            // made (an intent came before it), acknowledged, but not recorded as such
            Ended::Stopped => t.unrecorded += 1,
        }
        ended
    }
}

pub(super) fn account_target(account: Uuid) -> Target {
    Target {
        container: "Accounts",
        key: account,
        account: Some(account),
    }
}

pub(super) fn profile_target(profile: Uuid, account: Option<Uuid>) -> Target {
    Target {
        container: "UserProfiles",
        key: profile,
        account,
    }
}

pub(super) fn signup_target(signup: Uuid) -> Target {
    Target {
        container: "PendingSignups",
        key: signup,
        account: None,
    }
}

pub(super) fn is_duplicate_id(e: &RepoError) -> bool {
    matches!(
        e,
        RepoError::Conflict {
            kind: ConflictKind::DuplicateId,
            ..
        }
    )
}
