//! What `phase show` reports ([`status`]): the domain phase, every override with where it
//! stands and what the next move or a rollback would do to it, and what each of those two
//! moves' gates still needs.

use mystira_domain::phase::{Phase, left_on_wrong_side};
use mystira_postgres::phase::{self as store, ChangeKind, OutboxBacklog};
use serde::Serialize;
use sqlx::PgPool;

use super::change::PhaseError;
use super::conditions::Condition;
use super::decision::gate_request_of;
use super::durations::at;
use super::gates::{GateConfig, evaluate};
use super::{AffectedOverride, OverrideAction, PhaseOverride, PhaseState};

/// Where an override stands against the domain phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverridePosition {
    /// In a later phase than the domain (a canary of what comes next).
    Ahead,
    /// In an earlier phase than the domain.
    Behind,
    /// In the domain's phase (it pins the account there).
    Same,
}

/// What a domain move would do to an override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverrideEffect {
    /// It stays where it is, on the right side of the domain.
    Stays,
    /// The domain reaches the override's phase: it then pins the account there.
    Pins,
    /// The move leaves it on the wrong side: cleared with the move (the account moves too,
    /// through the gates), or kept with `--keep-overrides`; audited either way.
    WrongSide,
}

/// What one domain move would mean for an override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OverrideOutlook {
    /// The domain move's target.
    pub to: Phase,
    pub effect: OverrideEffect,
    /// A sentence for people.
    pub meaning: String,
}

fn outlook(domain: Phase, to: Phase, o: Phase) -> OverrideOutlook {
    let (effect, meaning) = if left_on_wrong_side(domain, to, o) {
        let side = if to > domain { "behind" } else { "ahead" };
        (
            OverrideEffect::WrongSide,
            format!(
                "left {side} by the move to {to}: cleared with it (the account moves from {o} \
                 to {to}, through the same gates), or kept with --keep-overrides"
            ),
        )
    } else if o == to {
        (
            OverrideEffect::Pins,
            format!("the move to {to} reaches it: it then pins the account in {to}"),
        )
    } else {
        let side = if o > to { "ahead of" } else { "behind" };
        (
            OverrideEffect::Stays,
            format!("stays {side} the domain in {o}"),
        )
    };
    OverrideOutlook {
        to,
        effect,
        meaning,
    }
}

/// An override, as `phase show` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct OverrideStatus {
    #[serde(flatten)]
    pub details: PhaseOverride,
    /// Whether PostgreSQL holds the account.
    pub account_exists: bool,
    pub position: OverridePosition,
    /// What the next forward domain move (`next`) would mean for it.
    pub on_next: Option<OverrideOutlook>,
    /// What a domain rollback of one step would mean for it.
    pub on_rollback: Option<OverrideOutlook>,
}

/// Everything `phase show` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseStatus {
    pub domain: PhaseState,
    pub overrides: Vec<OverrideStatus>,
    /// The next forward phase, if any, and what its gate still needs (empty: open), counting
    /// the moves of the overrides it would clear.
    pub next: Option<Phase>,
    pub next_unmet: Vec<Condition>,
    /// The phase one step back, if any, and what its gate still needs, the same way.
    pub rollback: Option<Phase>,
    pub rollback_unmet: Vec<Condition>,
    pub retry_journal_rows: i64,
    pub outbox: OutboxBacklog,
}

impl PhaseStatus {
    /// Several lines for people.
    pub fn summary(&self) -> String {
        let d = &self.domain;
        let mut out = format!(
            "phase: {} ({})\n  set {} by {}: {}\n",
            d.phase,
            d.phase.number(),
            at(&d.changed_at),
            d.changed_by,
            d.reason
        );
        out.push_str(&format!(
            "retry journal: {} row(s); outbox: {} row(s)\n",
            self.retry_journal_rows, self.outbox.rows
        ));
        if self.overrides.is_empty() {
            out.push_str("overrides: none\n");
        } else {
            out.push_str(&format!("overrides: {}\n", self.overrides.len()));
            for o in &self.overrides {
                let details = &o.details;
                let missing = if o.account_exists {
                    ""
                } else {
                    " [no such account in PostgreSQL]"
                };
                out.push_str(&format!(
                    "  {} {} (set {} by {}: {}){missing}\n",
                    details.account_id,
                    details.phase,
                    at(&details.changed_at),
                    details.changed_by,
                    details.reason
                ));
                for (label, outlook) in [("next", &o.on_next), ("rollback", &o.on_rollback)] {
                    if let Some(outlook) = outlook {
                        out.push_str(&format!("    on {label}: {}\n", outlook.meaning));
                    }
                }
            }
        }
        let mut gate = |label: &str, to: Option<Phase>, unmet: &[Condition]| match to {
            None => out.push_str(&format!("{label}: none\n")),
            Some(to) if unmet.is_empty() => {
                out.push_str(&format!("{label}: {to}: the gate is open\n"));
            }
            Some(to) => {
                out.push_str(&format!("{label}: {to}: the gate needs:\n"));
                for c in unmet {
                    out.push_str(&format!("  - [{}] {c}\n", c.code()));
                }
            }
        };
        gate("next", self.next, &self.next_unmet);
        gate("rollback", self.rollback, &self.rollback_unmet);
        out
    }
}

/// Reads the phase, the overrides and the gate status of the next forward step and of a
/// rollback of one step.
pub async fn status(pool: &PgPool, gates: &GateConfig) -> Result<PhaseStatus, PhaseError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| PhaseError::Store(mystira_postgres::map_sqlx_error("phase_state", e)))?;
    let domain = store::current(&mut *conn).await?;
    let details = store::override_details(&mut *conn).await?;
    let here = domain.phase;
    let next = Phase::ALL.into_iter().find(|p| *p > here);
    let rollback = Phase::ALL.into_iter().rev().find(|p| *p < here);
    // the gate a domain move faces, clearing the overrides it leaves on the wrong side
    let request_to = |to: Phase| {
        let affected: Vec<AffectedOverride> = details
            .iter()
            .filter(|o| left_on_wrong_side(here, to, o.phase))
            .map(|o| AffectedOverride {
                account_id: o.account_id,
                phase: o.phase,
                action: OverrideAction::Cleared,
            })
            .collect();
        gate_request_of(ChangeKind::Domain, None, here, to, &affected)
    };
    let next_unmet = match next {
        Some(to) => evaluate(&mut conn, &request_to(to), gates).await?,
        None => Vec::new(),
    };
    let rollback_unmet = match rollback {
        Some(to) => evaluate(&mut conn, &request_to(to), gates).await?,
        None => Vec::new(),
    };
    let mut overrides = Vec::with_capacity(details.len());
    for o in details {
        let position = match o.phase.cmp(&here) {
            std::cmp::Ordering::Greater => OverridePosition::Ahead,
            std::cmp::Ordering::Less => OverridePosition::Behind,
            std::cmp::Ordering::Equal => OverridePosition::Same,
        };
        overrides.push(OverrideStatus {
            account_exists: store::account_exists(&mut *conn, o.account_id).await?,
            position,
            on_next: next.map(|to| outlook(here, to, o.phase)),
            on_rollback: rollback.map(|to| outlook(here, to, o.phase)),
            details: o,
        });
    }
    Ok(PhaseStatus {
        next,
        next_unmet,
        rollback,
        rollback_unmet,
        retry_journal_rows: store::retry_journal_len(&mut *conn).await?,
        outbox: store::outbox_backlog(&mut *conn).await?,
        overrides,
        domain,
    })
}
