//! `CosmosUserStore`: users in a Cosmos DB for NoSQL container partitioned on `/id`, and
//! `CosmosDeadLetters`: the messages `/ingest-consume` parks, in a second container.
//!
//! Cost model: a GET is ONE point read (partition key = id, ~1 RU; a query would cost ~3).
//! A consumed message is ONE create in the common case (a new user). Only when the user
//! exists already does it read the stored version and replace it conditionally (If-Match on
//! its ETag), so that an old message redelivered late never overwrites a newer version.
//! Throttling (429) is retried by the driver, honouring `x-ms-retry-after-ms`, within a bounded
//! count and wait (its defaults allow 270 s, far too long to hold an HTTP request); past that,
//! and on 503s and timeouts, the caller gets `StoreError::Unavailable` with the server's
//! retry-after, and the message is retried later by the host or the worker.
//!
//! `export` is one query: `SELECT * FROM c` across partitions, read through the driver's
//! pager (continuation tokens), one page in memory at a time. The other is the operator's
//! listing of dead letters ([`CosmosDeadLetterAdmin`]), which reads every field but the body.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::ContainerProperties;
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, EndToEndOperationLatencyPolicy, ItemWriteOptions,
    MaxItemCountHint, OperationOptions, Precondition, QueryOptions, ServerCertificateValidation,
    ThrottlingRetryOptionsBuilder,
};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosClientBuilder, CosmosError, CosmosRuntime,
    FeedScope, RoutingStrategy,
};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{ExportPages, StoreError, StoredUser, UpsertOutcome, UserStore, WriteVersion};
use crate::broker::{
    BackendHealth, Claim, DeadLetter, DeadLetterAdmin, DeadLetterStore, KeyLedger, OutgoingMessage,
    ParkedMessage, PublishError, Publisher, Replay, Replayed, RequestKey, IDEMPOTENCY_WINDOW,
};
use crate::config::CosmosConfig;
use crate::domain::{UserDocument, UserId};

/// Where the store keeps its own bookkeeping inside a document; every top-level key that
/// starts with `_` (ours and Cosmos's `_rid`, `_ts`, `_etag`…) is stripped before a GET.
const VERSION_FIELD: &str = "_version";
/// Throttled attempts the driver retries, and the longest it waits in all, per operation.
const MAX_THROTTLE_RETRIES: u32 = 5;
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(5);
/// A conditional replace that keeps losing to concurrent writers gives up after this many tries.
const MAX_CONFLICT_ROUNDS: u32 = 5;
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The three containers, from one client.
pub struct CosmosStores {
    pub users: Arc<CosmosUserStore>,
    pub dead_letters: Arc<CosmosDeadLetters>,
    pub keys: Arc<CosmosKeyLedger>,
}

impl CosmosStores {
    /// Connects (reading the account and container metadata), creating the database and
    /// containers first when `create_if_missing` is set.
    pub async fn connect(config: &CosmosConfig) -> anyhow::Result<Self> {
        Self::connect_with(config, |builder| builder).await
    }

    /// [`connect`](Self::connect), with a last say on the client: tests add the driver's
    /// fault-injection rules here.
    pub async fn connect_with(
        config: &CosmosConfig,
        customize: impl FnOnce(CosmosClientBuilder) -> CosmosClientBuilder,
    ) -> anyhow::Result<Self> {
        let client = client(config, customize).await?;
        if config.create_if_missing {
            create_if_missing(&client, config).await?;
        }
        let database = client.database_client(config.database.as_str());
        let users = database.container_client(config.container.as_str(), None).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot open COSMOS_CONTAINER {} in COSMOS_DATABASE {}: {e}",
                config.container,
                config.database
            )
        })?;
        let dead_letters =
            database.container_client(config.dead_letter_container.as_str(), None).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot open COSMOS_DEADLETTER_CONTAINER {}: {e}",
                    config.dead_letter_container
                )
            })?;
        let keys =
            database.container_client(config.idempotency_container.as_str(), None).await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot open COSMOS_IDEMPOTENCY_CONTAINER {}: {e}",
                    config.idempotency_container
                )
            })?;
        let charge = Arc::new(RequestCharge::default());
        Ok(Self {
            users: Arc::new(CosmosUserStore { container: users, charge: charge.clone() }),
            dead_letters: Arc::new(CosmosDeadLetters { container: dead_letters, charge: charge.clone() }),
            keys: Arc::new(CosmosKeyLedger { container: keys, charge }),
        })
    }
}

