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
