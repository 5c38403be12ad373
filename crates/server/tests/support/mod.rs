//! What the in-process tests of the service share: the application over a fresh database
//! (`sqlx::test`) in a phase of the test's choosing, the development key's tokens, and one
//! request with its reply.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use mystira_domain::phase::Phase;
use mystira_dual_write::phase::{GateConfig, PhaseWatcher};
use mystira_server::auth::{Authenticator, DevKey, EmailClaim};
use mystira_server::{AppState, Domain, FileMailer, Metrics, SignupSettings};
use serde_json::Value;
use sqlx::PgPool;
use tower::ServiceExt;

pub const ISS: &str = "mystira-users-test";
pub const AUD: &str = "mystira-users";

/// The application, with no Cosmos account, its development key and the file its sign-up
/// codes are mailed to.
pub struct Api {
    pub app: Router,
    pub key: DevKey,
    pub mail: PathBuf,
    _dir: tempfile::TempDir,
}

/// One answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
}

impl Reply {
    /// A problem's `code` ("" when there is none).
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }
}

/// The reply is the problem `code` with `status`, as application/problem+json.
#[track_caller]
pub fn expect_problem(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.text);
    assert_eq!(
        reply.content_type(),
        "application/problem+json",
        "{status}: {}",
        reply.text
    );
    assert_eq!(reply.code(), code, "{}", reply.text);
    assert_eq!(reply.body["status"], status.as_u16(), "{}", reply.text);
}

impl Api {
    /// In postgres-only, trusting the development key's tokens, sign-up codes mailed to a file.
    pub fn new(pool: PgPool) -> Self {
        Self::with(pool, Phase::PostgresOnly, None, |_| {})
    }

    /// [`Self::new`] with the sign-up settings changed by `tune`.
    pub fn tuned(pool: PgPool, tune: impl FnOnce(&mut SignupSettings)) -> Self {
        Self::with(pool, Phase::PostgresOnly, None, tune)
    }

    /// In `phase`; in production with `auth` (a JWKS), else trusting the development key; the
    /// sign-up settings changed by `tune` from codes mailed to a file and the defaults.
    pub fn with(
        pool: PgPool,
        phase: Phase,
        auth: Option<Authenticator>,
        tune: impl FnOnce(&mut SignupSettings),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = DevKey::load_or_create(&dir.path().join("key.p8")).unwrap();
        let mail = dir.path().join("mail.jsonl");
        let mut signups = SignupSettings {
            mailer: Some(FileMailer::new(&mail)),
            ..SignupSettings::default()
        };
        tune(&mut signups);
        let state = AppState {
            domain: Domain::postgres(&pool),
            pool,
            cosmos: None,
            phase: PhaseWatcher::fixed(phase),
            metrics: Arc::new(Metrics::new()),
            signups: Arc::new(signups),
            auth: Arc::new(auth.unwrap_or_else(|| key.authenticator(ISS, AUD))),
            probe_timeout: Duration::from_secs(2),
            gates: GateConfig::default(),
        };
        Self {
            app: mystira_server::app(state),
            key,
            mail,
            _dir: dir,
        }
    }

    /// A token for `sub` with `role`, without an `email` claim.
    pub fn token(&self, sub: &str, role: Option<&str>) -> String {
        self.key.token(sub, role, ISS, AUD, 600).unwrap()
    }

    pub fn admin(&self) -> String {
        self.token("auth0|ops", Some("Admin"))
    }

    /// A user's token whose `email` claim is `email`, verified or not.
    pub fn token_with(&self, sub: &str, email: &str, verified: bool) -> String {
        self.key
            .token_with_email(sub, None, EmailClaim { email, verified }, ISS, AUD, 600)
            .unwrap()
    }

    /// A user's token with a verified `email` claim: what an account with that email needs
    /// (tests/input_rules.rs tests the proof).
    pub fn token_proving(&self, sub: &str, email: &str) -> String {
        self.token_with(sub, email, true)
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Reply {
            status,
            headers,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            text,
        }
    }

    /// A call as `token` (none when `None`), with a JSON body when one is given, from
    /// `client` when one is given.
    pub async fn call_from(
        &self,
        client: Option<SocketAddr>,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let mut request = match body {
            Some(b) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string()))
                .unwrap(),
            None => builder.body(Body::empty()).unwrap(),
        };
        if let Some(addr) = client {
            request.extensions_mut().insert(ConnectInfo(addr));
        }
        self.send(request).await
    }

    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.call_from(None, method, uri, token, body).await
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.call("GET", uri, None, None).await
    }

    /// The newest code mailed to `email`.
    pub fn mailed_code(&self, email: &str) -> String {
        let text = std::fs::read_to_string(&self.mail).unwrap();
        let line = text
            .lines()
            .rev()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .find(|m| m["to"] == email)
            .unwrap();
        line["code"].as_str().unwrap().to_owned()
    }
}
