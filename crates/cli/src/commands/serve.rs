//! `mystira-users serve`: the user-domain service (`mystira_server`). This parses its flags
//! and the config file's `[serve]`, makes the connections (the database, the self-started
//! cluster when none is configured; the Cosmos account when one is configured), the
//! authenticator and the sign-up settings, and hands them to `mystira_server::Application`,
//! which assembles the service and runs it until the stop signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use mystira_postgres::local_cluster::LocalCluster;
use mystira_server::auth::{Authenticator, DevKey};
use mystira_server::connections::Limits;
use mystira_server::{
    Application, ApplicationConfig, BuildError, Cidr, FileMailer, RateLimit, SignupSettings,
    TrustedProxies,
};
use serde_json::json;

use super::phase::{GateArgs, gate_config};
use super::source::CosmosArgs;
use super::{Outcome, database, source, stop};
use crate::config::{ConfigError, ServeSection, Settings};
use crate::exit::Exit;

/// `mystira-users serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one; the address is logged)
    /// [default: `[serve] listen` in the config file, else 127.0.0.1:8080]
    #[arg(long, env = "MYSTIRA_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    #[command(flatten)]
    pub cosmos: CosmosArgs,

    /// Development mode (no --jwks-url or --jwks-file) listens on loopback only, since anyone
    /// holding the development key mints any token: with this flag it may listen on another
    /// address (a container's, or a trusted development network)
    #[arg(long)]
    pub allow_dev_on_network: bool,

    /// How long /readyz waits for each store, in milliseconds
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub probe_timeout_ms: u64,

    /// How often the phase is re-read besides PostgreSQL's notifications, in milliseconds
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub phase_poll_ms: u64,

    /// Phase 2: how long a write waits for its delivery to Cosmos, in milliseconds. Past it
    /// the write is answered (it is committed in PostgreSQL with its outbox row) and the
    /// delivery is left to the background and the relay
    #[arg(
        long,
        env = "MYSTIRA_DELIVERY_DEADLINE_MS",
        default_value_t = 2000,
        value_name = "MS"
    )]
    pub delivery_deadline_ms: u64,

    /// Production: verify bearer tokens with the keys of this JWKS document (RSA keys for
    /// RS256, P-256 keys for ES256); --issuer and --audience are then required. Without it,
    /// development mode: tokens from `mystira-users dev-token` are accepted
    #[arg(
        long,
        env = "MYSTIRA_JWKS_FILE",
        value_name = "FILE",
        conflicts_with = "jwks_url"
    )]
    pub jwks_file: Option<PathBuf>,

    /// Production: verify bearer tokens with the keys published at this url (the identity
    /// provider's `jwks_uri`): fetched at start, cached, fetched again after 10 minutes or
    /// when a token names an unknown key id (at most every 30 s); --issuer and --audience are
    /// then required
    #[arg(long, env = "MYSTIRA_JWKS_URL", value_name = "URL")]
    pub jwks_url: Option<String>,

    #[command(flatten)]
    pub token: TokenArgs,

    /// Clock leeway for the tokens' `exp` and `nbf`, in seconds (0 to 300): how far this
    /// host's clock and the identity provider's may disagree
    /// [default: `[serve] jwt_leeway_seconds` in the config file, else 60]
    #[arg(long, env = "MYSTIRA_JWT_LEEWAY_SECONDS", value_name = "SECONDS")]
    pub jwt_leeway_seconds: Option<u64>,

    /// Where the router journals phase-1 writes when PostgreSQL is down [default: as `journal`]
    #[arg(long, env = "MYSTIRA_JOURNAL_DIR", value_name = "DIR")]
    pub journal_dir: Option<PathBuf>,

    #[command(flatten)]
    pub signups: SignupArgs,

    #[command(flatten)]
    pub limits: ConnectionArgs,

    /// The phase gates of `PUT /v1/admin/phase`, as `mystira-users phase set` has them
    #[command(flatten)]
    pub gates: GateArgs,
}

