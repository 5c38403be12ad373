//! The migration phase as a value, and the routing policy it carries: which store is written,
//! which is primary (read and written first), and which canary overrides a domain move leaves
//! on the wrong side. Storing, changing and watching the phase is the storage and dual-write
//! crates' business; this module only says what each phase means.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of the four phases of the migration, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// 0: Cosmos is written and read; PostgreSQL is being backfilled.
    CosmosOnly,
    /// 1: Cosmos first (the primary), then PostgreSQL; reads from Cosmos.
    DualWriteCosmosRead,
    /// 2: PostgreSQL first (with an outbox row), then Cosmos; reads from PostgreSQL.
    DualWritePostgresRead,
    /// 3: PostgreSQL only; Cosmos is archived.
    PostgresOnly,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Self::CosmosOnly,
        Self::DualWriteCosmosRead,
        Self::DualWritePostgresRead,
        Self::PostgresOnly,
    ];

    /// The name stored in PostgreSQL and accepted on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::CosmosOnly => "cosmos-only",
            Self::DualWriteCosmosRead => "dual-write-cosmos-read",
            Self::DualWritePostgresRead => "dual-write-postgres-read",
            Self::PostgresOnly => "postgres-only",
        }
    }

    /// 0 to 3.
    pub fn number(self) -> u8 {
        match self {
            Self::CosmosOnly => 0,
            Self::DualWriteCosmosRead => 1,
            Self::DualWritePostgresRead => 2,
            Self::PostgresOnly => 3,
        }
    }

    /// Whether Cosmos is written in this phase.
    pub fn writes_cosmos(self) -> bool {
        self != Self::PostgresOnly
    }

    /// Whether PostgreSQL is written in this phase (directly or as a copy of a Cosmos write).
    pub fn writes_postgres(self) -> bool {
        self != Self::CosmosOnly
    }

    /// Whether reads (and the first write) go to PostgreSQL.
    pub fn postgres_is_primary(self) -> bool {
        matches!(self, Self::DualWritePostgresRead | Self::PostgresOnly)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A phase name or number that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown phase `{0}`: expected cosmos-only, dual-write-cosmos-read, \
     dual-write-postgres-read or postgres-only (or 0 to 3)"
)]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s || p.number().to_string() == s)
            .ok_or_else(|| UnknownPhase(s.to_owned()))
    }
}

/// Whether a domain move from `from` to `to` leaves an override of `override_phase` on the
/// wrong side: behind the new domain phase after a forward move, ahead of it after a backward
/// one. (An override equal to the new domain phase is not: it pins the account there.)
pub fn left_on_wrong_side(from: Phase, to: Phase, override_phase: Phase) -> bool {
    (to > from && override_phase < to) || (to < from && override_phase > to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_by_name_and_number() {
        for p in Phase::ALL {
            assert_eq!(p.name().parse::<Phase>(), Ok(p));
            assert_eq!(p.number().to_string().parse::<Phase>(), Ok(p));
        }
        assert!("4".parse::<Phase>().is_err());
        assert!("dual-write".parse::<Phase>().is_err());
    }

    #[test]
    fn phases_are_ordered() {
        assert!(Phase::CosmosOnly < Phase::DualWriteCosmosRead);
        assert!(Phase::DualWritePostgresRead < Phase::PostgresOnly);
        assert!(Phase::DualWritePostgresRead.postgres_is_primary());
        assert!(!Phase::DualWriteCosmosRead.postgres_is_primary());
    }

    #[test]
    fn an_override_is_on_the_wrong_side_behind_a_forward_move_or_ahead_of_a_backward_one() {
        use Phase::*;
        // forward 1 -> 2
        assert!(left_on_wrong_side(
            DualWriteCosmosRead,
            DualWritePostgresRead,
            CosmosOnly
        ));
        assert!(left_on_wrong_side(
            DualWriteCosmosRead,
            DualWritePostgresRead,
            DualWriteCosmosRead
        ));
        assert!(!left_on_wrong_side(
            DualWriteCosmosRead,
            DualWritePostgresRead,
            DualWritePostgresRead
        ));
        assert!(!left_on_wrong_side(
            DualWriteCosmosRead,
            DualWritePostgresRead,
            PostgresOnly
        ));
        // backward 2 -> 1
        assert!(left_on_wrong_side(
            DualWritePostgresRead,
            DualWriteCosmosRead,
            DualWritePostgresRead
        ));
        assert!(!left_on_wrong_side(
            DualWritePostgresRead,
            DualWriteCosmosRead,
            DualWriteCosmosRead
        ));
        assert!(!left_on_wrong_side(
            DualWritePostgresRead,
            DualWriteCosmosRead,
            CosmosOnly
        ));
    }
}