async fn client(
    config: &CosmosConfig,
    customize: impl FnOnce(CosmosClientBuilder) -> CosmosClientBuilder,
) -> anyhow::Result<CosmosClient> {
    let host = config.endpoint.host_str().unwrap_or_default();
    let local_peer = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    // Local Cosmos-protocol servers speak HTTP/1.1 only, often over plain HTTP; Azure gets
    // HTTP/2 and full certificate validation.
    let pool = ConnectionPoolOptions::builder()
        .with_is_http2_allowed(!local_peer)
        .with_server_certificate_validation(ServerCertificateValidation::RequiredUnlessEmulator)
        .build()
        .map_err(|e| anyhow::anyhow!("invalid Cosmos connection options: {e}"))?;
    let runtime = CosmosRuntime::builder()
        .with_connection_pool(pool)
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the Cosmos runtime: {e}"))?;
    let endpoint: AccountEndpoint = config
        .endpoint
        .as_str()
        .parse()
        .map_err(|e| anyhow::anyhow!("COSMOS_ENDPOINT is not a Cosmos account endpoint: {e}"))?;
    let account = match &config.key {
        Some(key) => AccountReference::with_authentication_key(
            endpoint,
            azure_core::credentials::Secret::new(key.expose().to_owned()),
        ),
        None => {
            let credential = azure_identity::ManagedIdentityCredential::new(None)
                .map_err(|e| anyhow::anyhow!("no COSMOS_KEY and no managed identity available: {e}"))?;
            AccountReference::with_credential(endpoint, credential)
        }
    };
    let mut operation = OperationOptions::default();
    operation.throttling_retry_options = Some(
        ThrottlingRetryOptionsBuilder::new()
            .with_max_retry_count(MAX_THROTTLE_RETRIES)
            .with_max_retry_wait_time(MAX_THROTTLE_WAIT)
            .build(),
    );
    operation.end_to_end_latency_policy = Some(EndToEndOperationLatencyPolicy::new(config.timeout));
    let builder = CosmosClientBuilder::new()
        .with_runtime(runtime)
        .with_default_operation_options(operation)
        // JSON on the wire: GET serves the document as JSON anyway.
        .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false));
    customize(builder)
        .build(account, RoutingStrategy::PreferredRegions(Vec::new()))
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to COSMOS_ENDPOINT {}: {e}", config.endpoint))
}

async fn create_if_missing(client: &CosmosClient, config: &CosmosConfig) -> anyhow::Result<()> {
    match client.create_database(&config.database, None).await {
        Ok(_) => tracing::info!(database = %config.database, "created the Cosmos database"),
        Err(e) if e.status().is_conflict() => {}
        Err(e) => anyhow::bail!("cannot create COSMOS_DATABASE {}: {e}", config.database),
    }
    let database = client.database_client(config.database.as_str());
    for container in [&config.container, &config.dead_letter_container, &config.idempotency_container] {
        let properties = ContainerProperties::new(container.clone(), "/id".into());
        match database.create_container(properties, None).await {
            Ok(_) => tracing::info!(%container, "created the Cosmos container"),
            Err(e) if e.status().is_conflict() => {}
            Err(e) => anyhow::bail!("cannot create the Cosmos container {container}: {e}"),
        }
    }
    Ok(())
}

/// Request units spent, in thousandths, for health and metrics.
#[derive(Default)]
pub struct RequestCharge(AtomicU64);

impl RequestCharge {
    fn add(&self, ru: f64) {
        self.0.fetch_add((ru * 1000.0).round() as u64, Ordering::Relaxed);
    }

    /// Counts an answer's request charge, here and in the metrics under `op`.
    fn record(&self, op: &'static str, charge: Option<f64>) {
        if let Some(ru) = charge {
            self.add(ru);
            crate::telemetry::metrics::request_charge(op, ru);
        }
    }

    pub fn total(&self) -> f64 {
        self.0.load(Ordering::Relaxed) as f64 / 1000.0
    }
}