/// What a client may hold of the service (docs/security.md, "Limits").
#[derive(Debug, Args, Clone)]
pub struct ConnectionArgs {
    /// A request head (the request line and headers) must arrive whole within this many
    /// seconds of the connection waiting for it (at accept, and after each answer on a
    /// kept-alive connection, so it is also how long an idle connection is kept)
    #[arg(
        long,
        env = "MYSTIRA_HEADER_READ_TIMEOUT_SECONDS",
        default_value_t = 10,
        value_name = "SECONDS"
    )]
    pub header_read_timeout_seconds: u64,

    /// A request body from which no byte arrives for this many seconds is answered 408, and a
    /// connection whose client takes no byte of its answer for this long is closed
    #[arg(
        long,
        env = "MYSTIRA_IDLE_TIMEOUT_SECONDS",
        default_value_t = 60,
        value_name = "SECONDS"
    )]
    pub idle_timeout_seconds: u64,

    /// Connections held at once; one more is answered 503 too_many_connections and closed.
    /// Keep the process's descriptor limit (ulimit -n) above it
    #[arg(
        long,
        env = "MYSTIRA_MAX_CONNECTIONS",
        default_value_t = 1024,
        value_name = "N"
    )]
    pub max_connections: usize,

    /// On SIGTERM or SIGINT, how long the requests in flight are given to finish before the
    /// connections still open are cut
    #[arg(
        long,
        env = "MYSTIRA_SHUTDOWN_TIMEOUT_SECONDS",
        default_value_t = 10,
        value_name = "SECONDS"
    )]
    pub shutdown_timeout_seconds: u64,
}

impl ConnectionArgs {
    fn limits(&self) -> Result<Limits, ConfigError> {
        let positive = |name: &str, value: u64| {
            if value == 0 {
                Err(ConfigError::Usage(format!("--{name} must be at least 1")))
            } else {
                Ok(Duration::from_secs(value))
            }
        };
        if self.max_connections == 0 {
            return Err(ConfigError::Usage(
                "--max-connections must be at least 1".into(),
            ));
        }
        Ok(Limits {
            header_read_timeout: positive(
                "header-read-timeout-seconds",
                self.header_read_timeout_seconds,
            )?,
            idle_timeout: positive("idle-timeout-seconds", self.idle_timeout_seconds)?,
            max_connections: self.max_connections,
            // 0 is allowed: cut at once
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_seconds),
        })
    }
}

/// Warns when the process may run out of descriptors before it reaches the connection cap
/// (then `accept` fails instead of the over-cap answer). Linux only: it reads
/// /proc/self/limits.
fn warn_on_descriptor_limit(max_connections: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    // the database pool, the Cosmos client, the listener and the log need some too
    if let Some(soft) = soft
        && soft < max_connections + 128
    {
        tracing::warn!(
            descriptors = soft,
            max_connections,
            "the descriptor limit (ulimit -n) is below --max-connections plus 128: raise it, or \
             lower the cap"
        );
    }
}

/// How sign-ups behave.
#[derive(Debug, Args, Clone)]
pub struct SignupArgs {
    /// The development mailer: sign-up codes are appended, as JSON lines, to this file
    /// (created 0600) [default in development mode: dev-mail.jsonl beside the development key;
    /// in production none, and sign-up requests are refused]
    #[arg(long, env = "MYSTIRA_MAIL_FILE", value_name = "FILE")]
    pub mail_file: Option<PathBuf>,

    /// How long a sign-up code is valid
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    pub signup_code_ttl_seconds: u64,

    /// Wrong codes before a sign-up locks (at most 10, the schema's ceiling)
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub signup_lockout_attempts: i32,

    /// Code requests allowed per email per window (all replicas together)
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub signup_limit_per_email: u32,

    /// Sign-up requests, and separately code verifications, allowed per client address per
    /// window (all replicas together)
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub signup_limit_per_client: u32,

    /// The rate limits' window
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub signup_limit_window_seconds: u64,

    /// A proxy or load balancer whose X-Forwarded-For names the client, for the per-client
    /// budget: an address or a block (10.0.0.0/8, fd00::/8); repeat it, or comma-separate in
    /// the variable [default: `[serve] trusted_proxies` in the config file, else none: the
    /// connection's peer is the client]
    #[arg(
        long = "trusted-proxy",
        env = "MYSTIRA_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,
}

