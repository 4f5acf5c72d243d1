//! The API's one error type and its one mapping to HTTP: RFC 9457 problem details.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::FieldError;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("the user record is invalid")]
    InvalidRecord(Vec<FieldError>),
    /// A batch in which no record is valid: the fields are `[index].field`.
    #[error("no record of the batch is valid")]
    InvalidBatch(Vec<FieldError>),
    #[error("the user id is invalid: {0}")]
    InvalidUserId(&'static str),
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the batch has {got} records, more than {limit}")]
    TooManyRecords { limit: usize, got: usize },
    #[error("the request body took too long to arrive")]
    BodyTimeout { after: Duration },
    #[error("the request body could not be read: {0}")]
    BodyRead(String),
    #[error("unsupported content type")]
    UnsupportedMediaType { got: Option<String> },
    #[error("unsupported content encoding")]
    UnsupportedEncoding { got: String },
    #[error("the {name} header {why}")]
    InvalidHeader { name: &'static str, why: &'static str },
    #[error("the Idempotency-Key was used for another request")]
    IdempotencyConflict,
    #[error("no valid API key")]
    Unauthorized { missing: bool },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("not found: {0}")]
    NotFound(String),
    #[error("the {what} is unavailable")]
    Unavailable { what: &'static str, retry_after: Duration },
    /// Too much work in flight: refused before any is done, to be retried shortly.
    #[error("the service is overloaded")]
    Overloaded { retry_after: Duration },
    #[error("the invocation is malformed: {0}")]
    InvalidInvocation(String),
    /// A bug: a handler panicked. Logged, counted, and answered as a problem like any other.
    #[error("internal error")]
    Internal,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
    #[serde(rename = "maxBytes", skip_serializing_if = "Option::is_none")]
    max_bytes: Option<usize>,
    #[serde(rename = "maxRecords", skip_serializing_if = "Option::is_none")]
    max_records: Option<usize>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_)
            | Self::InvalidRecord(_)
            | Self::InvalidBatch(_)
            | Self::InvalidUserId(_)
            | Self::InvalidInvocation(_) => StatusCode::BAD_REQUEST,
            Self::BodyRead(_) => StatusCode::BAD_REQUEST,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge { .. } | Self::TooManyRecords { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType { .. } | Self::UnsupportedEncoding { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::InvalidHeader { .. } => StatusCode::BAD_REQUEST,
            Self::IdempotencyConflict => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable { .. } | Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (kind, title, detail) = match &self {
            Self::InvalidJson(why) => (
                "/problems/invalid-json",
                "Malformed JSON",
                format!("The request body is not valid JSON: {why}."),
            ),
            Self::InvalidRecord(errors) => (
                "/problems/invalid-record",
                "Invalid user record",
                format!("{} field(s) are invalid: {}.", errors.len(), field_list(errors)),
            ),
            Self::InvalidBatch(errors) => (
                "/problems/invalid-record",
                "Invalid records",
                format!("No record of the batch is valid: {}.", field_list(errors)),
            ),
            Self::InvalidUserId(why) => {
                ("/problems/invalid-user-id", "Invalid user id", format!("The user id {why}."))
            }
            Self::TooLarge { limit } => (
                "/problems/too-large",
                "Request too large",
                format!("The request body is larger than the limit of {limit} bytes."),
            ),
            Self::TooManyRecords { limit, got } => (
                "/problems/too-many-records",
                "Batch too large",
                format!("The batch has {got} records; at most {limit} are accepted in one request."),
            ),
            Self::BodyTimeout { after } => (
                "/problems/body-timeout",
                "Request body too slow",
                format!(
                    "The request body did not arrive within {} ms; nothing was accepted.",
                    after.as_millis()
                ),
            ),
            Self::BodyRead(why) => (
                "/problems/body-read",
                "Unreadable body",
                format!("The request body could not be read: {why}."),
            ),
            Self::UnsupportedMediaType { got } => (
                "/problems/unsupported-media-type",
                "Unsupported media type",
                format!(
                    "The body must be sent as Content-Type: application/json, in UTF-8 (a charset, if given, must be utf-8), not {}.",
                    got.as_deref().map_or("without a content type".to_owned(), |g| format!("{g:?}"))
                ),
            ),
            Self::UnsupportedEncoding { got } => (
                "/problems/unsupported-media-type",
                "Unsupported content encoding",
                format!("The body must be sent uncompressed (no Content-Encoding, or identity), not {got:?}."),
            ),
            Self::InvalidHeader { name, why } => {
                ("/problems/invalid-header", "Invalid header", format!("The {name} header {why}."))
            }
            Self::IdempotencyConflict => (
                "/problems/idempotency-key-reused",
                "Idempotency-Key reused",
                "This Idempotency-Key was used for a request with another body; nothing was accepted. Use a new key for a new request."
                    .into(),
            ),
            Self::Unauthorized { missing } => (
                "/problems/unauthorized",
                "Unauthorized",
                if *missing {
                    "This service needs an API key: send it as the x-functions-key header or the code query parameter."
                        .into()
                } else {
                    "The API key is not valid.".into()
                },
            ),
            Self::MethodNotAllowed => (
                "/problems/method-not-allowed",
                "Method not allowed",
                "This resource does not support that method.".into(),
            ),
            Self::NotFound(what) => ("/problems/not-found", "Not found", format!("{what} was not found.")),
            Self::Unavailable { what, retry_after } => (
                "/problems/unavailable",
                "Service unavailable",
                format!(
                    "The {what} is unavailable; nothing was accepted. Retry after {} s.",
                    retry_after.as_secs().max(1)
                ),
            ),
            Self::Overloaded { retry_after } => (
                "/problems/overloaded",
                "Service overloaded",
                format!(
                    "Too many requests are in progress; nothing was accepted. Retry after {} s.",
                    retry_after.as_secs().max(1)
                ),
            ),
            Self::InvalidInvocation(why) => (
                "/problems/invalid-invocation",
                "Malformed invocation",
                format!("The invocation payload is malformed: {why}."),
            ),
            Self::Internal => (
                "/problems/internal",
                "Internal error",
                "The service failed while handling this request (a bug, logged). Whether it was accepted is unknown: \
                 retry it with the same Idempotency-Key, which is always safe."
                    .into(),
            ),
        };
        let errors = match &self {
            Self::InvalidRecord(errors) | Self::InvalidBatch(errors) => Some(errors.as_slice()),
            _ => None,
        };
        let max_bytes = match &self {
            Self::TooLarge { limit } => Some(*limit),
            _ => None,
        };
        let max_records = match &self {
            Self::TooManyRecords { limit, .. } => Some(*limit),
            _ => None,
        };
        let body = serde_json::to_vec(&Problem {
            kind,
            title,
            status: status.as_u16(),
            detail,
            errors,
            max_bytes,
            max_records,
        })
        .expect("a problem always serializes");
        let mut response =
            (status, [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))], body).into_response();
        if let Self::Unavailable { retry_after, .. } | Self::Overloaded { retry_after } = &self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
        }
        response
    }
}

fn field_list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| if e.field.is_empty() { e.message.clone() } else { format!("{} {}", e.field, e.message) })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::super::{problem, Front};
    use axum::extract::Request;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_is_answered_with_a_problem_not_a_reset() {
        async fn buggy() -> &'static str {
            panic!("a bug")
        }
        let app = Router::new()
            .route("/bug", get(buggy))
            .layer(Front::new(None, std::sync::Arc::new(tokio::sync::Semaphore::new(8))));
        use crate::telemetry::metrics::{registry, PANICS};
        let panics = || registry().counter_total(&PANICS, |labels| labels == ["http"]);
        let before = panics();
        let request = Request::builder().uri("/bug").body(axum::body::Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(response.headers()["content-type"], problem::PROBLEM_JSON);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["type"], "/problems/internal");
        assert_eq!(panics(), before + 1);
    }
}
