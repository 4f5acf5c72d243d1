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
fn a_line_that_is_an_array_or_breaks_the_batch_is_refused_alone_and_the_rest_is_accepted() {
    // Attributes nested 126 deep: the line parses (serde_json's limit is 128 levels), but
    // inside a batch's array it is one level deeper than the service's parser takes.
    let deep = format!(
        r#"{{"id":"deep","name":"Deep","email":"deep@example.com","attributes":{}1{}}}"#,
        "[".repeat(126),
        "]".repeat(126)
    );
    let lines = [
        r#"{"id":"fine-1","name":"Fine One","email":"fine1@example.com"}"#.to_owned(),
        r#"[{"id":"in-array","name":"In Array","email":"array@example.com"}]"#.to_owned(),
        deep,
        r#"{"id":"fine-2","name":"Fine Two","email":"fine2@example.com"}"#.to_owned(),
    ];
    for batch_size in ["1", "500"] {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start(&dir.path().join("data"), &[]);
        let input = dir.path().join("odd.ndjson");
        std::fs::write(&input, lines.join("\n")).unwrap();
        let started = std::time::Instant::now();
        let output = Command::new(BIN)
            .args(["import", "--url", &server.base, "--batch-size", batch_size])
            .arg(&input)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "batch size {batch_size}: {stdout}");
        assert!(
            stdout.contains("4 records, 2 accepted, 2 rejected, 0 failed"),
            "batch size {batch_size}: {stdout}"
        );
        // Refused at once, not retried as if the service had failed.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "batch size {batch_size}: {:?}",
            started.elapsed()
        );
        let rejects = read_ndjson(&dir.path().join("odd.ndjson.rejected.ndjson"));
        let mut refused: Vec<(u64, u64)> =
            rejects.iter().map(|r| (r["line"].as_u64().unwrap(), r["status"].as_u64().unwrap())).collect();
        refused.sort();
        assert_eq!(refused, [(2, 400), (3, 400)], "batch size {batch_size}: {rejects:?}");
        let client = blocking_client();
        wait_for_user(&client, &server, "fine-1", Duration::from_secs(10));
        wait_for_user(&client, &server, "fine-2", Duration::from_secs(10));
        let status =
            |id: &str| client.get(format!("{}/api/users/{id}", server.base)).send().unwrap().status();
        assert_eq!(
            status("in-array"),
            404,
            "batch size {batch_size}: a record inside an array line was stored"
        );
        assert_eq!(status("deep"), 404, "batch size {batch_size}");
    }
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

#[test]
fn a_url_that_is_not_http_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BIN)
        .args(["import", "--url", "ftp://127.0.0.1:9"])
        .arg(support::data_file("users.ndjson"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ftp://127.0.0.1:9") && stderr.contains("http:// or https://"), "{stderr}");
}

#[test]
fn an_import_whose_output_reader_has_gone_still_imports_and_exits_cleanly() {
    // `import … | head -0`: the reader closes the pipe before the report is written.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let input = dir.path().join("few.ndjson");
    let lines: Vec<String> = support::users().into_iter().take(20).map(|u| u.to_string()).collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let mut child = Command::new(BIN)
        .args(["import", "--quiet", "--url", &server.base])
        .arg(&input)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(!stderr.contains("Broken pipe") && !stderr.contains("panicked"), "{stderr}");
    assert_eq!(read_ndjson(&dir.path().join("few.ndjson.accepted.ndjson")).len(), 20);
}

/// A CSV cell, quoted as RFC 4180 wants.
fn cell(value: &Value) -> String {
    let text = match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!("\"{}\"", text.replace('"', "\"\""))
}

#[test]
fn a_csv_file_is_imported_with_typed_fields() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let users: Vec<Value> = support::users().into_iter().take(200).collect();
    let columns = ["id", "name", "email", "age", "country", "attributes"];
    let mut csv = columns.join(",") + "\n";
    for u in &users {
        csv += &columns.iter().map(|c| cell(&u[*c])).collect::<Vec<_>>().join(",");
        csv += "\r\n";
    }
    let input = dir.path().join("users.csv");
    std::fs::write(&input, csv).unwrap();
    let accepted = dir.path().join("ids.ndjson");
    let output = Command::new(BIN)
        .args(["import", "--url", &server.base, "--accepted"])
        .arg(&accepted)
        .arg(&input)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("200 records, 200 accepted, 0 rejected"), "{stdout}");
    // CSV line n+1 holds user n; each is stored with the same fields (and types) as the NDJSON.
    let ids: HashMap<u64, String> = read_ndjson(&accepted)
        .into_iter()
        .map(|v| (v["line"].as_u64().unwrap(), v["id"].as_str().unwrap().to_owned()))
        .collect();
    let client = blocking_client();
    for (i, user) in users.iter().enumerate() {
        let id = &ids[&(i as u64 + 2)];
        let mut doc = wait_for_user(&client, &server, id, Duration::from_secs(30));
        let doc = doc.as_object_mut().unwrap();
        doc.remove("ingestedAt");
        let mut expected = user.as_object().unwrap().clone();
        expected.insert("id".into(), Value::String(id.clone()));
        expected.retain(|_, v| !v.is_null());
        assert_eq!(doc, &expected, "CSV row {}", i + 2);
    }
}

