//! `CosmosUserStore` under faults, injected by the Cosmos driver's own `fault_injection`
//! feature in front of a real `@vercel/cosmosdb-server`: throttling with retry-after, 503s
//! and slow answers are deterministic this way.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::http::StatusCode;
use azure_data_cosmos::fault_injection::{
    CustomResponseBuilder, FaultInjectionConditionBuilder, FaultInjectionErrorType, FaultInjectionResult,
    FaultInjectionResultBuilder, FaultInjectionRule, FaultInjectionRuleBuilder, FaultOperationType,
};
use data_ingestion_api::config::{CosmosConfig, Secret};
use data_ingestion_api::domain::{NewUser, UserId};
use data_ingestion_api::store::{CosmosStores, StoreError, UpsertOutcome, UserStore, WriteVersion};
use serde_json::json;
use support::cosmos::{CosmosServer, KEY};

fn config(server: &CosmosServer, timeout_ms: u64) -> CosmosConfig {
    CosmosConfig {
        endpoint: server.endpoint.parse().unwrap(),
        key: Some(Secret::new(KEY)),
        database: "ingestion".into(),
        container: "users".into(),
        dead_letter_container: "deadletters".into(),
        idempotency_container: "idempotency".into(),
        create_if_missing: true,
        timeout: Duration::from_millis(timeout_ms),
    }
}

fn rule(
    id: &str,
    operation: FaultOperationType,
    result: FaultInjectionResult,
    hits: Option<u32>,
) -> Arc<FaultInjectionRule> {
    let condition = FaultInjectionConditionBuilder::new()
        .with_operation_type(operation)
        .with_container_id("users")
        .build();
    let mut builder = FaultInjectionRuleBuilder::new(id, result).with_condition(condition);
    if let Some(n) = hits {
        builder = builder.with_hit_limit(n);
    }
    Arc::new(builder.build())
}

