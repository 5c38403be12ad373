//! The bodies of `/v1/signups`: a request for a code, the code typed back, and their answers.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A request for a sign-up (or sign-in) code, emailed to `email`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    #[schema(format = Email, max_length = 255)]
    pub email: String,
    #[schema(max_length = 255)]
    pub display_name: String,
    /// A sign-in of an existing user rather than a new sign-up.
    #[serde(default)]
    pub is_signin: bool,
}

/// A sign-up was created and its code sent.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignupAccepted {
    pub id: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// A code typed back.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupVerify {
    #[schema(format = Email, max_length = 255)]
    pub email: String,
    #[schema(pattern = "^[A-Za-z0-9]{1,10}$")]
    pub code: String,
}

/// The code was right; the sign-up is now used.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignupVerified {
    pub signup_id: Uuid,
    pub display_name: String,
    pub is_signin: bool,
}
