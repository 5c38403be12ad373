//! What the workspace's tests share, defined once: a dev-dependency of the crates' tests,
//! never a dependency of production code.
//!
//! - [`contract`]: the repository ports' contract, one function per case, run against every
//!   store;
//! - [`cosmos`]: the Cosmos-protocol test server's key, clients, fresh and seeded databases,
//!   the user domain's containers and the fault-injection endpoint;
//! - [`postgres`]: fresh PostgreSQL databases and table digests;
//! - [`process`]: a kill-on-drop guard for child processes;
//! - [`shapes`]: documents in every shape the app wrote, and their differences.
#![allow(clippy::unwrap_used)]

pub mod contract;
pub mod cosmos;
pub mod postgres;
pub mod process;
pub mod shapes;
