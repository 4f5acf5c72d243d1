//! Test helpers: start the real binary on a free port with its own data directory, read
//! its JSON logs, and wait for the pipeline.
#![allow(dead_code)]

pub mod appinsights;
pub mod cosmos;
pub mod proxy;
pub mod servicebus;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_data-ingestion-api");

/// The shared test data, copied from the design's data set.
pub fn data_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

pub fn users() -> Vec<Value> {
    std::fs::read_to_string(data_file("users.ndjson"))
        .expect("tests/data/users.ndjson")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// The service under test: the binary started here, running until dropped, or — for the
/// integration run after a deployment — the deployed service named by `INGEST_BASE_URL`.
pub struct TestServer {
    child: Option<Child>,
    pub base: String,
    pub data_dir: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts the binary on port 0 with `data_dir` and extra environment, and waits until it
    /// says where it listens. Retry delays are short so tests of retries stay quick.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_on(data_dir, 0, env)
    }

    /// As [`TestServer::start`], on a given port (0: any free one), so that a restarted
    /// service is found where its clients left it.
    pub fn start_on(data_dir: &Path, port: u16, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--port", &port.to_string(), "--data-dir"])
            .arg(data_dir)
            .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
            .env("RUST_LOG", "info")
            .env("RETRY_BACKOFF_MS", "50")
            .env("RETRY_BACKOFF_MAX_MS", "500")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("cannot start the service binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "listening" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the service did not start listening; its output:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        let server =
            Self { child: Some(child), base: format!("http://{addr}"), data_dir: data_dir.to_owned(), logs };
        server.wait_until_ready();
        server
    }

    /// The deployed service when `INGEST_BASE_URL` is set (its function key in
    /// `INGEST_API_KEY`), else the binary started here with a fresh data directory.
    pub fn start_or_remote(data_dir: &Path) -> Self {
        match std::env::var("INGEST_BASE_URL").ok().filter(|u| !u.is_empty()) {
            Some(base) => {
                let server = Self {
                    child: None,
                    base: base.trim_end_matches('/').to_owned(),
                    data_dir: data_dir.to_owned(),
                    logs: Arc::default(),
                };
                server.wait_until_ready();
                server
            }
            None => Self::start(data_dir, &[]),
        }
    }

    pub fn is_remote(&self) -> bool {
        self.child.is_none()
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(r) = blocking_client().get(format!("{}/api/health", self.base)).send() {
                if r.status().is_success() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the service never became healthy; its output:\n{}", self.logs());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The output once the service's log buffer has been flushed (every 100 ms): for
    /// asserting that something was, or was not, logged.
    pub fn flushed_logs(&self) -> String {
        std::thread::sleep(Duration::from_millis(300));
        self.logs()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> String {
        let child = self.child.as_mut().expect("stop() needs the binary started here");
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(exit) = self.child.as_mut().unwrap().try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let logs = self.logs();
                assert!(exit.success(), "the service exited with {exit} on SIGTERM:\n{logs}");
                return logs;
            }
            assert!(Instant::now() < deadline, "the service did not stop within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) {
        let child = self.child.as_mut().expect("kill9() needs the binary started here");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A client for the service; it sends the function key (`INGEST_API_KEY`) when one is set.
pub fn blocking_client() -> reqwest::blocking::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = std::env::var("INGEST_API_KEY").ok().filter(|k| !k.is_empty()) {
        let mut value = reqwest::header::HeaderValue::from_str(&key).expect("INGEST_API_KEY is header-safe");
        value.set_sensitive(true);
        headers.insert("x-functions-key", value);
    }
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(headers)
        .build()
        .unwrap()
}

/// POSTs one record as JSON and returns the status and the parsed body.
pub fn post_user(client: &reqwest::blocking::Client, server: &TestServer, body: &str) -> (u16, Value) {
    let r = client
        .post(server.url("/api/users"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .expect("POST /api/users");
    let status = r.status().as_u16();
    (status, r.json().unwrap_or(Value::Null))
}

/// Polls GET until the user is readable, or panics after `timeout`.
pub fn wait_for_user(
    client: &reqwest::blocking::Client,
    server: &TestServer,
    id: &str,
    timeout: Duration,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let r = client.get(server.url(&format!("/api/users/{id}"))).send().expect("GET user");
        if r.status() == 200 {
            return r.json().unwrap();
        }
        assert_eq!(r.status(), 404, "unexpected status reading {id}");
        assert!(
            Instant::now() < deadline,
            "user {id} was not readable within {timeout:?}:\n{}",
            server.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The health document's numbers.
pub fn health(client: &reqwest::blocking::Client, server: &TestServer) -> Value {
    client.get(server.url("/api/health")).send().unwrap().json().unwrap()
}

/// Waits until `f` holds, or panics with `what` after `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Rows of the embedded dead-letter table: (message_id, reason, delivery_count, source).
pub fn dead_letters(data_dir: &Path) -> Vec<(String, String, u32, String)> {
    let conn = rusqlite::Connection::open(data_dir.join("queue.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT message_id, reason, delivery_count, source FROM dead_letters ORDER BY id")
        .unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap();
    rows.map(Result::unwrap).collect()
}

/// Messages still waiting in the embedded queue.
pub fn queued(data_dir: &Path) -> u64 {
    let conn = rusqlite::Connection::open(data_dir.join("queue.db")).unwrap();
    conn.query_row("SELECT COUNT(*) FROM messages", [], |r| r.get::<_, i64>(0)).unwrap() as u64
}

/// Documents in the embedded store.
pub fn stored(data_dir: &Path) -> u64 {
    let conn = rusqlite::Connection::open(data_dir.join("users.db")).unwrap();
    conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get::<_, i64>(0)).unwrap() as u64
}

/// Runs the binary in `cwd` with `env` as its only settings: the ones of the machine running
/// the tests (a DATA_DIR, an INGEST_BACKEND) must not leak in.
pub fn run_cli(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> std::process::Output {
    let mut command = Command::new(BIN);
    command.args(args).current_dir(cwd);
    for setting in data_ingestion_api::config::SETTINGS {
        command.env_remove(setting.name);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("cannot run the binary")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A command's exit status and output, for assertion messages.
pub fn describe(output: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}
