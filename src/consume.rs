//! The consume step, shared by `POST /ingest-consume` (the Functions host's Service Bus
//! trigger) and the embedded worker: decode a message, check it again, upsert the user.

use std::sync::Arc;

use base64::Engine;
use serde_json::Value;
use time::OffsetDateTime;

use crate::domain::{UserDocument, UserId};
use crate::store::{StoreError, UpsertOutcome, UserStore, WriteVersion};
use crate::telemetry::metrics;

/// A message as delivered by either subscription.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message_id: String,
    pub body: MessageBody,
    pub enqueued_at: OffsetDateTime,
    pub sequence: i64,
    pub delivery_count: u32,
    /// The correlation id it was published with: the trace id of the request that made it.
    pub correlation_id: Option<String>,
    /// The document as this process checked it before publishing the message (embedded
    /// subscription only): the body is that document's JSON, so it is not parsed again.
    pub checked: Option<Arc<UserDocument>>,
}

/// The host hands the body over as JSON (an object, or a string holding JSON once or twice
/// encoded, or base64 for a binary binding); the embedded queue as the bytes published.
#[derive(Debug, Clone)]
pub enum MessageBody {
    Json(Value),
    Bytes(Vec<u8>),
}

/// What happened to a message. `Stored` is counted (with its processing time) here; the
/// callers count `dead_lettered` and `retried`, since they decide between the two.
#[derive(Debug)]
pub enum Outcome {
    /// The user is stored (or a newer version of it already was).
    Stored { id: UserId, stale: bool },
    /// The message can never succeed: park it with this reason.
    Poison { reason: String },
    /// Try again later.
    Transient(StoreError),
}

/// Decodes, checks and stores messages.
#[derive(Clone)]
pub struct Consumer {
    store: Arc<dyn UserStore>,
}

impl Consumer {
    pub fn new(store: Arc<dyn UserStore>) -> Self {
        Self { store }
    }

    /// Processes one message: what `POST /ingest-consume` does per invocation.
    pub async fn process(&self, delivery: &Delivery) -> Outcome {
        self.process_batch(std::slice::from_ref(delivery)).await.pop().expect("one outcome per delivery")
    }

    /// Processes messages in order, writing every valid one in ONE store operation; returns
    /// one outcome per delivery, in the same order.
    pub async fn process_batch(&self, deliveries: &[Delivery]) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(deliveries.len());
        let mut writes = Vec::new();
        let mut slots = Vec::new();
        for (i, delivery) in deliveries.iter().enumerate() {
            match check(delivery) {
                Ok(doc) => {
                    let version =
                        WriteVersion { message_id: delivery.message_id.clone(), sequence: delivery.sequence };
                    writes.push((doc, version));
                    slots.push(i);
                    outcomes.push(None);
                }
                Err(reason) => outcomes.push(Some(Outcome::Poison { reason })),
            }
        }
        if !writes.is_empty() {
            let ids: Vec<UserId> = writes.iter().map(|(doc, _)| doc.id.clone()).collect();
            let started = std::time::Instant::now();
            let written = self.store.upsert_batch(writes).await;
            metrics::store_operation("upsert", written.is_ok(), started.elapsed());
            match written {
                Ok(results) => {
                    let stored_at = OffsetDateTime::now_utc();
                    for ((slot, id), result) in slots.into_iter().zip(ids).zip(results) {
                        let stale = result == UpsertOutcome::Stale;
                        if stale {
                            metrics::consumed("stale", 1);
                        } else {
                            metrics::consumed("stored", 1);
                            metrics::processed(deliveries[slot].enqueued_at, stored_at);
                        }
                        outcomes[slot] = Some(Outcome::Stored { id, stale });
                    }
                }
                Err(e) => {
                    for slot in slots {
                        outcomes[slot] = Some(Outcome::Transient(e.clone()));
                    }
                }
            }
        }
        outcomes.into_iter().map(|o| o.expect("every delivery has an outcome")).collect()
    }
}

