//! The sign-up code guesses of each email (`service.signup_guesses`), kept in PostgreSQL so
//! that every replica of the service counts against one budget.
//!
//! Three rules, enforced before a code is compared ([`admit`]):
//!
//! - **A budget per email.** At most [`Limits::per_email`] codes are compared per email per
//!   window (a fixed window, as in [`crate::signup_throttle`]), whichever clients send them and
//!   across every sign-up of the email: new sign-ups give no new guesses.
//! - **The requester's share.** The client that asked for the email's newest code (its
//!   *requester*, known by its bucket) may compare up to [`Limits::lockout`] codes against it,
//!   and that many of the window's budget are kept for it: other clients may only spend what
//!   is left of the budget once the requester's unspent share is set aside, and at most
//!   `MAX_FAILED_ATTEMPTS - lockout` guesses against that code. So a client that only guesses
//!   can never lock the requester out of its code; the requester still has its own lock-out.
//! - **The newest code.** [`record_signup`] makes a new sign-up the email's newest, with a
//!   fresh share for its requester (the sign-up store checks only an email's newest sign-up).
//!
//! Each check runs in one transaction holding the email's row lock, so concurrent guesses are
//! counted one after the other and never overspend. A guess is counted before its code is
//! compared; one that compared nothing (no open sign-up, expired, locked) is given back
//! ([`refund`]). Rows are deleted once their window and their code have both ended: each new
//! row sweeps a few expired ones, so the table holds about the emails active in the last
//! window.

use std::time::Duration;

use chrono::{DateTime, Utc};
use mystira_domain::{PendingSignup, RepoError};
use sqlx::PgPool;
use uuid::Uuid;

use crate::map_sqlx_error;

const TABLE: &str = "signup_guesses";

/// Expired rows one new row deletes (more than one, so the table shrinks after a burst).
const SWEEP_PER_NEW_ROW: i64 = 20;

/// The budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Codes compared per email per window.
    pub per_email: u32,
    /// The requester's guesses against its code (the sign-up lock-out).
    pub lockout: i32,
    /// The window of `per_email`.
    pub window: Duration,
}

/// Who is guessing, relative to the email's newest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guesser {
    /// The client that asked for the newest code, while that code is valid.
    Requester,
    /// Anyone else, or anyone at all when no valid code of this service has a known requester.
    Other,
}

/// A guess that may be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    pub guesser: Guesser,
    /// Guesses left to this guesser after this one, if it is wrong.
    pub attempts_left: i32,
    /// The lock-out to give the sign-up store: with a requester, the schema's ceiling, since
    /// the shares above keep each side within its own; without one, the lock-out itself.
    pub store_lockout: i32,
    window_start: DateTime<Utc>,
    signup_id: Option<Uuid>,
}

/// Why a guess is not compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The email's budget for this window is spent (for this guesser).
    Budget { retry_after: Duration },
    /// This guesser's guesses against the newest code are spent: a new code is needed.
    LockedOut,
}

/// The state of one email, as read under its row lock.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    window_start: DateTime<Utc>,
    guesses: i32,
    signup_id: Option<Uuid>,
    requester: Option<String>,
    code_expires_at: Option<DateTime<Utc>>,
    requester_guesses: i32,
    other_guesses: i32,
}

