//! Sign-ups by emailed code: request a code, type it back. Both are unauthenticated (they
//! come before an account exists), so both are rate-limited, per email and per client (an
//! IPv4 address or an IPv6 /64, [`crate::client_addr::bucket`]), in PostgreSQL
//! ([`mystira_postgres::signup_throttle`]) so that every replica counts against one budget.
//!
//! Guessing codes has its own budget per email ([`mystira_postgres::signup_guesses`]): at
//! most [`GUESSES_PER_EMAIL`] codes compared per email per window, across its sign-ups and
//! every client, of which the client that asked for the newest code keeps its lock-out's worth
//! (so that others guessing cannot lock it out of its own code). Only the email's newest
//! sign-up is checked, whatever its state: a superseded code never verifies, even once the
//! newest is used (and is not marked used, which would count as a completed sign-up).
//!
//! The code leaves the service only by mail. What exists is the development mailer, a file
//! of JSON lines (created 0600) that a developer or a test reads; **planned:** a real mail
//! sender. Without a mailer, a request is refused (503 `mail_not_configured`) rather than
//! creating a sign-up nobody can complete. Magic-link sign-ups are stored and migrated, but
//! **their HTTP flow is planned**: the app's token hashing is not in the spec.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chrono::Utc;
use mystira_domain::ports::VerifyOutcome;
use mystira_domain::{Email, PendingSignup, SignupCode};
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;

use super::wire::{SignupAccepted, SignupRequest, SignupVerified, SignupVerify};
use super::{Body, invalid, repo};
pub use crate::client_addr::ClientAddr;
use crate::client_addr::TrustedProxies;
use crate::{AppState, Problem};

/// Codes compared per email per window (`--signup-limit-window-seconds`), across the email's
/// sign-ups and every client; the schema's ceiling of wrong codes per sign-up, so that a
/// sign-up's own count never passes it within a window.
pub const GUESSES_PER_EMAIL: u32 = PendingSignup::MAX_FAILED_ATTEMPTS.unsigned_abs();

/// A budget: at most `max` hits per `window`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub max: u32,
    pub window: Duration,
}

/// How sign-ups behave.
#[derive(Debug)]
pub struct SignupSettings {
    /// How long a code is valid.
    pub code_ttl: Duration,
    /// Wrong codes before a sign-up locks (the spec's 5; never above the schema's 10).
    pub lockout_attempts: i32,
    /// Code requests per email.
    pub per_email: RateLimit,
    /// Requests and verifications per client address.
    pub per_client: RateLimit,
    /// Whose `X-Forwarded-For` names the client (none: the connection's peer is the client).
    pub trusted_proxies: TrustedProxies,
    pub mailer: Option<FileMailer>,
}

impl Default for SignupSettings {
    fn default() -> Self {
        let hour = Duration::from_secs(3600);
        Self {
            code_ttl: Duration::from_secs(15 * 60),
            lockout_attempts: PendingSignup::DEFAULT_LOCKOUT_ATTEMPTS,
            per_email: RateLimit {
                max: 5,
                window: hour,
            },
            per_client: RateLimit {
                max: 30,
                window: hour,
            },
            trusted_proxies: TrustedProxies::default(),
            mailer: None,
        }
    }
}

/// The development mailer: one JSON line per mail, appended to a file only its owner can read
/// (never through a symbolic link, never to a file of another user or open to others).
#[derive(Debug)]
pub struct FileMailer {
    path: PathBuf,
    lock: Mutex<()>,
}

