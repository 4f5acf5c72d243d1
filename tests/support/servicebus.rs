//! A local HTTP endpoint that plays Service Bus's REST send API
//! (`POST /{topic}/messages`), because no Service Bus runs outside Azure. It checks what the
//! real one checks — the shared access signature (HMAC-SHA256 over the URL-encoded resource
//! URI and expiry, with the key's UTF-8 bytes), the key name and the topic — and captures
//! each accepted message with its BrokerProperties, custom properties and body. A test can
//! make it answer an error status, with or without Retry-After, or hang.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

pub const NAMESPACE: &str = "ingest-test";
pub const KEY_NAME: &str = "api-send";
pub const KEY: &str = "dGVzdC1zZW5kLWtleS1ub3QtYS1yZWFsLXNlY3JldA==";

/// A message as the topic received it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub body: String,
    pub broker_properties: Value,
    pub content_type: Option<String>,
    pub custom_properties: HashMap<String, String>,
    pub sequence_number: i64,
    pub enqueued_time_utc: String,
}

/// What the endpoint answers next.
#[derive(Debug, Clone)]
pub enum Mode {
    Accept,
    /// Answer this status (with `Retry-After` seconds when given) to every send.
    Fail {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Fail the next `n` sends with `status` (and `Retry-After` when given), then accept.
    FailTimes {
        n: usize,
        status: u16,
        retry_after: Option<u64>,
    },
    /// Accept the next `n` sends, then answer `status` to every one after.
    AcceptThenFail {
        n: usize,
        status: u16,
    },
    /// Never answer.
    Hang,
}

#[derive(Default)]
struct Shared {
    topic: String,
    mode: Option<Mode>,
    captured: Vec<Captured>,
    attempts: usize,
    batches: usize,
    duplicates: usize,
    rejections: Vec<String>,
}

#[derive(Clone)]
pub struct FakeServiceBus {
    shared: Arc<Mutex<Shared>>,
    pub endpoint: String,
    _runtime: Arc<tokio::runtime::Runtime>,
}

impl FakeServiceBus {
    /// Starts the endpoint on a free loopback port for `topic`, on its own runtime.
    pub fn start(topic: &str) -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let shared = Arc::new(Mutex::new(Shared {
            topic: topic.to_owned(),
            mode: Some(Mode::Accept),
            ..Default::default()
        }));
        let app = Router::new().route("/{topic}/messages", post(send)).with_state(shared.clone());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { shared, endpoint, _runtime: Arc::new(runtime) }
    }

    /// The connection string a client would be given (the key is the fake's).
    pub fn connection_string(&self) -> String {
        format!("Endpoint=sb://{NAMESPACE}.servicebus.windows.net/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY}")
    }

    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().unwrap().mode = Some(mode);
    }

    pub fn captured(&self) -> Vec<Captured> {
        self.shared.lock().unwrap().captured.clone()
    }

    /// Sends seen, accepted or not.
    pub fn attempts(&self) -> usize {
        self.shared.lock().unwrap().attempts
    }

    /// Messages dropped by duplicate detection.
    pub fn duplicates(&self) -> usize {
        self.shared.lock().unwrap().duplicates
    }

    /// Batch sends accepted.
    pub fn batches(&self) -> usize {
        self.shared.lock().unwrap().batches
    }

    /// Why requests were refused as Service Bus would refuse them (bad signature, etc.).
    pub fn rejections(&self) -> Vec<String> {
        self.shared.lock().unwrap().rejections.clone()
    }

    /// The invocation payload the Functions host would POST to `/ingest-consume` for a
    /// captured message, with the binding name `message` and the body as a JSON string.
    pub fn host_invocation(captured: &Captured, delivery_count: u32) -> Value {
        serde_json::json!({
            "Data": { "message": Value::String(captured.body.clone()) },
            "Metadata": {
                "MessageId": captured.broker_properties["MessageId"],
                "CorrelationId": captured.broker_properties.get("CorrelationId").cloned().unwrap_or(Value::Null),
                "ContentType": captured.content_type,
                "DeliveryCount": delivery_count.to_string(),
                "SequenceNumber": captured.sequence_number.to_string(),
                "EnqueuedTimeUtc": captured.enqueued_time_utc,
                "UserProperties": captured.custom_properties,
                "sys": { "MethodName": "ingest-consume", "UtcNow": captured.enqueued_time_utc }
            }
        })
    }
}

