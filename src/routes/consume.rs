//! `POST /ingest-consume` — the `ingest-consume` function: the Functions host's invocation
//! for each Service Bus message.
//!
//! The host's contract: any non-2xx answer fails the invocation, so Service Bus delivers the
//! message again and dead-letters it after the subscription's max delivery count. So a
//! transient failure answers 503, and a message that can never succeed is parked in our own
//! dead-letter store and answered 200: retrying it would only burn deliveries.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

use super::problem::ApiError;
use super::{AppState, LogIds};
use crate::broker::DeadLetter;
use crate::consume::{Delivery, MessageBody, Outcome};
use crate::telemetry::metrics;

/// The binding name of the Service Bus trigger in `ingest-consume/function.json`.
pub const BINDING: &str = "message";

pub async fn consume(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let invocation_id =
        headers.get("x-azure-functions-invocationid").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    // Read as a POST body is: within the limit while it arrives, and within BODY_TIMEOUT_MS.
    let limit = super::MAX_INVOCATION_BYTES;
    let read = super::ingest::read_limited(&headers, body, limit, limit);
    let body = match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => return ApiError::BodyTimeout { after: state.body_timeout }.into_response(),
    };
    let delivery = match parse_invocation(&body, state.clock.now()) {
        Ok(delivery) => delivery,
        Err(why) => {
            tracing::error!(%invocation_id, reason = %why, "malformed invocation");
            return ApiError::InvalidInvocation(why).into_response();
        }
    };
    let (result, user_id) = process(&state, &invocation_id, &delivery).await;
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    // The request's log line and trace item carry the message's ids and its trace.
    response.extensions_mut().insert(LogIds {
        user_id,
        message_id: Some(delivery.message_id.clone()),
        trace_id: delivery.correlation_id.clone(),
    });
    response
}

async fn process(
    state: &AppState,
    invocation_id: &str,
    delivery: &Delivery,
) -> (Result<Response, ApiError>, Option<String>) {
    // As logs and the answer (which the host logs) show it.
    let message_id = crate::telemetry::loggable_id(&delivery.message_id).into_owned();
    // A store outage is waited out inside the invocation, for up to CONSUME_RETRY_BUDGET_MS:
    // the host redelivers a failed invocation at once, so failing fast would burn the
    // subscription's deliveries in seconds and dead-letter good messages.
    let started = std::time::Instant::now();
    let mut attempt = 0u32;
    let outcome = loop {
        attempt += 1;
        match state.consumer.process(delivery).await {
            Outcome::Transient(e) => {
                let wait = e
                    .retry_after()
                    .max(Duration::from_millis(100 << attempt.min(5)))
                    .min(Duration::from_secs(5));
                if started.elapsed() + wait >= state.consume_retry_budget {
                    break Outcome::Transient(e);
                }
                tracing::warn!(%invocation_id, %message_id, attempt, error = %e, "store unavailable; retrying within the invocation");
                tokio::time::sleep(wait).await;
            }
            outcome => break outcome,
        }
    };
    match outcome {
        Outcome::Stored { id, stale } => {
            crate::telemetry::message_stored(Some(invocation_id), &message_id, id.as_str(), stale);
            let user_id = crate::telemetry::loggable_id(id.as_str());
            let line = if stale {
                format!("message {message_id}: a newer version of user {user_id} is stored already")
            } else {
                format!("message {message_id}: stored user {user_id}")
            };
            (Ok(answer(line)), Some(id.to_string()))
        }
        Outcome::Poison { reason } => park(state, invocation_id, delivery, reason).await,
        // The last delivery Service Bus will make: park it with its reason, where an operator
        // can replay it, rather than in the subscription's dead-letter queue without one.
        Outcome::Transient(e) if delivery.delivery_count >= state.max_delivery_count => {
            let reason = format!("max delivery count {} reached; last error: {e}", state.max_delivery_count);
            park(state, invocation_id, delivery, reason).await
        }
        Outcome::Transient(e) => {
            metrics::consumed("retried", 1);
            // Logged here as well: the host drops the Logs of a failed invocation.
            tracing::warn!(
                %invocation_id, %message_id, delivery_count = delivery.delivery_count, error = %e,
                "store unavailable; failing the invocation so the host retries"
            );
            (Err(ApiError::Unavailable { what: "store", retry_after: e.retry_after() }), None)
        }
    }
}

