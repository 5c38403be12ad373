//! Bearer-token authentication: JWTs signed with RS256 or ES256, keys from a JWKS url, a JWKS
//! file or, in development, the service's own signing key; issuer, audience, expiry and
//! not-before checked. The token's `sub` is the caller's external user id
//! (`accounts.auth0_user_id`); its `role` claim (`Guest`, `User`, `Admin`, `SuperAdmin`, any
//! case) says what it may do beyond its own data.
//!
//! Tokens as identity providers issue them: `aud` is one string or a list that must contain
//! the configured audience (Auth0 adds its `/userinfo` audience when `openid` is asked for),
//! `nbf` is optional (Auth0 sends none; when present it is checked), and `exp` and `nbf` are
//! compared with a clock leeway ([`DEFAULT_LEEWAY`], set with [`Authenticator::with_leeway`]).
//! An `email` claim with `email_verified: true` is an address the provider proved the user
//! holds ([`Caller::verified_email`]); an account may take only such an address (or one a
//! completed sign-up proved), see `api::accounts`.
//!
//! Keys from a url are fetched at start (a failure stops `serve` with the reason), cached, and
//! fetched again when they are older than [`JWKS_MAX_AGE`] or when a token names a key id the
//! cache does not hold (the provider rotated its keys), at most once per
//! [`JWKS_MIN_REFRESH`], so that tokens with made-up key ids cannot make the service hammer
//! the provider. A failed refresh keeps the keys it had.

use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use mystira_domain::{Email, Role};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use crate::{AppState, Problem};

/// The `kid` of the development key.
const DEV_KID: &str = "mystira-users-dev";

/// What a token carries that the service reads (other claims, such as Auth0's `azp`,
/// `scope` or `gty`, are ignored). `sub`, `iss`, `aud` and `exp` are required by the
/// validation, which reports a missing one as `missing_claim`; the defaults only let the
/// payload be read first (jsonwebtoken reads it before it validates).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub aud: Audience,
    #[serde(default)]
    pub exp: i64,
    /// Not-before: optional (Auth0's access tokens have none), checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// The user's email address (OpenID Connect's `email`; an Auth0 access token carries it
    /// when an Action adds it). It proves the address only with `email_verified: true`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string"
    )]
    pub email: Option<String>,
    /// Whether the provider verified `email` (a boolean; the strings `"true"` and `"false"`,
    /// which some providers send, count as well). Anything else is "not verified".
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_bool"
    )]
    pub email_verified: Option<bool>,
}

/// A claim that is a string, else none: a provider's odd `email` must not refuse the token.
fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

/// `true`, `false`, `"true"` or `"false"`; anything else is none.
fn lenient_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::String(s) if s == "true" => Some(true),
        serde_json::Value::String(s) if s == "false" => Some(false),
        _ => None,
    })
}

/// The `email` and `email_verified` claims of a development token (`dev-token --email`).
#[derive(Debug, Clone, Copy)]
pub struct EmailClaim<'a> {
    pub email: &'a str,
    pub verified: bool,
}

/// A token's `aud`: one audience, or several (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Default for Audience {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

impl Audience {
    /// Whether `audience` is the token's audience or one of them.
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Self::One(a) => a == audience,
            Self::Many(all) => all.iter().any(|a| a == audience),
        }
    }
}

/// How far `exp` and `nbf` may be off this host's clock by default (jsonwebtoken's default,
/// which the service always used).
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);
/// The largest leeway [`Authenticator::with_leeway`] accepts: beyond it an expired token
/// would stay good for minutes.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// One verification key.
struct VerifyingKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Cached keys from a url are fetched again after this long.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(600);
/// A url is fetched at most once per this long, whatever the tokens say.
pub const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);

/// Verifies bearer tokens against a set of keys (fixed, or refreshed from a url), an issuer
/// and an audience.
pub struct Authenticator {
    keys: RwLock<Vec<VerifyingKey>>,
    remote: Option<RemoteJwks>,
    issuer: String,
    audience: String,
    /// Clock leeway for `exp` and `nbf`.
    leeway: Duration,
    /// Whether the keys are the development key's (no JWKS configured).
    development: bool,
}

