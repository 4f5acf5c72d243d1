//! `data-ingestion-api deadletters list|show|replay|purge` against the real binary: messages
//! parked by the running service (through `/ingest-consume` and by the worker), listed without
//! their bodies, shown whole, replayed repaired or as they are, and purged; on the embedded
//! queue and on Cosmos DB (`@vercel/cosmosdb-server`) with replays going to Service Bus (the
//! local endpoint that plays it).

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use data_ingestion_api::broker::{DeadLetter, DeadLetterStore, OutgoingMessage, Publisher, SqliteQueue};
use serde_json::{json, Value};
use support::cosmos::CosmosServer;
use support::servicebus::FakeServiceBus;
use support::{blocking_client, dead_letters, eventually, wait_for_user, TestServer};
use support::{describe, run_cli as run, text};

/// Runs a command that must exit with `code`, and returns its output.
fn expect(code: i32, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    let output = run(args, env, cwd);
    assert_eq!(output.status.code(), Some(code), "{args:?}: {}", describe(&output));
    output
}

/// The Functions host's invocation for a message whose body is `body` (as the host hands a
/// string body over: a JSON string).
fn invocation(message_id: &str, body: &str) -> Value {
    json!({
        "Data": {"message": body},
        "Metadata": {
            "MessageId": message_id, "DeliveryCount": "1", "EnqueuedTimeUtc": "2024-05-01T10:00:00Z",
            "SequenceNumber": "7", "ContentType": "application/json", "sys": {"MethodName": "ingest-consume"}
        }
    })
}

fn invoke(client: &reqwest::blocking::Client, server: &TestServer, payload: &Value) {
    let r = client
        .post(server.url("/ingest-consume"))
        .header("content-type", "application/json")
        .body(payload.to_string())
        .send()
        .unwrap();
    let status = r.status();
    let answer: Value = r.json().unwrap_or(Value::Null);
    assert_eq!(status, 200, "{answer}");
    assert!(answer["Logs"][0].as_str().unwrap_or_default().contains("dead-lettered"), "{answer}");
}

/// `list --json`: one object per dead letter.
fn listed(env: &[(&str, &str)], cwd: &Path) -> Vec<Value> {
    let output = expect(0, &["deadletters", "list", "--json"], env, cwd);
    text(&output.stdout).lines().map(|l| serde_json::from_str(l).expect("an NDJSON line")).collect()
}

