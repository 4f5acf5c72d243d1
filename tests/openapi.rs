//! docs/openapi.json against the code: the binary serves the file as it is, the file
//! describes exactly the routes the router serves and the function.json files declare, the
//! responses of real requests conform to it, and its user record schema accepts exactly the
//! records the service accepts (where a JSON Schema can say so). tests/schemathesis/run
//! fuzzes the running service against the same file.

mod support;

use std::collections::BTreeSet;
use std::path::Path;

use data_ingestion_api::routes::problem::ApiError;
use serde_json::{json, Value};
use support::{blocking_client, TestServer};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];
/// What the router's fallback says: "not served at all", unlike a handler's own 404.
const FALLBACK_DETAIL: &str = "This resource was not found.";

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct Spec {
    doc: Value,
}

impl Spec {
    fn load() -> Self {
        let doc: Value = serde_json::from_str(&read("docs/openapi.json")).expect("docs/openapi.json is JSON");
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "an OpenAPI 3 document");
        Self { doc }
    }

    /// Follows a local `$ref` (`#/components/...`), as often as it takes.
    fn resolve<'a>(&'a self, mut value: &'a Value) -> &'a Value {
        while let Some(pointer) = value.get("$ref").and_then(Value::as_str) {
            let pointer = pointer.strip_prefix('#').unwrap_or_else(|| panic!("only local refs: {pointer}"));
            value = self.doc.pointer(pointer).unwrap_or_else(|| panic!("dangling $ref #{pointer}"));
        }
        value
    }

    /// A validator for a schema of the document: its `#/components/...` refs resolve against
    /// a root that carries the components. Formats (date-time, email) are asserted.
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let root = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "allOf": [schema],
            "components": self.doc["components"],
        });
        jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the schema {schema} does not compile: {e}"))
    }

    fn schema(&self, name: &str) -> Value {
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    /// Every (METHOD, path with its parameters written `{}`) the document describes.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().expect("paths") {
            for method in METHODS {
                if item.get(method).is_some() {
                    ops.insert((method.to_uppercase(), normalize(path)));
                }
            }
        }
        ops
    }

    /// The declared response of an operation for a status.
    fn response(&self, method: &str, path: &str, status: u16) -> &Value {
        let op = &self.doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not described");
        let response = op["responses"]
            .get(status.to_string())
            .unwrap_or_else(|| panic!("{method} {path}: status {status} is not described"));
        self.resolve(response)
    }
}

/// `/api/users/{user_id}` and `/api/users/{userId}` alike become `/api/users/{}`.
fn normalize(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// The routes of `src/routes/mod.rs`, read from its `.route("...", get(...).post(...))` calls.
fn router_routes() -> BTreeSet<(String, String)> {
    let source = read("src/routes/mod.rs");
    let mut routes = BTreeSet::new();
    let mut rest = source.as_str();
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        // The call's arguments: up to the matching parenthesis.
        let mut depth = 1;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("a .route( call is closed");
        let args = &rest[..end];
        let (path, handlers) = args.split_once(',').expect(".route(path, handler)");
        let path = path.trim();
        let path = if let Some(literal) = path.strip_prefix('"') {
            literal.strip_suffix('"').expect("a string literal").to_owned()
        } else {
            match path {
                "CONSUME_PATH" => data_ingestion_api::routes::CONSUME_PATH.to_owned(),
                other => panic!("tests/openapi.rs does not know the route constant {other}: add it"),
            }
        };
        let mut methods = 0;
        for method in METHODS {
            let call = format!("{method}(");
            let mut from = 0;
            while let Some(i) = handlers[from..].find(&call) {
                let i = from + i;
                let before = handlers[..i].chars().next_back();
                if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':')) {
                    routes.insert((method.to_uppercase(), normalize(&path)));
                    methods += 1;
                }
                from = i + call.len();
            }
        }
        assert!(methods > 0, "no method found in .route({args})");
        rest = &rest[end..];
    }
    assert!(routes.len() >= 9, "too few routes read from src/routes/mod.rs: {routes:?}");
    routes
}