/// The counters after a decision, and the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decision {
    next: State,
    outcome: Result<Admitted, Refused>,
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The rules of the module's documentation, on the state read at `now` (`current_window`: the
/// window `now` is in).
fn decide(
    state: &State,
    client: Option<&str>,
    limits: Limits,
    now: DateTime<Utc>,
    current_window: DateTime<Utc>,
) -> Decision {
    let ceiling = PendingSignup::MAX_FAILED_ATTEMPTS;
    let budget = to_i32(limits.per_email);
    let lockout = PendingSignup::effective_lockout(limits.lockout);
    let mut next = state.clone();
    if next.window_start < current_window {
        next.window_start = current_window;
        next.guesses = 0;
    }
    let window_end = next.window_start
        + chrono::Duration::from_std(limits.window).unwrap_or(chrono::Duration::MAX);
    let retry_after = (window_end - now).to_std().unwrap_or_default();
    let live = next.signup_id.is_some()
        && next.requester.is_some()
        && next.code_expires_at.is_some_and(|t| t > now);
    let guesser = if live && client.is_some() && client == next.requester.as_deref() {
        Guesser::Requester
    } else {
        Guesser::Other
    };
    let refuse = |next: State, why| Decision {
        next,
        outcome: Err(why),
    };
    let attempts_left = match guesser {
        Guesser::Requester => {
            if next.requester_guesses >= lockout {
                return refuse(next, Refused::LockedOut);
            }
            if next.guesses >= budget {
                return refuse(next, Refused::Budget { retry_after });
            }
            next.requester_guesses += 1;
            next.guesses += 1;
            (lockout - next.requester_guesses).min(budget - next.guesses)
        }
        Guesser::Other => {
            // what the requester has not spent yet is not the others' to spend
            let reserved = if live {
                (lockout - next.requester_guesses).max(0)
            } else {
                0
            };
            // the store counts everyone's wrong codes against the sign-up: the others' share
            // of its ceiling is what the requester's lock-out leaves
            let share = live.then_some(ceiling - lockout);
            if next.guesses + reserved >= budget {
                return refuse(next, Refused::Budget { retry_after });
            }
            // within one window the budget binds first; across a window boundary this does
            if share.is_some_and(|s| next.other_guesses >= s) {
                return refuse(next, Refused::LockedOut);
            }
            next.guesses += 1;
            if live {
                next.other_guesses += 1;
            }
            let left = budget - reserved - next.guesses;
            share.map_or(left, |s| left.min(s - next.other_guesses))
        }
    };
    let store_lockout = if live && lockout > 0 {
        ceiling
    } else {
        lockout
    };
    Decision {
        outcome: Ok(Admitted {
            guesser,
            attempts_left: attempts_left.max(0),
            store_lockout,
            window_start: next.window_start,
            signup_id: next.signup_id,
        }),
        next,
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    window_start: DateTime<Utc>,
    guesses: i32,
    signup_id: Option<Uuid>,
    requester: Option<String>,
    code_expires_at: Option<DateTime<Utc>>,
    requester_guesses: i32,
    other_guesses: i32,
    now: DateTime<Utc>,
    current_window: DateTime<Utc>,
}

fn err(e: sqlx::Error) -> RepoError {
    map_sqlx_error(TABLE, e)
}

/// Opens a transaction holding `email_hash`'s row (created when missing) and reads it, with
/// the database's clock (one clock for all replicas); `true` when the row is new.
async fn lock(
    pool: &PgPool,
    email_hash: &str,
    window: Duration,
) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, Row, bool), RepoError> {
    let seconds = window.as_secs_f64().max(1.0);
    let mut tx = pool.begin().await.map_err(err)?;
    let created = sqlx::query(
        "insert into service.signup_guesses (email_hash, window_start, expires_at)
         values ($1, date_bin(make_interval(secs => $2), now(), timestamptz 'epoch'),
                 date_bin(make_interval(secs => $2), now(), timestamptz 'epoch')
                   + make_interval(secs => $2))
         on conflict (email_hash) do nothing",
    )
    .bind(email_hash)
    .bind(seconds)
    .execute(&mut *tx)
    .await
    .map_err(err)?
    .rows_affected()
        == 1;
    let row: Row = sqlx::query_as(
        "select window_start, guesses, signup_id, requester, code_expires_at,
                requester_guesses, other_guesses, now() as now,
                date_bin(make_interval(secs => $2), now(), timestamptz 'epoch') as current_window
         from service.signup_guesses where email_hash = $1 for update",
    )
    .bind(email_hash)
    .bind(seconds)
    .fetch_one(&mut *tx)
    .await
    .map_err(err)?;
    Ok((tx, row, created))
}

