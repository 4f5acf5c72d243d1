//! The `import` command, the first real client, against a freshly started service.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{blocking_client, wait_for_user, TestServer, BIN};

fn read_ndjson(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn importing_all_2000_users_stores_every_one_with_identical_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let accepted_path = dir.path().join("accepted.ndjson");
    let output = Command::new(BIN)
        .args(["import", "--url", &server.base, "--concurrency", "16", "--accepted"])
        .arg(&accepted_path)
        .arg(support::data_file("users.ndjson"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "import failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("2000 records, 2000 accepted, 0 rejected, 0 failed"), "{stdout}");

    let users = support::users();
    assert_eq!(users.len(), 2000);
    // Every accepted line reports its id; the ones without an id got a fresh UUID.
    let ids: HashMap<u64, String> = read_ndjson(&accepted_path)
        .into_iter()
        .map(|v| (v["line"].as_u64().unwrap(), v["id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(ids.len(), 2000);
    let mut assigned = 0;
    let client = blocking_client();
    for (i, user) in users.iter().enumerate() {
        let id = &ids[&(i as u64 + 1)];
        match user.get("id").and_then(Value::as_str) {
            Some(given) => assert_eq!(id, given, "line {}", i + 1),
            None => {
                assert!(uuid::Uuid::parse_str(id).is_ok(), "line {}: {id}", i + 1);
                assigned += 1;
            }
        }
        let mut doc = wait_for_user(&client, &server, id, Duration::from_secs(30));
        let doc = doc.as_object_mut().unwrap();
        assert!(doc.remove("ingestedAt").is_some_and(|t| t.is_string()), "line {}", i + 1);
        let mut expected = user.as_object().unwrap().clone();
        expected.insert("id".into(), Value::String(id.clone()));
        assert_eq!(doc, &expected, "line {} read back differently", i + 1);
    }
    assert_eq!(assigned, 424);
    assert_eq!(support::stored(server.data_dir.as_path()), 2000);
}

#[test]
fn rejected_records_are_counted_by_reason_written_out_and_fail_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let input = dir.path().join("mixed.ndjson");
    std::fs::write(
        &input,
        [
            r#"{"id":"ok-1","name":"Ok One","email":"one@example.com"}"#,
            r#"{"id":"bad-1","name":"Bad","email":"bad@"}"#,
            "",
            r#"{"id":"bad-2","name":"Bad","email":"bad2@"}"#,
            r#"{"id":"bad-3","name":"Bad","email":"b3@example.com","age":-4}"#,
            "not json at all",
            r#"{"id":"ok-2","name":"Ok Two","email":"two@example.com"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let output = Command::new(BIN)
        .args(["import", "--url", &server.base])
        .arg(&input)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("6 records, 2 accepted, 4 rejected"), "{stdout}");
    assert!(stdout.contains("      2  400 Invalid user record: email"), "{stdout}");
    assert!(stdout.contains("      1  400 Invalid user record: age"), "{stdout}");
    assert!(stdout.contains("      1  400 Malformed JSON"), "{stdout}");

    let rejects = read_ndjson(&dir.path().join("mixed.ndjson.rejected.ndjson"));
    let mut lines: Vec<u64> = rejects.iter().map(|r| r["line"].as_u64().unwrap()).collect();
    lines.sort();
    assert_eq!(lines, [2, 4, 5, 6]);
    let bad1 = rejects.iter().find(|r| r["line"] == 2).unwrap();
    assert_eq!(bad1["problem"]["errors"][0]["field"], "email");
    assert_eq!(bad1["record"], r#"{"id":"bad-1","name":"Bad","email":"bad@"}"#);

    let client = blocking_client();
    wait_for_user(&client, &server, "ok-1", Duration::from_secs(10));
    wait_for_user(&client, &server, "ok-2", Duration::from_secs(10));
}

#[test]
fn a_json_array_is_imported_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let input = dir.path().join("array.json");
    let users: Vec<Value> = support::users().into_iter().take(50).collect();
    std::fs::write(&input, serde_json::to_string_pretty(&users).unwrap()).unwrap();
    let output = Command::new(BIN)
        .args(["import", "--url", &server.base])
        .arg(&input)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("50 records, 50 accepted"), "{stdout}");
    assert_eq!(read_ndjson(&dir.path().join("array.json.accepted.ndjson")).len(), 50);
}

#[test]
fn an_unreachable_service_fails_fast_with_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["import", "--url", "http://127.0.0.1:9"])
        .arg(support::data_file("users.ndjson"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("http://127.0.0.1:9"));
}