impl SignupArgs {
    fn settings(&self, dev_mail: Option<PathBuf>, trusted_proxies: Vec<Cidr>) -> SignupSettings {
        let window = Duration::from_secs(self.signup_limit_window_seconds.max(1));
        let mail = self.mail_file.clone().or(dev_mail);
        SignupSettings {
            code_ttl: Duration::from_secs(self.signup_code_ttl_seconds),
            lockout_attempts: self.signup_lockout_attempts,
            per_email: RateLimit {
                max: self.signup_limit_per_email,
                window,
            },
            per_client: RateLimit {
                max: self.signup_limit_per_client,
                window,
            },
            trusted_proxies: TrustedProxies::new(trusted_proxies),
            mailer: mail.map(|p| FileMailer::new(&p)),
        }
    }
}

/// Who issues and who receives tokens, and the development key (shared by `serve` and
/// `dev-token`).
#[derive(Debug, Args, Clone)]
pub struct TokenArgs {
    /// The tokens' issuer (`iss`) [default in development mode: mystira-users-dev]
    #[arg(long, env = "MYSTIRA_JWT_ISSUER", value_name = "ISS")]
    pub issuer: Option<String>,

    /// The tokens' audience (`aud`) [default in development mode: mystira-users]
    #[arg(long, env = "MYSTIRA_JWT_AUDIENCE", value_name = "AUD")]
    pub audience: Option<String>,

    /// The development signing key (ES256, PKCS#8, created on first use)
    /// [default: dev-signing-key.p8 beside the private PostgreSQL cluster's directory]
    #[arg(long, env = "MYSTIRA_DEV_KEY", value_name = "FILE")]
    pub dev_key: Option<PathBuf>,
}

const DEV_ISSUER: &str = "mystira-users-dev";
const DEV_AUDIENCE: &str = "mystira-users";

/// The issuer and audience of development tokens: the configured ones, else the defaults
/// (`serve` in development mode and `dev-token` must agree).
fn dev_names<'a>(issuer: Option<&'a str>, audience: Option<&'a str>) -> (&'a str, &'a str) {
    (
        issuer.unwrap_or(DEV_ISSUER),
        audience.unwrap_or(DEV_AUDIENCE),
    )
}

impl TokenArgs {
    fn dev_key_path(&self) -> anyhow::Result<PathBuf> {
        match &self.dev_key {
            Some(p) => Ok(p.clone()),
            None => {
                let cluster = LocalCluster::discover(None)?;
                Ok(cluster
                    .dir()
                    .parent()
                    .unwrap_or(cluster.dir())
                    .join("dev-signing-key.p8"))
            }
        }
    }

    /// The development key, created when missing.
    pub fn dev_key(&self) -> anyhow::Result<DevKey> {
        DevKey::load_or_create(&self.dev_key_path()?)
            .context("cannot load the development signing key")
    }
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Where the keys that verify tokens come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    /// Development mode: the development key of `dev-token`.
    Development,
    File(PathBuf),
    Url(String),
}

/// The serve settings that may come from the flags, the environment or `[serve]` in the config
/// file, in that order.
#[derive(Debug)]
struct Resolved {
    listen: SocketAddr,
    keys: KeySource,
    issuer: Option<String>,
    audience: Option<String>,
    trusted_proxies: Vec<Cidr>,
    leeway: Duration,
}

const DEFAULT_LEEWAY_SECONDS: u64 = 60;

