//! `POST /api/users` — the `ingest-post` function: check a record, publish it, answer 202
//! only once the message is durable. A JSON array of records is a batch, answered with one
//! result per record.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::problem::ApiError;
use super::{AppState, LogIds};
use crate::broker::{OutgoingMessage, Publication, PublishError, RequestKey};
use crate::domain::{FieldError, NewUser, UserDocument};
use crate::telemetry::metrics;

pub async fn create_user(
    State(state): State<AppState>,
    // The request itself rather than a `HeaderMap` and a body: that extractor copies the map.
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let result = accept(&state, &parts.headers, body).await;
    if let Err(e) = &result {
        // A refused request counts as one refused record; a refused batch's records were
        // counted one by one where they were checked.
        if !matches!(e, ApiError::InvalidBatch(_)) {
            metrics::registry().add(&metrics::RECORDS_REJECTED, &[rejection_reason(e)], 1);
        }
    }
    result
}

/// The `reason` label of a refused record.
fn rejection_reason(error: &ApiError) -> &'static str {
    match error {
        ApiError::InvalidBatch(_) => "invalid_record",
        ApiError::InvalidJson(_) | ApiError::BodyRead(_) | ApiError::BodyTimeout { .. } => "invalid_json",
        ApiError::InvalidRecord(_) => "invalid_record",
        ApiError::TooLarge { .. } | ApiError::TooManyRecords { .. } => "too_large",
        ApiError::UnsupportedMediaType { .. } | ApiError::UnsupportedEncoding { .. } => {
            "unsupported_media_type"
        }
        ApiError::Overloaded { .. } => "overloaded",
        ApiError::IdempotencyConflict => "idempotency_key_reused",
        ApiError::InvalidHeader { .. } => "invalid_header",
        _ => "unavailable",
    }
}

async fn accept(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    require_json(headers)?;
    let key = idempotency_key(headers)?;
    // A body sent too slowly (slow-loris) holds a connection and a permit: cut it off.
    let read = read_limited(headers, body, state.max_record_bytes, state.max_batch_bytes);
    let bytes = tokio::time::timeout(state.body_timeout, read)
        .await
        .map_err(|_| ApiError::BodyTimeout { after: state.body_timeout })??;
    let value = parse_json(&bytes)?;
    let idempotency = key.map(|key| Idempotency::new(key, &value));
    match value {
        Value::Array(records) => accept_batch(state, headers, records, idempotency.as_ref()).await,
        record => accept_one(state, headers, record, idempotency.as_ref()).await,
    }
}

/// The `Idempotency-Key` header, when there is one: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(ApiError::InvalidHeader { name: "Idempotency-Key", why: "must be sent once" });
    }
    let key = value
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    match key {
        Some(key) => Ok(Some(key.to_owned())),
        None => Err(ApiError::InvalidHeader {
            name: "Idempotency-Key",
            why: "must be 1 to 255 visible ASCII characters",
        }),
    }
}

/// A request under an `Idempotency-Key`: a retry with the same key and the same JSON (the
/// digest is of the parsed request, so key order and whitespace do not matter) makes no
/// second message and gets the same answer; the same key with another request — another
/// body, or a batch instead of a record — is refused with 422. The topic claims the key
/// atomically with publishing (see [`crate::broker::Publisher::publish_request`]). The key
/// and digest fix the message ids (so Service Bus duplicate detection drops a re-send) and
/// the key fixes the id of a record that has none (so the answer is the same).
struct Idempotency {
    request: RequestKey,
}

const IDEMPOTENCY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x8b0e_41c2_7d3f_4e59_a1b6_c8d7_e9f0_1a2b);