/// The requests the Functions host forwards or makes, from each folder's function.json.
fn function_routes() -> BTreeSet<(String, String)> {
    let host: Value = serde_json::from_str(&read("host.json")).unwrap();
    let prefix = host["extensions"]["http"]["routePrefix"].as_str().unwrap().to_owned();
    let mut routes = BTreeSet::new();
    for entry in std::fs::read_dir(ROOT).unwrap().filter_map(Result::ok) {
        let file = entry.path().join("function.json");
        if !file.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let function: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let trigger = function["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["direction"] == "in")
            .unwrap_or_else(|| panic!("{name}: no trigger"))
            .clone();
        if trigger["type"] == "httpTrigger" {
            let path = format!("/{prefix}/{}", trigger["route"].as_str().unwrap());
            for method in trigger["methods"].as_array().unwrap() {
                routes.insert((method.as_str().unwrap().to_uppercase(), normalize(&path)));
            }
        } else {
            // A non-HTTP trigger arrives as POST /{functionFolderName}.
            routes.insert(("POST".to_owned(), format!("/{name}")));
        }
    }
    assert_eq!(routes.len(), 4, "{routes:?}");
    routes
}

/// A response as received, whole.
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn send(request: reqwest::blocking::RequestBuilder) -> Reply {
    let r = request.send().expect("the request is answered");
    Reply { status: r.status().as_u16(), headers: r.headers().clone(), body: r.bytes().unwrap().to_vec() }
}

/// Checks a reply against a declared response: its required headers (and their schemas),
/// its media type, and its body against the media type's schema.
fn conforms(spec: &Spec, declared: &Value, reply: &Reply, what: &str) {
    let declared = spec.resolve(declared);
    let empty = serde_json::Map::new();
    for (name, header) in declared.get("headers").and_then(Value::as_object).unwrap_or(&empty) {
        let header = spec.resolve(header);
        let Some(value) = reply.headers.get(name.as_str()) else {
            assert!(header["required"] != true, "{what}: the required header {name} is missing");
            continue;
        };
        let value = value.to_str().unwrap_or_else(|_| panic!("{what}: {name} is not ASCII"));
        if let Some(schema) = header.get("schema") {
            let instance = match spec.resolve(schema)["type"].as_str() {
                Some("integer") => json!(value
                    .parse::<i64>()
                    .unwrap_or_else(|_| panic!("{what}: {name}: {value:?} is not an integer"))),
                _ => json!(value),
            };
            expect_valid(spec, schema, &instance, &format!("{what}, header {name}"));
        }
    }
    let content = declared.get("content").and_then(Value::as_object).unwrap_or(&empty);
    if content.is_empty() {
        assert!(reply.body.is_empty(), "{what}: no body is described, yet one was sent");
        return;
    }
    let content_type = reply
        .headers
        .get("content-type")
        .unwrap_or_else(|| panic!("{what}: no Content-Type"))
        .to_str()
        .unwrap()
        .to_owned();
    let essence = content_type.split(';').next().unwrap().trim().to_ascii_lowercase();
    let media = content
        .iter()
        .find(|(key, _)| key.split(';').next().unwrap().trim().eq_ignore_ascii_case(&essence))
        .map(|(_, media)| media)
        .unwrap_or_else(|| {
            panic!(
                "{what}: Content-Type {content_type} is not one of {:?}",
                content.keys().collect::<Vec<_>>()
            )
        });
    let Some(schema) = media.get("schema") else { return };
    let instance = if essence == "application/json" || essence.ends_with("+json") {
        serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{what}: the body is not JSON: {e}"))
    } else {
        Value::String(String::from_utf8(reply.body.clone()).expect("a text body is UTF-8"))
    };
    expect_valid(spec, schema, &instance, what);
}

fn expect_valid(spec: &Spec, schema: &Value, instance: &Value, what: &str) {
    let validator = spec.validator(schema);
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|e| format!("  at {}: {e}", e.instance_path())).collect();
    assert!(
        errors.is_empty(),
        "{what} does not conform to {schema}:\n{}\ninstance: {instance}",
        errors.join("\n")
    );
}

fn user(fields: Value) -> Value {
    let mut record = json!({"name": "Ada Lovelace", "email": "ada@example.com"});
    record.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    record
}

