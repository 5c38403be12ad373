//! The load-test kit: the load generator with its ledger of acknowledged writes and the
//! ledger's check against both stores, the write-path benchmark, and the backfill's benchmark
//! with its COPY baselines. Used by the CLI's `loadgen`, `ledger check`, `bench-writes` and
//! `bench` commands only; nothing in production depends on it.

pub mod bench;
pub mod copy_baseline;
pub mod ledger;
pub mod loadgen;
pub mod write_bench;
