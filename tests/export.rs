//! The operator's commands against the real binary: `export` and `get` read the store directly
//! (embedded while the service runs, and Cosmos DB through its protocol), an export imports
//! into a fresh service unchanged, and the command line documents and completes itself.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use data_ingestion_api::config::SETTINGS;
use serde_json::Value;
use support::cosmos::CosmosServer;
use support::servicebus::FakeServiceBus;
use support::{blocking_client, post_user, TestServer, BIN};
use support::{describe, run_cli as run, text};

/// Posts `file` to the service with the `import` command and asserts every record was accepted.
fn import(server: &TestServer, file: &Path, cwd: &Path, expected: usize) {
    let output = Command::new(BIN)
        .args(["import", "--quiet", "--concurrency", "16", "--url", &server.base])
        .arg(file)
        .current_dir(cwd)
        .output()
        .unwrap();
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "import of {} failed: {}", file.display(), describe(&output));
    assert!(stdout.contains(&format!("{expected} records, {expected} accepted, 0 rejected")), "{stdout}");
}

/// Waits until the worker has stored `n` users and emptied the queue.
fn wait_until_drained(server: &TestServer, n: u64) {
    support::eventually(
        &format!("{n} users are stored and the queue is empty"),
        Duration::from_secs(60),
        || support::stored(&server.data_dir) == n && support::queued(&server.data_dir) == 0,
    );
}

fn export_file(data_dir: &Path, out: &Path) -> Vec<String> {
    let output = run(
        &["export", "--output", out.to_str().unwrap(), "--data-dir", data_dir.to_str().unwrap()],
        &[],
        out.parent().unwrap(),
    );
    assert!(output.status.success(), "{}", describe(&output));
    std::fs::read_to_string(out).unwrap().lines().map(str::to_owned).collect()
}

/// The body GET serves for `id`, as text.
fn get_body(client: &reqwest::blocking::Client, server: &TestServer, id: &str) -> String {
    let r = client.get(server.url(&format!("/api/users/{id}"))).send().unwrap();
    assert_eq!(r.status(), 200, "GET {id}");
    r.text().unwrap()
}

fn id_of(line: &str) -> String {
    let doc: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    doc["id"].as_str().unwrap_or_else(|| panic!("no id: {line}")).to_owned()
}

#[test]
fn export_writes_all_2000_imported_users_exactly_as_get_serves_them_while_the_service_runs() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    import(&server, &support::data_file("users.ndjson"), dir.path(), 2000);
    wait_until_drained(&server, 2000);

    let out = dir.path().join("export.ndjson");
    let data_dir = server.data_dir.to_str().unwrap().to_owned();
    let output =
        run(&["export", "--output", out.to_str().unwrap(), "--data-dir", &data_dir], &[], dir.path());
    assert!(output.status.success(), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "with --output nothing goes to stdout: {}", describe(&output));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("exported 2000 users in "), "no summary line: {stderr}");

    let exported = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = exported.lines().collect();
    assert_eq!(lines.len(), 2000);
    assert!(exported.ends_with('\n'));
    let ids: HashSet<String> = lines.iter().map(|l| id_of(l)).collect();
    assert_eq!(ids.len(), 2000, "every user exactly once");
    let client = blocking_client();
    for line in &lines {
        assert_eq!(*line, get_body(&client, &server, &id_of(line)), "the exported line differs from GET");
    }

    // To stdout, the same bytes; and no temporary file is left beside the output.
    let to_stdout = run(&["export", "--quiet", "--data-dir", &data_dir], &[], dir.path());
    assert!(to_stdout.status.success(), "{}", describe(&to_stdout));
    assert_eq!(text(&to_stdout.stdout), exported);
    let leftovers: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn get_prints_what_get_serves_pretty_or_compact_and_exits_1_for_a_missing_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    let client = blocking_client();
    let record = r#"{"id":"op-1","name":"Grace Hopper","email":"grace@example.com","age":85,"country":"US","attributes":{"rank":"rear admiral","langs":["COBOL"]}}"#;
    assert_eq!(post_user(&client, &server, record).0, 202);
    support::wait_for_user(&client, &server, "op-1", Duration::from_secs(10));
    let served = get_body(&client, &server, "op-1");
    let data_dir = server.data_dir.to_str().unwrap().to_owned();

    let pretty = run(&["get", "op-1", "--data-dir", &data_dir], &[], dir.path());
    assert!(pretty.status.success(), "{}", describe(&pretty));
    let printed = text(&pretty.stdout);
    assert!(printed.starts_with("{\n  \"id\": \"op-1\",\n  \"name\": \"Grace Hopper\""), "{printed}");
    assert_eq!(
        serde_json::from_str::<Value>(&printed).unwrap(),
        serde_json::from_str::<Value>(&served).unwrap()
    );

    let compact = run(&["get", "--compact", "op-1", "--data-dir", &data_dir], &[], dir.path());
    assert!(compact.status.success(), "{}", describe(&compact));
    assert_eq!(text(&compact.stdout), format!("{served}\n"), "--compact prints GET's bytes");

    // DATA_DIR from the environment works like the flag.
    let from_env = run(&["get", "--compact", "op-1"], &[("DATA_DIR", &data_dir)], dir.path());
    assert_eq!(text(&from_env.stdout), format!("{served}\n"), "{}", describe(&from_env));

    let missing = run(&["get", "nobody-here", "--data-dir", &data_dir], &[], dir.path());
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
    assert!(missing.stdout.is_empty());
    assert!(text(&missing.stderr).contains("nobody-here"), "{}", describe(&missing));

    let invalid = run(&["get", "not/an/id", "--data-dir", &data_dir], &[], dir.path());
    assert_eq!(invalid.status.code(), Some(2), "an id that can never exist is a usage error");
}