impl Idempotency {
    fn new(key: String, request: &Value) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(crate::domain::json::canonical(request));
        let request_hash = digest.iter().fold(String::with_capacity(64), |mut hex, b| {
            use std::fmt::Write;
            let _ = write!(hex, "{b:02x}");
            hex
        });
        Self { request: RequestKey { key, request_hash } }
    }

    /// Names are joined with NUL, which no key can hold, so that no two (kind, index, key)
    /// give one name: `user:0:abc` for a batch's record 0 under `abc` is not the single
    /// record under the key `0:abc`.
    fn message_id(&self, index: Option<usize>) -> String {
        let RequestKey { key, request_hash } = &self.request;
        let name = match index {
            Some(i) => format!("message\0batch\0{i}\0{request_hash}\0{key}"),
            None => format!("message\0record\0{request_hash}\0{key}"),
        };
        uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()).to_string()
    }

    /// Gives a record without an id the one this key determines.
    fn fill_id(&self, record: &mut Value, index: Option<usize>) {
        if let Value::Object(fields) = record {
            if fields.get("id").is_none_or(Value::is_null) {
                let name = match index {
                    Some(i) => format!("user\0batch\0{i}\0{}", self.request.key),
                    None => format!("user\0record\0{}", self.request.key),
                };
                let id = uuid::Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()).to_string();
                fields.insert("id".into(), Value::String(id));
            }
        }
    }
}

async fn accept_one(
    state: &AppState,
    headers: &HeaderMap,
    mut value: Value,
    idempotency: Option<&Idempotency>,
) -> Result<Response, ApiError> {
    if let Some(idempotency) = idempotency {
        idempotency.fill_id(&mut value, None);
    }
    let user = NewUser::parse(value).map_err(ApiError::InvalidRecord)?;
    let doc = std::sync::Arc::new(user.into_document(state.clock.now()));
    let mut message = message_for(doc.clone(), headers);
    if let Some(idempotency) = idempotency {
        message.message_id = idempotency.message_id(None);
    }
    let message_id = message.message_id.clone();
    let sent = publish(state, vec![message], idempotency).await?;
    if let Some(error) = sent.failure {
        return Err(error);
    }
    let location = format!("/api/users/{}", doc.id);
    // `{"id": …, "status": "accepted"}`, written directly: no JSON tree for two fields.
    let mut body = Vec::with_capacity(40 + doc.id.as_str().len());
    body.extend_from_slice(b"{\"id\":");
    serde_json::to_writer(&mut body, doc.id.as_str()).expect("writing to a Vec cannot fail");
    body.extend_from_slice(b",\"status\":\"accepted\"}");
    let mut response =
        (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body)
            .into_response();
    response
        .headers_mut()
        .insert(header::LOCATION, HeaderValue::from_str(&location).expect("user ids are ASCII header-safe"));
    if sent.replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    // The request's one log line carries the ids.
    response.extensions_mut().insert(LogIds {
        user_id: Some(doc.id.to_string()),
        message_id: Some(message_id),
        trace_id: None,
    });
    Ok(response)
}