/// The dead-letter id of the parked message `message_id`.
fn id_of(letters: &[Value], message_id: &str) -> String {
    letters
        .iter()
        .find(|l| l["messageId"] == message_id)
        .unwrap_or_else(|| panic!("{message_id} is not listed: {letters:?}"))["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

const EMAILS: [&str; 3] = ["hidden.one@example.com", "hidden.two@example.com", "hidden.three@example.com"];

#[test]
fn embedded_dead_letters_are_listed_without_bodies_shown_whole_replayed_repaired_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let client = blocking_client();
    let data_dir = server.data_dir.to_str().unwrap().to_owned();
    let env = [("DATA_DIR", data_dir.as_str())];
    let cwd = dir.path();

    let invalid = json!({"id": "dl-1", "name": "", "email": EMAILS[0]});
    invoke(&client, &server, &invocation("m-invalid", &invalid.to_string()));
    invoke(&client, &server, &invocation("m-notjson", &format!("not json at all, {}", EMAILS[1])));
    let unknown = json!({"id": "dl-3", "name": "Unknown Field", "email": EMAILS[2], "phone": "555-0100"});
    invoke(&client, &server, &invocation("m-unknown", &unknown.to_string()));
    assert_eq!(dead_letters(&server.data_dir).len(), 3);

    // The table: one line each with its message id, never a body; the total on stderr.
    let table = expect(0, &["deadletters", "list"], &env, cwd);
    let stdout = text(&table.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three rows: {}", describe(&table));
    assert!(lines[0].starts_with("ID") && lines[0].contains("REASON"), "{stdout}");
    for (line, message_id) in lines[1..].iter().zip(["m-invalid", "m-notjson", "m-unknown"]) {
        assert!(line.contains(message_id) && line.contains("ingest-consume"), "{stdout}");
    }
    assert!(lines[1].contains("invalid user record: name"), "{stdout}");
    // An unknown key is the producer's choice (it could be an address): not shown in the list.
    assert!(lines[3].contains("(an unknown field)") && !lines[3].contains("phone"), "{stdout}");
    assert!(text(&table.stderr).contains("3 dead letters"), "{}", describe(&table));
    let all_output =
        format!("{}{}", describe(&table), describe(&run(&["deadletters", "list", "--json"], &env, cwd)));
    for email in EMAILS {
        assert!(!all_output.contains(email), "`list` printed a body: {all_output}");
    }

    // NDJSON with the full reasons, and --limit.
    let letters = listed(&env, cwd);
    assert_eq!(letters.len(), 3);
    for letter in &letters {
        let keys: Vec<&str> = letter.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(!keys.contains(&"body"), "{letter}");
        assert_eq!(letter["deliveryCount"], 1);
        assert_eq!(letter["enqueuedAt"], "2024-05-01T10:00:00Z");
        assert!(letter["parkedAt"].is_string(), "{letter}");
    }
    assert!(letters[0]["reason"].as_str().unwrap().contains("name"), "{letters:?}");
    let limited = expect(0, &["deadletters", "list", "--limit", "1"], &env, cwd);
    assert_eq!(text(&limited.stdout).lines().count(), 2, "{}", describe(&limited));
    assert!(text(&limited.stderr).contains("1 of 3 dead letters"), "{}", describe(&limited));
    let (invalid_id, notjson_id, unknown_id) =
        (id_of(&letters, "m-invalid"), id_of(&letters, "m-notjson"), id_of(&letters, "m-unknown"));

    // `show` prints one whole, its body as JSON; `--body` the body alone.
    let shown = expect(0, &["deadletters", "show", &invalid_id], &env, cwd);
    let doc: Value = serde_json::from_slice(&shown.stdout).expect("show prints JSON");
    assert_eq!(doc["id"], invalid_id.as_str());
    assert_eq!(doc["messageId"], "m-invalid");
    assert_eq!(doc["source"], "ingest-consume");
    assert_eq!(doc["bodyFormat"], "json");
    assert_eq!(doc["body"], invalid);
    assert!(text(&shown.stdout).contains(&format!("\n    \"email\": \"{}\"", EMAILS[0])), "indented");
    let body = expect(0, &["deadletters", "show", &invalid_id, "--body"], &env, cwd);
    assert_eq!(serde_json::from_slice::<Value>(&body.stdout).unwrap(), invalid);
    let text_body = expect(0, &["deadletters", "show", &notjson_id], &env, cwd);
    let doc: Value = serde_json::from_slice(&text_body.stdout).unwrap();
    assert_eq!(
        (doc["bodyFormat"].as_str(), doc["body"].as_str()),
        (Some("text"), Some(&*format!("not json at all, {}", EMAILS[1])))
    );
    expect(1, &["deadletters", "show", "999999"], &env, cwd);
    expect(1, &["deadletters", "show", "not-an-id"], &env, cwd);

    // Replaying a body that is still invalid is refused and changes nothing.
    let refused = expect(2, &["deadletters", "replay", &invalid_id], &env, cwd);
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("would be parked again") && stderr.contains("--force"), "{stderr}");
    assert!(stderr.contains("name"), "the reason is given: {stderr}");
    assert_eq!(dead_letters(&server.data_dir).len(), 3);
    assert_eq!(support::queued(&server.data_dir), 0);
    let edit_two =
        expect(2, &["deadletters", "replay", &invalid_id, &unknown_id, "--edit", "x.json"], &env, cwd);
    assert!(text(&edit_two.stderr).contains("exactly one ID"), "{}", describe(&edit_two));

    // Repaired, it is stored, readable, and no longer parked.
    let fixed = json!({"id": "dl-1", "name": "Fixed Person", "email": EMAILS[0]});
    std::fs::write(cwd.join("fixed.json"), format!("{}\n", serde_json::to_string_pretty(&fixed).unwrap()))
        .unwrap();
    let replayed = expect(0, &["deadletters", "replay", &invalid_id, "--edit", "fixed.json"], &env, cwd);
    assert!(
        text(&replayed.stdout).contains(&format!("replayed dead letter {invalid_id} as message ")),
        "{}",
        describe(&replayed)
    );
    assert!(text(&replayed.stdout).contains("(user dl-1)"), "{}", describe(&replayed));
    let user = wait_for_user(&client, &server, "dl-1", Duration::from_secs(10));
    assert_eq!((user["name"].as_str(), user["email"].as_str()), (Some("Fixed Person"), Some(EMAILS[0])));
    let letters = listed(&env, cwd);
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters.iter().all(|l| l["id"] != invalid_id.as_str()), "{letters:?}");
    expect(1, &["deadletters", "replay", &invalid_id], &env, cwd);

    // --force replays an invalid body as it is: a new message, which the worker parks again.
    let forced = expect(0, &["deadletters", "replay", "--force", &notjson_id], &env, cwd);
    assert!(text(&forced.stdout).contains("it will be parked again"), "{}", describe(&forced));
    eventually("the forced replay is parked again by the worker", Duration::from_secs(10), || {
        dead_letters(&server.data_dir).iter().any(|l| l.3 == "worker")
    });
    let letters = listed(&env, cwd);
    assert_eq!(letters.len(), 2, "{letters:?}");
    let reparked = letters.iter().find(|l| l["source"] == "worker").unwrap();
    assert_ne!(reparked["messageId"], "m-notjson", "a replay is a NEW message");
    assert!(reparked["reason"].as_str().unwrap().contains("not JSON"), "{reparked}");
    let reparked_id = reparked["id"].as_str().unwrap().to_owned();

    // Purge: a missing id exits 1 and the others are purged; --all needs --yes.
    let purged = expect(1, &["deadletters", "purge", "999999", &unknown_id], &env, cwd);
    assert!(
        text(&purged.stdout).contains(&format!("purged dead letter {unknown_id}")),
        "{}",
        describe(&purged)
    );
    assert!(text(&purged.stderr).contains("999999"), "{}", describe(&purged));
    assert_eq!(listed(&env, cwd).len(), 1);
    let unconfirmed = expect(2, &["deadletters", "purge", "--all"], &env, cwd);
    assert!(text(&unconfirmed.stderr).contains("--yes"), "{}", describe(&unconfirmed));
    assert_eq!(listed(&env, cwd).len(), 1, "--all without --yes deleted something");
    let all = expect(0, &["deadletters", "purge", "--all", "--yes"], &env, cwd);
    assert!(text(&all.stdout).contains(&format!("purged dead letter {reparked_id}")), "{}", describe(&all));
    assert!(dead_letters(&server.data_dir).is_empty());
    let empty = expect(0, &["deadletters", "list", "--data-dir", &data_dir], &[], cwd);
    assert!(
        empty.stdout.is_empty() && text(&empty.stderr).contains("no dead letters"),
        "{}",
        describe(&empty)
    );
}