async fn send(
    State(shared): State<Arc<Mutex<Shared>>>,
    Path(topic): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mode = {
        let mut s = shared.lock().unwrap();
        s.attempts += 1;
        s.mode.clone().unwrap_or(Mode::Accept)
    };
    if let Err(why) = verify(&shared, &topic, &headers) {
        shared.lock().unwrap().rejections.push(why.clone());
        return (StatusCode::UNAUTHORIZED, why).into_response();
    }
    match mode {
        Mode::Accept => {}
        Mode::Fail { status, retry_after } => {
            let mut response = StatusCode::from_u16(status).unwrap().into_response();
            if let Some(secs) = retry_after {
                response.headers_mut().insert("retry-after", secs.into());
            }
            return response;
        }
        Mode::FailTimes { n, status, retry_after } => {
            if n > 0 {
                shared.lock().unwrap().mode = Some(if n == 1 {
                    Mode::Accept
                } else {
                    Mode::FailTimes { n: n - 1, status, retry_after }
                });
                let mut response = StatusCode::from_u16(status).unwrap().into_response();
                if let Some(secs) = retry_after {
                    response.headers_mut().insert("retry-after", secs.into());
                }
                return response;
            }
        }
        Mode::AcceptThenFail { n, status } => {
            if n == 0 {
                return StatusCode::from_u16(status).unwrap().into_response();
            }
            shared.lock().unwrap().mode = Some(Mode::AcceptThenFail { n: n - 1, status });
        }
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
    let content_type = headers.get("content-type").map(|v| v.to_str().unwrap_or("").to_owned());
    if content_type.as_deref() == Some(BATCH_CONTENT_TYPE) {
        return capture_batch(&shared, &body);
    }
    let broker_properties: Value =
        match headers.get("brokerproperties").map(|v| serde_json::from_slice(v.as_bytes())) {
            Some(Ok(v)) => v,
            _ => return (StatusCode::BAD_REQUEST, "BrokerProperties missing or not JSON").into_response(),
        };
    let standard = [
        "authorization",
        "brokerproperties",
        "content-type",
        "content-length",
        "host",
        "accept",
        "user-agent",
        "accept-encoding",
    ];
    let custom_properties = headers
        .iter()
        .filter(|(name, _)| !standard.contains(&name.as_str()))
        .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap_or("").to_owned()))
        .collect();
    let mut s = shared.lock().unwrap();
    // The topic has duplicate detection on (infra/servicebus.tf): a MessageId seen before is
    // acknowledged and dropped.
    if s.captured.iter().any(|c| c.broker_properties["MessageId"] == broker_properties["MessageId"]) {
        s.duplicates += 1;
        return StatusCode::CREATED.into_response();
    }
    let sequence_number = s.captured.len() as i64 + 1;
    let enqueued_time_utc =
        time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    s.captured.push(Captured {
        body: String::from_utf8_lossy(&body).into_owned(),
        broker_properties,
        content_type: headers.get("content-type").map(|v| v.to_str().unwrap_or("").to_owned()),
        custom_properties,
        sequence_number,
        enqueued_time_utc,
    });
    StatusCode::CREATED.into_response()
}

/// The media type of a REST batch send: a JSON array of `{Body, BrokerProperties, UserProperties}`.
pub const BATCH_CONTENT_TYPE: &str = "application/vnd.microsoft.servicebus.json";
/// What one send may carry on the Standard tier.
pub const MAX_SEND_BYTES: usize = 256 * 1024;

/// A batch is taken all or nothing, as Service Bus does; each message keeps its own properties.
fn capture_batch(shared: &Mutex<Shared>, body: &[u8]) -> Response {
    if body.len() > MAX_SEND_BYTES {
        return (StatusCode::PAYLOAD_TOO_LARGE, "the batch is over 256 KB").into_response();
    }
    let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(body) else {
        return (StatusCode::BAD_REQUEST, "a batch must be a JSON array").into_response();
    };
    if items.iter().any(|i| !i["Body"].is_string() || !i["BrokerProperties"]["MessageId"].is_string()) {
        return (StatusCode::BAD_REQUEST, "every batch item needs a string Body and a MessageId")
            .into_response();
    }
    let mut s = shared.lock().unwrap();
    s.batches += 1;
    for item in items {
        if s.captured
            .iter()
            .any(|c| c.broker_properties["MessageId"] == item["BrokerProperties"]["MessageId"])
        {
            s.duplicates += 1;
            continue;
        }
        let sequence_number = s.captured.len() as i64 + 1;
        let enqueued_time_utc =
            time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
        let custom_properties = item["UserProperties"]
            .as_object()
            .map(|o| o.iter().map(|(k, v)| (k.to_lowercase(), v.as_str().unwrap_or("").to_owned())).collect())
            .unwrap_or_default();
        s.captured.push(Captured {
            body: item["Body"].as_str().unwrap().to_owned(),
            content_type: item["BrokerProperties"]["ContentType"].as_str().map(str::to_owned),
            broker_properties: item["BrokerProperties"].clone(),
            custom_properties,
            sequence_number,
            enqueued_time_utc,
        });
    }
    StatusCode::CREATED.into_response()
}

/// Checks the SAS token as Service Bus does.
fn verify(shared: &Mutex<Shared>, topic: &str, headers: &HeaderMap) -> Result<(), String> {
    let expected_topic = shared.lock().unwrap().topic.clone();
    if topic != expected_topic {
        return Err(format!("no topic {topic}"));
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).ok_or("no Authorization")?;
    let token = auth.strip_prefix("SharedAccessSignature ").ok_or("not a SharedAccessSignature")?;
    let fields: HashMap<&str, &str> = token.split('&').filter_map(|kv| kv.split_once('=')).collect();
    let (sr, sig, se, skn) = match (fields.get("sr"), fields.get("sig"), fields.get("se"), fields.get("skn"))
    {
        (Some(sr), Some(sig), Some(se), Some(skn)) => (*sr, *sig, *se, *skn),
        _ => return Err("the token lacks sr, sig, se or skn".into()),
    };
    if skn != KEY_NAME {
        return Err(format!("unknown key name {skn}"));
    }
    let resource = urlencoding::decode(sr).map_err(|_| "sr is not URL-encoded")?;
    let expected = format!("https://{NAMESPACE}.servicebus.windows.net/{expected_topic}/messages");
    if resource != expected {
        return Err(format!("sr {resource} is not {expected}"));
    }
    let expiry: i64 = se.parse().map_err(|_| "se is not a number")?;
    if expiry < time::OffsetDateTime::now_utc().unix_timestamp() {
        return Err("the token has expired".into());
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
    mac.update(format!("{sr}\n{se}").as_bytes());
    let computed = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let given = urlencoding::decode(sig).map_err(|_| "sig is not URL-encoded")?;
    if given != computed {
        return Err("the signature does not match".into());
    }
    Ok(())
}