/// Writes `state` back to the locked row, keeping it until its window and its code end.
async fn store(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    email_hash: &str,
    state: &State,
    window: Duration,
) -> Result<(), RepoError> {
    sqlx::query(
        "update service.signup_guesses
         set window_start = $2, guesses = $3, signup_id = $4, requester = $5,
             code_expires_at = $6, requester_guesses = $7, other_guesses = $8,
             expires_at = greatest($2 + make_interval(secs => $9), $6)
         where email_hash = $1",
    )
    .bind(email_hash)
    .bind(state.window_start)
    .bind(state.guesses)
    .bind(state.signup_id)
    .bind(state.requester.as_deref())
    .bind(state.code_expires_at)
    .bind(state.requester_guesses)
    .bind(state.other_guesses)
    .bind(window.as_secs_f64().max(1.0))
    .execute(&mut **tx)
    .await
    .map_err(err)?;
    Ok(())
}

/// Deletes a few rows whose window and code have ended (rows other transactions hold are
/// left for later).
async fn sweep_some(pool: &PgPool) -> Result<u64, RepoError> {
    sqlx::query(
        "delete from service.signup_guesses where email_hash in (
             select email_hash from service.signup_guesses where expires_at < now()
             order by expires_at limit $1 for update skip locked)",
    )
    .bind(SWEEP_PER_NEW_ROW)
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
    .map_err(err)
}

/// [`sweep_some`] after a row was created: housekeeping, so a failure is logged and the
/// caller's answer stands (the next new row sweeps again).
async fn sweep_after_insert(pool: &PgPool) {
    if let Err(e) = sweep_some(pool).await {
        tracing::warn!(error = %e, "cannot sweep ended sign-up guess rows");
    }
}

/// Deletes every row whose window and code have ended; returns how many.
pub async fn sweep(pool: &PgPool) -> Result<u64, RepoError> {
    sqlx::query("delete from service.signup_guesses where expires_at < now()")
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(err)
}

fn state_of(row: &Row) -> State {
    State {
        window_start: row.window_start,
        guesses: row.guesses,
        signup_id: row.signup_id,
        requester: row.requester.clone(),
        code_expires_at: row.code_expires_at,
        requester_guesses: row.requester_guesses,
        other_guesses: row.other_guesses,
    }
}

/// Counts a guess at `email_hash`'s code by `client` (its bucket's hash; `None`: unknown) if
/// the rules allow it, and says so. Concurrent calls for one email are serialized by its row
/// lock, so of N at once exactly as many are admitted as the budget has left.
pub async fn admit(
    pool: &PgPool,
    email_hash: &str,
    client: Option<&str>,
    limits: Limits,
) -> Result<Result<Admitted, Refused>, RepoError> {
    let (mut tx, row, created) = lock(pool, email_hash, limits.window).await?;
    let decision = decide(&state_of(&row), client, limits, row.now, row.current_window);
    store(&mut tx, email_hash, &decision.next, limits.window).await?;
    tx.commit().await.map_err(err)?;
    if created {
        sweep_after_insert(pool).await;
    }
    Ok(decision.outcome)
}

/// Gives back a guess [`admit`] counted whose code was never compared (no open sign-up, an
/// expired or locked one): unless the window or the newest sign-up changed meanwhile, in which
/// case the counters it was taken from are gone and nothing is given back.
pub async fn refund(pool: &PgPool, email_hash: &str, admitted: &Admitted) -> Result<(), RepoError> {
    let requester = admitted.guesser == Guesser::Requester;
    sqlx::query(
        "update service.signup_guesses
         set guesses = greatest(guesses - 1, 0),
             requester_guesses = greatest(requester_guesses - case when $3 then 1 else 0 end, 0),
             other_guesses = greatest(other_guesses
                 - case when not $3 and signup_id is not null then 1 else 0 end, 0)
         where email_hash = $1 and window_start = $2 and signup_id is not distinct from $4",
    )
    .bind(email_hash)
    .bind(admitted.window_start)
    .bind(requester)
    .bind(admitted.signup_id)
    .execute(pool)
    .await
    .map_err(err)?;
    Ok(())
}

