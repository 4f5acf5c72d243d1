//! `ServiceBusPublisher`: publishes accepted records to an Azure Service Bus topic through
//! `azure_messaging_servicebus` (REST, shared access signature).
//!
//! The crate sets no timeout and no retry, so both are here: each send is bounded by a
//! timeout, and 5xx, 429 and timeouts are retried with backoff (honouring `Retry-After`).
//! A retried send reuses its MessageId, so the topic's duplicate detection drops a copy that
//! did land. Batches go out as REST batch sends, cut below the 256 KB limit of a send.
//! When the topic stays unavailable the caller gets [`PublishError::Unavailable`]
//! and the API answers 503 — never 202 for a message that is not in the topic.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use azure_core::error::ErrorKind;
use azure_core_legacy as azure_core;
use azure_messaging_servicebus::service_bus::{
    SendMessageOptions, SettableBrokerProperties, TopicClient, TopicSender,
};

use super::{
    BackendHealth, Claim, KeyLedger, OutgoingMessage, Publication, PublishError, Publisher, RequestKey,
};
use crate::config::ServiceBusConfig;

/// The version of the message body's schema, sent as the `schemaVersion` property so that
/// consumers can tell formats apart when it changes.
pub const SCHEMA_VERSION: &str = "1";
/// The longest a `Retry-After` from Service Bus is waited for inside one request.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Consecutive failed publishes after which health reports the topic down.
const UNHEALTHY_AFTER: u32 = 3;

pub struct ServiceBusPublisher {
    sender: TopicSender,
    topic: String,
    timeout: Duration,
    max_attempts: u32,
    failures_in_a_row: AtomicU32,
    last_error: Mutex<Option<String>>,
    /// Where Idempotency-Keys are claimed; without one, a request with a key is refused (503).
    ledger: Option<Arc<dyn KeyLedger>>,
}

impl ServiceBusPublisher {
    pub fn new(config: &ServiceBusConfig) -> anyhow::Result<Self> {
        let http = RestClient::new(config.endpoint.clone(), config.timeout)?;
        let client = TopicClient::new(
            Arc::new(http),
            config.namespace.clone(),
            config.topic.clone(),
            config.key_name.clone(),
            config.key.expose().to_owned(),
        )
        .map_err(|e| anyhow::anyhow!("cannot build the Service Bus client: {e}"))?;
        Ok(Self {
            sender: client.topic_sender(),
            topic: config.topic.clone(),
            timeout: config.timeout,
            max_attempts: config.max_attempts,
            failures_in_a_row: AtomicU32::new(0),
            last_error: Mutex::new(None),
            ledger: None,
        })
    }

    /// Records Idempotency-Keys in `ledger`.
    pub fn with_ledger(mut self, ledger: Arc<dyn KeyLedger>) -> Self {
        self.ledger = Some(ledger);
        self
    }

    /// One message: a plain send. More: REST batch sends of up to ~192 KB each, in order.
    async fn send_all(&self, messages: &[OutgoingMessage]) -> (usize, Option<PublishError>) {
        if let [message] = messages {
            let result = self.send_one(message).await;
            self.record(&result);
            return match result {
                Ok(()) => (1, None),
                Err(e) => (0, Some(e)),
            };
        }
        let mut durable = 0;
        for run in batches(messages) {
            let result = self.send_batch(run).await;
            self.record(&result);
            match result {
                Ok(()) => durable += run.len(),
                Err(e) => return (durable, Some(e)),
            }
        }
        (durable, None)
    }

    async fn send_one(&self, message: &OutgoingMessage) -> Result<(), PublishError> {
        let options = || SendMessageOptions {
            content_type: Some("application/json".into()),
            broker_properties: Some(SettableBrokerProperties {
                message_id: Some(message.message_id.clone()),
                correlation_id: message.correlation_id.clone(),
                label: Some("user".into()),
                ..Default::default()
            }),
            custom_properties: Some([("schemaVersion".to_owned(), SCHEMA_VERSION.to_owned())].into()),
        };
        self.send(&message.body, options, &message.message_id).await
    }

