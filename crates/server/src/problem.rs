//! Errors as `application/problem+json` (RFC 9457), with a stable `code` for scripts. A
//! problem never quotes a stored value: `detail` names fields, rules and stores only.

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One problem document.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// A URI reference naming the problem type (`about:blank` when the status says it all).
    #[serde(rename = "type")]
    pub kind: String,
    /// The status's reason phrase (static: it keeps `Problem` small enough to return by value).
    pub title: &'static str,
    pub status: u16,
    /// Stable, for scripts and alerts (e.g. `not_found`, `not_ready`).
    pub code: String,
    pub detail: String,
    /// Extension members (RFC 9457 §3.2), such as `attempts_left`; never stored values.
    /// Boxed, and absent when there are none: `Problem` is returned by value everywhere, so it
    /// is kept small.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub extensions: Option<Box<serde_json::Map<String, serde_json::Value>>>,
    /// Seconds the caller should wait (sent as `Retry-After`, not in the body).
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("urn:mystira-users:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            code: code.to_owned(),
            detail: detail.into(),
            extensions: None,
            retry_after: None,
        }
    }

    /// The problem with an extension member.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extensions
            .get_or_insert_with(Default::default)
            .insert(key.to_owned(), value.into());
        self
    }

    /// The problem with a `Retry-After` header.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(u32::try_from(seconds).unwrap_or(u32::MAX));
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let mut response = (status, Json(self)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: say which scheme the caller should use
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

pub(crate) async fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route: see the README for the endpoints that exist",
    )
}
