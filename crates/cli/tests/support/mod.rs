//! What the process tests of the binary share beyond `mystira-test-support` (the test servers,
//! fresh databases, digests): `serve` as a child process ([`serve`]) and the archive's process
//! rig ([`archive_rig`]).
#![allow(clippy::unwrap_used, dead_code)]

pub mod archive_rig;
pub mod serve;