    /// One REST batch send: the same endpoint with the batch media type and a JSON array of
    /// messages, each with its own properties. Service Bus takes it all or nothing.
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        let body = batch_body(messages);
        let options = || SendMessageOptions {
            content_type: Some(BATCH_CONTENT_TYPE.into()),
            broker_properties: None,
            custom_properties: None,
        };
        self.send(&body, options, &messages[0].message_id).await
    }

    /// Sends a body with a timeout per attempt, retrying 5xx, 429 and timeouts with backoff.
    async fn send(
        &self,
        body: &str,
        options: impl Fn() -> SendMessageOptions,
        first_message_id: &str,
    ) -> Result<(), PublishError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure =
                match tokio::time::timeout(self.timeout, self.sender.send_message(body, Some(options())))
                    .await
                {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => classify(&e),
                    Err(_) => Failure {
                        retryable: true,
                        retry_after: None,
                        reason: format!("no answer within {} ms", self.timeout.as_millis()),
                    },
                };
            if !failure.retryable || attempt >= self.max_attempts {
                if !failure.retryable {
                    tracing::error!(
                        topic = %self.topic, reason = %failure.reason,
                        "Service Bus refused the message; check SERVICEBUS_CONNECTION_STRING and SERVICEBUS_TOPIC"
                    );
                }
                return Err(PublishError::Unavailable {
                    reason: format!("{} (after {attempt} attempt(s))", failure.reason),
                    retry_after: failure.retry_after.unwrap_or(RETRY_AFTER),
                });
            }
            let backoff = Duration::from_millis(100 * 2u64.pow(attempt - 1));
            let wait = failure.retry_after.unwrap_or(backoff).min(MAX_RETRY_WAIT);
            tracing::warn!(
                message_id = %first_message_id, attempt, wait_ms = wait.as_millis() as u64,
                reason = %failure.reason, "Service Bus send failed; retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn record(&self, result: &Result<(), PublishError>) {
        match result {
            Ok(()) => self.failures_in_a_row.store(0, Ordering::Relaxed),
            Err(e) => {
                self.failures_in_a_row.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
    }
}

/// The media type of a REST batch send.
const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.servicebus.json";
/// A send may carry 256 KB on the Standard tier, properties and framing included: batches
/// are cut well below that.
const MAX_BATCH_SEND_BYTES: usize = 192 * 1024;

/// A batch send's body: `[{"Body", "BrokerProperties", "UserProperties"}, ...]`.
fn batch_body(messages: &[OutgoingMessage]) -> String {
    let items: Vec<serde_json::Value> = messages.iter().map(batch_item).collect();
    serde_json::Value::Array(items).to_string()
}

fn batch_item(message: &OutgoingMessage) -> serde_json::Value {
    let mut properties = serde_json::json!({
        "MessageId": message.message_id,
        "Label": "user",
        "ContentType": "application/json",
    });
    if let Some(correlation) = &message.correlation_id {
        properties["CorrelationId"] = correlation.clone().into();
    }
    serde_json::json!({
        "Body": message.body,
        "BrokerProperties": properties,
        "UserProperties": {"schemaVersion": SCHEMA_VERSION},
    })
}

/// Cuts messages, in order, into runs whose batch body stays under [`MAX_BATCH_SEND_BYTES`].
fn batches(messages: &[OutgoingMessage]) -> Vec<&[OutgoingMessage]> {
    let mut runs = Vec::new();
    let (mut start, mut size) = (0, 2);
    for (i, message) in messages.iter().enumerate() {
        let item = batch_item(message).to_string().len() + 1;
        if i > start && size + item > MAX_BATCH_SEND_BYTES {
            runs.push(&messages[start..i]);
            (start, size) = (i, 2);
        }
        size += item;
    }
    if start < messages.len() {
        runs.push(&messages[start..]);
    }
    runs
}

#[async_trait]
impl Publisher for ServiceBusPublisher {
    async fn publish(&self, messages: Vec<OutgoingMessage>) -> Result<(), PublishError> {
        match self.send_all(&messages).await {
            (_, None) => Ok(()),
            (_, Some(e)) => Err(e),
        }
    }

    /// Under a key: claim it in the ledger, send (the message ids derive from the key and the
    /// request, so a re-send after a partial failure is dropped by duplicate detection where
    /// it landed), then mark it published.
    async fn publish_request(&self, messages: Vec<OutgoingMessage>, key: Option<&RequestKey>) -> Publication {
        let Some(key) = key else {
            let (durable, error) = self.send_all(&messages).await;
            return Publication::Sent { durable, error };
        };
        let Some(ledger) = &self.ledger else {
            let reason = "no idempotency ledger is configured".to_owned();
            let error = PublishError::Unavailable { reason, retry_after: RETRY_AFTER };
            return Publication::Sent { durable: 0, error: Some(error) };
        };
        match ledger.claim(key).await {
            Err(e) => Publication::Sent { durable: 0, error: Some(e) },
            Ok(Claim::Conflict) => Publication::KeyReused,
            Ok(Claim::Published) => Publication::Replayed,
            Ok(Claim::New | Claim::Pending) => {
                let (durable, error) = self.send_all(&messages).await;
                if error.is_none() {
                    if let Err(e) = ledger.mark_published(key).await {
                        // The messages are durable: the answer stands. A retry re-sends them
                        // (dropped by duplicate detection within its window; absorbed by the
                        // idempotent consumer after it).
                        tracing::warn!(error = %e, "cannot mark an idempotency key published");
                    }
                }
                Publication::Sent { durable, error }
            }
        }
    }

    /// Service Bus has no cheap probe over REST, so health reflects the latest sends.
    async fn health(&self) -> BackendHealth {
        let failures = self.failures_in_a_row.load(Ordering::Relaxed);
        let mut details = serde_json::Map::new();
        details.insert("kind".into(), "servicebus".into());
        details.insert("topic".into(), self.topic.clone().into());
        details.insert("failuresInARow".into(), failures.into());
        if let Some(e) = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            details.insert("lastError".into(), e.clone().into());
        }
        BackendHealth { up: failures < UNHEALTHY_AFTER, details }
    }
}