/// Where keys are refreshed from, and when they last were.
struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    min_refresh: Duration,
    max_age: Duration,
    /// When the keys were last fetched, and when a fetch was last tried (held while fetching,
    /// so that concurrent requests wait for one fetch instead of each making one).
    fetched: tokio::sync::Mutex<Fetches>,
}

struct Fetches {
    succeeded: Instant,
    tried: Instant,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("keys", &self.key_count())
            .field("url", &self.remote.as_ref().map(|r| r.url.as_str()))
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("development", &self.is_development())
            .finish()
    }
}

/// Why an authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a JWKS document: {reason}")]
    Jwks { path: String, reason: String },
    #[error("the development signing key in {path} is not a P-256 PKCS#8 key")]
    DevKey { path: String },
    #[error("cannot fetch the JWKS document from {url}: {reason}")]
    Fetch { url: String, reason: String },
}

impl Authenticator {
    fn with_keys(keys: Vec<VerifyingKey>, issuer: &str, audience: &str) -> Self {
        Self {
            keys: RwLock::new(keys),
            remote: None,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: DEFAULT_LEEWAY,
            development: false,
        }
    }

    /// The authenticator with another clock leeway for `exp` and `nbf` (at most
    /// [`MAX_LEEWAY`]; a larger one is cut to it).
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.min(MAX_LEEWAY);
        self
    }

    /// The clock leeway in use.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Whether this authenticator trusts the development key (no JWKS configured).
    pub fn is_development(&self) -> bool {
        self.development
    }

    /// Keys from a JWKS document (RSA keys verify RS256, P-256 keys ES256).
    pub fn from_jwks_file(path: &Path, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: shown.clone(),
            source,
        })?;
        let keys = keys_of(&text).map_err(|reason| KeyError::Jwks {
            path: shown,
            reason,
        })?;
        Ok(Self::with_keys(keys, issuer, audience))
    }

    /// Keys from a JWKS url (an identity provider's `jwks_uri`), fetched now and refreshed as
    /// the module docs say.
    pub async fn from_jwks_url(url: &str, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        Self::from_jwks_url_with(url, issuer, audience, JWKS_MIN_REFRESH, JWKS_MAX_AGE).await
    }

    /// [`Authenticator::from_jwks_url`] with other refresh intervals (tests).
    pub async fn from_jwks_url_with(
        url: &str,
        issuer: &str,
        audience: &str,
        min_refresh: Duration,
        max_age: Duration,
    ) -> Result<Self, KeyError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| KeyError::Fetch {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let keys = fetch_keys(&client, url).await?;
        let now = Instant::now();
        let mut auth = Self::with_keys(keys, issuer, audience);
        auth.remote = Some(RemoteJwks {
            url: url.to_owned(),
            client,
            min_refresh,
            max_age,
            fetched: tokio::sync::Mutex::new(Fetches {
                succeeded: now,
                tried: now,
            }),
        });
        Ok(auth)
    }

    /// How many keys verify tokens now.
    pub fn key_count(&self) -> usize {
        self.keys.read().map_or(0, |k| k.len())
    }

    /// [`Authenticator::verify`], after refreshing keys from the url when they are old, and
    /// once more after a refresh when the token names a key id the cache does not hold.
    pub async fn verify_current(&self, token: &str) -> Result<Claims, Problem> {
        let Some(remote) = &self.remote else {
            return self.verify(token);
        };
        self.refresh(remote, false).await;
        match self.verify(token) {
            Err(p) if p.code == "unknown_key" => {
                // verified again even when this call fetched nothing: a concurrent request may
                // just have loaded the key
                self.refresh(remote, true).await;
                self.verify(token)
            }
            other => other,
        }
    }

    /// Fetches the keys again if they are older than `max_age`, or (with `unknown_kid`) at
    /// once; either way never sooner than `min_refresh` after the last try. True when new keys
    /// were loaded.
    async fn refresh(&self, remote: &RemoteJwks, unknown_kid: bool) -> bool {
        let mut fetched = remote.fetched.lock().await;
        let stale = fetched.succeeded.elapsed() >= remote.max_age;
        if !(stale || unknown_kid) || fetched.tried.elapsed() < remote.min_refresh {
            return false;
        }
        fetched.tried = Instant::now();
        match fetch_keys(&remote.client, &remote.url).await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), unknown_kid, "jwks: keys refreshed");
                if let Ok(mut current) = self.keys.write() {
                    *current = keys;
                }
                fetched.succeeded = Instant::now();
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "jwks: refresh failed, keeping the keys held");
                false
            }
        }
    }

    /// Checks a bearer token: signature, algorithm, issuer, audience, expiry, not-before.
    pub fn verify(&self, token: &str) -> Result<Claims, Problem> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| unauthorized("invalid_token", "the bearer token is not a JWT"))?;
        let keys = self
            .keys
            .read()
            .map_err(|_| unauthorized("invalid_token", "the bearer token cannot be verified"))?;
        let candidates: Vec<&VerifyingKey> = keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(unauthorized(
                "unknown_key",
                "no configured key matches the token's algorithm and key id (RS256 and ES256 \
                 are accepted)",
            ));
        }
        let mut last = None;
        for key in candidates {
            let mut validation = Validation::new(key.algorithm);
            validation.set_issuer(&[&self.issuer]);
            validation.set_audience(&[&self.audience]);
            // no `nbf` in the list: Auth0's access tokens carry none (it is checked when there)
            validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
            validation.validate_nbf = true;
            validation.leeway = self.leeway.as_secs();
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = Some(e),
            }
        }
        Err(match last.as_ref().map(jsonwebtoken::errors::Error::kind) {
            Some(jsonwebtoken::errors::ErrorKind::ExpiredSignature) => {
                unauthorized("token_expired", "the token has expired")
            }
            Some(jsonwebtoken::errors::ErrorKind::ImmatureSignature) => {
                unauthorized("token_not_yet_valid", "the token is not valid yet (nbf)")
            }
            Some(jsonwebtoken::errors::ErrorKind::InvalidAudience) => {
                unauthorized("wrong_audience", "the token is for another audience")
            }
            Some(jsonwebtoken::errors::ErrorKind::InvalidIssuer) => {
                unauthorized("wrong_issuer", "the token is from another issuer")
            }
            Some(jsonwebtoken::errors::ErrorKind::InvalidSignature) => {
                unauthorized("bad_signature", "the token's signature does not verify")
            }
            Some(jsonwebtoken::errors::ErrorKind::MissingRequiredClaim(_)) => unauthorized(
                "missing_claim",
                "the token lacks a required claim (exp, iss, aud and sub are required)",
            ),
            _ => unauthorized("invalid_token", "the bearer token cannot be verified"),
        })
    }
}