pub struct CosmosUserStore {
    container: ContainerClient,
    charge: Arc<RequestCharge>,
}

impl CosmosUserStore {
    /// The stored document's version and ETag, or `None` when absent.
    async fn read_version(&self, id: &str) -> Result<Option<(i128, i64, String)>, StoreError> {
        match self.container.read_item(id.to_owned(), id, None).await {
            Ok(response) => {
                self.record("upsert", response.headers().request_charge().map(|c| c.value()));
                let etag = response.headers().etag().map(|e| e.to_string()).unwrap_or_default();
                let doc: Value = response.into_model().map_err(unavailable)?;
                let ingested = doc
                    .get("ingestedAt")
                    .and_then(Value::as_str)
                    .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                    .map_or(i128::MIN, |t| t.unix_timestamp_nanos());
                let sequence = doc
                    .get(VERSION_FIELD)
                    .and_then(|v| v.get("sequence"))
                    .and_then(Value::as_i64)
                    .unwrap_or(i64::MIN);
                Ok(Some((ingested, sequence, etag)))
            }
            Err(e) if e.status().is_not_found() => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    fn record(&self, op: &'static str, charge: Option<f64>) {
        self.charge.record(op, charge);
    }
}

/// The document as stored: the user's fields, `ingestedAt`, and our version bookkeeping.
fn stored_body(doc: &UserDocument, version: &WriteVersion) -> Value {
    let mut body = serde_json::to_value(doc).expect("a user document always serializes");
    body[VERSION_FIELD] = json!({"messageId": version.message_id, "sequence": version.sequence});
    body
}

#[async_trait]
impl UserStore for CosmosUserStore {
    async fn upsert(&self, doc: &UserDocument, version: &WriteVersion) -> Result<UpsertOutcome, StoreError> {
        let id = doc.id.as_str();
        let body = stored_body(doc, version);
        let incoming = (doc.ingested_at.unix_timestamp_nanos(), version.sequence);
        for _ in 0..MAX_CONFLICT_ROUNDS {
            // The common case, a new user, costs exactly one request.
            match self.container.create_item(id.to_owned(), id, body.clone(), None).await {
                Ok(response) => {
                    self.record("upsert", response.headers().request_charge().map(|c| c.value()));
                    return Ok(UpsertOutcome::Written);
                }
                Err(e) if e.status().is_conflict() => {}
                Err(e) => return Err(unavailable(e)),
            }
            let Some((ingested, sequence, etag)) = self.read_version(id).await? else {
                continue; // deleted in between: try creating again
            };
            if (ingested, sequence) > incoming {
                return Ok(UpsertOutcome::Stale);
            }
            let options = ItemWriteOptions::default().with_precondition(Precondition::IfMatch(etag.into()));
            match self.container.replace_item(id.to_owned(), id, body.clone(), Some(options)).await {
                Ok(response) => {
                    self.record("upsert", response.headers().request_charge().map(|c| c.value()));
                    return Ok(UpsertOutcome::Written);
                }
                // Someone wrote in between: look again.
                Err(e) if e.status().is_precondition_failed() || e.status().is_not_found() => continue,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StoreError::Unavailable {
            reason: format!("user {id} kept changing during {MAX_CONFLICT_ROUNDS} conditional writes"),
            retry_after: RETRY_AFTER,
        })
    }

    async fn get(&self, id: &UserId) -> Result<Option<StoredUser>, StoreError> {
        let response = match self.container.read_item(id.as_str().to_owned(), id.as_str(), None).await {
            Ok(response) => response,
            Err(e) if e.status().is_not_found() => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        self.record("read", response.headers().request_charge().map(|c| c.value()));
        let etag = response.headers().etag().map(|e| e.to_string()).unwrap_or_default();
        let raw: Map<String, Value> = response.into_model().map_err(unavailable)?;
        Ok(Some(StoredUser { json: user_json(raw).into(), etag: etag.trim_matches('"').to_owned() }))
    }

    fn export(&self, page_size: NonZeroU32) -> ExportPages<'_> {
        let options = QueryOptions::default().with_max_item_count(MaxItemCountHint::Limit(page_size));
        let pages = async move {
            let items = self
                .container
                .query_items::<Map<String, Value>>(
                    "SELECT * FROM c",
                    FeedScope::full_container(),
                    Some(options),
                )
                .await
                .map_err(unavailable)?;
            // Each page is one request; the pager carries the continuation token to the next.
            Ok::<_, StoreError>(items.into_pages().map(move |page| {
                let page = page.map_err(unavailable)?;
                self.record("export", page.headers().request_charge().map(|c| c.value()));
                Ok(page.into_items().into_iter().map(user_json).collect())
            }))
        };
        futures::stream::once(pages).try_flatten().boxed()
    }

    async fn health(&self) -> BackendHealth {
        let mut details = Map::new();
        details.insert("kind".into(), "cosmos".into());
        details.insert("requestCharge".into(), json!(self.charge.total()));
        // A point read of an id no user can have: 404 proves the container answers.
        match self.container.read_item("~health", "~health", None).await {
            Ok(_) => BackendHealth { up: true, details },
            Err(e) if e.status().is_not_found() => BackendHealth { up: true, details },
            Err(e) => {
                details.insert("error".into(), e.to_string().into());
                BackendHealth { up: false, details }
            }
        }
    }
}

/// The user's fields and `ingestedAt`, without the store's system fields or ours.
fn user_json(mut raw: Map<String, Value>) -> String {
    raw.retain(|key, _| !key.starts_with('_'));
    // Serve the fields in the same order as the embedded store: re-read them as a document.
    let fallback = Value::Object(raw.clone()).to_string();
    match UserDocument::from_message(Value::Object(raw), "", OffsetDateTime::UNIX_EPOCH) {
        Ok(doc) => doc.to_json(),
        Err(_) => fallback,
    }
}

pub struct CosmosDeadLetters {
    container: ContainerClient,
    charge: Arc<RequestCharge>,
}

#[async_trait]
impl DeadLetterStore for CosmosDeadLetters {
    async fn park(&self, letter: DeadLetter) -> Result<(), PublishError> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        let body = json!({
            "id": id,
            "messageId": letter.message_id,
            "reason": letter.reason,
            "source": letter.source,
            "deliveryCount": letter.delivery_count,
            "enqueuedAt": letter.enqueued_at.format(&Rfc3339).unwrap_or_default(),
            "deadLetteredAt": now,
            "body": String::from_utf8_lossy(&letter.body),
        });
        match self.container.create_item(id.clone(), id.as_str(), body.clone(), None).await {
            Ok(response) => {
                self.charge.record("park", response.headers().request_charge().map(|c| c.value()));
                Ok(())
            }
            Err(e) => Err(PublishError::Unavailable {
                reason: e.to_string(),
                retry_after: throttle_wait(&e).unwrap_or(RETRY_AFTER),
            }),
        }
    }
}

/// The operator's access to the `deadletters` container (the `deadletters` command). A replay
/// is published to the topic through `publisher` (Service Bus) FIRST and the document deleted
/// after: a crash in between leaves the message in the topic and its dead letter in place (a
/// second replay would publish it twice, which the idempotent consumer absorbs), never neither.
pub struct CosmosDeadLetterAdmin {
    letters: Arc<CosmosDeadLetters>,
    /// `None` when the command does not replay (no Service Bus settings needed).
    publisher: Option<Arc<dyn Publisher>>,
}

/// What a listing reads of each dead letter: never its body.
const LIST_QUERY: &str = "SELECT c.id, c.messageId, c.reason, c.source, c.deliveryCount, c.enqueuedAt, \
                          c.deadLetteredAt, c._ts FROM c";

impl CosmosDeadLetterAdmin {
    pub fn new(letters: Arc<CosmosDeadLetters>, publisher: Option<Arc<dyn Publisher>>) -> Self {
        Self { letters, publisher }
    }
}

/// A dead-letter document (or a listing's projection of one) as the operator sees it.
fn parked_message(doc: &Map<String, Value>, with_body: bool) -> ParkedMessage {
    let text = |key: &str| doc.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    let time = |key: &str| {
        doc.get(key).and_then(Value::as_str).and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
    };
    let stamped =
        doc.get("_ts").and_then(Value::as_i64).and_then(|ts| OffsetDateTime::from_unix_timestamp(ts).ok());
    let body = with_body.then(|| match doc.get("body") {
        Some(Value::String(body)) => body.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
        None => Vec::new(),
    });
    ParkedMessage {
        id: text("id"),
        message_id: text("messageId"),
        parked_at: time("deadLetteredAt").or(stamped),
        enqueued_at: time("enqueuedAt"),
        delivery_count: doc.get("deliveryCount").and_then(Value::as_u64).unwrap_or(0).min(u32::MAX as u64)
            as u32,
        source: text("source"),
        reason: text("reason"),
        body,
    }
}

#[async_trait]
impl DeadLetterAdmin for CosmosDeadLetterAdmin {
    /// A cross-partition query of the listed fields (bodies stay in Cosmos DB), sorted here:
    /// dead letters are few, and a cross-partition ORDER BY would need a composite of pages.
    async fn list(&self, limit: Option<usize>) -> anyhow::Result<(u64, Vec<ParkedMessage>)> {
        let pages = self
            .letters
            .container
            .query_items::<Map<String, Value>>(LIST_QUERY, FeedScope::full_container(), None)
            .await
            .map_err(|e| anyhow::anyhow!("cannot query the dead-letter container: {e}"))?;
        let mut pages = pages.into_pages();
        let mut letters = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| anyhow::anyhow!("cannot query the dead-letter container: {e}"))?;
            letters.extend(page.into_items().iter().map(|doc| parked_message(doc, false)));
        }
        letters.sort_by(|a, b| (a.parked_at, &a.id).cmp(&(b.parked_at, &b.id)));
        let total = letters.len() as u64;
        if let Some(limit) = limit {
            letters.truncate(limit);
        }
        Ok((total, letters))
    }

