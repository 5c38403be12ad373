//! A deterministic synthetic data set in Cosmos's own document shapes, of any size.
//!
//! For `accounts` = N it produces N account documents, 1–4 profiles per account (0–10 badges
//! each), about N/10 pending sign-ups, spread over every historical shape the codec must read:
//! EF 8 documents (`Discriminator`, some with `"id": "Type|<guid>"` and the real id in `Id`),
//! EF 9 documents (`$type`), documents with neither; `Auth0UserId` vs `ExternalUserId` (and
//! `""` for none); subscriptions of every type (a few with the type as a label), with and
//! without their own `Id`, `DateTime.MaxValue` end dates; settings with and without `Id` and
//! with unknown keys; dates with 0–7 fractional digits, with `Z`, an offset or no offset;
//! legacy age groups; non-UUID ids (26-character upper-case hex, client ids) and upper-case
//! GUIDs, referenced by profiles exactly as spelled; magic-link sign-ups. Every document has the
//! Cosmos system fields `_rid`, `_self`, `_etag`, `_attachments` and `_ts`.
//!
//! A share `dirty` of the documents carries one of the problems of `cosmos-documents.md`
//! ([`Problem`]); each [`GeneratedDoc`] says what it is ([`DocKind`]) and what the codec must
//! make of it ([`Expected`]), so tests can check every document. All emails are at
//! `example.com`-style domains (RFC 2606), all names are made up.
//!
//! Determinism: one PCG-64 stream seeded from `seed`; values are drawn with this module's own
//! arithmetic (never `rand`'s distributions, whose outputs may change between versions), no
//! clock is read, and JSON object keys are written in a fixed order. Same seed and options →
//! byte-identical files. Memory does not grow with N: documents are produced one account at a
//! time and streamed to the export writer.
//!
//! This module holds the options, what a document is meant to be and the iterator; the draws
//! are in `draw`, what every document shares in `shape`, and each container's documents in
//! `account`, `profile` and `signup`.

mod account;
mod draw;
mod profile;
mod shape;
mod signup;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use rand_core::SeedableRng;
use rand_pcg::Pcg64;
use serde_json::Value;

use crate::codec::Container;
use crate::export::{ExportError, ExportWriter, Manifest};
use draw::Draw;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    pub accounts: u64,
    pub seed: u64,
    /// Share of documents (0.0–1.0) that carry a [`Problem`].
    pub dirty: f64,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            accounts: 1000,
            seed: 42,
            dirty: 0.02,
        }
    }
}

/// A problem from `cosmos-documents.md` planted in a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Problem {
    /// `""`, the app's default email.
    EmptyEmail,
    /// Whitespace only, or whitespace inside the address.
    WhitespaceEmail,
    /// A numeric top-level domain.
    DigitTldEmail,
    /// An apostrophe in the local part (valid under the relaxed check).
    ApostropheEmail,
    /// A punycode top-level domain (valid under the relaxed check).
    PunycodeEmail,
    /// `AgeGroupName` neither `<min>-<max>` nor a known legacy name.
    UnknownAgeGroup,
    /// `"Role": null`.
    NullRole,
    /// A role in other casing (`admin`).
    OddCaseRole,
    /// The same `BadgeConfigurationId` twice in one profile.
    DuplicateBadges,
    /// A profile whose `AccountId` names an account that does not exist.
    OrphanProfile,
    /// A document of another entity type (`Scenario`) in the container.
    ForeignType,
}

impl Problem {
    const ACCOUNT: [Problem; 8] = [
        Self::EmptyEmail,
        Self::WhitespaceEmail,
        Self::DigitTldEmail,
        Self::ApostropheEmail,
        Self::PunycodeEmail,
        Self::NullRole,
        Self::OddCaseRole,
        Self::ForeignType,
    ];
    const PROFILE: [Problem; 4] = [
        Self::UnknownAgeGroup,
        Self::DuplicateBadges,
        Self::OrphanProfile,
        Self::ForeignType,
    ];
    const SIGNUP: [Problem; 6] = [
        Self::EmptyEmail,
        Self::WhitespaceEmail,
        Self::DigitTldEmail,
        Self::ApostropheEmail,
        Self::PunycodeEmail,
        Self::ForeignType,
    ];

