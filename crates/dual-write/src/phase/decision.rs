//! What a change request ended in ([`Decision`]): built from what the store reports, with the
//! checks the change was held to, and told to people as a few lines.

use mystira_domain::phase::Phase;
use mystira_postgres::phase::{ChangeKind, ChangeOutcome, GateRequest, Move, Transition};
use serde::Serialize;
use uuid::Uuid;

use super::change::ChangeOptions;
use super::conditions::Condition;
use super::drain::DrainWait;
use super::gates::{GateCheck, gate_checks};
use super::{AffectedOverride, OverrideAction};

/// What a change request ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// Written and audited.
    Applied,
    /// Already in that phase: nothing written.
    Unchanged,
    /// A gate refused: nothing written.
    Refused,
    /// `clear` of an account with no override: nothing written.
    NoOverride,
    /// A dry run of a change that would be applied (`forced` when only `--force` lets it).
    WouldApply,
    /// A dry run of a change a gate would refuse.
    WouldRefuse,
    /// A move out of `postgres-only` that was not confirmed: nothing written.
    NeedsConfirmation,
}

/// The result of [`set_phase`](super::set_phase) or [`clear_override`](super::clear_override).
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub result: DecisionKind,
    /// The canary account, or `None` for the domain-wide phase.
    pub account: Option<Uuid>,
    pub from: Phase,
    pub to: Phase,
    /// Whether a refusing gate was (or, in a dry run, would be) forced past.
    pub forced: bool,
    /// Refused: every unmet condition. Applied with `forced`: the conditions forced past.
    pub unmet: Vec<Condition>,
    /// Every check the change was held to and whether it passed (empty when nothing was
    /// decided: unchanged, no override).
    pub gates: Vec<GateCheck>,
    /// A domain move: the overrides it leaves on the wrong side, and whether they are
    /// (or would be) cleared or kept.
    pub overrides: Vec<AffectedOverride>,
    /// Whether the change leaves `postgres-only` and so needs a typed confirmation (or
    /// `--yes`).
    pub confirmation_required: bool,
    pub dry_run: bool,
    /// The audit row, when applied.
    pub transition: Option<Transition>,
    pub drain_wait: Option<DrainWait>,
}

impl Decision {
    /// A sentence (or a few lines) for people.
    pub fn summary(&self) -> String {
        let subject = match self.account {
            Some(a) => format!("account {a}"),
            None => "the domain".to_owned(),
        };
        let mut out = match self.result {
            DecisionKind::Applied if self.forced => format!(
                "FORCED: {subject} moved from {} to {} past {} unmet condition(s):\n",
                self.from,
                self.to,
                self.unmet.len()
            ),
            DecisionKind::Applied => {
                format!("{subject} moved from {} to {}\n", self.from, self.to)
            }
            DecisionKind::Unchanged => format!("{subject} is already in {}\n", self.to),
            DecisionKind::Refused => format!(
                "REFUSED: {subject} stays in {}; moving to {} needs:\n",
                self.from, self.to
            ),
            DecisionKind::NoOverride => format!(
                "{subject} has no override (it runs in the domain phase, {})\n",
                self.to
            ),
            DecisionKind::WouldApply if self.forced => format!(
                "DRY RUN: {subject} would move from {} to {}, FORCED past {} unmet \
                 condition(s):\n",
                self.from,
                self.to,
                self.unmet.len()
            ),
            DecisionKind::WouldApply => format!(
                "DRY RUN: {subject} would move from {} to {}\n",
                self.from, self.to
            ),
            DecisionKind::WouldRefuse => format!(
                "DRY RUN: REFUSED: {subject} would stay in {}; moving to {} needs:\n",
                self.from, self.to
            ),
            DecisionKind::NeedsConfirmation => format!(
                "NOT CONFIRMED: {subject} stays in {}: moving out of postgres-only to {} needs \
                 a typed confirmation (in a terminal) or --yes\n",
                self.from, self.to
            ),
        };
        for c in &self.unmet {
            out.push_str(&format!("  - [{}] {c}\n", c.code()));
        }
        if matches!(
            self.result,
            DecisionKind::Refused | DecisionKind::WouldRefuse
        ) {
            out.push_str("  (--force goes past the gate; the audit row then says forced)\n");
        }
        if self.dry_run && !self.gates.is_empty() {
            out.push_str("gates:\n");
            for g in &self.gates {
                let about = g
                    .account
                    .map(|a| format!(" (account {a})"))
                    .unwrap_or_default();
                let state = if g.passed { "pass" } else { "FAIL" };
                out.push_str(&format!("  {state}  {}{about}\n", g.check));
            }
        }
        if !self.overrides.is_empty() {
            let done = matches!(self.result, DecisionKind::Applied);
            out.push_str(&format!(
                "overrides left on the wrong side by the move to {}:\n",
                self.to
            ));
            for o in &self.overrides {
                let action = match (o.action, done) {
                    (OverrideAction::Cleared, true) => {
                        format!(
                            "cleared (the account moved from {} to {})",
                            o.phase, self.to
                        )
                    }
                    (OverrideAction::Cleared, false) => format!(
                        "cleared by the move (the account moves from {} to {}; \
                         --keep-overrides keeps it)",
                        o.phase, self.to
                    ),
                    (OverrideAction::Kept, _) => {
                        format!("kept in {} (--keep-overrides)", o.phase)
                    }
                };
                out.push_str(&format!("  {} in {}: {action}\n", o.account_id, o.phase));
            }
        }
        if self.dry_run && self.confirmation_required {
            out.push_str(
                "the move leaves postgres-only: it asks for a typed confirmation (or --yes)\n",
            );
        }
        out
    }
}

