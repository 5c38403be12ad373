//! `mystira-users phase show|set|clear|history`: the migration phase, its gates and its audit
//! trail. The rules live in `mystira_dual_write::phase`; this module parses, resolves the actor and
//! the maximum verify age (flag > `MYSTIRA_MAX_VERIFY_AGE` > `[phase] max_verify_age` > 24 h),
//! asks for the typed confirmation of a move out of postgres-only (only when stdin is a
//! terminal; otherwise `--yes` or exit 5, never a wait for input), and maps a refusal to exit
//! code 3.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use mystira_domain::phase::Phase;
use mystira_dual_write::phase::{
    self, ChangeOptions, Decision, DecisionKind, GateConfig, PhaseError,
};
use serde_json::json;
use uuid::Uuid;

use super::{Outcome, database};
use crate::config::{ConfigError, Settings};
use crate::exit::Exit;

/// `mystira-users phase ...`
#[derive(Debug, Subcommand)]
pub enum PhaseCommand {
    /// Show the phase (who set it, when, why), the canary overrides, and what the gate of the
    /// next forward step still needs.
    Show {
        #[command(flatten)]
        gates: GateArgs,
    },

    /// Move the domain (or, with --account, one canary account) to another phase, through
    /// the gates.
    ///
    /// PHASE is cosmos-only, dual-write-cosmos-read, dual-write-postgres-read or postgres-only
    /// (or 0-3). Forward moves are gated, and a jump meets the gate of every step it passes:
    /// into 1 needs the latest backfill run to have succeeded; into 2 a clean verify of the
    /// whole key space newer than --max-verify-age and an empty retry journal; into 3 an empty
    /// outbox and recent clean verifies in both directions (`verify` and `verify --direction
    /// pg-to-cosmos`). Moving from 2 or 3 back to 1 or 0 needs an empty outbox (--wait-drain
    /// waits for the relay to empty it); out of 3 it must go through 2, and from 2 to 1 or 0
    /// after phase 3 needs a clean `verify --direction pg-to-cosmos` started after phase 3 was
    /// left. A domain move clears the canary overrides it leaves on the wrong side (behind it
    /// going forward, ahead of it going back) unless --keep-overrides; an override must name
    /// an existing account. A refusal names every unmet condition and exits 3; --force goes
    /// past it and the audit row says forced. A move out of 3 asks for the target phase's name
    /// to be typed (or --yes; without a terminal and without --yes it exits 5). --dry-run
    /// shows what would change, every gate check and the overrides affected. Every change is
    /// audited (who, when, from, to, why) and seen by every running process within 2 s.
    Set {
        /// The phase to move to (name or 0-3)
        #[arg(value_name = "PHASE")]
        phase: Phase,

        /// Only this canary account (its own phase, overriding the domain's)
        #[arg(long, value_name = "UUID")]
        account: Option<Uuid>,

        /// A domain move keeps the canary overrides it leaves on the wrong side (recorded in
        /// the audit row) instead of clearing them
        #[arg(long, conflicts_with = "account")]
        keep_overrides: bool,

        #[command(flatten)]
        change: ChangeArgs,
    },

    /// Return a canary account to the domain phase, through the same gates as `phase set`.
    Clear {
        /// The canary account
        #[arg(long, value_name = "UUID")]
        account: Uuid,

        #[command(flatten)]
        change: ChangeArgs,
    },

    /// List the latest phase changes, newest first: when, who, from, to, forced, why.
    History {
        /// At most this many changes
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: i64,
    },
}

/// How strict the gates are.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// A clean verify older than this does not open the gates into phases 2 and 3, e.g. 24h,
    /// 90m, 1h30m [default: `[phase] max_verify_age` in the config file, else 24h]
    #[arg(
        long,
        env = "MYSTIRA_MAX_VERIFY_AGE",
        value_name = "DURATION",
        value_parser = phase::parse_duration
    )]
    pub max_verify_age: Option<Duration>,
}

