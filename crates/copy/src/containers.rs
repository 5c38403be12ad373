//! What every copy path shares: the containers of the user domain, in the order they are
//! copied, and the per-container accounting of what happened to their documents.

use std::collections::BTreeMap;

use serde::Serialize;

/// The containers of the user domain, in the order they are copied.
pub const CONTAINERS: [&str; 3] = ["Accounts", "UserProfiles", "PendingSignups"];

/// What happened to one container's documents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
// counts recorded by older versions lack the newer fields
#[serde(default)]
pub struct ContainerCounts {
    pub read: u64,
    pub written: u64,
    /// Already in PostgreSQL at this version or newer (a re-run, or a resumed page).
    pub unchanged: u64,
    pub quarantined: u64,
    /// Not copied on purpose, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Documents counted `written` earlier that a newer document of the same row, or a newer
    /// account claiming the same login, displaced later (moved to the quarantine as
    /// `superseded_duplicate` or `duplicate_auth0_user_id`). Not part of the reconciliation:
    /// each was read and written once; this says how many of those writes no longer stand.
    pub superseded: u64,
    /// Documents the initial load copied, then took out again because they compete with
    /// another document for a row or value, and applied through the upsert path after its
    /// rebuild. Their counts are those of that final outcome (each read counted once, see
    /// `crate::initial`); this says how many took the detour. Not part of the reconciliation.
    pub set_aside: u64,
}

impl ContainerCounts {
    /// Whether every document read is accounted for.
    pub fn reconciles(&self) -> bool {
        self.read
            == self.written + self.unchanged + self.quarantined + self.skipped.values().sum::<u64>()
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ContainerCounts) {
        self.read += other.read;
        self.written += other.written;
        self.unchanged += other.unchanged;
        self.quarantined += other.quarantined;
        self.superseded += other.superseded;
        self.set_aside += other.set_aside;
        for (reason, n) in &other.skipped {
            *self.skipped.entry(reason.clone()).or_default() += n;
        }
    }
}

/// `<host>:<pid>`: names the workers of this process in the lease table.
pub fn local_owner(pid: u32) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}:{pid}", host.trim())
}
