//! `ServiceBusPublisher` against a local endpoint that plays Service Bus's REST send API
//! and checks the shared access signature (see `support/servicebus.rs`).

mod support;

use std::time::{Duration, Instant};

use data_ingestion_api::broker::{OutgoingMessage, PublishError, Publisher, ServiceBusPublisher};
use data_ingestion_api::config::{Secret, ServiceBusConfig, ServiceBusConnection};
use support::servicebus::{FakeServiceBus, Mode, KEY, KEY_NAME, NAMESPACE};

fn publisher(fake: &FakeServiceBus, key: &str, timeout_ms: u64) -> ServiceBusPublisher {
    let config = ServiceBusConfig {
        namespace: NAMESPACE.into(),
        topic: "users".into(),
        key_name: KEY_NAME.into(),
        key: Secret::new(key),
        endpoint: Some(fake.endpoint.parse().unwrap()),
        timeout: Duration::from_millis(timeout_ms),
        max_attempts: 3,
    };
    ServiceBusPublisher::new(&config).unwrap()
}

fn message(id: &str) -> OutgoingMessage {
    OutgoingMessage {
        message_id: id.into(),
        correlation_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        body: r#"{"id":"u-1","name":"A","email":"a@example.com","ingestedAt":"2026-01-01T00:00:00Z"}"#.into(),
        checked: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn a_message_is_sent_signed_with_its_broker_properties_and_body() {
    let fake = FakeServiceBus::start("users");
    let rt = runtime();
    rt.block_on(publisher(&fake, KEY, 2000).publish(vec![message("m-1"), message("m-2")])).unwrap();
    assert!(fake.rejections().is_empty(), "{:?}", fake.rejections());
    let captured = fake.captured();
    assert_eq!(captured.len(), 2);
    let first = &captured[0];
    assert_eq!(first.body, message("m-1").body);
    assert_eq!(first.broker_properties["MessageId"], "m-1");
    assert_eq!(first.broker_properties["CorrelationId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.custom_properties.get("schemaversion").map(String::as_str), Some("1"));
    assert_eq!(captured[1].broker_properties["MessageId"], "m-2");
}

#[test]
fn the_connection_string_of_the_fake_parses_like_a_real_one() {
    let fake = FakeServiceBus::start("users");
    let parsed = ServiceBusConnection::parse(&fake.connection_string()).unwrap();
    assert_eq!(
        (parsed.namespace.as_str(), parsed.key_name.as_str(), parsed.key.as_str()),
        (NAMESPACE, KEY_NAME, KEY)
    );
}

#[test]
fn a_wrong_key_is_refused_at_once_without_retries() {
    let fake = FakeServiceBus::start("users");
    let err =
        runtime().block_on(publisher(&fake, "d3Jvbmcta2V5", 2000).publish(vec![message("m-1")])).unwrap_err();
    assert!(matches!(err, PublishError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(fake.attempts(), 1, "a 401 is not worth retrying");
    assert!(fake.captured().is_empty());
}

#[test]
fn a_throttled_or_failing_topic_is_retried_then_reported_with_its_retry_after() {
    for status in [429, 503] {
        let fake = FakeServiceBus::start("users");
        fake.set_mode(Mode::Fail { status, retry_after: Some(1) });
        let started = Instant::now();
        let err = runtime().block_on(publisher(&fake, KEY, 2000).publish(vec![message("m-1")])).unwrap_err();
        assert_eq!(fake.attempts(), 3, "{status}: SERVICEBUS_MAX_ATTEMPTS sends");
        assert_eq!(
            err.retry_after(),
            Duration::from_secs(1),
            "{status}: the topic's Retry-After is passed on"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{status}: Retry-After was not honoured between attempts"
        );
    }
}

#[test]
fn a_transient_failure_followed_by_success_publishes_once() {
    let fake = FakeServiceBus::start("users");
    fake.set_mode(Mode::FailTimes { n: 2, status: 500, retry_after: None });
    runtime().block_on(publisher(&fake, KEY, 2000).publish(vec![message("m-1")])).unwrap();
    assert_eq!(fake.attempts(), 3);
    assert_eq!(fake.captured().len(), 1);
}

#[test]
fn a_hanging_topic_times_out_within_the_bound() {
    let fake = FakeServiceBus::start("users");
    fake.set_mode(Mode::Hang);
    let started = Instant::now();
    let err = runtime().block_on(publisher(&fake, KEY, 300).publish(vec![message("m-1")])).unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.to_string().contains("no answer within 300 ms"), "{err}");
    assert!(elapsed < Duration::from_secs(3), "3 attempts of 300 ms plus backoff took {elapsed:?}");
}