/// Makes `signup_id` (asked for by `requester`, its bucket's hash; `None`: unknown) the
/// email's newest sign-up, with a fresh share for its requester and for the others (the
/// window's budget is not reset). Concurrent calls are serialized by the row lock; the last
/// recorded holds the share.
pub async fn record_signup(
    pool: &PgPool,
    email_hash: &str,
    signup_id: Uuid,
    requester: Option<&str>,
    code_expires_at: DateTime<Utc>,
    window: Duration,
) -> Result<(), RepoError> {
    let (mut tx, row, created) = lock(pool, email_hash, window).await?;
    let mut next = state_of(&row);
    if next.window_start < row.current_window {
        next.window_start = row.current_window;
        next.guesses = 0;
    }
    next.signup_id = Some(signup_id);
    next.requester = requester.map(str::to_owned);
    next.code_expires_at = Some(code_expires_at);
    next.requester_guesses = 0;
    next.other_guesses = 0;
    store(&mut tx, email_hash, &next, window).await?;
    tx.commit().await.map_err(err)?;
    if created {
        sweep_after_insert(pool).await;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    const LIMITS: Limits = Limits {
        per_email: 10,
        lockout: 5,
        window: Duration::from_secs(3600),
    };

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0).unwrap()
    }

    fn fresh(requester: Option<&str>) -> State {
        State {
            window_start: at(0),
            guesses: 0,
            signup_id: Some(Uuid::nil()),
            requester: requester.map(str::to_owned),
            code_expires_at: Some(at(900)),
            requester_guesses: 0,
            other_guesses: 0,
        }
    }

    /// Guesses by `who` in order; the outcomes.
    fn run(
        state: &mut State,
        who: &[Option<&str>],
        now: DateTime<Utc>,
    ) -> Vec<Result<Admitted, Refused>> {
        who.iter()
            .map(|c| {
                let d = decide(state, *c, LIMITS, now, at(0));
                *state = d.next;
                d.outcome
            })
            .collect()
    }

    #[test]
    fn others_cannot_spend_the_requesters_share() {
        let mut s = fresh(Some("victim"));
        let out = run(&mut s, &[Some("attacker"); 8], at(60));
        let admitted = out.iter().filter(|o| o.is_ok()).count();
        assert_eq!(admitted, 5, "{out:?}");
        assert!(matches!(out[5], Err(Refused::Budget { .. })), "{out:?}");
        let out = run(&mut s, &[Some("victim"); 6], at(60));
        assert!(
            out[..5]
                .iter()
                .all(|o| o.as_ref().is_ok_and(|a| a.guesser == Guesser::Requester))
        );
        assert_eq!(out[5], Err(Refused::LockedOut));
        assert_eq!(s.guesses, 10);
    }

    #[test]
    fn across_a_window_boundary_the_others_share_of_a_code_still_binds() {
        let mut s = fresh(Some("victim"));
        s.window_start = at(-3600);
        s.guesses = 5;
        s.other_guesses = 5;
        // a new window, but the code is the same: its others' share is spent
        let d = decide(&s, Some("attacker"), LIMITS, at(60), at(0));
        assert_eq!(d.outcome, Err(Refused::LockedOut));
        let d = decide(&s, Some("victim"), LIMITS, at(60), at(0));
        assert_eq!(d.outcome.map(|a| a.store_lockout), Ok(10));
    }

    #[test]
    fn without_a_live_requester_everyone_shares_the_budget_and_the_store_locks() {
        let mut s = fresh(None);
        let out = run(&mut s, &[Some("a"); 11], at(60));
        assert_eq!(out.iter().filter(|o| o.is_ok()).count(), 10);
        assert!(matches!(out[10], Err(Refused::Budget { .. })));
        assert_eq!(out[0].as_ref().unwrap().store_lockout, 5);
        // an expired code has no requester's share either
        let mut s = fresh(Some("victim"));
        let out = run(&mut s, &[Some("a"); 11], at(900));
        assert_eq!(out.iter().filter(|o| o.is_ok()).count(), 10);
    }

    #[test]
    fn the_window_rolls_over() {
        let mut s = fresh(Some("victim"));
        s.guesses = 10;
        s.window_start = at(-3600);
        let d = decide(&s, Some("x"), LIMITS, at(60), at(0));
        assert!(d.outcome.is_ok());
        assert_eq!((d.next.guesses, d.next.window_start), (1, at(0)));
        let mut s = fresh(Some("victim"));
        s.guesses = 5;
        let d = decide(&s, Some("x"), LIMITS, at(60), at(0));
        assert_eq!(
            d.outcome,
            Err(Refused::Budget {
                retry_after: Duration::from_secs(3540)
            })
        );
    }
}