impl FileMailer {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            lock: Mutex::new(()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file as [`FileMailer`] does to mail (creating it, mode 0600, when missing),
    /// so that `serve` refuses at start a file that is a symbolic link, not its user's, or open
    /// to others (see `crate::private_file`), rather than when a code is mailed.
    pub fn check(&self) -> std::io::Result<()> {
        crate::private_file::open(&self.path, crate::private_file::Access::Append).map(drop)
    }

    fn send(&self, to: &Email, code: &SignupCode, signup: &PendingSignup) -> std::io::Result<()> {
        let line = serde_json::json!({
            "to": to.as_str(),
            "code": code.as_str(),
            "signup_id": signup.id,
            "expires_at": signup.expires_at,
        });
        let _held = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // checked at every mail, not only at start: the file may be replaced meanwhile
        let mut file = crate::private_file::open(&self.path, crate::private_file::Access::Append)?;
        writeln!(file, "{line}")?;
        file.sync_data()
    }
}

/// SHA-256, in hex: how an email or a client is named in the service's tables.
fn sha256_hex(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn email_bucket(email: &Email) -> String {
    format!("signup-email:{}", email_key(email))
}

/// The email's key in `service.signup_guesses`.
fn email_key(email: &Email) -> String {
    sha256_hex(&email.normalized())
}

/// The client's key in `service.signup_guesses` (`None`: no address known).
fn client_key(client: ClientAddr) -> Option<String> {
    client.bucket().map(|b| sha256_hex(&b))
}

fn guess_limits(state: &AppState) -> mystira_postgres::signup_guesses::Limits {
    mystira_postgres::signup_guesses::Limits {
        per_email: GUESSES_PER_EMAIL,
        lockout: state.signups.lockout_attempts,
        window: state.signups.per_email.window,
    }
}

async fn admit(state: &AppState, bucket: &str, limit: RateLimit) -> Result<(), Problem> {
    let admission =
        mystira_postgres::signup_throttle::hit(&state.pool, bucket, limit.max, limit.window)
            .await
            .map_err(repo)?;
    if admission.allowed {
        return Ok(());
    }
    state
        .metrics
        .rate_limited(bucket.split(':').next().unwrap_or("other"));
    Err(Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "too many sign-up requests: at most {} per {} s; try again later",
            limit.max,
            limit.window.as_secs()
        ),
    )
    .retry_after(admission.retry_after.as_secs().max(1)))
}

async fn admit_client(state: &AppState, client: ClientAddr, what: &str) -> Result<(), Problem> {
    match client.bucket() {
        Some(bucket) => {
            admit(
                state,
                &format!("{what}-client:{bucket}"),
                state.signups.per_client,
            )
            .await
        }
        None => Ok(()),
    }
}

/// Six random digits (rejection sampling, so every code is equally likely).
fn new_code() -> Result<SignupCode, Problem> {
    let rng = SystemRandom::new();
    let unavailable = || {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_randomness",
            "the system's random number generator failed",
        )
    };
    loop {
        let mut bytes = [0u8; 4];
        rng.fill(&mut bytes).map_err(|_| unavailable())?;
        let n = u32::from_le_bytes(bytes);
        // 4_294_000_000 is the largest multiple of 10^6 below 2^32
        if n < 4_294_000_000 {
            return SignupCode::parse(&format!("{:06}", n % 1_000_000)).map_err(|e| invalid(&e));
        }
    }
}

/// Creates a sign-up and mails its code.
#[utoipa::path(post, path = "/v1/signups", tag = "signups", operation_id = "request_signup", request_body = SignupRequest,
    responses((status = 202, body = SignupAccepted), (status = 422), (status = 429, description = "rate limited, see Retry-After"),
        (status = 503, description = "no mailer configured")))]
pub(crate) async fn request(
    State(state): State<AppState>,
    client: ClientAddr,
    Body(request): Body<SignupRequest>,
) -> Result<impl IntoResponse, Problem> {
    let Some(mailer) = &state.signups.mailer else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mail_not_configured",
            "this service has no mailer, so a code could not reach anyone",
        ));
    };
    // stored lower-cased, as the app stores a sign-up's email (its Cosmos partition key)
    let email = Email::parse(&request.email.to_lowercase()).map_err(|e| invalid(&e))?;
    let now = Utc::now();
    let code = new_code()?;
    let signup = PendingSignup {
        id: Uuid::new_v4(),
        cosmos_id: None,
        email: email.clone(),
        display_name: request.display_name,
        code: Some(code.clone()),
        magic_link: None,
        created_at: now,
        expires_at: now
            + chrono::Duration::from_std(state.signups.code_ttl).unwrap_or(chrono::Duration::MAX),
        is_used: false,
        is_signin: request.is_signin,
        failed_attempts: 0,
    };
    signup.validate().map_err(|e| invalid(&e))?;
    admit_client(&state, client, "signup").await?;
    admit(&state, &email_bucket(&email), state.signups.per_email).await?;
    state.domain.signups.create(&signup).await.map_err(repo)?;
    // the new sign-up is the email's newest (the store checks only the newest, so the codes
    // before it are dead), and its requester's share of the guesses is kept for this client
    mystira_postgres::signup_guesses::record_signup(
        &state.pool,
        &email_key(&email),
        signup.id,
        client_key(client).as_deref(),
        signup.expires_at,
        state.signups.per_email.window,
    )
    .await
    .map_err(repo)?;
    mailer.send(&email, &code, &signup).map_err(|e| {
        tracing::error!(error = %e, "cannot write the development mail file");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "mail_failed",
            "the code could not be mailed; request another",
        )
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(SignupAccepted {
            id: signup.id,
            expires_at: signup.expires_at,
        }),
    ))
}