/// Batches a checkpoint records as done: all below `done_below`, and those listed above it.
fn batches_done(checkpoint: &Value) -> usize {
    checkpoint["done_below"].as_u64().unwrap() as usize + checkpoint["done"].as_array().unwrap().len()
}

#[test]
fn an_interrupted_import_resumes_from_its_checkpoint_without_duplicating_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let checkpoint = dir.path().join("progress.checkpoint");
    let import = |extra: &[&str]| {
        let mut command = Command::new(BIN);
        command
            .args([
                "import",
                "--url",
                &server.base,
                "--batch-size",
                "5",
                "--concurrency",
                "1",
                "--checkpoint",
            ])
            .arg(&checkpoint)
            .args(extra)
            .arg(support::data_file("users.ndjson"))
            .current_dir(dir.path());
        command
    };
    // Killed (SIGKILL: no chance to tidy up) once some batches are done.
    let mut first = import(&[]).stdout(std::process::Stdio::null()).spawn().unwrap();
    support::eventually("the checkpoint records some batches", Duration::from_secs(30), || {
        std::fs::read_to_string(&checkpoint)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|c| batches_done(&c) >= 20)
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let done_before: usize = {
        let c: Value = serde_json::from_str(&std::fs::read_to_string(&checkpoint).unwrap()).unwrap();
        batches_done(&c) * 5
    };
    assert!(done_before < 2000, "the import finished before it could be interrupted");

    let output = import(&[]).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("2000 records ({done_before} done before, skipped)")), "{stdout}");
    assert!(!checkpoint.exists(), "a finished import leaves no checkpoint");
    support::eventually("the queue is drained", Duration::from_secs(30), || {
        support::queued(&server.data_dir) == 0
    });
    assert_eq!(support::stored(&server.data_dir), 2000, "every user once, none twice");
    // Every record was accepted once across both runs (the accepted file is appended to).
    let accepted = read_ndjson(&dir.path().join("users.ndjson.accepted.ndjson"));
    let lines: std::collections::HashSet<u64> =
        accepted.iter().map(|a| a["line"].as_u64().unwrap()).collect();
    assert_eq!(lines.len(), 2000);

    // Importing the same file again, from scratch, still stores no one twice.
    let output = import(&["--restart"]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    support::eventually("the queue is drained", Duration::from_secs(30), || {
        support::queued(&server.data_dir) == 0
    });
    assert_eq!(support::stored(&server.data_dir), 2000);
}

#[test]
fn record_by_record_and_batched_imports_store_the_same_users() {
    let dir = tempfile::tempdir().unwrap();
    let single = TestServer::start(&dir.path().join("single"), &[]);
    let batched = TestServer::start(&dir.path().join("batched"), &[]);
    let input = dir.path().join("some.ndjson");
    let lines: Vec<String> = support::users().iter().take(300).map(Value::to_string).collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    for (server, size) in [(&single, "1"), (&batched, "500")] {
        let output = Command::new(BIN)
            .args(["import", "--url", &server.base, "--batch-size", size, "--restart"])
            .arg(&input)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    }
    let client = blocking_client();
    let ids: Vec<String> = read_ndjson(&dir.path().join("some.ndjson.accepted.ndjson"))
        .into_iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    for id in ids.iter().take(300) {
        let mut a = wait_for_user(&client, &single, id, Duration::from_secs(30));
        let mut b = wait_for_user(&client, &batched, id, Duration::from_secs(30));
        a.as_object_mut().unwrap().remove("ingestedAt");
        b.as_object_mut().unwrap().remove("ingestedAt");
        assert_eq!(a, b, "{id}: the same ids and fields either way");
    }
}

