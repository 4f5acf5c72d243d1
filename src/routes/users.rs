//! `GET /api/users/{userId}` — the `get-user` function: a point read by id, with ETags.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::problem::ApiError;
use super::AppState;
use crate::domain::UserId;
use crate::telemetry::metrics;

pub async fn get_user(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(raw) = path.map_err(|_| ApiError::InvalidUserId("is not valid UTF-8 once percent-decoded"))?;
    let id = UserId::parse(&raw).map_err(ApiError::InvalidUserId)?;
    let started = std::time::Instant::now();
    let read = state.store.get(&id).await;
    metrics::store_operation("read", read.is_ok(), started.elapsed());
    let user = read.map_err(|e| {
        let user_id = crate::telemetry::loggable_user_id(id.as_str());
        tracing::warn!(error = %e, %user_id, "store read failed; answering 503");
        ApiError::Unavailable { what: "store", retry_after: e.retry_after() }
    })?;
    let Some(user) = user else {
        return Err(ApiError::NotFound(format!("User {id}")));
    };
    let etag =
        HeaderValue::from_str(&format!("\"{}\"", user.etag)).expect("etags are message ids: header-safe");
    if if_none_match(&headers, &user.etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json")), (header::ETAG, etag)],
        user.json,
    )
        .into_response())
}

/// RFC 9110 weak comparison against each listed tag, or `*`.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| {
            let tag = tag.trim();
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).trim_matches('"') == etag
        })
}
