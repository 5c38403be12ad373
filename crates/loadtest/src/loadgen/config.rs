//! What a run is asked to do, and how it can fail.

use std::path::PathBuf;
use std::time::Duration;

use crate::ledger::LedgerError;

use super::report::LoadReport;

/// What to generate.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Calls started per second.
    pub rate: f64,
    pub duration: Duration,
    /// Calls in flight at most.
    pub concurrency: usize,
    pub seed: u64,
    pub ledger: PathBuf,
    /// How often buffered acknowledgements are fsynced.
    pub sync_interval: Duration,
    /// After `duration` (or a stop), how long calls still in flight are waited for.
    pub settle_timeout: Duration,
}

impl LoadConfig {
    pub fn new(rate: f64, duration: Duration, ledger: PathBuf) -> Self {
        Self {
            rate,
            duration,
            concurrency: 16,
            seed: 1,
            ledger,
            sync_interval: Duration::from_millis(200),
            settle_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("the rate must be a positive number of calls per second")]
    BadRate,
    /// The ledger could not be opened, or its run record not written: no call was made.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A ledger write failed during the run, which was stopped at once; `report` says what was
    /// done until then (`unrecorded`: calls the router acknowledged whose acknowledgement
    /// could not be written).
    #[error(
        "a ledger write failed, so the run was stopped after {} calls ({} acknowledged and \
         recorded)",
        report.calls,
        report.acknowledged
    )]
    LedgerWrite {
        #[source]
        source: LedgerError,
        report: Box<LoadReport>,
    },
}
