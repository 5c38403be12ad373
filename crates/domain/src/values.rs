//! Validated value types. Each constructor rejects exactly what the schema rejects for that
//! column (see `docs/schema.md` for where the schema deliberately differs from the spec), and
//! each error names the field and the rule.
//!
//! Types that hold personal data ([`Email`], [`SignupCode`], [`Secret`]) print as `[redacted]`
//! in `Debug` and have no `Display`, so they cannot slip into a log line by accident.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ValidationError, check_len};

/// The serde bridge of a validated string newtype (`TryFrom<String>` through its `parse`, and
/// back `Into<String>`); with `redacted`, also a `Debug` that hides the value (personal data).
macro_rules! string_value {
    ($ty:ident) => {
        impl TryFrom<String> for $ty {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$ty> for String {
            fn from(value: $ty) -> Self {
                value.0
            }
        }
    };
    ($ty:ident, redacted) => {
        string_value!($ty);

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($ty), "([redacted])"))
            }
        }
    };
}

/// A value that must never be logged (purchase tokens). `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    /// The secret itself. Call only where the value is really needed (a write, a comparison).
    pub fn expose(&self) -> &T {
        &self.0
    }
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// An email address as `accounts.email` and `pending_signups.email` accept it.
///
/// Rule (the `*_email_check` constraints, see docs/schema.md): at most 255 characters after
/// trimming surrounding whitespace; a local part of letters, digits and `._%+'-`; one `@`; a
/// domain of letters, digits, `.` and `-` ending in `.` and either a TLD of two or more letters
/// or a punycode TLD (`xn--...`). Case is kept as typed; comparisons that must ignore case use
/// [`Email::normalized`].
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 255;

    /// Parses an email for the column named `field`.
    pub fn parse_field(field: &'static str, raw: &str) -> Result<Self, ValidationError> {
        let value = raw.trim();
        if value.is_empty() {
            return Err(ValidationError::InvalidEmail {
                field,
                rule: "must not be empty",
            });
        }
        check_len(field, value, Self::MAX_LEN)?;
        let Some((local, domain)) = value.split_once('@') else {
            return Err(ValidationError::InvalidEmail {
                field,
                rule: "must contain `@`",
            });
        };
        let local_ok = |c: char| c.is_ascii_alphanumeric() || "._%+'-".contains(c);
        if local.is_empty() || !local.chars().all(local_ok) {
            return Err(ValidationError::InvalidEmail {
                field,
                rule: "the part before `@` may hold only letters, digits and ._%+'-",
            });
        }
        let domain_ok = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-';
        if !domain.chars().all(domain_ok) {
            return Err(ValidationError::InvalidEmail {
                field,
                rule: "the domain may hold only letters, digits, `.` and `-`",
            });
        }
        let tld_ok = match domain.rsplit_once('.') {
            Some((host, tld)) if !host.is_empty() => is_tld(tld),
            _ => false,
        };
        if !tld_ok {
            return Err(ValidationError::InvalidEmail {
                field,
                rule: "the domain must end in `.` and a top-level domain of two or more letters (or punycode `xn--`)",
            });
        }
        Ok(Self(value.to_owned()))
    }

    /// Parses an email for the `email` field.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Self::parse_field("email", raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lower-cased form, for case-insensitive lookups (`lower(email)` in SQL).
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }
}

fn is_tld(tld: &str) -> bool {
    let lower = tld.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("xn--") {
        !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    } else {
        tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
    }
}

string_value!(Email, redacted);

/// An account role (`accounts_role_check`). Parsing ignores case (`admin` is `Admin`); the stored
/// form is the canonical spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Role {
    #[default]
    Guest,
    User,
    Admin,
    SuperAdmin,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Guest, Role::User, Role::Admin, Role::SuperAdmin];

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let raw = raw.trim();
        Self::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(raw))
            .ok_or(ValidationError::InvalidRole { field: "role" })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guest => "Guest",
            Self::User => "User",
            Self::Admin => "Admin",
            Self::SuperAdmin => "SuperAdmin",
        }
    }
}

/// A profile's age group, `<min>-<max>` (`user_profiles_age_group_check`, at most 20
/// characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AgeGroup(String);

impl AgeGroup {
    pub const MAX_LEN: usize = 20;

