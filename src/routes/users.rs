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
    // The request itself rather than a `HeaderMap`, which the extractor would copy.
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let Path(raw) = path.map_err(|_| ApiError::InvalidUserId("is not valid UTF-8 once percent-decoded"))?;
    let id = UserId::parse(&raw).map_err(ApiError::InvalidUserId)?;
    let started = std::time::Instant::now();
    let read = state.store.get(&id).await;
    metrics::store_operation("read", read.is_ok(), started.elapsed());
    let user = read.map_err(|e| {
        let user_id = crate::telemetry::loggable_id(id.as_str());
        tracing::warn!(error = %e, %user_id, "store read failed; answering 503");
        ApiError::Unavailable { what: "store", retry_after: e.retry_after() }
    })?;
    let Some(user) = user else {
        return Err(ApiError::NotFound(format!("User {id}")));
    };
    let tag = entity_tag(&user.etag);
    let mut quoted = Vec::with_capacity(tag.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(tag.as_bytes());
    quoted.push(b'"');
    let etag = HeaderValue::from_maybe_shared(axum::body::Bytes::from(quoted))
        .expect("entity_tag gives header-safe tags");
    if if_none_match(headers, &tag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json")), (header::ETAG, etag)],
        user.json,
    )
        .into_response())
}

/// The version's tag as an entity-tag may carry it: as it is when it is visible ASCII without
/// `"` (a UUID message id, a Cosmos `_etag`), else a digest of it — a message id from another
/// producer may hold anything, and a GET must not fail over it.
fn entity_tag(raw: &str) -> std::borrow::Cow<'_, str> {
    if !raw.is_empty() && raw.len() <= 200 && raw.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'"') {
        return std::borrow::Cow::Borrowed(raw);
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(raw.as_bytes());
    std::borrow::Cow::Owned(digest[..16].iter().map(|b| format!("{b:02x}")).collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_message_id_gives_a_header_safe_entity_tag() {
        assert_eq!(
            entity_tag("0b5e9c1e-3f5a-4a57-9d3b-1c2d3e4f5a6b"),
            "0b5e9c1e-3f5a-4a57-9d3b-1c2d3e4f5a6b"
        );
        for raw in ["a\nb", "a\u{7f}b", "a\"b", "", "ünïcode", &"x".repeat(300)] {
            let tag = entity_tag(raw);
            assert!(HeaderValue::from_str(&format!("\"{tag}\"")).is_ok(), "{raw:?}");
            assert!(!tag.contains('"') && tag.len() == 32, "{raw:?} -> {tag}");
            assert_eq!(tag, entity_tag(raw), "stable");
        }
        assert_ne!(entity_tag("a\nb"), entity_tag("a\nc"));
    }
}