#[test]
fn later_lines_for_the_same_id_are_never_overtaken_by_earlier_ones() {
    // Five users, each updated 60 times, interleaved; sent one record at a time with many in
    // flight: the version stored must be each user's LAST line, as the file orders them.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("updates.ndjson");
    let mut lines = String::new();
    for version in 1..=60 {
        for user in 0..5 {
            let record = serde_json::json!({"id": format!("upd-{user}"), "name": format!("Version {version}"), "email": "v@example.com", "age": version});
            lines.push_str(&format!("{record}\n"));
        }
    }
    std::fs::write(&file, lines).unwrap();
    for batch_size in ["1", "3"] {
        let output = Command::new(BIN)
            .args(["import", "--url", &server.base, "--restart", "--quiet", "--concurrency", "32"])
            .args(["--batch-size", batch_size])
            .arg(&file)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        support::eventually("the queue is drained", Duration::from_secs(30), || {
            support::queued(&server.data_dir) == 0
        });
        let client = blocking_client();
        for user in 0..5 {
            let doc = wait_for_user(&client, &server, &format!("upd-{user}"), Duration::from_secs(10));
            assert_eq!(doc["name"], "Version 60", "batch size {batch_size}, user {user}: {doc}");
        }
        // The next round must prove itself: set every user back to an old version first.
        for user in 0..5 {
            let body =
                serde_json::json!({"id": format!("upd-{user}"), "name": "Reset", "email": "v@example.com"});
            assert_eq!(support::post_user(&client, &server, &body.to_string()).0, 202);
            support::eventually("the reset is stored", Duration::from_secs(10), || {
                wait_for_user(&client, &server, &format!("upd-{user}"), Duration::from_secs(10))["name"]
                    == "Reset"
            });
        }
    }
}

#[test]
fn a_resumed_import_never_sends_an_old_line_after_a_newer_one_was_accepted() {
    // A service that refuses most of a concurrent import (503: one request at a time), and an
    // importer that does not retry: many lines fail, later lines for the same ids are held back,
    // and reruns resume. Each user must end on its LAST line.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[("MAX_IN_FLIGHT", "1")]);
    let file = dir.path().join("versions.ndjson");
    let mut lines = String::new();
    for version in 1..=5 {
        for user in 0..40 {
            let record = serde_json::json!({"id": format!("ord-{user}"), "name": format!("V{version}"), "email": "o@example.com"});
            lines.push_str(&format!("{record}\n"));
        }
    }
    std::fs::write(&file, lines).unwrap();
    let mut runs = 0;
    let mut saw_failures = false;
    loop {
        runs += 1;
        let output = Command::new(BIN)
            .args([
                "import",
                "--url",
                &server.base,
                "--quiet",
                "--batch-size",
                "1",
                "--concurrency",
                "16",
                "--max-attempts",
                "1",
            ])
            .arg(&file)
            .current_dir(dir.path())
            .output()
            .unwrap();
        if output.status.success() {
            break;
        }
        saw_failures = true;
        assert!(runs < 60, "the import never completed: {}", String::from_utf8_lossy(&output.stdout));
    }
    assert!(saw_failures, "the service never refused anything: the test proves nothing");
    support::eventually("the queue is drained", Duration::from_secs(30), || {
        support::queued(&server.data_dir) == 0
    });
    let client = blocking_client();
    for user in 0..40 {
        let doc = wait_for_user(&client, &server, &format!("ord-{user}"), Duration::from_secs(10));
        assert_eq!(doc["name"], "V5", "user {user} after {runs} runs: {doc}");
    }
}

#[test]
fn rerunning_an_edited_file_never_makes_a_second_user_of_an_id_less_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("people.ndjson");
    let import = || {
        Command::new(BIN)
            .args(["import", "--url", &server.base, "--quiet"])
            .arg(&file)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    std::fs::write(
        &file,
        "{\"name\":\"Alice One\",\"email\":\"a1@example.com\"}\n{\"name\":\"Bob Two\",\"email\":\"bad\"}\n",
    )
    .unwrap();
    assert!(!import().status.success(), "Bob is rejected");
    // Fix Bob's line and run again: Alice is the same user, Bob a new one.
    std::fs::write(&file, "{\"name\":\"Alice One\",\"email\":\"a1@example.com\"}\n{\"name\":\"Bob Two\",\"email\":\"b2@example.com\"}\n").unwrap();
    let output = import();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    support::eventually("the queue is drained", Duration::from_secs(30), || {
        support::queued(&server.data_dir) == 0
    });
    assert_eq!(support::stored(&server.data_dir), 2, "Alice once, Bob once");
}
