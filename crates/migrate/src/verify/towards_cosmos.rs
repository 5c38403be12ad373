//! Verification in the other direction (`verify --direction pg-to-cosmos`): does Cosmos hold
//! everything PostgreSQL holds? This is what makes a rollback from phase 2 safe to sign off.
//!
//! The comparison is the same one (both sides reduced to the same canonical rows, bucketed
//! checksums, then field-level diffs of what differs), with a live Cosmos account as the
//! source; only the reading of the result turns round: a row PostgreSQL has and Cosmos does not
//! (`extra` from Cosmos's side) is missing in Cosmos, a changed row is one whose Cosmos copy
//! does not say what PostgreSQL says.
//!
//! `--repair` puts PostgreSQL's state of every drifted aggregate into Cosmos **through the
//! outbox relay**: it adds an outbox row per aggregate and runs relay passes until they are
//! delivered, so a repair takes the same per-aggregate lock, writes the same shape and records
//! the same versions as every phase-2 delivery. A document that Cosmos has and PostgreSQL does
//! not is removed from Cosmos only with `delete_extra`; otherwise it is left alone and still
//! reported.

use std::collections::BTreeSet;
use std::time::Duration;

use mystira_cosmos_codec::codec;
use mystira_postgres::outbox;
use sqlx::PgPool;
use uuid::Uuid;

use super::{DriftKind, RepairOptions, RepairReport, RepairRound, VerifyError, VerifyOptions};
use super::{VerifyReport, run_verify};
use mystira_copy::delivery::OutboxDelivery;
use mystira_copy::source::DocumentSource;

/// The aggregates (container, document key) a repair towards Cosmos re-delivers, and how many
/// drift items it leaves alone.
fn plan(report: &VerifyReport, opts: &RepairOptions) -> (BTreeSet<(String, Uuid)>, u64) {
    let mut aggregates = BTreeSet::new();
    let mut left_alone = 0;
    for item in report.drift() {
        // an app property no row holds cannot be delivered back: PostgreSQL has no value
        // for it (the note of the last copy does); reported, left alone
        if item.reason.as_deref() == Some(super::remainder::LOST_REASON) {
            left_alone += 1;
            continue;
        }
        let deliver = match item.kind {
            // in Cosmos, not in PostgreSQL: delivering the (absent) aggregate removes it
            DriftKind::Missing => opts.delete_extra,
            DriftKind::Extra
            | DriftKind::Changed
            | DriftKind::Stale
            | DriftKind::Ahead
            | DriftKind::Unmigrated => true,
            // PostgreSQL's state of the aggregate is the reference: delivering it rewrites the
            // document the app reads
            DriftKind::RoundTrip => true,
            // documents of the source (Cosmos) that PostgreSQL's row does not come from
            DriftKind::Quarantined
            | DriftKind::SupersededDuplicate
            | DriftKind::SupersededNotRecorded => false,
            // still being written: the write in flight delivers it
            DriftKind::Changing => false,
        };
        let container = item.entity.container();
        let key = item
            .cosmos_id
            .as_deref()
            .and_then(|id| codec::Container::from_name(container).map(|c| (id, c)))
            .map(|(id, c)| codec::reference_key(id, c.entity_type()))
            .or_else(|| {
                item.entity
                    .is_document()
                    .then(|| item.key.as_deref().and_then(|k| k.parse().ok()))
                    .flatten()
            });
        match key {
            Some(key) if deliver => {
                aggregates.insert((container.to_owned(), key));
            }
            _ => left_alone += 1,
        }
    }
    (aggregates, left_alone)
}

/// Verifies Cosmos against PostgreSQL, repairs through the relay, verifies again (each
/// verification recorded as a `verify` run).
pub async fn repair_towards_cosmos(
    pool: &PgPool,
    cosmos: &dyn DocumentSource,
    delivery: &dyn OutboxDelivery,
    verify_opts: &VerifyOptions,
    opts: &RepairOptions,
) -> Result<RepairReport, VerifyError> {
    // every run of this repair is recorded as what it is (the phase gates read the direction)
    let verify_opts = &VerifyOptions {
        direction: mystira_postgres::phase::VerifyDirection::PgToCosmos,
        ..verify_opts.clone()
    };
    let before = run_verify(pool, cosmos, verify_opts).await?;
    let mut current = before.clone();
    let mut rounds = Vec::new();
    while rounds.len() < opts.max_rounds as usize && current.drift_count() > 0 {
        let (aggregates, left_alone) = plan(&current, opts);
        if aggregates.is_empty() {
            break;
        }
        let mut round = RepairRound {
            left_alone,
            ..RepairRound::default()
        };
        for (container, key) in &aggregates {
            outbox::enqueue(pool, container, *key).await?;
            // one aggregate read from PostgreSQL and written to Cosmos (the summary counts
            // what was read, as for the other direction's re-copies)
            let counts = round.recopied.entry(container.clone()).or_default();
            counts.read += 1;
            counts.written += 1;
        }
        // bounded: 10 minutes of relaying
        let left = delivery.drain(Duration::from_secs(600)).await?;
        if left > 0 {
            return Err(VerifyError::Store(mystira_domain::RepoError::Unavailable(
                format!(
                    "the outbox still holds {} rows after 10 minutes of relaying",
                    left
                ),
            )));
        }
        rounds.push(round);
        current = run_verify(pool, cosmos, verify_opts).await?;
    }
    Ok(RepairReport {
        before,
        rounds,
        after: current,
    })
}