#[test]
fn a_parked_valid_record_is_replayed_as_it_is_and_all_skips_the_invalid_ones_only_when_told() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start(&data, &[]);
    let client = blocking_client();
    let env = [("DATA_DIR", data.to_str().unwrap())];
    let cwd = dir.path();

    // A valid record parked after its deliveries ran out (as the consumer parks one whose
    // last delivery failed), and another producer's garbage, which the worker parks.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let queue = SqliteQueue::open(&data.join("queue.db")).unwrap();
        queue
            .park(DeadLetter {
                message_id: "outage-1".into(),
                body: br#"{"id":"outage-1","name":"Tess","email":"tess@example.com","ingestedAt":"2024-05-01T10:00:00Z"}"#
                    .to_vec(),
                enqueued_at: time::OffsetDateTime::now_utc(),
                delivery_count: 10,
                reason: "max delivery count 10 reached; last error: the store is unavailable".into(),
                source: "worker",
            })
            .await
            .unwrap();
        let garbage = OutgoingMessage {
            message_id: "garbage-1".into(),
            correlation_id: None,
            body: r#"{"name": 42}"#.into(),
            checked: None,
        };
        queue.publish(vec![garbage]).await.unwrap();
    });
    eventually("the worker parks the garbage", Duration::from_secs(10), || dead_letters(&data).len() == 2);
    let letters = listed(&env, cwd);
    assert!(letters.iter().all(|l| l["source"] == "worker"), "{letters:?}");
    let outage = letters.iter().find(|l| l["messageId"] == "outage-1").unwrap();
    assert!(outage["reason"].as_str().unwrap().contains("max delivery count 10"), "{outage}");
    assert_eq!(outage["deliveryCount"], 10);

    // --all with one invalid body replays nothing, unless told to skip it.
    let refused = expect(2, &["deadletters", "replay", "--all"], &env, cwd);
    assert!(text(&refused.stderr).contains("--skip-invalid"), "{}", describe(&refused));
    assert_eq!(dead_letters(&data).len(), 2);
    let replayed = expect(0, &["deadletters", "replay", "--all", "--skip-invalid"], &env, cwd);
    assert!(text(&replayed.stdout).contains("(user outage-1)"), "{}", describe(&replayed));
    assert!(text(&replayed.stderr).contains("replayed 1 dead letter"), "{}", describe(&replayed));
    let user = wait_for_user(&client, &server, "outage-1", Duration::from_secs(10));
    assert_eq!(user["name"], "Tess");
    let left = listed(&env, cwd);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["messageId"], "garbage-1");
}

