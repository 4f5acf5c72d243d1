//! Starts `@vercel/cosmosdb-server` (a real Cosmos-protocol server, via
//! `tests/cosmos-server/start.js`) on a free loopback port for one test.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use serde_json::Value;

/// The emulator's well-known key; the local server does not check it.
pub const KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

pub struct CosmosServer {
    child: Child,
    /// Closing it stops the server, so it lives as long as this value.
    _stdin: ChildStdin,
    pub endpoint: String,
    pub request_log: PathBuf,
    _dir: tempfile::TempDir,
}

impl CosmosServer {
    pub fn start() -> Self {
        Self::start_advertising(None)
    }

    /// Starts the server, advertising `endpoint` as its address in the account metadata (a
    /// proxy in front of it, which clients then use for every request).
    pub fn start_advertising(endpoint: Option<&str>) -> Self {
        let launcher = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cosmos-server");
        assert!(
            launcher.join("node_modules/@vercel/cosmosdb-server").is_dir(),
            "the Cosmos test server is not installed: run `npm ci --prefix tests/cosmos-server` (scripts/test does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let request_log = dir.path().join("requests.ndjson");
        let mut child = Command::new("node")
            .arg(launcher.join("start.js"))
            .args(["--port", "0", "--request-log"])
            .arg(&request_log)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .envs(endpoint.map(|e| ("COSMOS_ADVERTISED_ENDPOINT", e.to_owned())))
            .spawn()
            .expect("cannot run node: Node.js 20 is needed for the Cosmos test server");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|_| panic!("the Cosmos test server did not start; it printed {line:?}"));
        let endpoint = ready["endpoint"].as_str().unwrap().to_owned();
        Self { child, _stdin: stdin, endpoint, request_log, _dir: dir }
    }

    /// The requests the server received, as the launcher logged them.
    pub fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.request_log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Document requests (reads, creates, replaces…), leaving out account and metadata calls.
    pub fn document_requests(&self) -> Vec<Value> {
        self.requests().into_iter().filter(|r| r["resource"] == "docs").collect()
    }

    /// The binary in azure mode against this server and `servicebus`, with `extra` settings.
    pub fn start_service(
        &self,
        servicebus: &super::servicebus::FakeServiceBus,
        data_dir: &Path,
        extra: &[(&str, &str)],
    ) -> super::TestServer {
        let env = self.azure_env(servicebus);
        let mut vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        vars.extend_from_slice(extra);
        super::TestServer::start(data_dir, &vars)
    }

    /// Environment for the binary in azure mode against this server and a Service Bus endpoint.
    pub fn azure_env(&self, servicebus: &super::servicebus::FakeServiceBus) -> Vec<(String, String)> {
        [
            ("INGEST_BACKEND", "azure".to_owned()),
            ("SERVICEBUS_CONNECTION_STRING", servicebus.connection_string()),
            ("SERVICEBUS_TOPIC", "users".to_owned()),
            ("SERVICEBUS_ENDPOINT", servicebus.endpoint.clone()),
            ("SERVICEBUS_TIMEOUT_MS", "500".to_owned()),
            ("COSMOS_ENDPOINT", self.endpoint.clone()),
            ("COSMOS_KEY", KEY.to_owned()),
            ("COSMOS_CREATE_IF_MISSING", "true".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

impl Drop for CosmosServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