/// A JSON array of records: each is checked on its own; the valid ones are published
/// together (one queue transaction locally, Service Bus batch sends in Azure) and the answer,
/// given once they are durable, reports every record in order: `202` with its id, `400`
/// with its field errors, or `503` when the topic failed before it was durable (only those
/// records need to be sent again). The whole request gets `400` when no record is valid
/// (naming each bad field as `[index].field`), `503` when no record was made durable, and
/// `413` when it has too many records.
async fn accept_batch(
    state: &AppState,
    headers: &HeaderMap,
    records: Vec<Value>,
    idempotency: Option<&Idempotency>,
) -> Result<Response, ApiError> {
    if records.is_empty() {
        return Err(ApiError::InvalidJson("the batch is an empty array; send at least one record".into()));
    }
    if records.len() > state.max_batch_records {
        return Err(ApiError::TooManyRecords { limit: state.max_batch_records, got: records.len() });
    }
    let now = state.clock.now();
    let mut results: Vec<Value> = Vec::with_capacity(records.len());
    let mut valid = Vec::new();
    let mut invalid = Vec::new();
    let mut messages = Vec::new();
    for (index, mut record) in records.into_iter().enumerate() {
        if let Some(idempotency) = idempotency {
            idempotency.fill_id(&mut record, Some(index));
        }
        // The single-record limit applies to each record of a batch too.
        let size = serde_json::to_vec(&record).map_or(usize::MAX, |v| v.len());
        let parsed = if size > state.max_record_bytes {
            Err(vec![FieldError::new(
                "",
                format!("the record is larger than the limit of {} bytes", state.max_record_bytes),
            )])
        } else {
            NewUser::parse(record)
        };
        match parsed {
            Ok(user) => {
                let doc = std::sync::Arc::new(user.into_document(now));
                let mut message = message_for(doc.clone(), headers);
                if let Some(idempotency) = idempotency {
                    message.message_id = idempotency.message_id(Some(index));
                }
                messages.push(message);
                valid.push(index);
                results.push(json!({"index": index, "status": 202, "id": doc.id}));
            }
            Err(errors) => {
                results.push(json!({"index": index, "status": 400, "errors": errors}));
                invalid.push((index, errors));
            }
        }
    }
    let rejected = results.len() - valid.len();
    metrics::registry().add(&metrics::RECORDS_REJECTED, &["invalid_record"], rejected as u64);
    if valid.is_empty() {
        // Nothing to publish: the whole request is the client's error, each field named by
        // its record's index.
        let errors = invalid
            .into_iter()
            .flat_map(|(index, errors)| {
                errors.into_iter().map(move |e| {
                    let field = if e.field.is_empty() {
                        format!("[{index}]")
                    } else {
                        format!("[{index}].{}", e.field)
                    };
                    FieldError::new(field, e.message)
                })
            })
            .collect();
        return Err(ApiError::InvalidBatch(errors));
    }
    let Sent { durable, failure, replayed } = publish(state, messages, idempotency).await?;
    if let Some(error) = failure {
        if durable == 0 {
            return Err(error);
        }
        metrics::registry().add(
            &metrics::RECORDS_REJECTED,
            &[rejection_reason(&error)],
            (valid.len() - durable) as u64,
        );
        for &index in &valid[durable..] {
            let id = results[index]["id"].take();
            results[index] = json!({
                "index": index, "status": 503, "id": id,
                "error": "the topic failed before this record was durable: it was not accepted; send it again",
            });
        }
    }
    let body = json!({
        "accepted": durable,
        "rejected": results.len() - durable,
        "results": results,
    });
    let mut response = (StatusCode::OK, axum::Json(body)).into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

fn message_for(doc: std::sync::Arc<UserDocument>, headers: &HeaderMap) -> OutgoingMessage {
    OutgoingMessage {
        // Time-ordered: a topic that indexes message ids (the embedded queue's duplicate
        // detection) appends each one at the end of its index instead of at a random page.
        message_id: uuid::Uuid::now_v7().to_string(),
        // Correlates the message with the request that made it: the caller's W3C trace id, or a new one.
        correlation_id: Some(trace_id(headers).unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())),
        body: doc.to_json(),
        checked: Some(doc),
    }
}

/// What publishing a request's messages came to.
struct Sent {
    /// How many leading messages are durable.
    durable: usize,
    /// Why the rest are not.
    failure: Option<ApiError>,
    /// A retry under an Idempotency-Key: the messages were durable already.
    replayed: bool,
}

