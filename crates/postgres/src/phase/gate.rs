//! What a phase change asks its gate: the moves it makes ([`GateRequest`]) and the
//! [`PhaseGate`] contract the caller's rules implement (evaluated under the phase lock).

use async_trait::async_trait;
use mystira_domain::RepoError;
use mystira_domain::phase::Phase;
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// What kind of change a gate is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The domain-wide phase.
    Domain,
    /// One account's override is set.
    Override,
    /// One account's override is removed (the account returns to the domain phase).
    Clear,
}

/// One phase move: the domain's (`account: None`) or one account's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Move {
    pub account: Option<Uuid>,
    pub from: Phase,
    pub to: Phase,
}

/// What a gate decides on: the requested move, and for a domain move the accounts whose
/// overrides it clears (each of them moves from its override's phase to the new domain phase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRequest {
    pub kind: ChangeKind,
    pub change: Move,
    pub cleared: Vec<Move>,
}

impl GateRequest {
    /// The requested move, then every cleared override's.
    pub fn moves(&self) -> impl Iterator<Item = &Move> {
        std::iter::once(&self.change).chain(self.cleared.iter())
    }
}

/// Decides whether a phase change may happen. Evaluated inside the transaction that holds the
/// phase lock, on its connection, so what it reads cannot be changed by another phase change
/// before the decision is written.
#[async_trait]
pub trait PhaseGate: Send + Sync {
    /// One condition the change does not meet.
    type Unmet: Send;

    /// Every condition that `request` does not meet (empty: the change may happen).
    async fn unmet(
        &self,
        conn: &mut PgConnection,
        request: &GateRequest,
    ) -> Result<Vec<Self::Unmet>, RepoError>;
}

/// A gate that lets every change through (tools and tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ungated;

#[async_trait]
impl PhaseGate for Ungated {
    type Unmet = std::convert::Infallible;

    async fn unmet(
        &self,
        _conn: &mut PgConnection,
        _request: &GateRequest,
    ) -> Result<Vec<Self::Unmet>, RepoError> {
        Ok(Vec::new())
    }
}
