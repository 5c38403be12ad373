//! How a Cosmos document id becomes a PostgreSQL primary key, and back.
//!
//! The schema keeps the spec's UUID primary keys, but Cosmos ids are not always UUIDs
//! (26-character hex ids, client-supplied strings, EF 8's `Type|<guid>` form). The spec's
//! `p_cosmos_id::UUID` cast fails on those. The rule here:
//!
//! * an id in the hyphenated 8-4-4-4-12 hex form (any case) keeps that UUID; other spellings
//!   that some parsers accept (braces, no hyphens, `urn:uuid:`) count as non-UUID ids, so that
//!   this rule and the SQL function `mystira_key_for_cosmos_id` agree exactly;
//! * any other id becomes the UUIDv5 of the id string under [`COSMOS_ID_NAMESPACE`];
//! * whenever the source string is not exactly the canonical lower-case hyphenated form of the
//!   key, it is kept (column `cosmos_id`), so the row can be found by its original id and written
//!   back to Cosmos under it, byte for byte.
//!
//! The mapping is deterministic, so a reference (`UserProfile.AccountId`) mapped on its own
//! resolves to the same key as the document it points at.

use uuid::Uuid;

/// The fixed namespace for UUIDv5 keys of non-UUID Cosmos ids:
/// `uuid5(NAMESPACE_URL, "https://mystira.app/ns/user-domain/cosmos-id")`.
/// Never change it: every derived key in every database depends on it.
pub const COSMOS_ID_NAMESPACE: Uuid = Uuid::from_u128(0xadc14b81_b9e5_552e_b105_5694b8c4f3d6);

/// A primary key together with the Cosmos id it came from, when that id is not simply the key's
/// canonical text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MappedId {
    /// The PostgreSQL primary key.
    pub uuid: Uuid,
    /// The original Cosmos id, when it differs from `uuid`'s canonical text.
    pub cosmos_id: Option<String>,
}

impl MappedId {
    /// Maps a Cosmos id to its key. Never fails: every string has a key.
    pub fn from_source(raw: &str) -> Self {
        match parse_hyphenated(raw) {
            Some(uuid) => {
                let canonical = uuid.hyphenated().to_string();
                let cosmos_id = (canonical != raw).then(|| raw.to_owned());
                Self { uuid, cosmos_id }
            }
            None => Self {
                uuid: Uuid::new_v5(&COSMOS_ID_NAMESPACE, raw.as_bytes()),
                cosmos_id: Some(raw.to_owned()),
            },
        }
    }

    /// A key minted by this service (no Cosmos id to remember).
    pub fn new_native(uuid: Uuid) -> Self {
        Self {
            uuid,
            cosmos_id: None,
        }
    }

    /// The id to use in Cosmos: the original string, or the key's canonical text.
    pub fn cosmos_id(&self) -> String {
        self.cosmos_id
            .clone()
            .unwrap_or_else(|| self.uuid.hyphenated().to_string())
    }
}

/// Parses only the hyphenated 8-4-4-4-12 form (the .NET `Guid.ToString()` default), any case.
fn parse_hyphenated(raw: &str) -> Option<Uuid> {
    let bytes = raw.as_bytes();
    let shape_ok = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    shape_ok.then(|| Uuid::try_parse(raw).ok()).flatten()
}

/// The key of a row that has no id of its own in Cosmos: a subscription embedded without `Id`
/// (documents older than December 2025) or a completed scenario (a bare id in an array).
/// Deterministic, so re-running a migration produces the same keys.
pub fn derived_key(kind: &str, parent: Uuid, discriminator: &str) -> Uuid {
    let name = format!("{kind}:{}:{discriminator}", parent.hyphenated());
    Uuid::new_v5(&COSMOS_ID_NAMESPACE, name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_is_the_documented_derivation() {
        let derived = Uuid::new_v5(
            &Uuid::NAMESPACE_URL,
            b"https://mystira.app/ns/user-domain/cosmos-id",
        );
        assert_eq!(COSMOS_ID_NAMESPACE, derived);
    }

    #[test]
    fn canonical_uuid_keeps_its_value_and_no_original() {
        let raw = "7d1c3a52-5b7e-4d5a-9f0e-2b1f3c4d5e6f";
        let m = MappedId::from_source(raw);
        assert_eq!(m.uuid.to_string(), raw);
        assert_eq!(m.cosmos_id, None);
        assert_eq!(m.cosmos_id(), raw);
    }

    #[test]
    fn upper_case_uuid_keeps_its_value_and_its_spelling() {
        let raw = "7D1C3A52-5B7E-4D5A-9F0E-2B1F3C4D5E6F";
        let m = MappedId::from_source(raw);
        assert_eq!(m.uuid.to_string(), raw.to_lowercase());
        assert_eq!(m.cosmos_id.as_deref(), Some(raw));
        assert_eq!(m.cosmos_id(), raw);
    }

    #[test]
    fn non_uuid_ids_map_deterministically_and_keep_the_original() {
        for raw in [
            "01HF3K9Q2Z8Y7X6W5V4T3S2R1Q",
            "7d1c3a525b7e4d5a9f0e2b1f3c4d5e6f",
            "{7d1c3a52-5b7e-4d5a-9f0e-2b1f3c4d5e6f}",
            "Account|7d1c3a52-5b7e-4d5a-9f0e-2b1f3c4d5e6f",
            "user-42",
            "",
        ] {
            let a = MappedId::from_source(raw);
            let b = MappedId::from_source(raw);
            assert_eq!(a, b);
            assert_eq!(a.uuid.get_version_num(), 5);
            assert_eq!(a.cosmos_id(), raw);
        }
        assert_ne!(
            MappedId::from_source("user-42").uuid,
            MappedId::from_source("user-43").uuid
        );
    }

    #[test]
    fn derived_keys_differ_by_kind_parent_and_discriminator() {
        let p = Uuid::from_u128(1);
        let q = Uuid::from_u128(2);
        assert_eq!(derived_key("cs", p, "a"), derived_key("cs", p, "a"));
        assert_ne!(derived_key("cs", p, "a"), derived_key("cs", p, "b"));
        assert_ne!(derived_key("cs", p, "a"), derived_key("cs", q, "a"));
        assert_ne!(derived_key("cs", p, "a"), derived_key("sub", p, "a"));
    }
}