/// Publishes in order (claiming the Idempotency-Key first, when there is one). Refused when
/// the key belongs to another request.
async fn publish(
    state: &AppState,
    messages: Vec<OutgoingMessage>,
    idempotency: Option<&Idempotency>,
) -> Result<Sent, ApiError> {
    let count = messages.len();
    let first_id = messages.first().map(|m| m.message_id.clone()).unwrap_or_default();
    let started = std::time::Instant::now();
    let key = idempotency.map(|i| &i.request);
    let publication = state.publisher.publish_request(messages, key).await;
    let registry = metrics::registry();
    registry.observe(&metrics::PUBLISH_DURATION, &[], started.elapsed().as_secs_f64());
    let (durable, error) = match publication {
        Publication::Replayed => return Ok(Sent { durable: count, failure: None, replayed: true }),
        Publication::KeyReused => return Err(ApiError::IdempotencyConflict),
        Publication::Sent { durable, error } => (durable, error),
    };
    registry.add(&metrics::RECORDS_ACCEPTED, &[], durable as u64);
    let Some(e) = error else { return Ok(Sent { durable, failure: None, replayed: false }) };
    let reason = match e {
        PublishError::Unavailable { .. } => "unavailable",
        PublishError::Overloaded { .. } => "overloaded",
    };
    registry.add(&metrics::PUBLISH_FAILURES, &[reason], 1);
    tracing::warn!(error = %e, message_id = %first_id, count, durable, "publish failed; answering 503");
    let error = match e {
        PublishError::Overloaded { retry_after } => ApiError::Overloaded { retry_after },
        e => ApiError::Unavailable { what: "topic", retry_after: e.retry_after() },
    };
    Ok(Sent { durable, failure: Some(error), replayed: false })
}

/// `application/json`, compared case-insensitively, with no charset or `charset=utf-8` (JSON
/// is UTF-8: a body declared in another charset would be misread), and not compressed.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let text = encoding.to_str().unwrap_or("").trim();
        if !text.eq_ignore_ascii_case("identity") {
            return Err(ApiError::UnsupportedEncoding { got: text.chars().take(100).collect() });
        }
    }
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType { got: None });
    };
    let text = value.to_str().unwrap_or("");
    let refused = || ApiError::UnsupportedMediaType { got: Some(text.chars().take(100).collect()) };
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(refused());
    }
    for parameter in parts {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !value.eq_ignore_ascii_case("utf-8")
            && !value.eq_ignore_ascii_case("utf8")
        {
            return Err(refused());
        }
    }
    Ok(())
}

/// Past the limit, how much more of a body is read and thrown away so the client, still
/// sending, gets the 413 instead of a connection reset. Beyond this the connection is cut.
const DRAIN_CAP: u64 = 1024 * 1024;

/// Reads a body into memory up to its limit: `record_limit` for one record, `batch_limit`
/// once the first non-blank byte shows a JSON array. A body over its limit is refused
/// without being buffered (its excess is discarded as it arrives, up to [`DRAIN_CAP`] past
/// the larger limit).
pub(super) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    record_limit: usize,
    batch_limit: usize,
) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let mut body = body;
    let ceiling = record_limit.max(batch_limit);
    if declared.is_some_and(|n| n > ceiling as u64) {
        if declared.is_some_and(|n| n <= ceiling as u64 + DRAIN_CAP) {
            drain(&mut body, ceiling as u64 + DRAIN_CAP).await;
        }
        return Err(ApiError::TooLarge { limit: ceiling });
    }
    let mut buffer = bytes::BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n as usize).min(ceiling));
    let mut limit = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BodyRead(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            buffer.extend_from_slice(&data);
            if limit.is_none() {
                limit = buffer.iter().find(|b| !b.is_ascii_whitespace()).map(|&b| {
                    if b == b'[' {
                        batch_limit
                    } else {
                        record_limit
                    }
                });
            }
            let limit = limit.unwrap_or(record_limit);
            if buffer.len() > limit {
                drain(&mut body, ceiling as u64 + DRAIN_CAP).await;
                return Err(ApiError::TooLarge { limit });
            }
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
    crate::domain::json::parse(bytes).map_err(|e| ApiError::InvalidJson(e.to_string()))
}

/// The W3C trace id of the caller, to correlate the message with the request that made it.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let traceparent = headers.get("traceparent")?.to_str().ok()?;
    let trace_id = traceparent.split('-').nth(1)?;
    (trace_id.len() == 32 && trace_id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| trace_id.to_owned())
}