    /// The age groups the app offers today.
    pub const CURRENT: [&'static str; 6] = ["1-2", "3-5", "6-9", "10-12", "13-18", "19-150"];

    /// Legacy and alternative names found in Cosmos, and the current group each means.
    pub const LEGACY_NAMES: [(&'static str, &'static str); 5] = [
        ("toddlers", "1-2"),
        ("early_childhood", "3-5"),
        ("school", "6-9"),
        ("preteens", "10-12"),
        ("adult", "19-150"),
    ];

    /// Parses the `<min>-<max>` form only, as the CHECK does.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let field = "age_group";
        check_len(field, raw, Self::MAX_LEN)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        match raw.split_once('-') {
            Some((min, max)) if digits(min) && digits(max) => Ok(Self(raw.to_owned())),
            _ => Err(ValidationError::InvalidAgeGroup {
                field,
                rule: "must look like `<min>-<max>` (for example `6-9`)",
            }),
        }
    }

    /// Parses `<min>-<max>` or one of [`Self::LEGACY_NAMES`] (case-insensitive), which maps to
    /// its current group. Anything else is an error: unknown names are quarantined, not guessed.
    pub fn from_source(raw: &str) -> Result<Self, ValidationError> {
        let trimmed = raw.trim();
        if let Ok(group) = Self::parse(trimmed) {
            return Ok(group);
        }
        Self::LEGACY_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(trimmed))
            .map(|(_, group)| Self((*group).to_owned()))
            .ok_or(ValidationError::InvalidAgeGroup {
                field: "age_group",
                rule: "neither `<min>-<max>` nor a known legacy name",
            })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for AgeGroup {
    /// The schema's default, `6-9`.
    fn default() -> Self {
        Self("6-9".to_owned())
    }
}

string_value!(AgeGroup);

/// The `subscription_type` enum. Cosmos stores it as an integer (Free=0 ... Individual=4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum SubscriptionType {
    #[default]
    Free,
    Monthly,
    Annual,
    Lifetime,
    Individual,
}

impl SubscriptionType {
    pub const ALL: [SubscriptionType; 5] = [
        Self::Free,
        Self::Monthly,
        Self::Annual,
        Self::Lifetime,
        Self::Individual,
    ];

    /// From the .NET enum's integer value.
    pub fn from_code(code: i64) -> Result<Self, ValidationError> {
        usize::try_from(code)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
            .ok_or(ValidationError::InvalidSubscriptionType { field: "type" })
    }

    /// The .NET enum's integer value.
    pub fn code(self) -> i64 {
        match self {
            Self::Free => 0,
            Self::Monthly => 1,
            Self::Annual => 2,
            Self::Lifetime => 3,
            Self::Individual => 4,
        }
    }

    /// From the enum label (case-insensitive).
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(raw.trim()))
            .ok_or(ValidationError::InvalidSubscriptionType { field: "type" })
    }

    /// The PostgreSQL enum label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Free => "Free",
            Self::Monthly => "Monthly",
            Self::Annual => "Annual",
            Self::Lifetime => "Lifetime",
            Self::Individual => "Individual",
        }
    }
}

/// A sign-up verification code: 1 to 10 ASCII letters or digits (`pending_signups.code`,
/// `VARCHAR(10)`; the app issues 6 digits). `Debug` prints `[redacted]`.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SignupCode(String);