async fn park(
    state: &AppState,
    invocation_id: &str,
    delivery: &Delivery,
    reason: String,
) -> (Result<Response, ApiError>, Option<String>) {
    let message_id = crate::telemetry::loggable_id(&delivery.message_id).into_owned();
    let letter = DeadLetter {
        message_id: delivery.message_id.clone(),
        body: body_bytes(&delivery.body),
        enqueued_at: delivery.enqueued_at,
        delivery_count: delivery.delivery_count,
        reason: reason.clone(),
        source: "ingest-consume",
    };
    if let Err(e) = state.dead_letters.park(letter).await {
        metrics::consumed("retried", 1);
        tracing::error!(%invocation_id, %message_id, error = %e, "cannot park the message; the host will retry");
        let error = ApiError::Unavailable { what: "dead-letter store", retry_after: e.retry_after() };
        return (Err(error), None);
    }
    metrics::consumed("dead_lettered", 1);
    // The host logs the answer: it gets the summary too.
    let why = crate::telemetry::loggable_reason(&reason);
    tracing::warn!(%invocation_id, %message_id, reason = %why, "message dead-lettered");
    (Ok(answer(format!("message {message_id}: dead-lettered: {why}"))), None)
}

fn answer(log: String) -> Response {
    axum::Json(json!({"Outputs": {}, "Logs": [log], "ReturnValue": null})).into_response()
}

fn body_bytes(body: &MessageBody) -> Vec<u8> {
    match body {
        MessageBody::Bytes(b) => b.clone(),
        MessageBody::Json(Value::String(s)) => s.clone().into_bytes(),
        MessageBody::Json(v) => v.to_string().into_bytes(),
    }
}

/// Reads `{"Data": {"message": ...}, "Metadata": {...}}` as the host sends it.
fn parse_invocation(body: &[u8], now: OffsetDateTime) -> Result<Delivery, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut top) = value else { return Err("not a JSON object".into()) };
    let Some(Value::Object(mut data)) = top.remove("Data") else { return Err("no Data object".into()) };
    let message = match data.remove(BINDING) {
        Some(m) => m,
        // A renamed binding still carries exactly one input.
        None if data.len() == 1 => data.into_iter().next().map(|(_, v)| v).expect("one entry"),
        None => return Err(format!("Data has no `{BINDING}` binding")),
    };
    let metadata = match top.remove("Metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };

    // An empty MessageId is none: every id-less message would map to one user otherwise.
    let message_id = text(&metadata, "MessageId").filter(|id| !id.is_empty()).unwrap_or_else(|| {
        // Without a MessageId, derive one from the body so a redelivery maps to the same one.
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, message.to_string().as_bytes()).to_string()
    });
    let enqueued_at = match text(&metadata, "EnqueuedTimeUtc") {
        // Not echoed: the host's metadata is logged, and it could hold anything.
        Some(raw) => parse_utc(&raw).ok_or_else(|| {
            format!(
                "EnqueuedTimeUtc ({} characters) is not a date-time between 1970 and 2262 (UTC)",
                raw.chars().count()
            )
        })?,
        None => now,
    };
    let delivery_count = integer(&metadata, "DeliveryCount").unwrap_or(1).clamp(1, u32::MAX as i64) as u32;
    // It orders versions with equal ingestedAt: one that cannot be read must not become 0.
    let sequence = match text(&metadata, "SequenceNumber") {
        None => 0,
        Some(raw) => raw.trim().parse::<i64>().map_err(|_| {
            format!("SequenceNumber ({} characters) is not a 64-bit integer", raw.chars().count())
        })?,
    };
    let correlation_id = text(&metadata, "CorrelationId").filter(|c| !c.is_empty());
    Ok(Delivery {
        message_id,
        body: MessageBody::Json(message),
        enqueued_at,
        sequence,
        delivery_count,
        correlation_id,
        checked: None,
    })
}