/// A command line that cannot work, and the word its error must name.
struct Broken<'a> {
    args: Vec<&'a str>,
    env: Vec<(&'a str, &'a str)>,
    named: &'a str,
}

#[test]
fn get_and_export_exit_2_naming_what_is_wrong_and_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("no-such-dir");
    let out = dir.path().join("out.ndjson");
    let (nowhere_str, out_str) = (nowhere.to_str().unwrap(), out.to_str().unwrap());
    let cases = [
        Broken { args: vec!["get", "u1", "--data-dir", nowhere_str], env: vec![], named: "no-such-dir" },
        Broken {
            args: vec!["export", "-o", out_str],
            env: vec![("DATA_DIR", nowhere_str)],
            named: "no-such-dir",
        },
        Broken {
            args: vec!["export", "-o", out_str],
            env: vec![("INGEST_BACKEND", "postgres")],
            named: "INGEST_BACKEND",
        },
        Broken { args: vec!["get", "u1"], env: vec![("INGEST_BACKEND", "azure")], named: "COSMOS_ENDPOINT" },
        // Nothing listens there: a connection error.
        Broken {
            args: vec!["export", "-o", out_str],
            env: vec![
                ("INGEST_BACKEND", "azure"),
                ("COSMOS_ENDPOINT", "http://127.0.0.1:9/"),
                ("COSMOS_KEY", "a2V5"),
            ],
            named: "COSMOS_ENDPOINT",
        },
    ];
    for Broken { args, env, named } in cases {
        let output = run(&args, &env, dir.path());
        assert_eq!(output.status.code(), Some(2), "{args:?} {env:?}: {}", describe(&output));
        assert!(
            text(&output.stderr).contains(named),
            "{args:?} {env:?} does not name {named}: {}",
            describe(&output)
        );
        assert!(output.stdout.is_empty());
    }
    assert!(!nowhere.exists(), "a reader created the data directory");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "a failed export left files behind: {left:?}");
}

/// Users as maps of their fields, without `ingestedAt`, by id.
fn users_by_id(lines: &[String]) -> HashMap<String, Value> {
    lines
        .iter()
        .map(|line| {
            let mut doc: Value = serde_json::from_str(line).unwrap();
            let stamp = doc.as_object_mut().unwrap().remove("ingestedAt");
            assert!(stamp.is_some_and(|t| t.is_string()), "no ingestedAt: {line}");
            (id_of(line), doc)
        })
        .collect()
}

/// Needs `import` to drop `ingestedAt` from its input records (the API refuses it as an
/// unknown field): an export is meant to be importable as it is.
#[test]
fn an_export_imported_into_a_fresh_service_exports_the_same_users_again() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestServer::start(&dir.path().join("first"), &[]);
    import(&first, &support::data_file("users.ndjson"), dir.path(), 2000);
    wait_until_drained(&first, 2000);
    let exported = export_file(&first.data_dir, &dir.path().join("first.ndjson"));
    drop(first);

    let second = TestServer::start(&dir.path().join("second"), &[]);
    import(&second, &dir.path().join("first.ndjson"), dir.path(), 2000);
    wait_until_drained(&second, 2000);
    let reexported = export_file(&second.data_dir, &dir.path().join("second.ndjson"));

    let before = users_by_id(&exported);
    let after = users_by_id(&reexported);
    assert_eq!(before.len(), 2000);
    assert_eq!(after.len(), 2000);
    for (id, user) in &before {
        assert_eq!(after.get(id), Some(user), "user {id} changed in the round trip");
    }
}

