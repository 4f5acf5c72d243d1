//! `POST /api/users` — the `ingest-post` function: check a record, publish it, answer 202
//! only once the message is durable.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};

use super::problem::ApiError;
use super::AppState;
use crate::broker::OutgoingMessage;
use crate::domain::NewUser;

pub async fn create_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let bytes = read_limited(&headers, body, state.max_record_bytes).await?;
    let value = parse_json(&bytes)?;
    let user = NewUser::parse(value).map_err(ApiError::InvalidRecord)?;
    let doc = user.into_document(state.clock.now());

    let message = OutgoingMessage {
        message_id: uuid::Uuid::new_v4().to_string(),
        correlation_id: trace_id(&headers),
        body: doc.to_json(),
    };
    let message_id = message.message_id.clone();
    state.publisher.publish(vec![message]).await.map_err(|e| {
        tracing::warn!(error = %e, %message_id, "publish failed; answering 503");
        ApiError::Unavailable { what: "topic", retry_after: e.retry_after() }
    })?;
    tracing::info!(user_id = %doc.id, %message_id, "record accepted");

    let location = format!("/api/users/{}", doc.id);
    let mut response =
        (StatusCode::ACCEPTED, axum::Json(json!({"id": doc.id, "status": "accepted"}))).into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&location).expect("user ids are ASCII header-safe"));
    Ok(response)
}

/// `application/json`, compared case-insensitively, parameters (charset) allowed.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType { got: None });
    };
    let text = value.to_str().unwrap_or("");
    let essence = text.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType { got: Some(text.chars().take(100).collect()) })
    }
}

/// Reads at most `limit` bytes: a declared length over the limit is refused before reading,
/// and a chunked body is cut off as soon as it passes the limit.
async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::TooLarge { limit }),
        Err(e) => {
            // An axum length-limit error may arrive wrapped in its own body error type.
            let text = e.to_string();
            if text.contains("length limit") {
                Err(ApiError::TooLarge { limit })
            } else {
                Err(ApiError::BodyRead(text))
            }
        }
    }
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidJson("the body is empty".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// The W3C trace id of the caller, to correlate the message with the request that made it.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let traceparent = headers.get("traceparent")?.to_str().ok()?;
    let trace_id = traceparent.split('-').nth(1)?;
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| trace_id.to_owned())
}
