//! The benchmark's baseline: a bare axum server on the same runtime and machine, doing the
//! least a JSON API can do — parse the POSTed JSON and echo it back, answer a GET with a
//! small JSON document. `bench/run` compares the service against it.
//!
//! Usage: cargo run --release --example baseline_echo -- PORT

use axum::extract::Path;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args().nth(1).and_then(|p| p.parse().ok()).unwrap_or(7080);
    let app = Router::new()
        .route("/", get(|| async { "baseline\n" }))
        .route("/api/users", post(|Json(body): Json<Value>| async move { Json(body) }))
        .route(
            "/api/users/{id}",
            get(|Path(id): Path<String>| async move {
                Json(json!({"id": id, "name": "Baseline User", "email": "baseline@example.com", "age": 42,
                            "ingestedAt": "2026-01-01T00:00:00Z"}))
            }),
        );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    axum::serve(listener, app).await.expect("serve");
}
