//! The two error types of the domain: what a value or entity breaks ([`ValidationError`]) and
//! what a store reports ([`RepoError`]). Neither carries row values: errors end up in logs, and
//! the values here are personal data.

use std::fmt;

/// A value or entity that breaks a rule of the schema. Each variant names the field; the
/// message names the rule. Values are never included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// An email address that the `*_email_check` constraints reject.
    #[error("invalid email in `{field}`: {rule}")]
    InvalidEmail {
        field: &'static str,
        rule: &'static str,
    },
    /// A role outside `Guest`, `User`, `Admin`, `SuperAdmin`.
    #[error("invalid role in `{field}`: must be one of Guest, User, Admin, SuperAdmin")]
    InvalidRole { field: &'static str },
    /// An age group that is neither `<min>-<max>` nor a known legacy name.
    #[error("invalid age group in `{field}`: {rule}")]
    InvalidAgeGroup {
        field: &'static str,
        rule: &'static str,
    },
    /// A subscription type outside Free, Monthly, Annual, Lifetime, Individual (0..=4).
    #[error(
        "invalid subscription type in `{field}`: must be Free, Monthly, Annual, Lifetime or Individual (0-4)"
    )]
    InvalidSubscriptionType { field: &'static str },
    /// A sign-up code that is empty, too long or not alphanumeric.
    #[error("invalid sign-up code in `{field}`: {rule}")]
    InvalidSignupCode {
        field: &'static str,
        rule: &'static str,
    },
    /// A string longer than its column allows.
    #[error("`{field}` is {actual} characters long, the limit is {max}")]
    TooLong {
        field: &'static str,
        max: usize,
        actual: usize,
    },
    /// A list with more items than a client may send (see [`crate::input`]).
    #[error("`{field}` has {actual} items, the limit is {max}")]
    TooMany {
        field: &'static str,
        max: usize,
        actual: usize,
    },
    /// A number outside the range its CHECK constraint allows.
    #[error("`{field}` is out of range: {rule}")]
    OutOfRange {
        field: &'static str,
        rule: &'static str,
    },
    /// A required value that is empty.
    #[error("`{field}` must not be empty")]
    Empty { field: &'static str },
    /// A sign-up with neither a code nor a magic-link token hash: nothing could ever complete
    /// it (`pending_signups_code_or_token_check`).
    #[error("a sign-up needs `{field}` or `verification_token_hash`; it has neither")]
    NoCodeOrToken { field: &'static str },
}

impl ValidationError {
    /// The field the error is about, as named in the entity (and the column).
    pub fn field(&self) -> &'static str {
        match self {
            Self::InvalidEmail { field, .. }
            | Self::InvalidRole { field }
            | Self::InvalidAgeGroup { field, .. }
            | Self::InvalidSubscriptionType { field }
            | Self::InvalidSignupCode { field, .. }
            | Self::TooLong { field, .. }
            | Self::TooMany { field, .. }
            | Self::OutOfRange { field, .. }
            | Self::Empty { field }
            | Self::NoCodeOrToken { field } => field,
        }
    }

    /// A stable, machine-readable code (used as a quarantine reason code).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidEmail { .. } => "invalid_email",
            Self::InvalidRole { .. } => "invalid_role",
            Self::InvalidAgeGroup { .. } => "invalid_age_group",
            Self::InvalidSubscriptionType { .. } => "invalid_subscription_type",
            Self::InvalidSignupCode { .. } => "invalid_signup_code",
            Self::TooLong { .. } => "too_long",
            Self::TooMany { .. } => "too_many",
            Self::OutOfRange { .. } => "out_of_range",
            Self::Empty { .. } => "empty",
            Self::NoCodeOrToken { .. } => "no_code_or_token",
        }
    }
}

/// What kind of conflict a write ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConflictKind {
    /// A row with the same primary key (or original Cosmos id) exists.
    DuplicateId,
    /// Another account has the same auth0 / external user id.
    DuplicateAuth0UserId,
    /// The account already has a subscription (one per account).
    DuplicateSubscription,
    /// The profile already holds a badge of this configuration.
    DuplicateBadge,
    /// The account already completed this scenario.
    DuplicateCompletedScenario,
    /// A referenced row (account, profile) does not exist.
    MissingReference,
    /// Another unique constraint.
    Other,
}

impl fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DuplicateId => "a row with this id already exists",
            Self::DuplicateAuth0UserId => "another account has this auth0 user id",
            Self::DuplicateSubscription => "the account already has a subscription",
            Self::DuplicateBadge => "the profile already holds a badge of this configuration",
            Self::DuplicateCompletedScenario => "the account already completed this scenario",
            Self::MissingReference => "a referenced row does not exist",
            Self::Other => "a unique constraint was violated",
        })
    }
}

/// An error from a repository. Never contains SQL text or row values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// The entity breaks a rule of the schema; nothing was written.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The write conflicts with existing data; nothing was written.
    #[error("conflict on {entity}: {kind} (constraint `{constraint}`)")]
    Conflict {
        entity: &'static str,
        kind: ConflictKind,
        constraint: String,
    },
    /// The store could not be reached or timed out; the operation may be retried.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else; not retryable.
    #[error("store error: {0}")]
    Store(String),
}

impl RepoError {
    /// Whether retrying the same call may succeed. Only transient store failures are.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// The conflict kind, if this is a conflict.
    pub fn conflict_kind(&self) -> Option<ConflictKind> {
        match self {
            Self::Conflict { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Returns [`ValidationError::TooLong`] when `value` has more than `max` characters, the way
/// PostgreSQL counts `VARCHAR(n)` (characters, not bytes).
pub fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), ValidationError> {
    let actual = value.chars().count();
    if actual > max {
        return Err(ValidationError::TooLong { field, max, actual });
    }
    Ok(())
}

/// [`check_len`] for an optional value.
pub fn check_opt_len(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<(), ValidationError> {
    value.map_or(Ok(()), |v| check_len(field, v, max))
}
