//! Crash safety on the embedded default: while the import command pushes 10,000 records, the
//! service is killed with SIGKILL at random moments, four times, and restarted on the same
//! port each time. Afterwards every record that got a 202 (the importer's accepted file) is
//! readable with its fields, and the queue drains to empty.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use support::{blocking_client, TestServer, BIN};

/// A pause of 150–650 ms, different on every call and every run.
fn random_pause() -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos();
    Duration::from_millis(150 + u64::from(nanos.wrapping_mul(2_654_435_761) % 500))
}

#[test]
fn sigkill_during_an_import_loses_no_acknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = TestServer::start_on(&data, port, &[]);
    // 10,000 records: the 2,000 users five times over, ids made distinct per copy.
    let mut records = Vec::new();
    for copy in 0..5 {
        for user in support::users() {
            let mut user = user.clone();
            if let Some(id) = user["id"].as_str() {
                user["id"] = Value::String(format!("{id}-{copy}"));
            }
            records.push(user);
        }
    }
    let input = dir.path().join("users.ndjson");
    std::fs::write(&input, records.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")).unwrap();
    let accepted_path = dir.path().join("accepted.ndjson");
    let mut import = Command::new(BIN)
        .args([
            "import",
            "--url",
            &server.base,
            "--batch-size",
            "10",
            "--concurrency",
            "2",
            "--max-attempts",
            "30",
        ])
        .arg("--accepted")
        .arg(&accepted_path)
        .arg(&input)
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let mut kills = 0;
    while kills < 4 {
        std::thread::sleep(random_pause());
        if import.try_wait().unwrap().is_some() {
            break;
        }
        server.kill9();
        kills += 1;
        std::thread::sleep(Duration::from_millis(100));
        server = TestServer::start_on(&data, port, &[]);
    }
    let output = import.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(kills >= 2, "the import finished before the service could be killed twice ({kills})");
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));

    // Every acknowledged record, read back field by field.
    let users = records;
    let acknowledged: HashMap<u64, String> = std::fs::read_to_string(&accepted_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| (v["line"].as_u64().unwrap(), v["id"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(acknowledged.len(), 10_000, "every line was acknowledged");
    support::eventually("the queue drains", Duration::from_secs(60), || support::queued(&data) == 0);
    let client = blocking_client();
    // The last acknowledged version of each id is what must be stored (the file updates some users).
    let mut expected: HashMap<&str, &Value> = HashMap::new();
    let mut lines: Vec<(&u64, &String)> = acknowledged.iter().collect();
    lines.sort();
    for (line, id) in lines {
        expected.insert(id, &users[*line as usize - 1]);
    }
    let started = Instant::now();
    let mut lost = Vec::new();
    for (id, record) in &expected {
        let r = client.get(server.url(&format!("/api/users/{id}"))).send().unwrap();
        if r.status() != 200 {
            lost.push(id.to_string());
            continue;
        }
        let mut doc: Value = r.json().unwrap();
        doc.as_object_mut().unwrap().remove("ingestedAt");
        let mut want = record.as_object().unwrap().clone();
        want.insert("id".into(), Value::String(id.to_string()));
        assert_eq!(doc.as_object().unwrap(), &want, "{id} was stored differently");
    }
    println!(
        "crash test: {kills} SIGKILLs, {} records acknowledged, {} users checked in {:?}, lost {}",
        acknowledged.len(),
        expected.len(),
        started.elapsed(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert_eq!(support::stored(&data), expected.len() as u64, "no extra documents either");
}