#[test]
fn the_served_description_is_docs_openapi_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let reply = send(blocking_client().get(server.url("/api/openapi.json")));
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert!(
        reply.body == read("docs/openapi.json").into_bytes(),
        "the served description differs from the file"
    );
    assert_eq!(Spec::load().doc["info"]["version"], env!("CARGO_PKG_VERSION"), "info.version is the crate's");
}

#[test]
fn every_route_is_described_and_every_described_operation_is_served() {
    let spec = Spec::load();
    let described = spec.operations();
    let routed = router_routes();
    let undescribed: Vec<_> = routed.difference(&described).collect();
    assert!(
        undescribed.is_empty(),
        "routes of src/routes/mod.rs missing from docs/openapi.json: {undescribed:?}"
    );
    let unrouted: Vec<_> = described.difference(&routed).collect();
    assert!(unrouted.is_empty(), "operations of docs/openapi.json the router does not serve: {unrouted:?}");

    let functions = function_routes();
    let missing: Vec<_> = functions.difference(&described).collect();
    assert!(missing.is_empty(), "function.json routes missing from docs/openapi.json: {missing:?}");

    // And each described operation really is answered by a handler, not the fallback.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[]);
    let client = blocking_client();
    for (path, item) in spec.doc["paths"].as_object().unwrap() {
        let concrete = path.replace("{userId}", "no-such-user");
        assert!(!concrete.contains('{'), "tests/openapi.rs needs a value for the parameter of {path}");
        for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            let request = client
                .request(method.to_uppercase().parse().unwrap(), server.url(&concrete))
                .header("content-type", "application/json")
                .body(if *method == "get" { "" } else { "{}" });
            let reply = send(request);
            let unrouted =
                reply.status == 405 || (reply.status == 404 && reply.json()["detail"] == FALLBACK_DETAIL);
            assert!(!unrouted, "{method} {path} is described but not served ({})", reply.status);
            conforms(
                &spec,
                spec.response(method, path, reply.status),
                &reply,
                &format!("{method} {concrete}"),
            );
        }
    }
}

