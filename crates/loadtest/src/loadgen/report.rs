//! What a run did: calls, acknowledgements and failures per operation, latency per operation
//! and phase, the router's counters; and its summary for a terminal.

use std::collections::BTreeMap;

use mystira_domain::phase::Phase;
use serde::Serialize;

use mystira_dual_write::router::RouterStats;

/// Latency of one operation in one phase (successful calls only).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpStats {
    pub op: &'static str,
    pub phase: Phase,
    pub calls: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    pub run: u64,
    pub seed: u64,
    pub elapsed_seconds: f64,
    pub target_rate: f64,
    /// Calls started per second.
    pub achieved_rate: f64,
    pub calls: u64,
    pub acknowledged: u64,
    pub failed: u64,
    /// Calls the router acknowledged whose acknowledgement could not be written to the ledger
    /// (the run stopped there): not counted as acknowledged.
    pub unrecorded: u64,
    /// Failed calls by error class (`unavailable`, `conflict`, `invalid`, `store`,
    /// `unexpected`: an answer the flow did not expect, such as `Ok(false)`).
    pub errors: BTreeMap<String, u64>,
    /// Ticks at which no call was started because `concurrency` calls were in flight.
    pub over_concurrency: u64,
    /// Calls still in flight when the settle timeout passed (abandoned).
    pub abandoned: u64,
    pub users: u64,
    pub ledger_lines: u64,
    pub per_op: Vec<OpStats>,
    pub router: RouterStats,
}

impl LoadReport {
    /// A few lines for people.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "loadgen run {} (seed {}): {} calls in {:.1} s ({:.1}/s, target {:.1}/s), {} \
             acknowledged, {} failed, {} acknowledged but not recorded, {} skipped at the \
             concurrency bound, {} abandoned; {} users; {} ledger lines\n",
            self.run,
            self.seed,
            self.calls,
            self.elapsed_seconds,
            self.achieved_rate,
            self.target_rate,
            self.acknowledged,
            self.failed,
            self.unrecorded,
            self.over_concurrency,
            self.abandoned,
            self.users,
            self.ledger_lines,
        );
        if !self.errors.is_empty() {
            let e: Vec<String> = self
                .errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            out.push_str(&format!("errors: {}\n", e.join(", ")));
        }
        out.push_str(&format!(
            "{:<22} {:<26} {:>7} {:>7} {:>7} {:>9} {:>9}\n",
            "operation", "phase", "calls", "ok", "failed", "p50 ms", "p99 ms"
        ));
        for s in &self.per_op {
            out.push_str(&format!(
                "{:<22} {:<26} {:>7} {:>7} {:>7} {:>9.2} {:>9.2}\n",
                s.op,
                s.phase.name(),
                s.calls,
                s.ok,
                s.failed,
                s.p50_ms,
                s.p99_ms
            ));
        }
        let r = &self.router;
        out.push_str(&format!(
            "router: {} copied, {} journalled (table), {} journalled (file), {} delivered \
             inline, {} left to the relay\n",
            r.copied, r.journalled_postgres, r.journalled_file, r.delivered_inline, r.left_to_relay
        ));
        out
    }
}
