//! The load-test kit: the load generator with its ledger of acknowledged writes and the
//! ledger's check against both stores, and the write-path benchmark. Used by the CLI's
//! `loadgen`, `ledger check` and `bench-writes` commands only; nothing in production depends
//! on it.

pub mod ledger;
pub mod loadgen;
pub mod write_bench;