/// Who changes the phase, why, and how.
#[derive(Debug, Args)]
pub struct ChangeArgs {
    /// Why the phase changes (recorded in the audit trail)
    #[arg(long, value_name = "TEXT")]
    pub reason: String,

    /// Go past a refusing gate (the audit row says forced)
    #[arg(long)]
    pub force: bool,

    /// When the move needs an empty outbox, wait at most this long for the relay to empty it
    /// before deciding
    #[arg(long, value_name = "SECONDS")]
    pub wait_drain: Option<u64>,

    /// Who makes the change, for the audit trail [default: $USER, else $LOGNAME, else the uid]
    #[arg(long, value_name = "NAME")]
    pub actor: Option<String>,

    /// Show what would change, every gate check (pass or fail) and the overrides affected;
    /// change nothing (exit 0 when it would be applied, 3 when refused)
    #[arg(long)]
    pub dry_run: bool,

    /// Confirm a move out of postgres-only without typing the phase's name
    #[arg(long)]
    pub yes: bool,

    #[command(flatten)]
    pub gates: GateArgs,
}

pub async fn run(command: &PhaseCommand, settings: &Settings) -> anyhow::Result<Outcome> {
    let pool = database::prepared_pool(settings, 2).await?;
    let outcome = match command {
        PhaseCommand::Show { gates } => {
            let gates = gate_config(gates, settings)?;
            let status = phase::status(&pool, &gates)
                .await
                .context("cannot read the phase")?;
            Outcome {
                exit: Exit::Ok,
                human: status.summary(),
                json: json!(status),
            }
        }
        PhaseCommand::Set {
            phase: to,
            account,
            keep_overrides,
            change,
        } => {
            let mut options = change_options(change, settings)?;
            options.keep_overrides = *keep_overrides;
            let mut result = phase::set_phase(&pool, *to, *account, &options).await;
            if needs_confirmation(&result) && confirmed_by_typing(&result).await? {
                options.confirmed = true;
                result = phase::set_phase(&pool, *to, *account, &options).await;
            }
            decided(result)?
        }
        PhaseCommand::Clear { account, change } => {
            let mut options = change_options(change, settings)?;
            let mut result = phase::clear_override(&pool, *account, &options).await;
            if needs_confirmation(&result) && confirmed_by_typing(&result).await? {
                options.confirmed = true;
                result = phase::clear_override(&pool, *account, &options).await;
            }
            decided(result)?
        }
        PhaseCommand::History { limit } => {
            let transitions = phase::history(&pool, *limit)
                .await
                .context("cannot read the phase history")?;
            let mut human = String::new();
            if transitions.is_empty() {
                human.push_str("no phase change recorded\n");
            }
            for t in &transitions {
                let scope = t
                    .account_id
                    .map_or_else(|| "domain".to_owned(), |a| format!("account {a}"));
                let mut overrides = String::new();
                if !t.overrides_cleared.is_empty() {
                    overrides.push_str(&format!(
                        "  [{} override(s) cleared]",
                        t.overrides_cleared.len()
                    ));
                }
                if !t.overrides_kept.is_empty() {
                    overrides.push_str(&format!(
                        "  [{} override(s) kept on the wrong side]",
                        t.overrides_kept.len()
                    ));
                }
                human.push_str(&format!(
                    "{}  {:<8} {} -> {}{}  {scope}  {}{overrides}\n",
                    t.changed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    t.changed_by,
                    t.from_phase,
                    t.to_phase,
                    if t.forced { " FORCED" } else { "" },
                    t.reason
                ));
            }
            Outcome {
                exit: Exit::Ok,
                human,
                json: json!({ "transitions": transitions }),
            }
        }
    };
    pool.close().await;
    Ok(outcome)
}

fn needs_confirmation(result: &Result<Decision, PhaseError>) -> bool {
    matches!(result, Ok(d) if d.result == DecisionKind::NeedsConfirmation)
}