impl Resolved {
    fn new(args: &ServeArgs, file: &ServeSection) -> Result<Self, ConfigError> {
        // the key source is taken whole from one place: a flag's file never mixes with the
        // config file's url
        let keys = match (&args.jwks_file, &args.jwks_url) {
            (Some(f), _) => KeySource::File(f.clone()),
            (_, Some(u)) => KeySource::Url(u.clone()),
            _ => match (&file.jwks_file, &file.jwks_url) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::Usage(
                        "[serve] in the config file sets both jwks_file and jwks_url: keep one"
                            .into(),
                    ));
                }
                (Some(f), None) => KeySource::File(f.clone()),
                (None, Some(u)) => KeySource::Url(u.clone()),
                (None, None) => KeySource::Development,
            },
        };
        let trusted_proxies = if args.signups.trusted_proxies.is_empty() {
            file.trusted_proxies
                .iter()
                .flatten()
                .map(|b| {
                    b.parse::<Cidr>().map_err(|e| {
                        ConfigError::Usage(format!(
                            "[serve] trusted_proxies in the config file: {e}"
                        ))
                    })
                })
                .collect::<Result<_, _>>()?
        } else {
            args.signups.trusted_proxies.clone()
        };
        Ok(Self {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a valid address")),
            keys,
            issuer: args.token.issuer.clone().or_else(|| file.issuer.clone()),
            audience: args
                .token
                .audience
                .clone()
                .or_else(|| file.audience.clone()),
            trusted_proxies,
            leeway: leeway(args.jwt_leeway_seconds.or(file.jwt_leeway_seconds))?,
        })
    }

    /// Production when keys come from a JWKS file or url; else development mode.
    fn production(&self) -> bool {
        self.keys != KeySource::Development
    }

    /// The production authenticator when a JWKS file or url is given, else the development
    /// one.
    async fn authenticator(&self, token: &TokenArgs) -> anyhow::Result<Authenticator> {
        let dev = || -> anyhow::Result<Authenticator> {
            tracing::warn!(
                "development mode: accepting tokens from `mystira-users dev-token` (pass \
                 --jwks-url or --jwks-file for production)"
            );
            let (issuer, audience) = dev_names(self.issuer.as_deref(), self.audience.as_deref());
            Ok(token.dev_key()?.authenticator(issuer, audience))
        };
        let production =
            |issuer: &Option<String>, audience: &Option<String>| {
                match (issuer, audience) {
            (Some(i), Some(a)) => Ok((i.clone(), a.clone())),
            _ => Err(ConfigError::Usage(
                "--jwks-url and --jwks-file need --issuer and --audience (or MYSTIRA_JWT_ISSUER \
                 and MYSTIRA_JWT_AUDIENCE, or issuer and audience in [serve])"
                    .into(),
            )),
        }
            };
        let auth = match &self.keys {
            KeySource::Development => dev(),
            KeySource::Url(url) => {
                let (issuer, audience) = production(&self.issuer, &self.audience)?;
                Authenticator::from_jwks_url(url, &issuer, &audience)
                    .await
                    .context("cannot load the JWKS keys")
            }
            KeySource::File(file) => {
                let (issuer, audience) = production(&self.issuer, &self.audience)?;
                Authenticator::from_jwks_file(file, &issuer, &audience)
                    .context("cannot load the JWKS keys")
            }
        }?;
        Ok(auth.with_leeway(self.leeway))
    }
}

/// Development mode accepts tokens minted with the development key, by anyone who holds it:
/// it listens on loopback unless told otherwise (`--allow-dev-on-network`).
fn refuse_dev_on_network(resolved: &Resolved, allowed: bool) -> Result<(), ConfigError> {
    let ip = resolved.listen.ip();
    if resolved.production() || ip.is_loopback() {
        return Ok(());
    }
    if allowed {
        tracing::warn!(
            %ip,
            "development mode on a network address (--allow-dev-on-network): whoever holds \
             the development key is admin"
        );
        return Ok(());
    }
    Err(ConfigError::Usage(format!(
        "development mode (no --jwks-url or --jwks-file) accepts tokens minted with the \
         development key, and {ip} is not a loopback address: listen on 127.0.0.1 or ::1, \
         configure the identity provider's keys (--jwks-url or --jwks-file, with --issuer and \
         --audience), or pass --allow-dev-on-network if this network is trusted"
    )))
}

/// The clock leeway: 0 to 300 s (more would keep an expired token good for minutes).
fn leeway(seconds: Option<u64>) -> Result<Duration, ConfigError> {
    let seconds = seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS);
    let max = mystira_server::auth::MAX_LEEWAY;
    if seconds > max.as_secs() {
        return Err(ConfigError::Usage(format!(
            "--jwt-leeway-seconds (or MYSTIRA_JWT_LEEWAY_SECONDS, or [serve] \
             jwt_leeway_seconds) is {seconds}: at most {} s",
            max.as_secs()
        )));
    }
    Ok(Duration::from_secs(seconds))
}

/// `mystira-users dev-token`
#[derive(Debug, Args)]
pub struct DevTokenArgs {
    /// The token's subject: the account's external user id (`auth0_user_id`)
    #[arg(long, value_name = "SUB")]
    pub sub: String,

    /// The token's role claim (Guest, User, Admin, SuperAdmin) [default: none, a user]
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,

    /// The token's `email` claim: an address the token proves (with --email-verified true),
    /// which an account may then take [default: none]
    #[arg(long, value_name = "ADDR")]
    pub email: Option<String>,

