//! The API's request and response bodies, and their conversion to and from the domain's
//! entities. Requests carry text; turning them into entities goes through the domain's
//! parsers (`Email::parse`, `AgeGroup::parse`, ...) and `validate` methods, the same ones the
//! backfill applies to Cosmos documents, so the API cannot store what a migration would refuse.
//!
//! A client's values are also held to the caps and value rules of [`mystira_domain::input`]
//! (a bio of at most 2,000 characters, at most 20 themes, an age group whose bounds are a real
//! range, a date of birth in the past 150 years, ...), which the backfill does not apply to
//! what Cosmos already holds. A PATCH checks only the fields it sets, so a stored value from
//! before the caps does not block a change of another field. The caps are repeated as
//! `maxLength`/`maxItems` in the OpenAPI schema (docs/security.md, "Limits").
//!
//! Secrets the domain keeps (`purchase_token`, a sign-up's code) are accepted where the app
//! writes them and never returned: a response says whether one is set.
//!
//! One module per resource's bodies: `accounts` (with subscriptions, completed scenarios and
//! `/v1/me`), `profiles` (with badges), `signups` and `admin`.

mod accounts;
mod admin;
mod profiles;
mod signups;

pub use accounts::{
    AccountOut, AccountPatch, CompletedOut, Completion, EmailSearch, Me, NewAccount,
    SubscriptionIn, SubscriptionOut,
};
pub use admin::{
    JournalEntryOut, MigrationState, OutboxAggregateOut, OverrideClear, PhaseChange, QuarantineOut,
    REASON_MAX, Removed, RunOut, RunRecordOut, TransitionOut, check_reason,
};
pub use profiles::{BadgeOut, NewBadge, NewProfile, ProfileOut, ProfilePatch};
pub use signups::{SignupAccepted, SignupRequest, SignupVerified, SignupVerify};
