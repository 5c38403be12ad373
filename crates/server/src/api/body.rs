//! `Body<T>`: a JSON request body whose errors are problems that never quote the body.
//!
//! axum's own `Json` rejection repeats serde's message, and serde's messages quote the
//! offending value (`invalid type: string "…"`), which may be an email or a code. This
//! extractor keeps only what is safe to show: the field serde names for a missing, unknown or
//! duplicate field, and the line and column of anything else. (The wire types take text, not
//! the domain's value types, so that a value the domain refuses is reported by
//! [`super::invalid`] with its rule, after parsing.)

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::Problem;

/// A JSON body of type `T`.
#[derive(Debug)]
pub(crate) struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| {
                let v = v.trim();
                v.eq_ignore_ascii_case("application/json") || v.ends_with("+json")
            });
        if !json {
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if crate::connections::is_body_timeout(&e) {
                Problem::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "no byte of the body arrived within the idle timeout",
                )
            } else {
                Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_unreadable",
                    "the body could not be read (too large, or the connection broke)",
                )
            }
        })?;
        serde_json::from_slice(&bytes)
            .map(Body)
            .map_err(|e| rejection(&e))
    }
}

fn rejection(e: &serde_json::Error) -> Problem {
    use serde_json::error::Category;
    let at = format!("line {}, column {}", e.line(), e.column());
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON (at {at})"),
        ),
        Category::Data => {
            let message = e.to_string();
            // these three messages name a field of our schema and nothing submitted
            let about_a_field = ["missing field `", "unknown field `", "duplicate field `"]
                .iter()
                .any(|p| message.starts_with(p));
            let detail = if about_a_field {
                let field = message.split('`').nth(1).unwrap_or_default();
                let what = message.split(" field").next().unwrap_or_default();
                // an unknown key is the caller's text: named only when it looks like a field
                // name, so that a value sent as a key is not echoed
                let looks_like_a_name = field.len() <= 64
                    && field
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if looks_like_a_name {
                    format!("{what} field `{field}` (at {at})")
                } else {
                    format!("{what} field (at {at})")
                }
            } else {
                format!("a value has the wrong type or is out of range (at {at})")
            };
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail)
        }
    }
}
