//! Turning sqlx errors into the domain's [`RepoError`]: constraint violations become the
//! validation error or conflict they mean, connection trouble becomes retryable, and no SQL text
//! or row value ever reaches the message.

use mystira_domain::ValidationError;
use mystira_domain::error::{ConflictKind, RepoError};

/// Maps an error from a statement on `entity` (a table name, used in conflict messages).
pub fn map_sqlx_error(entity: &'static str, err: sqlx::Error) -> RepoError {
    match err {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let constraint = db.constraint().unwrap_or_default().to_owned();
            match code.as_str() {
                // unique_violation
                "23505" => RepoError::Conflict {
                    entity,
                    kind: conflict_kind(&constraint),
                    constraint,
                },
                // foreign_key_violation
                "23503" => RepoError::Conflict {
                    entity,
                    kind: ConflictKind::MissingReference,
                    constraint,
                },
                // check_violation
                "23514" => RepoError::Invalid(check_violation(&constraint)),
                // string_data_right_truncation: a value longer than its VARCHAR
                // (the domain checks widths first; this is the backstop, and PostgreSQL does not
                // say which column)
                "22001" => RepoError::Invalid(ValidationError::OutOfRange {
                    field: "value",
                    rule: "longer than its column allows",
                }),
                // character_not_in_repertoire (a NUL in text), untranslatable_character and
                // unsupported \u0000 in jsonb: text PostgreSQL cannot hold
                "22021" | "22P05" => RepoError::Invalid(ValidationError::OutOfRange {
                    field: "value",
                    rule: "holds a character PostgreSQL text cannot store (NUL)",
                }),
                // datetime_field_overflow, numeric_value_out_of_range: a date or time before
                // 4713 BC or after PostgreSQL's last one, a number past its column
                "22008" | "22003" => RepoError::Invalid(ValidationError::OutOfRange {
                    field: "value",
                    rule: "outside the range its column can store",
                }),
                // any other data exception (class 22: a value the column's type refuses):
                // about the row's values, never the database's state, so the writers isolate
                // the document and quarantine it rather than stop the job
                c if c.starts_with("22") => RepoError::Invalid(ValidationError::OutOfRange {
                    field: "value",
                    rule: "refused by PostgreSQL as a value its column cannot hold",
                }),
                // serialization_failure, deadlock_detected, admin/crash shutdown, too many connections
                "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300" => {
                    RepoError::Unavailable(format!("database error {code} on {entity}"))
                }
                _ => RepoError::Store(format!("database error {code} on {entity}")),
            }
        }
        sqlx::Error::Io(e) => RepoError::Unavailable(format!("i/o error: {e}")),
        sqlx::Error::PoolTimedOut => RepoError::Unavailable("connection pool timed out".into()),
        sqlx::Error::PoolClosed => RepoError::Unavailable("connection pool closed".into()),
        sqlx::Error::Tls(e) => RepoError::Unavailable(format!("tls error: {e}")),
        // Decoding errors can carry serde text that quotes a value: keep only the kind.
        sqlx::Error::ColumnDecode { index, .. } => {
            RepoError::Store(format!("cannot decode column {index} of {entity}"))
        }
        sqlx::Error::Decode(_) => RepoError::Store(format!("cannot decode a value of {entity}")),
        other => RepoError::Store(other.to_string()),
    }
}

fn conflict_kind(constraint: &str) -> ConflictKind {
    match constraint {
        "accounts_pkey"
        | "accounts_cosmos_id_key"
        | "subscriptions_pkey"
        | "subscriptions_cosmos_id_key"
        | "user_profiles_pkey"
        | "user_profiles_cosmos_id_key"
        | "user_badges_pkey"
        | "user_badges_cosmos_id_key"
        | "completed_scenarios_pkey"
        | "pending_signups_pkey"
        | "pending_signups_cosmos_id_key" => ConflictKind::DuplicateId,
        "accounts_auth0_user_id_key" => ConflictKind::DuplicateAuth0UserId,
        "subscriptions_account_unique" => ConflictKind::DuplicateSubscription,
        "user_badges_unique" => ConflictKind::DuplicateBadge,
        "completed_scenarios_unique" => ConflictKind::DuplicateCompletedScenario,
        _ => ConflictKind::Other,
    }
}

fn check_violation(constraint: &str) -> ValidationError {
    match constraint {
        "accounts_email_check" => ValidationError::InvalidEmail {
            field: "email",
            rule: "rejected by accounts_email_check",
        },
        "pending_signups_email_check" => ValidationError::InvalidEmail {
            field: "email",
            rule: "rejected by pending_signups_email_check",
        },
        "accounts_role_check" => ValidationError::InvalidRole { field: "role" },
        "user_profiles_age_group_check" => ValidationError::InvalidAgeGroup {
            field: "age_group",
            rule: "rejected by user_profiles_age_group_check",
        },
        "pending_signups_failed_attempts_check" => ValidationError::OutOfRange {
            field: "failed_attempts",
            rule: "must be between 0 and 10",
        },
        "pending_signups_code_or_token_check" => ValidationError::NoCodeOrToken { field: "code" },
        "pending_signups_status_check" => ValidationError::OutOfRange {
            field: "status",
            rule: "must be between 0 and 4",
        },
        _ => ValidationError::OutOfRange {
            field: "value",
            rule: "rejected by a check constraint",
        },
    }
}
