//! The Functions artefacts agree with the router: every route and method a function.json
//! declares is served, the host forwards HTTP unchanged, and the deployable zip keeps the
//! handler's executable bit.

mod support;

use std::path::Path;
use std::process::Command;

use axum::body::Body;
use axum::http::Request;
use data_ingestion_api::config::{Config, Overrides, HOST_SETTINGS, SETTINGS};
use data_ingestion_api::routes::{router, CONSUME_PATH};
use serde_json::Value;
use tower::ServiceExt;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every folder at the top of the repository that holds a function.json.
fn functions() -> Vec<(String, Value)> {
    let mut found: Vec<(String, Value)> = std::fs::read_dir(ROOT)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("function.json").is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), read_json(&e.path().join("function.json"))))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

fn host_json() -> Value {
    read_json(&Path::new(ROOT).join("host.json"))
}

#[test]
fn host_json_makes_the_host_run_the_binary_and_forward_http_requests() {
    let host = host_json();
    assert_eq!(host["customHandler"]["description"]["defaultExecutablePath"], "data-ingestion-api");
    assert_eq!(host["customHandler"]["enableForwardingHttpRequest"], true);
    assert_eq!(host["extensions"]["http"]["routePrefix"], "api");
    assert_eq!(host["extensionBundle"]["version"], "[4.*, 5.0.0)");
}

#[test]
fn the_expected_functions_exist() {
    let names: Vec<String> = functions().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["get-user", "health", "ingest-consume", "ingest-post"]);
}

#[test]
fn every_declared_route_and_method_is_served_by_the_router() {
    let data = tempfile::tempdir().unwrap();
    let config = Config::from_lookup(
        |_| None,
        Overrides { data_dir: Some(data.path().to_owned()), ..Default::default() },
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let state = runtime.block_on(async { data_ingestion_api::app::open_embedded(&config).unwrap().state });
    let prefix = host_json()["extensions"]["http"]["routePrefix"].as_str().unwrap().to_owned();

    let mut checked = 0;
    for (name, function) in functions() {
        let bindings = function["bindings"].as_array().unwrap();
        let triggers: Vec<&Value> = bindings.iter().filter(|b| b["direction"] == "in").collect();
        assert_eq!(triggers.len(), 1, "{name}: one trigger");
        let trigger = triggers[0];
        let requests: Vec<(String, String)> = if trigger["type"] == "httpTrigger" {
            // Forwarding keeps method and path only with one httpTrigger in and one http out.
            assert_eq!(bindings.len(), 2, "{name}: any other binding switches the host to payload mode");
            assert!(bindings.iter().any(|b| b["type"] == "http" && b["direction"] == "out"), "{name}");
            let route = trigger["route"].as_str().unwrap_or_else(|| panic!("{name} has no route"));
            let path = format!("/{prefix}/{}", route.replace("{userId}", "no-such-user"));
            trigger["methods"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| (m.as_str().unwrap().to_uppercase(), path.clone()))
                .collect()
        } else {
            // A non-HTTP trigger arrives as POST /{functionFolderName}.
            assert_eq!(
                format!("/{name}"),
                CONSUME_PATH,
                "the consume folder name must match the consume route"
            );
            vec![("POST".to_owned(), format!("/{name}"))]
        };
        for (method, path) in requests {
            let request = Request::builder()
                .method(method.as_str())
                .uri(&path)
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let response = runtime.block_on(router(state.clone()).oneshot(request)).unwrap();
            let status = response.status().as_u16();
            let body = runtime.block_on(axum::body::to_bytes(response.into_body(), 1 << 20)).unwrap();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let unrouted =
                status == 405 || (status == 404 && body["detail"] == "This resource was not found.");
            assert!(!unrouted, "{name}: {method} {path} is not served by the router ({status} {body})");
            checked += 1;
        }
    }
    assert_eq!(checked, 4);
}

#[test]
fn the_trigger_binding_matches_the_code_and_its_settings_are_known() {
    let consume = read_json(&Path::new(ROOT).join("ingest-consume/function.json"));
    let trigger = &consume["bindings"][0];
    assert_eq!(trigger["type"], "serviceBusTrigger");
    assert_eq!(trigger["name"], data_ingestion_api::routes::CONSUME_BINDING);
    let known = |name: &str| SETTINGS.iter().chain(HOST_SETTINGS).any(|s| s.name == name);
    let connection = trigger["connection"].as_str().unwrap();
    assert!(known(connection), "{connection} is not a known setting");
    for key in ["topicName", "subscriptionName"] {
        let value = trigger[key].as_str().unwrap();
        let setting = value
            .strip_prefix('%')
            .and_then(|v| v.strip_suffix('%'))
            .unwrap_or_else(|| panic!("{key} should name an app setting"));
        assert!(known(setting), "{setting} is not a known setting");
    }
}

#[test]
fn the_api_functions_need_a_key_and_health_does_not() {
    for (name, function) in functions() {
        let trigger = &function["bindings"][0];
        if trigger["type"] != "httpTrigger" {
            continue;
        }
        let expected = if name == "health" { "anonymous" } else { "function" };
        assert_eq!(trigger["authLevel"], expected, "{name}");
    }
}

#[test]
fn the_package_holds_host_json_the_functions_and_an_executable_handler() {
    let out = tempfile::tempdir().unwrap();
    let zip = out.path().join("app.zip");
    let status = Command::new(Path::new(ROOT).join("scripts/package"))
        .args(["--binary", support::BIN, "--out"])
        .arg(&zip)
        .status()
        .unwrap();
    assert!(status.success());

    // Unpack it as the host's zip deploy does, honouring the stored Unix modes.
    let unpacked = out.path().join("wwwroot");
    let script = r#"
import json, os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
entries = []
for info in z.infolist():
    path = z.extract(info, sys.argv[2])
    mode = (info.external_attr >> 16) & 0o777
    os.chmod(path, mode)
    entries.append([info.filename, mode])
print(json.dumps(entries))
"#;
    let output = Command::new("python3").args(["-c", script]).arg(&zip).arg(&unpacked).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let entries: Vec<(String, u32)> = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "host.json",
            "get-user/function.json",
            "health/function.json",
            "ingest-consume/function.json",
            "ingest-post/function.json",
            "data-ingestion-api"
        ]
    );
    let mode = |name: &str| entries.iter().find(|(n, _)| n == name).unwrap().1;
    assert_eq!(mode("data-ingestion-api"), 0o755, "the handler must stay executable");
    assert_eq!(mode("host.json"), 0o644);

    // The unpacked handler runs.
    let version = Command::new(unpacked.join("data-ingestion-api")).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("data-ingestion-api "));
}