    async fn get(&self, id: &str) -> anyhow::Result<Option<ParkedMessage>> {
        match self.letters.container.read_item(id.to_owned(), id, None).await {
            Ok(response) => {
                let doc: Map<String, Value> = response
                    .into_model()
                    .map_err(|e| anyhow::anyhow!("cannot read dead letter {id}: {e}"))?;
                Ok(Some(parked_message(&doc, true)))
            }
            Err(e) if e.status().is_not_found() => Ok(None),
            Err(e) => Err(anyhow::anyhow!("cannot read dead letter {id}: {e}")),
        }
    }

    async fn replay(&self, id: &str, replay: Replay) -> anyhow::Result<Replayed> {
        let publisher = self.publisher.as_ref().context(
            "replaying needs the Service Bus settings (SERVICEBUS_CONNECTION_STRING, SERVICEBUS_TOPIC)",
        )?;
        let message_id = replay.message_id.clone();
        let message = OutgoingMessage {
            message_id: replay.message_id,
            correlation_id: replay.correlation_id,
            body: String::from_utf8_lossy(&replay.body).into_owned(),
            checked: None,
        };
        publisher.publish(vec![message]).await.map_err(|e| {
            anyhow::anyhow!("cannot publish dead letter {id} to the topic (nothing was changed): {e}")
        })?;
        match self.delete(id).await {
            Ok(true) => Ok(Replayed::Done),
            Ok(false) => Ok(Replayed::DoneButAlreadyGone),
            Err(e) => Err(e.context(format!(
                "dead letter {id} was published as message {message_id} but is still parked: \
                 remove it with `deadletters purge {id}` (replaying it again would publish it twice)"
            ))),
        }
    }

