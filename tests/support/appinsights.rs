//! A local HTTP endpoint that plays Application Insights' ingestion API
//! (`POST /v2.1/track`, a JSON array of telemetry items), because no Application Insights
//! runs outside Azure. It checks what the real one needs of each item (name, time, iKey,
//! data.baseType) and keeps them for the test to inspect, with the raw bodies.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

pub const IKEY: &str = "00000000-1111-2222-3333-444444444444";

#[derive(Default)]
struct Shared {
    items: Vec<Value>,
    bodies: Vec<String>,
    refused: Vec<String>,
}

pub struct FakeAppInsights {
    shared: Arc<Mutex<Shared>>,
    pub endpoint: String,
    _runtime: Arc<tokio::runtime::Runtime>,
}

impl FakeAppInsights {
    pub fn start() -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let app = Router::new().route("/v2.1/track", post(track)).with_state(shared.clone());
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("http://{}/", listener.local_addr().unwrap());
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { shared, endpoint, _runtime: Arc::new(runtime) }
    }

    /// The connection string the Functions app would be given.
    pub fn connection_string(&self) -> String {
        format!(
            "InstrumentationKey={IKEY};IngestionEndpoint={};LiveEndpoint=http://127.0.0.1:9/",
            self.endpoint
        )
    }

    pub fn items(&self) -> Vec<Value> {
        self.shared.lock().unwrap().items.clone()
    }

    /// Every request body received, as text.
    pub fn bodies(&self) -> String {
        self.shared.lock().unwrap().bodies.join("\n")
    }

    /// Items the real endpoint would refuse, with why.
    pub fn refused(&self) -> Vec<String> {
        self.shared.lock().unwrap().refused.clone()
    }

    /// The request items.
    pub fn requests(&self) -> Vec<Value> {
        self.items().into_iter().filter(|i| i["name"] == "Microsoft.ApplicationInsights.Request").collect()
    }

    /// The metric points named `name`, each as its `metrics[0]` with `properties` added.
    pub fn metric_points(&self, name: &str) -> Vec<Value> {
        self.items()
            .into_iter()
            .filter(|i| i["name"] == "Microsoft.ApplicationInsights.Metric")
            .filter_map(|i| {
                let data = &i["data"]["baseData"];
                let mut point = data["metrics"][0].clone();
                (point["name"] == name).then(|| {
                    point["properties"] = data["properties"].clone();
                    point
                })
            })
            .collect()
    }
}

async fn track(State(shared): State<Arc<Mutex<Shared>>>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body).into_owned();
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&text) else {
        shared.lock().unwrap().refused.push(format!("not a JSON array: {text:.200}"));
        return (StatusCode::BAD_REQUEST, "expected a JSON array").into_response();
    };
    let mut shared = shared.lock().unwrap();
    let received = items.len();
    for item in items {
        let problem = if item["iKey"] != IKEY {
            Some("wrong or missing iKey")
        } else if item["name"].as_str().is_none_or(str::is_empty) {
            Some("no name")
        } else if item["time"].as_str().is_none_or(|t| !t.contains('T')) {
            Some("no time")
        } else if item["data"]["baseType"].as_str().is_none() {
            Some("no data.baseType")
        } else {
            None
        };
        match problem {
            Some(why) => shared.refused.push(format!("{why}: {item}")),
            None => shared.items.push(item),
        }
    }
    shared.bodies.push(text);
    axum::Json(json!({"itemsReceived": received, "itemsAccepted": received, "errors": []})).into_response()
}