/// The gate request a decided change was held to (rebuilt from what the store reports).
pub(super) fn gate_request_of(
    kind: ChangeKind,
    account: Option<Uuid>,
    from: Phase,
    to: Phase,
    overrides: &[AffectedOverride],
) -> GateRequest {
    GateRequest {
        kind,
        change: Move { account, from, to },
        cleared: overrides
            .iter()
            .filter(|o| o.action == OverrideAction::Cleared)
            .map(|o| Move {
                account: Some(o.account_id),
                from: o.phase,
                to,
            })
            .collect(),
    }
}

fn leaves_postgres_only(request: &GateRequest) -> bool {
    request
        .moves()
        .any(|m| m.from == Phase::PostgresOnly && m.to != Phase::PostgresOnly)
}

pub(super) fn decision(
    outcome: ChangeOutcome<Condition>,
    kind: ChangeKind,
    account: Option<Uuid>,
    options: &ChangeOptions,
    drain_wait: Option<DrainWait>,
) -> Decision {
    let base = |result, from, to| Decision {
        result,
        account,
        from,
        to,
        forced: false,
        unmet: Vec::new(),
        gates: Vec::new(),
        overrides: Vec::new(),
        confirmation_required: false,
        dry_run: options.dry_run,
        transition: None,
        drain_wait,
    };
    let decided = |result, from, to, unmet: Vec<Condition>, overrides: Vec<AffectedOverride>| {
        let request = gate_request_of(kind, account, from, to, &overrides);
        Decision {
            forced: options.force && !unmet.is_empty(),
            gates: gate_checks(&request, &unmet),
            confirmation_required: leaves_postgres_only(&request),
            unmet,
            overrides,
            ..base(result, from, to)
        }
    };
    match outcome {
        ChangeOutcome::Applied {
            transition,
            overridden,
            overrides,
        } => {
            let (from, to) = (transition.from_phase, transition.to_phase);
            Decision {
                forced: transition.forced,
                transition: Some(transition),
                ..decided(DecisionKind::Applied, from, to, overridden, overrides)
            }
        }
        ChangeOutcome::Unchanged { phase } => base(DecisionKind::Unchanged, phase, phase),
        ChangeOutcome::Refused {
            from,
            to,
            unmet,
            overrides,
        } => Decision {
            forced: false,
            ..decided(DecisionKind::Refused, from, to, unmet, overrides)
        },
        ChangeOutcome::NoOverride { domain_phase } => {
            base(DecisionKind::NoOverride, domain_phase, domain_phase)
        }
        ChangeOutcome::DryRun {
            from,
            to,
            unmet,
            overrides,
            ..
        } => {
            let result = if unmet.is_empty() || options.force {
                DecisionKind::WouldApply
            } else {
                DecisionKind::WouldRefuse
            };
            decided(result, from, to, unmet, overrides)
        }
        ChangeOutcome::NeedsConfirmation {
            from,
            to,
            unmet,
            overrides,
        } => decided(DecisionKind::NeedsConfirmation, from, to, unmet, overrides),
    }
}