    async fn delete(&self, id: &str) -> anyhow::Result<bool> {
        match self.letters.container.delete_item(id.to_owned(), id, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.status().is_not_found() => Ok(false),
            Err(e) => Err(anyhow::anyhow!("cannot delete dead letter {id}: {e}")),
        }
    }
}

/// The `idempotency` container: one document per Idempotency-Key, its id a digest of the key
/// (keys may hold characters Cosmos ids cannot), with the request's digest, whether its
/// messages are all published, and a `ttl` of [`IDEMPOTENCY_WINDOW`] (the container has
/// per-item TTL on). A claim is ONE create in the common case; a document older than the
/// window is expired even where the server has not removed it yet.
pub struct CosmosKeyLedger {
    container: ContainerClient,
    charge: Arc<RequestCharge>,
}

const KEY_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5d1c_9a7e_2b4f_4c81_9e3a_7f60_b2d4_c8e1);

impl CosmosKeyLedger {
    fn doc_id(key: &RequestKey) -> String {
        uuid::Uuid::new_v5(&KEY_NAMESPACE, key.key.as_bytes()).to_string()
    }

    fn doc(id: &str, key: &RequestKey, published: bool, created: i64) -> Value {
        json!({
            "id": id,
            "requestHash": key.request_hash,
            "published": published,
            "createdAt": created,
            "ttl": IDEMPOTENCY_WINDOW.as_secs(),
        })
    }