struct Failure {
    retryable: bool,
    retry_after: Option<Duration>,
    reason: String,
}

fn classify(error: &azure_core::Error) -> Failure {
    let retry_after =
        error.get_ref().and_then(|e| e.downcast_ref::<HttpFailure>()).and_then(|f| f.retry_after);
    match error.kind() {
        ErrorKind::HttpResponse { status, .. } => {
            let code = u16::from(*status);
            Failure {
                retryable: code == 429 || code >= 500,
                retry_after,
                reason: format!("Service Bus answered {code}"),
            }
        }
        ErrorKind::Io => {
            Failure { retryable: true, retry_after: None, reason: format!("transport error: {error}") }
        }
        _ => Failure { retryable: false, retry_after: None, reason: format!("{error}") },
    }
}

/// The answer of a failed send, with what the crate's error type drops.
#[derive(Debug)]
struct HttpFailure {
    status: u16,
    retry_after: Option<Duration>,
}

impl std::fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {}", self.status)
    }
}

impl std::error::Error for HttpFailure {}

/// The HTTP client given to the Service Bus crate: one pooled reqwest client (connections
/// are reused across sends), optionally pointed at another base URL (a local peer).
#[derive(Debug)]
struct RestClient {
    http: reqwest::Client,
    endpoint: Option<url::Url>,
}

impl RestClient {
    fn new(endpoint: Option<url::Url>, timeout: Duration) -> anyhow::Result<Self> {
        // The whole send is bounded by `timeout` around it; this bounds connecting alone.
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { http, endpoint })
    }
}

#[async_trait]
impl azure_core::HttpClient for RestClient {
    async fn execute_request(
        &self,
        request: &azure_core::Request,
    ) -> azure_core::Result<azure_core::Response> {
        let mut url = request.url().clone();
        if let Some(base) = &self.endpoint {
            // Keep the path and query the crate built; swap scheme, host and port.
            let _ = url.set_scheme(base.scheme());
            url.set_host(base.host_str()).map_err(|e| azure_core::Error::new(ErrorKind::Other, e))?;
            let _ = url.set_port(base.port_or_known_default());
        }
        let method = reqwest::Method::from_bytes(request.method().as_ref().as_bytes())
            .map_err(|e| azure_core::Error::new(ErrorKind::DataConversion, e))?;
        let mut builder = self.http.request(method, url);
        for (name, value) in request.headers().iter() {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let body = match request.body() {
            azure_core::Body::Bytes(bytes) => bytes.clone(),
            _ => {
                return Err(azure_core::Error::message(
                    ErrorKind::Other,
                    "streamed bodies are not sent to Service Bus",
                ))
            }
        };
        let response =
            builder.body(body).send().await.map_err(|e| azure_core::Error::new(ErrorKind::Io, e))?;
        let status = azure_core::StatusCode::try_from(response.status().as_u16())
            .map_err(|_| azure_core::Error::message(ErrorKind::DataConversion, "invalid status code"))?;
        let mut headers = azure_core::headers::Headers::new();
        for (name, value) in response.headers() {
            if let Ok(value) = value.to_str() {
                headers.insert(name.as_str().to_owned(), value.to_owned());
            }
        }
        let bytes = response.bytes().await.map_err(|e| azure_core::Error::new(ErrorKind::Io, e))?;
        let stream = futures::stream::once(async move { Ok(bytes) });
        Ok(azure_core::Response::new(status, headers, Box::pin(stream)))
    }

    async fn execute_request_check_status(
        &self,
        request: &azure_core::Request,
    ) -> azure_core::Result<azure_core::CollectedResponse> {
        let response = self.execute_request(request).await?;
        let (status, headers, body) = response.deconstruct();
        let body = body.collect().await?;
        if status.is_success() {
            return Ok(azure_core::CollectedResponse::new(status, headers, body));
        }
        let retry_after = headers
            .get_optional_str(&azure_core::headers::HeaderName::from_static("retry-after"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let kind = ErrorKind::http_response(status, None);
        Err(azure_core::Error::new(kind, HttpFailure { status: u16::from(status), retry_after }))
    }
}