/// The development signing key (ES256): created on first use, kept in a file only its owner
/// can read, so that `serve` and `dev-token` agree without any configuration.
pub struct DevKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevKey(..)")
    }
}

impl DevKey {
    /// Loads the key from `path`, creating it (mode 0600) when the file does not exist. An
    /// existing key is refused when it is a symbolic link, is not owned by this process's user
    /// or is open to others (see [`crate::private_file`]): anyone who could read it could mint
    /// admin tokens, and anyone who could write it could plant their own.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display().to_string();
        let io = |source| KeyError::Io {
            path: shown.clone(),
            source,
        };
        let read = crate::private_file::open(path, crate::private_file::Access::Read).and_then(
            |mut file| {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut file, &mut bytes).map(|_| bytes)
            },
        );
        let pkcs8 = match read {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let document = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &SystemRandom::new(),
                )
                .map_err(|_| KeyError::DevKey {
                    path: shown.clone(),
                })?;
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                write_private(path, document.as_ref()).map_err(io)?;
                document.as_ref().to_vec()
            }
            Err(e) => return Err(io(e)),
        };
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .map_err(|_| KeyError::DevKey {
            path: shown.clone(),
        })?;
        let public = pair.public_key().as_ref().to_vec();
        Ok(Self {
            pkcs8,
            public,
            kid: DEV_KID.to_owned(),
        })
    }

    /// A token for `sub` with `role`, valid for `ttl_seconds` from now (negative: already
    /// expired, for tests of the refusal).
    pub fn token(
        &self,
        sub: &str,
        role: Option<&str>,
        issuer: &str,
        audience: &str,
        ttl_seconds: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(sub, role, None, issuer, audience, ttl_seconds)
    }

    /// [`DevKey::token`] with an `email` claim and its `email_verified` (a token that proves
    /// the address, or with `verified: false` one that does not).
    pub fn token_with_email(
        &self,
        sub: &str,
        role: Option<&str>,
        email: EmailClaim<'_>,
        issuer: &str,
        audience: &str,
        ttl_seconds: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        self.sign(sub, role, Some(email), issuer, audience, ttl_seconds)
    }

    fn sign(
        &self,
        sub: &str,
        role: Option<&str>,
        email: Option<EmailClaim<'_>>,
        issuer: &str,
        audience: &str,
        ttl_seconds: i64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: sub.to_owned(),
            role: role.map(str::to_owned),
            iss: issuer.to_owned(),
            aud: Audience::One(audience.to_owned()),
            exp: now + ttl_seconds,
            // not-before a little in the past: a clock a second behind must not refuse it
            nbf: Some(now - 5),
            iat: Some(now),
            email: email.map(|e| e.email.to_owned()),
            email_verified: email.map(|e| e.verified),
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(&self.pkcs8))
    }

    /// The public key as a JWKS document (what an identity provider publishes), so that a
    /// deployment can be tried with `--jwks-file` and development tokens.
    pub fn jwks(&self) -> serde_json::Value {
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        // the uncompressed point: 0x04, then x and y, 32 bytes each
        let (x, y) = self.public[1..].split_at(32);
        serde_json::json!({ "keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64(x), "y": b64(y),
        }]})
    }

    /// An authenticator that accepts this key's tokens.
    pub fn authenticator(&self, issuer: &str, audience: &str) -> Authenticator {
        let mut auth = Authenticator::with_keys(
            vec![VerifyingKey {
                kid: Some(self.kid.clone()),
                algorithm: Algorithm::ES256,
                // ring verifies ECDSA against the uncompressed public point
                key: DecodingKey::from_ec_der(&self.public),
            }],
            issuer,
            audience,
        );
        auth.development = true;
        auth
    }

    /// The same key under another key id (`kid`): tests of a provider's key rotation.
    pub fn with_kid(mut self, kid: &str) -> Self {
        self.kid = kid.to_owned();
        self
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The RS256 and ES256 keys of a JWKS document; the reason when it is not one or holds none.
fn keys_of(text: &str) -> Result<Vec<VerifyingKey>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let algorithm = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            // other key types sign nothing this service accepts
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
        keys.push(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    if keys.is_empty() {
        return Err("it holds no RSA or P-256 key".into());
    }
    Ok(keys)
}

async fn fetch_keys(client: &reqwest::Client, url: &str) -> Result<Vec<VerifyingKey>, KeyError> {
    let fail = |reason: String| KeyError::Fetch {
        url: url.to_owned(),
        reason,
    };
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}")));
    }
    let body = response.text().await.map_err(|e| fail(e.to_string()))?;
    keys_of(&body).map_err(|reason| fail(format!("not a usable JWKS document: {reason}")))
}