/// Asks for the target phase's name to be typed, when stdin is a terminal (never otherwise:
/// a script or a CI job gets exit 5 and the advice to pass --yes, not a hang). The change is
/// then made again, through the gates, on fresh facts.
async fn confirmed_by_typing(result: &Result<Decision, PhaseError>) -> anyhow::Result<bool> {
    let Ok(decision) = result else {
        return Ok(false);
    };
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    let subject = match decision.account {
        Some(a) => format!("account {a}"),
        None => "the domain".to_owned(),
    };
    let expected = decision.to.name();
    let prompt = format!(
        "This moves {subject} from postgres-only to {expected}. Writes made in postgres-only \
         exist only in PostgreSQL until `mystira-users verify --direction pg-to-cosmos \
         --repair` delivers them to Cosmos.\nType `{expected}` to confirm: "
    );
    let typed = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "{prompt}");
        let _ = stderr.flush();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("cannot read the confirmation")?
    .context("cannot read the confirmation")?;
    Ok(typed.trim() == expected)
}

/// A refusal needs attention (3); a move out of postgres-only that was not confirmed exits 5;
/// a request without a reason or actor is a usage error (2).
fn decided(result: Result<Decision, PhaseError>) -> anyhow::Result<Outcome> {
    let decision = match result {
        Ok(d) => d,
        Err(PhaseError::Invalid(message)) => {
            return Err(ConfigError::Usage(message.to_owned()).into());
        }
        Err(e) => return Err(anyhow::Error::new(e).context("cannot change the phase")),
    };
    let exit = match decision.result {
        DecisionKind::Refused | DecisionKind::WouldRefuse => Exit::Attention,
        DecisionKind::NeedsConfirmation => Exit::NotConfirmed,
        DecisionKind::Applied
        | DecisionKind::Unchanged
        | DecisionKind::NoOverride
        | DecisionKind::WouldApply => Exit::Ok,
    };
    if decision.forced && decision.result == DecisionKind::Applied {
        tracing::warn!(
            from = %decision.from,
            to = %decision.to,
            unmet = decision.unmet.len(),
            "phase changed past a refusing gate (forced)"
        );
    }
    Ok(Outcome {
        exit,
        human: decision.summary(),
        json: json!(decision),
    })
}

fn change_options(args: &ChangeArgs, settings: &Settings) -> anyhow::Result<ChangeOptions> {
    Ok(ChangeOptions {
        actor: args.actor.clone().unwrap_or_else(os_user),
        reason: args.reason.clone(),
        force: args.force,
        gates: gate_config(&args.gates, settings)?,
        wait_drain: args.wait_drain.map(Duration::from_secs),
        keep_overrides: false,
        dry_run: args.dry_run,
        confirmed: args.yes,
    })
}

/// The flag (or its environment variable), else the config file, else 24 h.
pub(crate) fn gate_config(args: &GateArgs, settings: &Settings) -> anyhow::Result<GateConfig> {
    if let Some(age) = args.max_verify_age {
        return Ok(GateConfig {
            max_verify_age: age,
        });
    }
    let from_file = settings
        .file
        .phase
        .as_ref()
        .and_then(|p| p.max_verify_age.as_deref());
    let Some(text) = from_file else {
        return Ok(GateConfig::default());
    };
    let age = phase::parse_duration(text).map_err(|message| ConfigError::Invalid {
        path: settings.config_file.clone().unwrap_or_default(),
        location: String::new(),
        message: format!("[phase] max_verify_age: {message}"),
    })?;
    Ok(GateConfig {
        max_verify_age: age,
    })
}

/// `$USER`, else `$LOGNAME`, else `uid:<n>` (the owner of this process).
fn os_user() -> String {
    use std::os::unix::fs::MetadataExt as _;
    ["USER", "LOGNAME"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|v| v.trim().to_owned())
        .find(|v| !v.is_empty())
        .unwrap_or_else(|| match std::fs::metadata("/proc/self") {
            Ok(m) => format!("uid:{}", m.uid()),
            Err(_) => "unknown".to_owned(),
        })
}
