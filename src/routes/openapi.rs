//! `GET /api/openapi.json` — the OpenAPI description of this API, served as the file
//! `docs/openapi.json` is (tests/openapi.rs checks that file against the router, the
//! function.json files and real responses). Local service only: no function forwards it in Azure.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The OpenAPI 3.1 document, compiled in.
pub const SPEC: &str = include_str!("../../docs/openapi.json");

pub async fn spec() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], SPEC).into_response()
}