#[test]
fn real_responses_conform_to_the_description() {
    let spec = Spec::load();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("MAX_RECORD_BYTES", "4096"), ("MAX_BATCH_RECORDS", "3")]);
    let client = blocking_client();
    let post = |body: String| {
        send(client.post(server.url("/api/users")).header("content-type", "application/json").body(body))
    };
    let check = |method: &str, path: &str, reply: &Reply, expected: u16, what: &str| {
        assert_eq!(reply.status, expected, "{what}: {}", String::from_utf8_lossy(&reply.body));
        conforms(&spec, spec.response(method, path, reply.status), reply, what);
    };

    let one = user(
        json!({"id": "oa-1", "name": "  Ada Lovelace ", "age": 36, "country": "GB", "attributes": {"plan": "pro"}}),
    );
    check("POST", "/api/users", &post(one.to_string()), 202, "one record");

    let batch =
        json!([user(json!({"id": "oa-2"})), {"name": "", "email": "nope", "extra": 1}, user(json!({}))]);
    let reply = post(batch.to_string());
    check("POST", "/api/users", &reply, 200, "a batch");
    assert_eq!(reply.json()["results"][1]["status"], 400, "the batch answer reports the invalid record");

    let reply = post(
        json!({"id": "a/b", "name": " ", "email": "x", "age": 151, "country": "de", "more": true})
            .to_string(),
    );
    check("POST", "/api/users", &reply, 400, "an invalid record");
    assert_eq!(reply.json()["errors"].as_array().unwrap().len(), 6, "every bad field is named");
    check(
        "POST",
        "/api/users",
        &post(json!([{"name": ""}, 5]).to_string()),
        400,
        "a batch without a valid record",
    );
    check("POST", "/api/users", &post("{not json".into()), 400, "invalid JSON");
    check("POST", "/api/users", &post("[]".into()), 400, "an empty batch");
    check(
        "POST",
        "/api/users",
        &post(user(json!({"attributes": {"blob": "x".repeat(5000)}})).to_string()),
        413,
        "a record over MAX_RECORD_BYTES",
    );
    check(
        "POST",
        "/api/users",
        &post(Value::Array(vec![user(json!({})); 4]).to_string()),
        413,
        "a batch over MAX_BATCH_RECORDS",
    );
    let reply = send(client.post(server.url("/api/users")).header("content-type", "text/csv").body("a,b"));
    check("POST", "/api/users", &reply, 415, "not JSON");
    check(
        "POST",
        "/api/users",
        &send(client.post(server.url("/api/users")).body("{}")),
        415,
        "no Content-Type",
    );

    let document = support::wait_for_user(&client, &server, "oa-1", std::time::Duration::from_secs(10));
    assert_eq!(document["name"], "Ada Lovelace");
    let reply = send(client.get(server.url("/api/users/oa-1")));
    check("GET", "/api/users/{userId}", &reply, 200, "a stored user");
    let etag = reply.headers["etag"].to_str().unwrap().to_owned();
    let reply = send(client.get(server.url("/api/users/oa-1")).header("if-none-match", etag));
    check("GET", "/api/users/{userId}", &reply, 304, "a matching If-None-Match");
    check(
        "GET",
        "/api/users/{userId}",
        &send(client.get(server.url("/api/users/nobody"))),
        404,
        "an absent user",
    );
    check(
        "GET",
        "/api/users/{userId}",
        &send(client.get(server.url("/api/users/a%23b"))),
        400,
        "an id never valid",
    );

    check("GET", "/api/health", &send(client.get(server.url("/api/health"))), 200, "health");
    check("GET", "/", &send(client.get(server.url("/"))), 200, "the readiness probe");
    check("GET", "/metrics", &send(client.get(server.url("/metrics"))), 200, "metrics");
    check("GET", "/status", &send(client.get(server.url("/status"))), 200, "the status page");
    check("GET", "/status.json", &send(client.get(server.url("/status.json"))), 200, "the status data");

    let invoke = |body: &str| {
        send(
            client
                .post(server.url("/ingest-consume"))
                .header("content-type", "application/json")
                .body(body.to_owned()),
        )
    };
    let message = user(json!({"id": "oa-3"})).to_string();
    let invocation = json!({"Data": {"message": message}, "Metadata": {"MessageId": "\"m-oa-3\"", "DeliveryCount": "1", "EnqueuedTimeUtc": "2023-10-12T20:13:49"}});
    check("POST", "/ingest-consume", &invoke(&invocation.to_string()), 200, "an invocation");
    check("POST", "/ingest-consume", &invoke(r#"{"Data": {"message": 5}}"#), 200, "a poison message");
    check("POST", "/ingest-consume", &invoke("{}"), 400, "an invocation without Data");
    let invocation = json!({"Data": {"message": message}, "Metadata": {"EnqueuedTimeUtc": "yesterday"}});
    check("POST", "/ingest-consume", &invoke(&invocation.to_string()), 400, "an unreadable EnqueuedTimeUtc");
    let body = format!(r#"{{"Data": {{"message": "{}"}}}}"#, "x".repeat(4 * 1024 * 1024 + 1));
    check("POST", "/ingest-consume", &invoke(&body), 413, "an invocation over 4 MiB");

    // What no operation can declare: other methods, other paths.
    let responses = &spec.doc["components"]["responses"];
    for (method, path) in [
        ("DELETE", "/api/users/oa-1"),
        ("GET", "/api/users"),
        ("PUT", "/api/health"),
        ("GET", "/ingest-consume"),
    ] {
        let reply = send(client.request(method.parse().unwrap(), server.url(path)));
        assert_eq!(reply.status, 405, "{method} {path}");
        conforms(&spec, &responses["MethodNotAllowed"], &reply, &format!("{method} {path}"));
    }
    let reply = send(client.get(server.url("/api/nothing-here")));
    assert_eq!(reply.status, 404);
    conforms(&spec, &responses["NotFound"], &reply, "an unknown path");
}

/// The declared problem each error of the API is answered with. No wildcard: a new variant
/// does not compile until it is described here (and in docs/openapi.json).
fn described_as(error: &ApiError) -> &'static str {
    match error {
        ApiError::InvalidJson(_)
        | ApiError::InvalidRecord(_)
        | ApiError::InvalidBatch(_)
        | ApiError::BodyRead(_)
        | ApiError::InvalidHeader { .. } => "InvalidRequestProblem",
        ApiError::IdempotencyConflict => "IdempotencyConflictProblem",
        ApiError::Unauthorized { .. } => "UnauthorizedProblem",
        ApiError::InvalidUserId(_) => "InvalidUserIdProblem",
        ApiError::BodyTimeout { .. } => "RequestTimeoutProblem",
        ApiError::TooLarge { .. } | ApiError::TooManyRecords { .. } => "TooLargeProblem",
        ApiError::UnsupportedMediaType { .. } | ApiError::UnsupportedEncoding { .. } => {
            "UnsupportedMediaTypeProblem"
        }
        ApiError::Internal => "InternalProblem",
        ApiError::MethodNotAllowed => "MethodNotAllowedProblem",
        ApiError::NotFound(_) => "NotFoundProblem",
        ApiError::Unavailable { .. } | ApiError::Overloaded { .. } => "UnavailableProblem",
        ApiError::InvalidInvocation(_) => "InvalidInvocationProblem",
    }
}

#[test]
fn key_and_idempotency_answers_conform_to_the_description() {
    let spec = Spec::load();
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_API_KEY", "oa-key")]);
    let client = blocking_client();
    let check = |method: &str, path: &str, reply: &Reply, expected: u16, what: &str| {
        assert_eq!(reply.status, expected, "{what}: {}", String::from_utf8_lossy(&reply.body));
        conforms(&spec, spec.response(method, path, reply.status), reply, what);
    };
    for path in ["/api/users/oa-1", "/metrics", "/status", "/status.json", "/api/openapi.json"] {
        let template = if path.starts_with("/api/users/") { "/api/users/{userId}" } else { path };
        check("GET", template, &send(client.get(server.url(path))), 401, &format!("{path} without the key"));
        let wrong = send(client.get(server.url(path)).header("x-functions-key", "nope"));
        check("GET", template, &wrong, 401, &format!("{path} with another key"));
    }
    let reply = send(client.get(server.url("/api/users/oa-1")).header("x-functions-key", "oa-key"));
    check("GET", "/api/users/{userId}", &reply, 404, "the key as a header");
    check(
        "GET",
        "/api/users/{userId}",
        &send(client.get(server.url("/api/users/oa-1?code=oa-key"))),
        404,
        "the key as code",
    );
    check("GET", "/api/health", &send(client.get(server.url("/api/health"))), 200, "health needs no key");
    check("GET", "/", &send(client.get(server.url("/"))), 200, "the probe needs no key");
    let reply = send(client.post(server.url("/ingest-consume")).body("{}"));
    check("POST", "/ingest-consume", &reply, 401, "an invocation without the key");

    let post = |key: &str, body: Value| {
        send(
            client
                .post(server.url("/api/users"))
                .header("x-functions-key", "oa-key")
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .body(body.to_string()),
        )
    };
    let reply = post("oa-k1", user(json!({})));
    check("POST", "/api/users", &reply, 202, "a record with an Idempotency-Key");
    let replay = post("oa-k1", user(json!({})));
    check("POST", "/api/users", &replay, 202, "its repeat");
    assert_eq!(replay.json(), reply.json(), "a repeat gets the same answer");
    assert_eq!(replay.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    check("POST", "/api/users", &post("oa-k1", user(json!({"age": 1}))), 422, "the key with another body");
    check("POST", "/api/users", &post("oa k2", user(json!({}))), 400, "an invalid Idempotency-Key");
    let batch = json!([user(json!({})), user(json!({"name": ""}))]);
    check("POST", "/api/users", &post("oa-k3", batch.clone()), 200, "a batch with an Idempotency-Key");
    check("POST", "/api/users", &post("oa-k3", batch), 200, "its repeat");
}

#[test]
fn every_api_error_is_a_described_problem() {
    use axum::response::IntoResponse;
    use data_ingestion_api::domain::FieldError;
    use std::time::Duration;

    let spec = Spec::load();
    let errors = vec![
        ApiError::InvalidJson("expected value at line 1 column 1".into()),
        ApiError::InvalidRecord(vec![FieldError::new("name", "is required"), FieldError::new("", "x")]),
        ApiError::InvalidBatch(vec![FieldError::new("[0].email", "is required")]),
        ApiError::BodyRead("connection reset".into()),
        ApiError::BodyTimeout { after: Duration::from_secs(10) },
        ApiError::InvalidHeader { name: "Idempotency-Key", why: "must be 1 to 255 visible ASCII characters" },
        ApiError::IdempotencyConflict,
        ApiError::Unauthorized { missing: true },
        ApiError::Unauthorized { missing: false },
        ApiError::InvalidUserId("must not be empty"),
        ApiError::TooLarge { limit: 65536 },
        ApiError::TooManyRecords { limit: 500, got: 501 },
        ApiError::UnsupportedMediaType { got: None },
        ApiError::UnsupportedMediaType { got: Some("text/csv".into()) },
        ApiError::MethodNotAllowed,
        ApiError::NotFound("User x".into()),
        ApiError::Unavailable { what: "store", retry_after: Duration::from_millis(1500) },
        ApiError::Unavailable { what: "topic", retry_after: Duration::ZERO },
        ApiError::Overloaded { retry_after: Duration::from_secs(1) },
        ApiError::InvalidInvocation("no Data object".into()),
        ApiError::UnsupportedEncoding { got: "gzip".into() },
        ApiError::Internal,
    ];
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for error in errors {
        let what = format!("{error:?}");
        let schema = described_as(&error);
        let response = error.into_response();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = runtime.block_on(axum::body::to_bytes(response.into_body(), usize::MAX)).unwrap().to_vec();
        let reply = Reply { status, headers, body };
        // The problem's own schema, and the media type and headers of a response that uses it.
        let declared = if status == 503 {
            spec.doc["components"]["responses"]["Unavailable"].clone()
        } else {
            json!({"content": {"application/problem+json": {"schema": spec.schema(schema)}}})
        };
        conforms(&spec, &declared, &reply, &what);
        let declared_schema =
            spec.resolve(&declared)["content"]["application/problem+json"]["schema"].clone();
        assert_eq!(declared_schema, spec.schema(schema), "{what}");
    }
}

/// One record per case, each the schema and the service must agree on. Rules a JSON Schema
/// cannot state (the email's finer points, `attributes` size and depth, `36.0` as an age)
/// are left out: the schema's descriptions state them.
fn record_cases() -> Vec<Value> {
    let mut cases = vec![
        user(json!({})),
        user(json!({"id": null, "age": null, "country": null, "attributes": null})),
        user(
            json!({"id": "usr-1", "age": 0, "country": "FR", "attributes": {"tags": ["a"], "n": {"x": null}}}),
        ),
        user(json!({"id": "A-z_0.9:@", "age": 150})),
        user(json!({"id": "x".repeat(128)})),
        user(json!({"id": "x".repeat(129)})),
        user(json!({"id": ""})),
        user(json!({"id": "ab/cd"})),
        user(json!({"id": "a#b"})),
        user(json!({"id": "a b"})),
        user(json!({"id": ".."})),
        user(json!({"id": "."})),
        user(json!({"id": "..."})),
        user(json!({"id": "é"})),
        user(json!({"id": "abc\n"})),
        user(json!({"id": 123})),
        user(json!({"age": -1})),
        user(json!({"age": 151})),
        user(json!({"age": "36"})),
        user(json!({"age": 36.5})),
        user(json!({"age": true})),
        user(json!({"country": "de"})),
        user(json!({"country": "XX"})),
        user(json!({"country": "DEU"})),
        user(json!({"country": 49})),
        user(json!({"attributes": "vip"})),
        user(json!({"attributes": []})),
        user(json!({"attributes": {}})),
        user(json!({"ingestedAt": "2024-01-01T00:00:00Z"})),
        user(json!({"emial": "a@example.com"})),
        user(json!({"email": "a".repeat(250) + "@x.io"})),
        // 254 characters is the longest address; 255 is one too many.
        user(
            json!({"email": format!("{}@{}.{}.{}.io", "a".repeat(64), "b".repeat(63), "c".repeat(63), "d".repeat(58))}),
        ),
        user(
            json!({"email": format!("{}@{}.{}.{}.io", "a".repeat(64), "b".repeat(63), "c".repeat(63), "d".repeat(59))}),
        ),
        user(json!({"email": 5})),
        user(json!({"email": null})),
        json!({"name": "Ada"}),
        json!({"email": "ada@example.com"}),
        json!({}),
        json!([1]),
        json!("x"),
        json!(null),
    ];
    // Names: trimming, white space and control characters, the length limit after trimming.
    for name in [
        "A".to_owned(),
        "Frédéric Lambert".into(),
        "用户 名".into(),
        "🦀".repeat(200),
        "🦀".repeat(201),
        "x".repeat(200),
        "x".repeat(201),
        format!("  {}  ", "x".repeat(200)),
        format!("\t\n{}\r\u{85}\u{a0}\u{3000}", "y".repeat(200)),
        format!("a{}b", " ".repeat(198)),
        format!("a{}b", " ".repeat(199)),
        "Ada\u{a0}Lovelace".into(),
        "Ada\u{2003}Lovelace".into(),
        "\u{feff}Ada".into(),
        "Ada\u{200b}".into(),
        "".into(),
        " ".into(),
        "\t\n\u{b}\u{c}\r \u{85}\u{a0}\u{1680}\u{2000}\u{200a}\u{2028}\u{2029}\u{202f}\u{205f}\u{3000}"
            .into(),
        "Ada\u{0}L".into(),
        "Ada\tLovelace".into(),
        "Ada\nLovelace".into(),
        "Ada\u{7f}".into(),
        "Ada\u{85}L".into(),
        "Ada\u{9f}L".into(),
        "Ada\u{a0}".into(),
        "\u{1c}Ada".into(),
        "Ada\u{1f}".into(),
    ] {
        cases.push(user(json!({ "name": name })));
    }
    cases.push(user(json!({"name": null})));
    cases.push(user(json!({"name": ["Ada"]})));
    cases
}

#[test]
fn the_user_record_schema_accepts_exactly_what_the_service_accepts() {
    let spec = Spec::load();
    let record = spec.validator(&spec.schema("UserRecord"));
    let document = spec.validator(&spec.schema("UserDocument"));
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &[("INGEST_WORKER", "off")]);
    let client = blocking_client();

    let mut cases = record_cases();
    // Every two-letter code: the schema's country list is the service's.
    for a in 'A'..='Z' {
        for b in 'A'..='Z' {
            cases.push(user(json!({"country": format!("{a}{b}")})));
        }
    }
    let mut disagreements = Vec::new();
    for chunk in cases.chunks(400) {
        let reply = send(
            client
                .post(server.url("/api/users"))
                .header("content-type", "application/json")
                .body(Value::Array(chunk.to_vec()).to_string()),
        );
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        let answer = reply.json();
        for (case, result) in chunk.iter().zip(answer["results"].as_array().unwrap()) {
            let accepted = result["status"] == 202;
            if record.is_valid(case) != accepted {
                disagreements.push(format!(
                    "the schema says {}, the service says {}: {case}",
                    if accepted { "invalid" } else { "valid" },
                    result
                ));
            }
        }
    }
    assert!(disagreements.is_empty(), "UserRecord disagrees with the service:\n{}", disagreements.join("\n"));

    // And a stored document conforms to UserDocument (the name trimmed, ingestedAt added).
    let bytes = std::fs::metadata(dir.path().join("queue.db")).map(|m| m.len()).unwrap_or(0);
    assert!(bytes > 0, "the accepted records are queued");
    let conn = rusqlite::Connection::open(dir.path().join("queue.db")).unwrap();
    let mut stmt = conn.prepare("SELECT body FROM messages").unwrap();
    let bodies: Vec<Vec<u8>> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert!(bodies.len() > 250, "{} messages queued", bodies.len());
    for body in bodies {
        let doc: Value = serde_json::from_slice(&body).unwrap();
        let errors: Vec<String> =
            document.iter_errors(&doc).map(|e| format!("{}: {e}", e.instance_path())).collect();
        assert!(errors.is_empty(), "{doc} is not a UserDocument: {errors:?}");
    }
}