/// `restore` writes an export back exactly: exporting the restored store gives the same bytes,
/// `ingestedAt` included; restoring again changes nothing, and an older backup never rolls a
/// newer user back.
#[test]
fn an_export_restored_into_a_fresh_data_directory_exports_byte_for_byte_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestServer::start(&dir.path().join("first"), &[]);
    import(&first, &support::data_file("users.ndjson"), dir.path(), 2000);
    wait_until_drained(&first, 2000);
    let exported = export_file(&first.data_dir, &dir.path().join("first.ndjson"));
    drop(first);
    assert_eq!(exported.len(), 2000);

    let fresh = dir.path().join("fresh");
    let restore = |file: &Path| {
        run(&["restore", file.to_str().unwrap(), "--data-dir", fresh.to_str().unwrap()], &[], dir.path())
    };
    let output = restore(&dir.path().join("first.ndjson"));
    assert!(output.status.success(), "{}", describe(&output));
    assert!(text(&output.stderr).contains("restored 2000 users (0 already newer"), "{}", describe(&output));
    let mut again = export_file(&fresh, &dir.path().join("again.ndjson"));
    let mut original = exported.clone();
    original.sort();
    again.sort();
    assert_eq!(again, original, "the restored store exports the same bytes");

    // Restoring the same file again changes nothing.
    let output = restore(&dir.path().join("first.ndjson"));
    assert!(output.status.success(), "{}", describe(&output));
    let mut twice = export_file(&fresh, &dir.path().join("twice.ndjson"));
    twice.sort();
    assert_eq!(twice, original);
    // An older version of a user (an old backup) never rolls the stored one back.
    let mut old: Value = serde_json::from_str(&exported[0]).unwrap();
    old["name"] = Value::String("Rolled Back".into());
    old["ingestedAt"] = Value::String("2001-01-01T00:00:00Z".into());
    let backup = dir.path().join("old.ndjson");
    std::fs::write(&backup, old.to_string()).unwrap();
    let output = restore(&backup);
    assert!(text(&output.stderr).contains("restored 0 users (1 already newer"), "{}", describe(&output));
    let mut after = export_file(&fresh, &dir.path().join("after.ndjson"));
    after.sort();
    assert_eq!(after, original, "the newer version stayed");
    // A line that is not a user is named and fails the exit status; the rest is restored.
    let mixed = dir.path().join("mixed.ndjson");
    std::fs::write(&mixed, format!("{}\nnot json\n", exported[0])).unwrap();
    let output = restore(&mixed);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert!(text(&output.stderr).contains("line 2: not JSON"), "{}", describe(&output));
}