    /// The problems that can be planted in a container's documents.
    pub fn for_container(container: Container) -> &'static [Problem] {
        match container {
            Container::Accounts => &Self::ACCOUNT,
            Container::UserProfiles => &Self::PROFILE,
            Container::PendingSignups => &Self::SIGNUP,
        }
    }
}

/// What a generated document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKind {
    /// A valid document in one of the historical shapes.
    Clean,
    /// A sign-up of the magic-link version (no `Code`; a token hash, a status and its times),
    /// which the codec decodes as that version.
    MagicLinkSignup,
    Problem(Problem),
}

/// What the codec must make of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Decodes, with no note other than normalisation notes (`age_group_mapped`).
    Decodes,
    /// Decodes with (at least) this note.
    Note(&'static str),
    /// Decodes, but its `AccountId` resolves to no generated account.
    DecodesWithMissingAccount,
    /// Rejected with this code.
    Rejected(&'static str),
}

impl DocKind {
    pub fn expected(self) -> Expected {
        match self {
            Self::Clean => Expected::Decodes,
            Self::MagicLinkSignup => Expected::Decodes,
            Self::Problem(p) => match p {
                Problem::EmptyEmail | Problem::WhitespaceEmail | Problem::DigitTldEmail => {
                    Expected::Rejected("invalid_email")
                }
                Problem::ApostropheEmail | Problem::PunycodeEmail => Expected::Decodes,
                Problem::UnknownAgeGroup => Expected::Rejected("invalid_age_group"),
                Problem::NullRole => Expected::Note("role_defaulted"),
                Problem::OddCaseRole => Expected::Note("role_recased"),
                Problem::DuplicateBadges => Expected::Note("duplicate_badge"),
                Problem::OrphanProfile => Expected::DecodesWithMissingAccount,
                Problem::ForeignType => Expected::Rejected("foreign_type"),
            },
        }
    }

    pub fn is_dirty(self) -> bool {
        matches!(self, Self::Problem(_))
    }
}

/// One generated document.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedDoc {
    pub container: Container,
    pub kind: DocKind,
    pub value: Value,
}

/// What [`write_export`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSummary {
    pub documents: BTreeMap<Container, u64>,
    pub kinds: BTreeMap<DocKind, u64>,
    pub total_documents: u64,
    pub dirty_documents: u64,
    pub manifest: Manifest,
}

/// Generates the data set into export files in `dir` (see [`crate::export`]), streaming.
pub fn write_export(dir: &Path, opts: &GenerateOptions) -> Result<GenerateSummary, ExportError> {
    let mut writer = ExportWriter::create(dir)?;
    for c in Container::ALL {
        writer.add_container(c.name())?;
    }
    let mut documents = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    let (mut total, mut dirty) = (0u64, 0u64);
    for doc in documents_of(opts) {
        writer.write(doc.container.name(), &doc.value)?;
        *documents.entry(doc.container).or_insert(0) += 1;
        *kinds.entry(doc.kind).or_insert(0) += 1;
        total += 1;
        dirty += u64::from(doc.kind.is_dirty());
    }
    let manifest = writer.finish()?;
    Ok(GenerateSummary {
        documents,
        kinds,
        total_documents: total,
        dirty_documents: dirty,
        manifest,
    })
}

/// The generated documents, lazily, one account (with its profiles and sign-ups) at a time.
pub fn documents_of(opts: &GenerateOptions) -> Documents {
    Documents {
        rng: Draw(Pcg64::seed_from_u64(opts.seed)),
        opts: opts.clone(),
        next_account: 0,
        pending: VecDeque::new(),
    }
}

/// Iterator over generated documents (see [`documents_of`]).
#[derive(Debug)]
pub struct Documents {
    rng: Draw,
    opts: GenerateOptions,
    next_account: u64,
    pending: VecDeque<GeneratedDoc>,
}

impl Iterator for Documents {
    type Item = GeneratedDoc;

    fn next(&mut self) -> Option<GeneratedDoc> {
        while self.pending.is_empty() && self.next_account < self.opts.accounts {
            let n = self.next_account;
            self.next_account += 1;
            self.generate_account(n);
        }
        self.pending.pop_front()
    }
}
