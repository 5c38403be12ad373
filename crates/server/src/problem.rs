//! Errors as `application/problem+json` (RFC 9457), with a stable `code` for scripts. A
//! problem never quotes a stored value: `detail` names fields, rules and stores only.
//!
//! [`uniform`] makes that hold for every error the service sends, its own and the ones axum
//! and its extractors make (405 with an empty body, `text/plain` path rejections): it answers
//! the head limits itself ([`MAX_URI_BYTES`] 414, [`MAX_HEAD_BYTES`] and [`MAX_HEADERS`] 431),
//! turns any other error response into a problem with a code for its status, and logs the
//! refusals (401 and 403) by class and route, never the token or a value. (Hyper's own
//! ceilings, above these, are the one exception: see [`crate::connections`].)

use axum::Json;
use axum::extract::{MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
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

/// The code of the problem a response carries (a response extension), for [`uniform`]'s log.
#[derive(Debug, Clone)]
struct ProblemCode(String);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let code = ProblemCode(self.code.clone());
        let mut response = (status, Json(self)).into_response();
        response.extensions_mut().insert(code);
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

const NOT_FOUND_DETAIL: &str = "no such route: see the README for the endpoints that exist";

pub(crate) async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", NOT_FOUND_DETAIL)
}

/// The longest request target (path and query) the service reads: longer is 414 `uri_too_long`.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The largest request head (request line and header lines) the service reads: larger is 431
/// `headers_too_large`.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// The most header lines a request may have: more is 431 `headers_too_large`.
pub const MAX_HEADERS: usize = 100;

/// The middleware every response passes: the head limits, then problem+json for every error,
/// and a log line for every refusal.
pub(crate) async fn uniform(request: Request, next: Next) -> Response {
    let method = crate::metrics::method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let response = match head_limits(&request) {
        Some(problem) => problem.into_response(),
        None => as_problem(next.run(request).await),
    };
    let status = response.status();
    if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        let code = response
            .extensions()
            .get::<ProblemCode>()
            .map_or("", |c| c.0.as_str());
        // the class and the route pattern: never the token, the path's ids or a body's value
        tracing::warn!(
            status = status.as_u16(),
            code,
            method,
            route = route.as_str(),
            "request refused"
        );
    }
    response
}

/// The head limits' problem, if the request breaks one.
fn head_limits(request: &Request) -> Option<Problem> {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri > MAX_URI_BYTES {
        return Some(Problem::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        ));
    }
    let headers = request.headers();
    // what the request took on the wire, near enough: `name: value\r\n` per line
    let head = request.method().as_str().len()
        + uri
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    if headers.len() > MAX_HEADERS || head > MAX_HEAD_BYTES {
        return Some(Problem::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request head is larger than {MAX_HEAD_BYTES} bytes or has more than \
                 {MAX_HEADERS} header lines"
            ),
        ));
    }
    None
}

/// An error response that is not a problem already, as one (its body is dropped: axum's
/// rejections may quote what the caller sent). `Allow`, `Retry-After` and `WWW-Authenticate`
/// are kept.
fn as_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/problem+json");
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (code, detail) = match status {
        StatusCode::BAD_REQUEST => (
            "bad_request",
            "the request cannot be read: a path segment or a parameter is not valid",
        ),
        StatusCode::NOT_FOUND => ("not_found", NOT_FOUND_DETAIL),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this route does not take this method: the Allow header lists the ones it takes",
        ),
        StatusCode::REQUEST_TIMEOUT => ("request_timeout", "the request took too long to arrive"),
        StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the body is too large"),
        StatusCode::URI_TOO_LONG => ("uri_too_long", "the request target is too long"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ("unprocessable", "the request cannot be processed"),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
            ("headers_too_large", "the request head is too large")
        }
        s if s.is_server_error() => ("internal_error", "the service failed to answer"),
        _ => ("client_error", "the request was refused"),
    };
    let mut problem = Problem::new(status, code, detail).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = response.headers().get(&name) {
            problem.headers_mut().insert(name, value.clone());
        }
    }
    problem
}