/// Checks a code against the newest open sign-up of the email; the right code uses it up.
#[utoipa::path(post, path = "/v1/signups/verify", tag = "signups", operation_id = "verify_signup", request_body = SignupVerify,
    responses((status = 200, body = SignupVerified), (status = 400, description = "wrong code (attempts_left)"),
        (status = 404, description = "no open sign-up"), (status = 409, description = "a magic-link sign-up"),
        (status = 410, description = "expired"), (status = 422), (status = 423, description = "locked after too many wrong codes"),
        (status = 429)))]
pub(crate) async fn verify(
    State(state): State<AppState>,
    client: ClientAddr,
    Body(attempt): Body<SignupVerify>,
) -> Result<Json<SignupVerified>, Problem> {
    let email = Email::parse(&attempt.email).map_err(|e| invalid(&e))?;
    // a code that cannot exist is refused before it is counted against anyone
    let code = SignupCode::parse(&attempt.code).map_err(|e| invalid(&e))?;
    admit_client(&state, client, "verify").await?;
    let key = email_key(&email);
    // counted before the code is compared, under the email's row lock: concurrent guesses
    // cannot overspend the email's budget
    let admitted = match mystira_postgres::signup_guesses::admit(
        &state.pool,
        &key,
        client_key(client).as_deref(),
        guess_limits(&state),
    )
    .await
    .map_err(repo)?
    {
        Ok(admitted) => admitted,
        Err(refused) => return Err(guess_refused(&state, refused)),
    };
    let outcome = state
        .domain
        .signups
        // checked and marked used in one step: one code completes one sign-up, however many
        // requests carry it at once
        .redeem_code(&email, code.as_str(), Utc::now(), admitted.store_lockout)
        .await
        .map_err(repo)?;
    if !matches!(
        outcome,
        VerifyOutcome::Verified(_) | VerifyOutcome::WrongCode { .. }
    ) {
        // no code was compared: the guess is given back (if that fails the guess stays
        // counted, the stricter way, and the store's answer stands)
        if let Err(e) = mystira_postgres::signup_guesses::refund(&state.pool, &key, &admitted).await
        {
            tracing::warn!(error = %e, "cannot give back a sign-up guess");
        }
    }
    let refused = |status, code: &str, detail: &str| Err(Problem::new(status, code, detail));
    match outcome {
        VerifyOutcome::Verified(signup) => Ok(Json(SignupVerified {
            signup_id: signup.id,
            display_name: signup.display_name,
            is_signin: signup.is_signin,
        })),
        VerifyOutcome::WrongCode { attempts_left } => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "wrong_code",
            "the code does not match",
        )
        .with("attempts_left", attempts_left.min(admitted.attempts_left))),
        VerifyOutcome::LockedOut => refused(
            StatusCode::LOCKED,
            "locked_out",
            "too many wrong codes: request a new sign-up",
        ),
        VerifyOutcome::Expired => refused(StatusCode::GONE, "expired", "the code has expired"),
        VerifyOutcome::NotFound => refused(
            StatusCode::NOT_FOUND,
            "no_pending_signup",
            "no open sign-up for this email",
        ),
        VerifyOutcome::NotACodeSignup => refused(
            StatusCode::CONFLICT,
            "not_a_code_signup",
            "the open sign-up for this email is completed by its emailed link, not a code",
        ),
    }
}

/// The answer to a guess the email's budget refuses.
fn guess_refused(state: &AppState, refused: mystira_postgres::signup_guesses::Refused) -> Problem {
    use mystira_postgres::signup_guesses::Refused;
    match refused {
        Refused::Budget { retry_after } => {
            state.metrics.rate_limited("verify-email");
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_guesses",
                format!(
                    "too many codes tried for this email: at most {GUESSES_PER_EMAIL} per {} s; \
                     try again later",
                    state.signups.per_email.window.as_secs()
                ),
            )
            .retry_after(retry_after.as_secs().max(1))
        }
        Refused::LockedOut => Problem::new(
            StatusCode::LOCKED,
            "locked_out",
            "too many wrong codes: request a new code",
        ),
    }
}