impl SignupCode {
    pub const MAX_LEN: usize = 10;

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let field = "code";
        if raw.is_empty() {
            return Err(ValidationError::InvalidSignupCode {
                field,
                rule: "must not be empty",
            });
        }
        check_len(field, raw, Self::MAX_LEN)?;
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ValidationError::InvalidSignupCode {
                field,
                rule: "may hold only ASCII letters and digits",
            });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares in constant time with respect to the contents, so timing does not leak how much
    /// of a guessed code was right.
    pub fn matches(&self, guess: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), guess.as_bytes());
        let mut diff = a.len() ^ b.len();
        for (i, x) in a.iter().enumerate() {
            diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

string_value!(SignupCode, redacted);

/// The `Status` of a magic-link sign-up: the app's enum value, 0 to 4
/// (`pending_signups_status_check`). The spec gives the range but not the names of the states,
/// so the number is kept as stored and nothing here reads a meaning into it (which state is
/// "verified" is the app's to say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i16", into = "i16")]
pub struct SignupStatus(i16);

impl SignupStatus {
    pub const MAX: i16 = 4;

    /// `field` names the column or document field the value came from.
    pub fn new(field: &'static str, value: i64) -> Result<Self, ValidationError> {
        i16::try_from(value)
            .ok()
            .filter(|v| (0..=Self::MAX).contains(v))
            .map(Self)
            .ok_or(ValidationError::OutOfRange {
                field,
                rule: "must be between 0 and 4",
            })
    }

    pub fn get(self) -> i16 {
        self.0
    }
}

impl TryFrom<i16> for SignupStatus {
    type Error = ValidationError;
    fn try_from(value: i16) -> Result<Self, Self::Error> {
        Self::new("status", value.into())
    }
}

impl From<SignupStatus> for i16 {
    fn from(value: SignupStatus) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_accepts_what_the_relaxed_check_accepts() {
        for ok in [
            "a@b.co",
            "Mixed.Case+tag@Example.COM",
            "o'brien@example.ie",
            "user@xn--80ak6aa92e.xn--p1ai",
            "  padded@example.com  ",
            "x_%-@sub.domain.org",
        ] {
            assert!(Email::parse(ok).is_ok(), "{ok} should be accepted");
        }
        assert_eq!(
            Email::parse(" a@b.co ").map(|e| e.as_str().to_owned()),
            Ok("a@b.co".into())
        );
    }

    #[test]
    fn email_rejects_with_named_field_and_rule() {
        for bad in [
            "",
            "   ",
            "no-at.example.com",
            "@example.com",
            "a b@example.com",
            "a@example",
            "a@example.c",
            "a@example.c0m",
            "a@.com",
            "a@exa mple.com",
            "a@b@c.com",
            "a@example.123",
        ] {
            let err = Email::parse(bad).expect_err(bad);
            assert_eq!(err.field(), "email");
            assert_eq!(err.code(), "invalid_email", "{bad}: {err}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(matches!(
            Email::parse(&long),
            Err(ValidationError::TooLong { max: 255, .. })
        ));
    }

    #[test]
    fn email_debug_is_redacted() {
        let e = Email::parse("secret@example.com").expect("valid");
        assert!(!format!("{e:?}").contains("secret"));
        assert!(!format!("{:?}", Secret::new("tok")).contains("tok"));
        let c = SignupCode::parse("123456").expect("valid");
        assert!(!format!("{c:?}").contains("123456"));
    }

    #[test]
    fn role_parses_any_casing_to_canonical() {
        assert_eq!(Role::parse("admin"), Ok(Role::Admin));
        assert_eq!(Role::parse("SUPERADMIN"), Ok(Role::SuperAdmin));
        assert_eq!(Role::parse("Guest").map(Role::as_str), Ok("Guest"));
        assert_eq!(
            Role::parse("root"),
            Err(ValidationError::InvalidRole { field: "role" })
        );
        assert!(Role::parse("").is_err());
    }

    #[test]
    fn age_group_accepts_ranges_and_maps_known_legacy_names() {
        for g in AgeGroup::CURRENT {
            assert_eq!(
                AgeGroup::parse(g).map(|a| a.as_str().to_owned()),
                Ok(g.to_owned())
            );
        }
        assert_eq!(
            AgeGroup::from_source("toddlers").map(|a| a.0),
            Ok("1-2".into())
        );
        assert_eq!(
            AgeGroup::from_source("School").map(|a| a.0),
            Ok("6-9".into())
        );
        assert_eq!(
            AgeGroup::from_source("adult").map(|a| a.0),
            Ok("19-150".into())
        );
        assert!(AgeGroup::parse("toddlers").is_err());
        for bad in ["teens", "6 - 9", "-9", "6-", "a-b", ""] {
            assert_eq!(
                AgeGroup::from_source(bad).map_err(|e| e.code()),
                Err("invalid_age_group")
            );
        }
        assert!(matches!(
            AgeGroup::parse("1-123456789012345678901"),
            Err(ValidationError::TooLong { .. })
        ));
    }

    #[test]
    fn subscription_type_round_trips_codes_and_labels() {
        for t in SubscriptionType::ALL {
            assert_eq!(SubscriptionType::from_code(t.code()), Ok(t));
            assert_eq!(SubscriptionType::parse(t.as_str()), Ok(t));
        }
        assert!(SubscriptionType::from_code(5).is_err());
        assert!(SubscriptionType::from_code(-1).is_err());
    }

    #[test]
    fn signup_status_is_0_to_4() {
        for ok in 0..=4 {
            assert_eq!(
                SignupStatus::new("Status", ok).map(SignupStatus::get),
                Ok(ok as i16)
            );
        }
        for bad in [-1, 5, i64::from(i16::MAX) + 1, i64::MIN] {
            let e = SignupStatus::new("Status", bad).expect_err("out of range");
            assert_eq!((e.code(), e.field()), ("out_of_range", "Status"));
        }
    }

    #[test]
    fn signup_code_rules_and_matching() {
        let c = SignupCode::parse("042917").expect("valid");
        assert!(c.matches("042917"));
        assert!(!c.matches("042918"));
        assert!(!c.matches("04291"));
        assert!(!c.matches("0429170"));
        assert!(SignupCode::parse("").is_err());
        assert!(SignupCode::parse("12 456").is_err());
        assert!(matches!(
            SignupCode::parse("12345678901"),
            Err(ValidationError::TooLong { .. })
        ));
    }
}