    fn record(&self, charge: Option<f64>) {
        self.charge.record("idempotency", charge);
    }
}

fn ledger_unavailable(e: CosmosError) -> PublishError {
    PublishError::Unavailable { reason: e.to_string(), retry_after: throttle_wait(&e).unwrap_or(RETRY_AFTER) }
}

#[async_trait]
impl KeyLedger for CosmosKeyLedger {
    async fn claim(&self, key: &RequestKey) -> Result<Claim, PublishError> {
        let id = Self::doc_id(key);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        for _ in 0..MAX_CONFLICT_ROUNDS {
            let doc = Self::doc(&id, key, false, now);
            match self.container.create_item(id.clone(), id.as_str(), doc.clone(), None).await {
                Ok(response) => {
                    self.record(response.headers().request_charge().map(|c| c.value()));
                    return Ok(Claim::New);
                }
                Err(e) if e.status().is_conflict() => {}
                Err(e) => return Err(ledger_unavailable(e)),
            }
            let response = match self.container.read_item(id.clone(), id.as_str(), None).await {
                Ok(response) => response,
                Err(e) if e.status().is_not_found() => continue, // expired in between
                Err(e) => return Err(ledger_unavailable(e)),
            };
            self.record(response.headers().request_charge().map(|c| c.value()));
            let etag = response.headers().etag().map(|e| e.to_string()).unwrap_or_default();
            let held: Map<String, Value> = response.into_model().map_err(ledger_unavailable)?;
            let created = held.get("createdAt").and_then(Value::as_i64).unwrap_or(0);
            if created + IDEMPOTENCY_WINDOW.as_secs() as i64 >= now {
                let same = held.get("requestHash").and_then(Value::as_str) == Some(key.request_hash.as_str());
                let published = held.get("published").and_then(Value::as_bool) == Some(true);
                return Ok(match (same, published) {
                    (false, _) => Claim::Conflict,
                    (true, true) => Claim::Published,
                    (true, false) => Claim::Pending,
                });
            }
            // Expired but not yet removed: take it over, unless someone else just did.
            let options = ItemWriteOptions::default().with_precondition(Precondition::IfMatch(etag.into()));
            match self.container.replace_item(id.clone(), id.as_str(), doc, Some(options)).await {
                Ok(response) => {
                    self.record(response.headers().request_charge().map(|c| c.value()));
                    return Ok(Claim::New);
                }
                Err(e) if e.status().is_precondition_failed() || e.status().is_not_found() => continue,
                Err(e) => return Err(ledger_unavailable(e)),
            }
        }
        Err(PublishError::Unavailable {
            reason: format!("an idempotency key kept changing during {MAX_CONFLICT_ROUNDS} claims"),
            retry_after: RETRY_AFTER,
        })
    }

    async fn mark_published(&self, key: &RequestKey) -> Result<(), PublishError> {
        let id = Self::doc_id(key);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let doc = Self::doc(&id, key, true, now);
        match self.container.upsert_item(id.clone(), id.as_str(), doc, None).await {
            Ok(response) => {
                self.record(response.headers().request_charge().map(|c| c.value()));
                Ok(())
            }
            Err(e) => Err(ledger_unavailable(e)),
        }
    }
}

/// The server's `x-ms-retry-after-ms`.
fn throttle_wait(e: &CosmosError) -> Option<Duration> {
    e.response().and_then(|r| r.headers().retry_after_ms).map(Duration::from_millis)
}

fn unavailable(e: CosmosError) -> StoreError {
    let retry_after = throttle_wait(&e).unwrap_or(RETRY_AFTER).max(Duration::from_millis(1));
    StoreError::Unavailable { reason: e.to_string(), retry_after }
}