/// A metadata string; the host JSON-encodes string values again, so unwrap one layer.
fn text(metadata: &Map<String, Value>, key: &str) -> Option<String> {
    let raw = match metadata.get(key)? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
        if let Ok(Value::String(inner)) = serde_json::from_str(&raw) {
            return Some(inner);
        }
    }
    Some(raw)
}

/// Integers arrive as strings (`"DeliveryCount":"1"`) or as numbers.
fn integer(metadata: &Map<String, Value>, key: &str) -> Option<i64> {
    text(metadata, key)?.trim().parse().ok()
}

/// `2023-10-12T20:13:49` (no zone), with `Z`, or with an offset: all are UTC from the host.
fn parse_utc(raw: &str) -> Option<OffsetDateTime> {
    let raw = raw.trim();
    if let Ok(t) = OffsetDateTime::parse(raw, &Rfc3339) {
        // None when the time leaves the years the store can order versions in.
        return t
            .checked_to_offset(time::UtcOffset::UTC)
            .filter(|t| crate::domain::INGESTED_AT_RANGE.contains(t));
    }
    let local = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]");
    PrimitiveDateTime::parse(raw, local)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
        .filter(|t| crate::domain::INGESTED_AT_RANGE.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enqueued_time_is_utc_with_or_without_a_zone() {
        let expected = OffsetDateTime::from_unix_timestamp(1_697_141_629).unwrap();
        for raw in [
            "2023-10-12T20:13:49",
            "2023-10-12T20:13:49Z",
            "2023-10-12T20:13:49+00:00",
            "2023-10-12T22:13:49+02:00",
        ] {
            assert_eq!(parse_utc(raw), Some(expected), "{raw}");
        }
        assert_eq!(parse_utc("2023-10-12T20:13:49.5").unwrap().millisecond(), 500);
        assert_eq!(parse_utc("yesterday"), None);
        // Valid RFC 3339, but outside the years 0000-9999 once in UTC: refused, no panic.
        assert_eq!(parse_utc("9999-12-31T23:59:59-23:59"), None);
        assert_eq!(parse_utc("0000-01-01T00:00:00+23:59"), None);
        assert_eq!(parse_utc("2263-01-01T00:00:00Z"), None, "beyond what the store can order");
        assert_eq!(parse_utc("1677-01-01T00:00:00"), None);
        let bad_sequence =
            json!({"Data": {"message": "{}"}, "Metadata": {"SequenceNumber": "99999999999999999999"}});
        let error =
            parse_invocation(bad_sequence.to_string().as_bytes(), OffsetDateTime::UNIX_EPOCH).unwrap_err();
        assert!(error.contains("SequenceNumber"), "{error}");
    }

    #[test]
    fn metadata_strings_and_numbers_are_read_as_the_host_sends_them() {
        let body = json!({
            "Data": {"message": "{\"name\":\"A\",\"email\":\"a@example.com\"}"},
            "Metadata": {"MessageId": "\"m-1\"", "DeliveryCount": "3", "SequenceNumber": 17, "EnqueuedTimeUtc": "2023-10-12T20:13:49"}
        });
        let d = parse_invocation(body.to_string().as_bytes(), OffsetDateTime::UNIX_EPOCH).unwrap();
        assert_eq!(d.message_id, "m-1");
        assert_eq!(d.delivery_count, 3);
        assert_eq!(d.sequence, 17);
        assert_eq!(d.enqueued_at.unix_timestamp(), 1_697_141_629);
    }

    #[test]
    fn an_invocation_without_data_is_malformed() {
        for body in ["", "[]", "{}", "{\"Data\": 1}", "{\"Data\": {\"a\": 1, \"b\": 2}}"] {
            assert!(parse_invocation(body.as_bytes(), OffsetDateTime::UNIX_EPOCH).is_err(), "{body}");
        }
    }
}
