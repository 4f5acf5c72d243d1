//! `POST /api/users` — the `ingest-post` function: check a record, publish it, answer 202
//! only once the message is durable.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::problem::ApiError;
use super::{AppState, LogIds};
use crate::broker::{OutgoingMessage, PublishError};
use crate::domain::NewUser;
use crate::telemetry::metrics;

pub async fn create_user(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let result = accept(&state, &headers, body).await;
    let registry = metrics::registry();
    match &result {
        Ok(_) => registry.add(&metrics::RECORDS_ACCEPTED, &[], 1),
        Err(e) => registry.add(&metrics::RECORDS_REJECTED, &[rejection_reason(e)], 1),
    }
    result
}

/// The `reason` label of a refused record.
fn rejection_reason(error: &ApiError) -> &'static str {
    match error {
        ApiError::InvalidJson(_) | ApiError::BodyRead(_) => "invalid_json",
        ApiError::InvalidRecord(_) => "invalid_record",
        ApiError::TooLarge { .. } => "too_large",
        ApiError::UnsupportedMediaType { .. } => "unsupported_media_type",
        ApiError::Overloaded { .. } => "overloaded",
        _ => "unavailable",
    }
}

async fn accept(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    require_json(headers)?;
    let bytes = read_limited(headers, body, state.max_record_bytes).await?;
    let value = parse_json(&bytes)?;
    let user = NewUser::parse(value).map_err(ApiError::InvalidRecord)?;
    let doc = user.into_document(state.clock.now());

    let message = OutgoingMessage {
        message_id: uuid::Uuid::new_v4().to_string(),
        // Correlates the message with the request that made it: the caller's W3C trace id, or a new one.
        correlation_id: Some(trace_id(headers).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())),
        body: doc.to_json(),
    };
    let message_id = message.message_id.clone();
    let started = std::time::Instant::now();
    let published = state.publisher.publish(vec![message]).await;
    metrics::registry().observe(&metrics::PUBLISH_DURATION, &[], started.elapsed().as_secs_f64());
    published.map_err(|e| {
        let reason = match e {
            PublishError::Unavailable { .. } => "unavailable",
            PublishError::Overloaded { .. } => "overloaded",
        };
        metrics::registry().add(&metrics::PUBLISH_FAILURES, &[reason], 1);
        tracing::warn!(error = %e, %message_id, "publish failed; answering 503");
        match e {
            PublishError::Overloaded { retry_after } => ApiError::Overloaded { retry_after },
            e => ApiError::Unavailable { what: "topic", retry_after: e.retry_after() },
        }
    })?;
    let location = format!("/api/users/{}", doc.id);
    let mut response =
        (StatusCode::ACCEPTED, axum::Json(json!({"id": doc.id, "status": "accepted"}))).into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&location).expect("user ids are ASCII header-safe"));
    // The request's one log line carries the ids.
    response.extensions_mut().insert(LogIds {
        user_id: Some(doc.id.to_string()),
        message_id: Some(message_id),
        trace_id: None,
    });
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

/// Past the limit, how much more of a body is read and thrown away so the client, still
/// sending, gets the 413 instead of a connection reset. Beyond this the connection is cut.
const DRAIN_CAP: u64 = 1024 * 1024;

/// Reads at most `limit` bytes into memory: a body over the limit is refused without being
/// buffered (its excess is discarded as it arrives, up to [`DRAIN_CAP`]).
async fn read_limited(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    if declared.is_some_and(|n| n > limit as u64) {
        if declared.is_some_and(|n| n <= DRAIN_CAP) {
            drain(&mut body, DRAIN_CAP).await;
        }
        return Err(ApiError::TooLarge { limit });
    }
    let mut buffer = bytes::BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BodyRead(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buffer.len() + data.len() > limit {
                drain(&mut body, DRAIN_CAP).await;
                return Err(ApiError::TooLarge { limit });
            }
            buffer.extend_from_slice(&data);
        }
    }
    Ok(buffer.freeze())
}

/// Reads and drops up to `cap` bytes of what is left of a body.
async fn drain(body: &mut Body, cap: u64) {
    let mut seen = 0u64;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen > cap {
                return;
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