fn throttled(retry_after_ms: u64) -> FaultInjectionResult {
    FaultInjectionResultBuilder::new()
        .with_custom_response(
            CustomResponseBuilder::new(StatusCode::TooManyRequests)
                .with_header("x-ms-retry-after-ms", retry_after_ms.to_string())
                .with_sub_status(3200)
                .with_body(br#"{"code":"TooManyRequests","message":"Request rate is large"}"#.to_vec())
                .build(),
        )
        .build()
}

async fn stores(server: &CosmosServer, timeout_ms: u64, rules: Vec<Arc<FaultInjectionRule>>) -> CosmosStores {
    // Create the database and containers without faults first.
    CosmosStores::connect(&config(server, timeout_ms)).await.unwrap();
    CosmosStores::connect_with(&config(server, timeout_ms), |builder| {
        builder.with_fault_injection_rules(rules).unwrap()
    })
    .await
    .unwrap()
}

fn user(id: &str) -> (data_ingestion_api::domain::UserDocument, WriteVersion) {
    let doc = NewUser::parse(json!({"id": id, "name": "Faulty", "email": "f@example.com"}))
        .unwrap()
        .into_document(time::OffsetDateTime::now_utc());
    (doc, WriteVersion { message_id: format!("m-{id}"), sequence: 1 })
}

#[tokio::test]
async fn throttling_is_waited_out_as_the_server_asks_and_the_write_lands() {
    let server = CosmosServer::start();
    let rule = rule("create-429x3", FaultOperationType::CreateItem, throttled(100), Some(3));
    let stores = stores(&server, 5000, vec![rule.clone()]).await;
    let (doc, version) = user("thr-1");
    let started = Instant::now();
    assert_eq!(stores.users.upsert(&doc, &version).await.unwrap(), UpsertOutcome::Written);
    assert_eq!(rule.hit_count(), 3);
    assert!(started.elapsed() >= Duration::from_millis(300), "the retry-after of 100 ms was not honoured");
    assert!(stores.users.get(&doc.id).await.unwrap().is_some());
}

#[tokio::test]
async fn endless_throttling_gives_up_within_bounds_with_the_servers_retry_after() {
    let server = CosmosServer::start();
    let rule = rule("read-429", FaultOperationType::ReadItem, throttled(250), None);
    let stores = stores(&server, 5000, vec![rule.clone()]).await;
    let started = Instant::now();
    let err = stores.users.get(&UserId::parse("thr-2").unwrap()).await.unwrap_err();
    let StoreError::Unavailable { retry_after, reason } = err;
    assert_eq!(retry_after, Duration::from_millis(250), "{reason}");
    assert!(reason.contains("429"), "{reason}");
    assert_eq!(rule.hit_count(), 6, "one attempt and 5 retries");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_service_unavailable_store_is_reported_as_unavailable() {
    let server = CosmosServer::start();
    let unavailable =
        FaultInjectionResultBuilder::new().with_error(FaultInjectionErrorType::ServiceUnavailable).build();
    let rule = rule("create-503", FaultOperationType::CreateItem, unavailable, None);
    let stores = stores(&server, 5000, vec![rule.clone()]).await;
    let (doc, version) = user("svc-1");
    let err = stores.users.upsert(&doc, &version).await.unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert!(rule.hit_count() >= 1);
}

#[tokio::test]
async fn a_slow_store_times_out_at_the_configured_bound() {
    let server = CosmosServer::start();
    let slow = FaultInjectionResultBuilder::new().with_delay(Duration::from_millis(3000)).build();
    let rule = rule("read-slow", FaultOperationType::ReadItem, slow, None);
    let stores = stores(&server, 1000, vec![rule]).await;
    let started = Instant::now();
    let err = stores.users.get(&UserId::parse("slow-1").unwrap()).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(2500), "COSMOS_TIMEOUT_MS=1000 but the read took {elapsed:?}");
    assert!(err.to_string().contains("408"), "{err}");
}

/// A burst of 2,000 messages against a store that throttles three writes in ten (429 with
/// x-ms-retry-after-ms), consumed 16 at a time through the same `Consumer` the
/// `/ingest-consume` route uses, each failure redelivered as Service Bus would: every
/// message ends stored, as one document, and none runs out of deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_2000_messages_against_a_throttled_store_ends_with_2000_documents() {
    use data_ingestion_api::consume::{Consumer, Delivery, MessageBody, Outcome};
    use futures::StreamExt;

    let server = CosmosServer::start();
    let throttle = |id: &str, operation| {
        let result = FaultInjectionResultBuilder::new()
            .with_custom_response(
                CustomResponseBuilder::new(StatusCode::TooManyRequests)
                    .with_header("x-ms-retry-after-ms", "20")
                    .with_sub_status(3200)
                    .build(),
            )
            .with_probability(0.3)
            .build();
        rule(id, operation, result, None)
    };
    let rules = vec![
        throttle("create-429", FaultOperationType::CreateItem),
        throttle("read-429", FaultOperationType::ReadItem),
    ];
    let stores = stores(&server, 5000, rules.clone()).await;
    let consumer = Consumer::new(stores.users.clone());

    let delivery = |i: usize, count: u32| Delivery {
        message_id: format!("burst-msg-{i}"),
        body: MessageBody::Json(
            json!({"id": format!("burst-{i}"), "name": "Burst", "email": format!("b{i}@example.com")}),
        ),
        enqueued_at: time::OffsetDateTime::now_utc(),
        sequence: i as i64 + 1,
        delivery_count: count,
        correlation_id: None,
        checked: None,
    };
    let outcomes: Vec<(usize, u32)> = futures::stream::iter(0..2000)
        .map(|i| {
            let consumer = consumer.clone();
            async move {
                for count in 1..=10u32 {
                    match consumer.process(&delivery(i, count)).await {
                        Outcome::Stored { .. } => return (i, count),
                        Outcome::Transient(_) => continue,
                        Outcome::Poison { reason } => panic!("burst-{i} parked: {reason}"),
                    }
                }
                (i, u32::MAX)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let exhausted: Vec<usize> = outcomes.iter().filter(|(_, c)| *c == u32::MAX).map(|(i, _)| *i).collect();
    assert!(exhausted.is_empty(), "ran out of deliveries: {exhausted:?}");
    assert!(rules.iter().map(|r| r.hit_count()).sum::<u32>() > 100, "the store was hardly throttled");

    // Read back without faults: 2,000 documents, one per id.
    let clean = CosmosStores::connect(&config(&server, 5000)).await.unwrap();
    for i in 0..2000 {
        let id = UserId::parse(&format!("burst-{i}")).unwrap();
        assert!(clean.users.get(&id).await.unwrap().is_some(), "burst-{i} is missing");
    }
}