/// Decodes and checks a message again: the topic may carry messages from other producers.
/// A message this process published and handed over in memory comes with the document it
/// checked before publishing: the bytes in the topic are that document's JSON.
fn check(delivery: &Delivery) -> Result<UserDocument, String> {
    match &delivery.checked {
        Some(doc) => Ok(UserDocument::clone(doc)),
        None => check_message(&delivery.body, &delivery.message_id, delivery.enqueued_at),
    }
}

/// The document the consumer stores for a message, or why it parks the message: also what an
/// operator's replay checks before it republishes a dead letter.
pub fn check_message(
    body: &MessageBody,
    message_id: &str,
    enqueued_at: OffsetDateTime,
) -> Result<UserDocument, String> {
    let value = decode(body)?;
    let doc = UserDocument::from_message(value, message_id, enqueued_at).map_err(|errors| {
        let fields: Vec<String> =
            errors
                .iter()
                .map(|e| {
                    if e.field.is_empty() {
                        e.message.clone()
                    } else {
                        format!("{}: {}", e.field, e.message)
                    }
                })
                .collect();
        format!("invalid user record: {}", fields.join("; "))
    })?;
    if let Err(why) = crate::domain::check_not_ahead(doc.ingested_at, OffsetDateTime::now_utc()) {
        return Err(format!(
            "invalid user record: ingestedAt: {} {why}",
            doc.ingested_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
        ));
    }
    Ok(doc)
}

/// How many times a body may be wrapped in a JSON string before we give up.
const MAX_ENCODING_LAYERS: usize = 3;

/// Unwraps the encodings the Functions host is known to apply, down to a JSON object.
pub fn decode(body: &MessageBody) -> Result<Value, String> {
    let mut value = match body {
        MessageBody::Json(v) => v.clone(),
        MessageBody::Bytes(bytes) => parse_text(bytes)?,
    };
    for _ in 0..MAX_ENCODING_LAYERS {
        match value {
            Value::Object(_) => return Ok(value),
            Value::String(text) => value = parse_text(text.as_bytes())?,
            other => {
                return Err(format!(
                    "the message must hold a JSON object, not {}",
                    crate::domain::json_kind(&other)
                ))
            }
        }
    }
    match value {
        Value::Object(_) => Ok(value),
        _ => Err("the message is wrapped in too many layers of JSON strings".into()),
    }
}

fn parse_text(bytes: &[u8]) -> Result<Value, String> {
    match crate::domain::json::parse(bytes) {
        Ok(v) => Ok(v),
        Err(json_error) => {
            // A binary binding delivers base64.
            let trimmed = bytes.trim_ascii();
            match base64::engine::general_purpose::STANDARD.decode(trimmed) {
                Ok(decoded) => crate::domain::json::parse(&decoded)
                    .map_err(|e| format!("the message is base64 but not JSON inside: {e}")),
                Err(_) => Err(format!("the message is not JSON: {json_error}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_encoding_the_host_uses_decodes_to_the_same_object() {
        let record = json!({"id": "u1", "name": "A", "email": "a@example.com"});
        let once = Value::String(record.to_string());
        let twice = Value::String(once.to_string());
        let b64 = Value::String(base64::engine::general_purpose::STANDARD.encode(record.to_string()));
        for body in [
            MessageBody::Json(record.clone()),
            MessageBody::Json(once),
            MessageBody::Json(twice),
            MessageBody::Json(b64),
            MessageBody::Bytes(record.to_string().into_bytes()),
        ] {
            assert_eq!(decode(&body).unwrap(), record, "{body:?}");
        }
    }

    #[test]
    fn bodies_that_hold_no_object_are_refused_with_a_reason() {
        for body in [
            MessageBody::Bytes(b"not json".to_vec()),
            MessageBody::Json(json!([1, 2])),
            MessageBody::Json(json!("\"just a string\"")),
            MessageBody::Json(json!(42)),
        ] {
            assert!(decode(&body).is_err(), "{body:?}");
        }
    }
}