#[test]
fn the_command_explains_itself_and_exits_2_on_a_broken_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    for (args, mentions) in [
        (
            vec!["deadletters", "--help"],
            vec!["list", "show", "replay", "purge", "DATA_DIR", "COSMOS_ENDPOINT", "Exit status"],
        ),
        (vec!["deadletters", "list", "--help"], vec!["--limit", "--json", "--data-dir", "Examples"]),
        (vec!["deadletters", "show", "--help"], vec!["<ID>", "--body", "Examples"]),
        (
            vec!["deadletters", "replay", "--help"],
            vec![
                "--all",
                "--edit",
                "--force",
                "--skip-invalid",
                "ONE",
                "SERVICEBUS_CONNECTION_STRING",
                "duplicate",
                "never lost",
            ],
        ),
        (vec!["deadletters", "purge", "--help"], vec!["--all", "--yes", "Examples"]),
    ] {
        let output = expect(0, &args, &[], cwd);
        let help = text(&output.stdout);
        for mention in mentions {
            assert!(help.contains(mention), "`{}` never mentions {mention}:\n{help}", args.join(" "));
        }
    }
    let top = text(&expect(0, &["--help"], &[], cwd).stdout);
    assert!(top.contains("\n  deadletters "), "{top}");

    // No queue, a bad backend, Azure without Cosmos: 2, naming what is wrong, creating nothing.
    let nowhere = cwd.join("no-such-dir");
    let broken = expect(2, &["deadletters", "list", "--data-dir", nowhere.to_str().unwrap()], &[], cwd);
    assert!(text(&broken.stderr).contains("no-such-dir"), "{}", describe(&broken));
    assert!(!nowhere.exists(), "the command created the data directory");
    let broken =
        expect(2, &["deadletters", "purge", "--all", "--yes"], &[("INGEST_BACKEND", "postgres")], cwd);
    assert!(text(&broken.stderr).contains("INGEST_BACKEND"), "{}", describe(&broken));
    let broken = expect(2, &["deadletters", "show", "x"], &[("INGEST_BACKEND", "azure")], cwd);
    assert!(text(&broken.stderr).contains("COSMOS_ENDPOINT"), "{}", describe(&broken));
    assert_eq!(std::fs::read_dir(cwd).unwrap().count(), 0, "a failed command left files behind");
    expect(2, &["deadletters", "replay"], &[], cwd);
    expect(2, &["deadletters", "replay", "1", "--all"], &[], cwd);
}