#[test]
fn against_cosmos_export_pages_through_the_whole_container_and_get_reads_one_user() {
    let cosmos = CosmosServer::start();
    let servicebus = FakeServiceBus::start("users");
    let dir = tempfile::tempdir().unwrap();
    let env = cosmos.azure_env(&servicebus);
    let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = cosmos.start_service(&servicebus, &dir.path().join("data"), &[]);
    let client = blocking_client();

    // 23 users through the pipeline: POST, then the host's invocation per captured message.
    let users: Vec<Value> = support::users().into_iter().take(23).collect();
    let mut ids = Vec::new();
    for user in &users {
        let (status, body) = post_user(&client, &server, &user.to_string());
        assert_eq!(status, 202, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    for message in servicebus.captured() {
        let r = client
            .post(server.url("/ingest-consume"))
            .header("content-type", "application/json")
            .body(FakeServiceBus::host_invocation(&message, 1).to_string())
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let served: HashMap<String, String> =
        ids.iter().map(|id| (id.clone(), get_body(&client, &server, id))).collect();

    // The operator's shell has the Cosmos settings only: Service Bus is not needed to read.
    let cli_env: Vec<(&str, &str)> =
        vars.iter().copied().filter(|(k, _)| k.starts_with("COSMOS_") || *k == "INGEST_BACKEND").collect();
    let queries_before = cosmos.document_requests().into_iter().filter(|r| r["op"] == "query").count();
    let out = dir.path().join("cosmos.ndjson");
    let output = run(&["export", "--page-size", "5", "-o", out.to_str().unwrap()], &cli_env, dir.path());
    assert!(output.status.success(), "{}", describe(&output));
    assert!(text(&output.stderr).contains("exported 23 users in "), "{}", describe(&output));
    let lines: Vec<String> = std::fs::read_to_string(&out).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 23, "{lines:?}");
    let mut seen = HashSet::new();
    for line in &lines {
        let id = id_of(line);
        assert!(seen.insert(id.clone()), "{id} exported twice");
        let doc: Value = serde_json::from_str(line).unwrap();
        assert!(doc.as_object().unwrap().keys().all(|k| !k.starts_with('_')), "store fields leaked: {line}");
        let expected = served.get(&id).unwrap_or_else(|| panic!("{id} was never stored"));
        assert_eq!(doc, serde_json::from_str::<Value>(expected).unwrap(), "{id} differs from GET");
    }
    let pages =
        cosmos.document_requests().into_iter().filter(|r| r["op"] == "query").count() - queries_before;
    assert!(pages >= 5, "23 users in pages of 5 take at least 5 query requests, not {pages}");

    let compact = run(&["get", "--compact", &ids[0]], &cli_env, dir.path());
    assert!(compact.status.success(), "{}", describe(&compact));
    assert_eq!(text(&compact.stdout), format!("{}\n", served[&ids[0]]));
    let missing = run(&["get", "nobody-here"], &cli_env, dir.path());
    assert_eq!(missing.status.code(), Some(1), "{}", describe(&missing));
}

const SUBCOMMANDS: [&str; 5] = ["serve", "import", "get", "export", "completions"];

#[test]
fn the_bash_completions_name_every_subcommand_and_every_shell_gets_a_script() {
    let dir = tempfile::tempdir().unwrap();
    let bash = run(&["completions", "bash"], &[], dir.path());
    assert!(bash.status.success(), "{}", describe(&bash));
    let script = text(&bash.stdout);
    for command in SUBCOMMANDS {
        assert!(script.contains(command), "the bash script never mentions {command}");
    }
    for flag in ["--output", "--compact", "--concurrency", "--data-dir"] {
        assert!(script.contains(flag), "the bash script never mentions {flag}");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let output = run(&["completions", shell], &[], dir.path());
        assert!(output.status.success(), "{shell}: {}", describe(&output));
        assert!(text(&output.stdout).contains("export"), "{shell}: no export in the script");
    }
    let unknown = run(&["completions", "tcsh"], &[], dir.path());
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn every_command_explains_itself_its_flags_and_its_settings_in_its_help() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve_mentions = vec!["--port", "--host", "--data-dir", "Examples"];
    serve_mentions.extend(SETTINGS.iter().map(|s| s.name));
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("serve", serve_mentions),
        (
            "import",
            vec![
                "--url",
                "--concurrency",
                "--rejects",
                "--accepted",
                "--api-key",
                "--max-attempts",
                "--quiet",
                "INGEST_URL",
                "Examples",
            ],
        ),
        (
            "get",
            vec![
                "<ID>",
                "--compact",
                "--data-dir",
                "DATA_DIR",
                "INGEST_BACKEND",
                "COSMOS_ENDPOINT",
                "COSMOS_KEY",
                "Exit status",
                "Examples",
            ],
        ),
        (
            "export",
            vec![
                "--output",
                "--quiet",
                "--data-dir",
                "DATA_DIR",
                "INGEST_BACKEND",
                "COSMOS_ENDPOINT",
                "Exit status",
                "Examples",
            ],
        ),
        ("completions", vec!["bash", "zsh", "fish", "elvish", "powershell", "Install"]),
    ];
    for (command, mentions) in cases {
        let output = run(&[command, "--help"], &[], dir.path());
        assert!(output.status.success(), "{command} --help: {}", describe(&output));
        let help = text(&output.stdout);
        for mention in mentions {
            assert!(help.contains(mention), "`{command} --help` never mentions {mention}:\n{help}");
        }
    }
    let top = text(&run(&["--help"], &[], dir.path()).stdout);
    for command in SUBCOMMANDS {
        assert!(top.contains(&format!("\n  {command} ")), "`--help` does not list {command}:\n{top}");
    }
}

#[test]
fn an_export_piped_into_a_reader_that_stops_early_ends_cleanly() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"), &[]);
    import(&server, &support::data_file("users.ndjson"), dir.path(), 2000);
    wait_until_drained(&server, 2000);
    // `export | head -1`: far more than a pipe holds, and the reader goes after one line.
    let mut child = Command::new(BIN)
        .args(["export", "--data-dir", server.data_dir.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with('{'), "{first}");
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "a closed pipe is the reader's choice, not an error: {}",
        describe(&output)
    );
    assert!(!text(&output.stderr).contains("Broken pipe"), "{}", describe(&output));
}