fn unauthorized(code: &str, detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, code, detail)
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The external user id (`sub`).
    pub user_id: String,
    pub role: Role,
    /// The address the identity provider verified: the token's `email` when its
    /// `email_verified` is true and the domain accepts it as an email; else none.
    pub verified_email: Option<Email>,
}

impl Caller {
    /// Whether the caller may act on other users' data and on the migration.
    pub fn is_admin(&self) -> bool {
        matches!(self.role, Role::Admin | Role::SuperAdmin)
    }

    /// The caller, if an admin; else a 403.
    pub fn require_admin(&self) -> Result<&Self, Problem> {
        if self.is_admin() {
            Ok(self)
        } else {
            Err(Problem::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this endpoint is for the Admin and SuperAdmin roles",
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| unauthorized("missing_token", "send Authorization: Bearer <JWT>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                unauthorized(
                    "missing_token",
                    "the Authorization header is not a bearer token",
                )
            })?;
        let claims = state.auth.verify_current(token.trim()).await?;
        // a role the domain does not know grants nothing beyond the caller's own data
        let role = claims
            .role
            .as_deref()
            .and_then(|r| Role::parse(r).ok())
            .unwrap_or(Role::User);
        let verified_email = match (claims.email_verified, claims.email.as_deref()) {
            (Some(true), Some(email)) => Email::parse(email).ok(),
            _ => None,
        };
        Ok(Caller {
            user_id: claims.sub,
            role,
            verified_email,
        })
    }
}
