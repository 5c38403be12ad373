//! The Cosmos side of the user-domain migration, without any network I/O:
//!
//! * [`codec`] turns raw Cosmos documents of the `Accounts`, `UserProfiles` and
//!   `PendingSignups` containers, in every shape the .NET app has written over the years, into
//!   domain entities (or a classified rejection), and entities back into the current EF Core 9
//!   shape;
//! * [`export`] reads and writes JSON-lines export files (one raw document per line, one file per
//!   container, a manifest with line counts and checksums), streaming and resumable;
//! * [`generate`] produces a deterministic synthetic data set of any size, spread over every
//!   historical shape and a configurable share of dirty documents, as export files.
//!
//! The Cosmos SDK adapter lives in `mystira-cosmos-store`.

pub mod codec;
pub mod export;
pub mod generate;

pub use codec::{
    Container, DecodeError, Decoded, DecodedAccount, DecodedPendingSignup, DecodedProfile, Note,
    SourceVersion,
};