    /// The token's `email_verified` claim, beside --email (false: a token that names the
    /// address without proving it, to test the refusal)
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        requires = "email"
    )]
    pub email_verified: bool,

    /// Seconds until it expires (a negative value gives an expired token, to test refusals)
    #[arg(
        long,
        default_value_t = 3600,
        value_name = "SECONDS",
        allow_hyphen_values = true
    )]
    pub ttl_seconds: i64,

    #[command(flatten)]
    pub token: TokenArgs,
}

pub async fn dev_token(args: &DevTokenArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let key = args.token.dev_key()?;
    let file = settings.file.serve.clone().unwrap_or_default();
    let issuer = args.token.issuer.clone().or(file.issuer);
    let audience = args.token.audience.clone().or(file.audience);
    let (issuer, audience) = dev_names(issuer.as_deref(), audience.as_deref());
    let token = match &args.email {
        None => key.token(
            &args.sub,
            args.role.as_deref(),
            issuer,
            audience,
            args.ttl_seconds,
        ),
        Some(email) => key.token_with_email(
            &args.sub,
            args.role.as_deref(),
            mystira_server::auth::EmailClaim {
                email,
                verified: args.email_verified,
            },
            issuer,
            audience,
            args.ttl_seconds,
        ),
    }
    .context("cannot sign the token")?;
    Ok(Outcome {
        exit: Exit::Ok,
        human: token.clone(),
        json: json!({ "token": token }),
    })
}

pub async fn run(args: &ServeArgs, settings: &Settings) -> anyhow::Result<Outcome> {
    let resolved = Resolved::new(args, &settings.file.serve.clone().unwrap_or_default())?;
    refuse_dev_on_network(&resolved, args.allow_dev_on_network)?;
    let limits = args.limits.limits()?;
    warn_on_descriptor_limit(limits.max_connections);
    let pool = database::prepared_pool(settings, 16).await?;
    let cosmos = match source::cosmos_endpoint(&args.cosmos, settings) {
        Some(_) => Some(source::connect_cosmos(&args.cosmos, settings).await?),
        None => None,
    };
    let auth = Arc::new(resolved.authenticator(&args.token).await?);
    // development mode mails codes to a file beside the development key
    let dev_mail = if resolved.production() {
        None
    } else {
        Some(args.token.dev_key_path()?.with_file_name("dev-mail.jsonl"))
    };
    let signups = Arc::new(
        args.signups
            .settings(dev_mail, resolved.trusted_proxies.clone()),
    );
    if let Some(mailer) = &signups.mailer {
        mailer.check().map_err(|e| {
            ConfigError::Usage(format!(
                "the mail file {} cannot hold sign-up codes: {e}",
                mailer.path().display()
            ))
        })?;
    }
    let config = ApplicationConfig {
        pool,
        cosmos,
        listen: resolved.listen,
        phase_poll: Duration::from_millis(args.phase_poll_ms),
        delivery_deadline: Duration::from_millis(args.delivery_deadline_ms),
        journal_dir: args.journal_dir.clone(),
        auth,
        signups,
        limits,
        probe_timeout: Duration::from_millis(args.probe_timeout_ms),
        gates: gate_config(&args.gates, settings)?,
    };
    let application = Application::build(config).await.map_err(|e| match e {
        // a configuration mistake: the usage exit code
        BuildError::PostgresAlone { .. } => anyhow::Error::new(ConfigError::Usage(e.to_string())),
        other => anyhow::Error::new(other),
    })?;
    let address = application.address();
    // scripts (and the tests) read this line to find a port chosen with :0; logged here, under
    // this command's target, as before `Application` existed (`RUST_LOG=mystira_users=info`)
    let state = application.state();
    tracing::info!(
        %address,
        phase = state.phase.domain_phase().name(),
        backend = state.domain.backend.name(),
        mail_file = ?state.signups.mailer.as_ref().map(|m| m.path().display().to_string()),
        "serving"
    );
    let stopped = application
        .run_until_stopped(stop::stop_signal())
        .await
        .context("the server failed")?;
    let human = if stopped.cut == 0 {
        format!("stopped serving on {address}: requests in flight were answered")
    } else {
        format!(
            "stopped serving on {address}: {} connection(s) still open at the {} s shutdown \
             deadline were cut",
            stopped.cut,
            limits.shutdown_timeout.as_secs()
        )
    };
    Ok(Outcome {
        exit: Exit::Ok,
        human,
        json: json!({ "address": address.to_string(), "stopped": true, "cut_connections": stopped.cut }),
    })
}