#[test]
fn azure_dead_letters_are_listed_shown_replayed_through_service_bus_and_purged() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let service_env = cosmos.azure_env(&servicebus);
    let vars: Vec<(&str, &str)> = service_env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = cosmos.start_service(&servicebus, &cwd.join("data"), &[]);
    let client = blocking_client();
    // The operator's shell: Cosmos settings to read, the Service Bus ones only to replay.
    let cosmos_env: Vec<(&str, &str)> =
        vars.iter().copied().filter(|(k, _)| k.starts_with("COSMOS_") || *k == "INGEST_BACKEND").collect();
    let replay_env: Vec<(&str, &str)> =
        vars.iter().copied().filter(|(k, _)| *k != "COSMOS_CREATE_IF_MISSING").collect();

    let poison = json!({"id": "az-dl-1", "name": "", "email": "hidden.azure@example.com"});
    invoke(&client, &server, &invocation("az-poison-1", &poison.to_string()));

    let table = expect(0, &["deadletters", "list"], &cosmos_env, cwd);
    assert!(text(&table.stdout).contains("az-poison-1"), "{}", describe(&table));
    assert!(text(&table.stderr).contains("1 dead letter"), "{}", describe(&table));
    let letters = listed(&cosmos_env, cwd);
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0]["reason"].as_str().unwrap().contains("name"), "{letters:?}");
    assert_eq!(letters[0]["source"], "ingest-consume");
    let all_output = format!("{}{letters:?}", describe(&table));
    assert!(!all_output.contains("hidden.azure@example.com"), "`list` printed a body: {all_output}");
    let id = id_of(&letters, "az-poison-1");
    let shown = expect(0, &["deadletters", "show", &id], &cosmos_env, cwd);
    let doc: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(doc["body"], poison, "{}", describe(&shown));
    expect(1, &["deadletters", "show", "00000000-0000-4000-8000-000000000000"], &cosmos_env, cwd);

    // Replaying needs the Service Bus settings, and a valid body (or --force).
    let no_bus = expect(2, &["deadletters", "replay", &id], &cosmos_env, cwd);
    assert!(text(&no_bus.stderr).contains("SERVICEBUS_CONNECTION_STRING"), "{}", describe(&no_bus));
    let refused = expect(2, &["deadletters", "replay", &id], &replay_env, cwd);
    assert!(text(&refused.stderr).contains("--force"), "{}", describe(&refused));
    assert!(servicebus.captured().is_empty(), "a refused replay published");
    assert_eq!(listed(&cosmos_env, cwd).len(), 1);

    // Repaired: published to the topic as a new message, then no longer parked.
    let fixed = json!({"id": "az-dl-1", "name": "Repaired In Azure", "email": "hidden.azure@example.com"});
    std::fs::write(cwd.join("fixed.json"), fixed.to_string()).unwrap();
    let replayed = expect(0, &["deadletters", "replay", &id, "--edit", "fixed.json"], &replay_env, cwd);
    assert!(text(&replayed.stdout).contains("(user az-dl-1)"), "{}", describe(&replayed));
    let captured = servicebus.captured();
    assert_eq!(captured.len(), 1, "rejections: {:?}", servicebus.rejections());
    assert_eq!(serde_json::from_str::<Value>(&captured[0].body).unwrap(), fixed);
    let message_id = captured[0].broker_properties["MessageId"].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(message_id).is_ok() && message_id != "az-poison-1", "{message_id}");
    assert!(text(&replayed.stdout).contains(message_id), "{}", describe(&replayed));
    assert_eq!(captured[0].content_type.as_deref(), Some("application/json"));
    assert!(listed(&cosmos_env, cwd).is_empty(), "the replayed dead letter is still parked");

    // The host delivers the replayed message: the user is stored and readable.
    let r = client
        .post(server.url("/ingest-consume"))
        .header("content-type", "application/json")
        .body(FakeServiceBus::host_invocation(&captured[0], 1).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let user = wait_for_user(&client, &server, "az-dl-1", Duration::from_secs(5));
    assert_eq!(user["name"], "Repaired In Azure");

    // Purge by id (a missing one exits 1), then --all --yes.
    invoke(&client, &server, &invocation("az-poison-2", "not json"));
    invoke(&client, &server, &invocation("az-poison-3", "[1, 2]"));
    let letters = listed(&cosmos_env, cwd);
    let second = id_of(&letters, "az-poison-2");
    let purged = expect(1, &["deadletters", "purge", &second, "no-such-letter"], &cosmos_env, cwd);
    assert!(text(&purged.stdout).contains(&format!("purged dead letter {second}")), "{}", describe(&purged));
    assert_eq!(listed(&cosmos_env, cwd).len(), 1);
    expect(2, &["deadletters", "purge", "--all"], &cosmos_env, cwd);
    expect(0, &["deadletters", "purge", "--all", "--yes"], &cosmos_env, cwd);
    assert!(listed(&cosmos_env, cwd).is_empty());
    assert_eq!(servicebus.captured().len(), 1, "only the replay published");
}
