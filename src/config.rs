//! Every setting the service reads, from the environment, in one struct.
//!
//! [`SETTINGS`] lists them all with their defaults: the README's table and the Terraform app
//! settings are checked against it, so they cannot drift from what the code reads.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};

/// One setting: its environment variable, its default and what it does.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub description: &'static str,
}

/// Every environment variable the `serve` command reads.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: "FUNCTIONS_CUSTOMHANDLER_PORT",
        default: "",
        description: "Port to listen on; set by the Azure Functions host. Wins over `--port` (default 7071).",
    },
    Setting {
        name: "BIND_ADDRESS",
        default: "127.0.0.1",
        description: "Address to listen on (`--host`). The Functions host always calls 127.0.0.1.",
    },
    Setting {
        name: "INGEST_API_KEY",
        default: "",
        description: "When set, every route but `GET /` and `GET /api/health` requires it, as the Functions host's function keys are sent: an `x-functions-key` header or a `code` query parameter. Required to listen on a non-loopback address.",
    },
    Setting {
        name: "INGEST_BACKEND",
        default: "embedded",
        description: "`embedded`: SQLite queue and store under DATA_DIR; `azure`: Service Bus and Cosmos DB.",
    },
    Setting {
        name: "DATA_DIR",
        default: "./data",
        description: "Directory of the embedded queue (`queue.db`) and store (`users.db`) (`--data-dir`).",
    },
    Setting {
        name: "MAX_RECORD_BYTES",
        default: "65536",
        description: "Largest accepted request body for one record, in bytes; larger ones get 413.",
    },
    Setting {
        name: "MAX_BATCH_BYTES",
        default: "1048576",
        description: "Largest accepted request body for a batch (a JSON array of records), in bytes; larger ones get 413.",
    },
    Setting {
        name: "MAX_BATCH_RECORDS",
        default: "500",
        description: "Most records in one batch; more get 413.",
    },
    Setting {
        name: "MAX_CONNECTIONS",
        default: "1024",
        description: "Open connections at most; a connection beyond gets 503 with Retry-After and is closed.",
    },
    Setting {
        name: "MAX_IN_FLIGHT",
        default: "512",
        description: "Requests handled at once at most; more get 503 with Retry-After (`GET /` and `GET /api/health` are exempt).",
    },
    Setting {
        name: "HEADER_TIMEOUT_MS",
        default: "10000",
        description: "Time a client has to send a request's headers; slower connections are closed.",
    },
    Setting {
        name: "BODY_TIMEOUT_MS",
        default: "30000",
        description: "Time a client has to send a request body; slower ones get 408.",
    },
    Setting {
        name: "INGEST_WORKER",
        default: "on",
        description: "`on`: the in-process worker drains the embedded queue; `off`: messages stay queued.",
    },
    Setting {
        name: "MAX_DELIVERY_COUNT",
        default: "10",
        description: "azure: the subscription's max delivery count; on the last delivery `/ingest-consume` parks a message it still cannot store. (Embedded: a store outage never uses up deliveries; the worker backs off.)",
    },
    Setting {
        name: "CONSUME_RETRY_BUDGET_MS",
        default: "30000",
        description: "azure: how long `/ingest-consume` waits out a store outage (retrying with backoff) before failing the invocation for the host to redeliver.",
    },
    Setting {
        name: "RETRY_BACKOFF_MS",
        default: "500",
        description: "First retry delay of a failed message; doubles per attempt up to RETRY_BACKOFF_MAX_MS.",
    },
    Setting {
        name: "RETRY_BACKOFF_MAX_MS",
        default: "60000",
        description: "Longest retry delay of a failed message.",
    },
    Setting {
        name: "SHUTDOWN_GRACE_SECS",
        default: "10",
        description: "On SIGTERM/Ctrl-C, how long in-flight requests may take before the process exits.",
    },
    Setting {
        name: "RUST_LOG",
        default: "info",
        description: "Log filter (tracing `EnvFilter` syntax); logs are JSON lines on stdout.",
    },
    Setting {
        name: "APPLICATIONINSIGHTS_CONNECTION_STRING",
        default: "",
        description: "When set, requests and metrics are also exported to this Application Insights resource (set by the Functions app).",
    },
    Setting {
        name: "TELEMETRY_EXPORT_INTERVAL_MS",
        default: "60000",
        description: "How often metrics (and the requests seen meanwhile) are sent to Application Insights.",
    },
    Setting {
        name: "SERVICEBUS_CONNECTION_STRING",
        default: "",
        description: "azure: a send-only Service Bus connection string (`Endpoint=sb://…;SharedAccessKeyName=…;SharedAccessKey=…[;EntityPath=topic]`).",
    },
    Setting {
        name: "SERVICEBUS_TOPIC",
        default: "",
        description: "azure: the topic to publish to; may be left out when the connection string has an EntityPath.",
    },
    Setting {
        name: "SERVICEBUS_ENDPOINT",
        default: "",
        description: "azure: another base URL for the Service Bus REST API (a local peer in tests); default `https://{namespace}.servicebus.windows.net`.",
    },
    Setting { name: "SERVICEBUS_TIMEOUT_MS", default: "5000", description: "azure: timeout of one send to Service Bus." },
    Setting {
        name: "SERVICEBUS_MAX_ATTEMPTS",
        default: "3",
        description: "azure: sends of one message on 5xx, 429 or timeout before the POST answers 503.",
    },
    Setting {
        name: "COSMOS_ENDPOINT",
        default: "",
        description: "azure: the Cosmos DB account endpoint, `https://{account}.documents.azure.com:443/`.",
    },
    Setting {
        name: "COSMOS_KEY",
        default: "",
        description: "azure: a Cosmos DB account key; when empty the app's managed identity is used (needs the data-plane role).",
    },
    Setting { name: "COSMOS_DATABASE", default: "ingestion", description: "azure: the Cosmos DB database." },
    Setting {
        name: "COSMOS_CONTAINER",
        default: "users",
        description: "azure: the container of user documents, partition key `/id`.",
    },
    Setting {
        name: "COSMOS_DEADLETTER_CONTAINER",
        default: "deadletters",
        description: "azure: the container where `/ingest-consume` parks messages that can never succeed, partition key `/id`.",
    },
    Setting {
        name: "COSMOS_IDEMPOTENCY_CONTAINER",
        default: "idempotency",
        description: "azure: the container where Idempotency-Keys are claimed (one document per key, kept a day), partition key `/id`.",
    },
    Setting {
        name: "COSMOS_TIMEOUT_MS",
        default: "5000",
        description: "azure: the most one Cosmos DB operation may take, throttling retries included.",
    },
    Setting {
        name: "COSMOS_CREATE_IF_MISSING",
        default: "false",
        description: "azure: create the database and containers at start-up (for local peers; Terraform creates them in Azure).",
    },
];

/// Settings the Functions host reads, not the binary: `ingest-consume/function.json` names them.
pub const HOST_SETTINGS: &[Setting] = &[
    Setting {
        name: "SERVICEBUS_LISTEN_CONNECTION",
        default: "",
        description: "host: a listen-only Service Bus connection string for the trigger of `ingest-consume`.",
    },
    Setting {
        name: "SERVICEBUS_SUBSCRIPTION",
        default: "",
        description: "host: the topic subscription that triggers `ingest-consume`.",
    },
    Setting {
        name: "FUNCTIONS_WORKER_RUNTIME",
        default: "custom",
        description: "host: `custom` for a custom handler.",
    },
];

/// Which adapters back the topic and the store.
#[derive(Debug, Clone)]
pub enum Backend {
    Embedded,
    /// The Azure settings are checked when the config is read, but a mistake is reported only
    /// after the listener is bound (the host polls `GET /` meanwhile), hence the `Result`.
    Azure(Result<Box<AzureConfig>, String>),
}

/// A secret value: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where and how to publish to Service Bus.
#[derive(Debug, Clone)]
pub struct ServiceBusConfig {
    /// The namespace name: the crate builds `https://{namespace}.servicebus.windows.net/`.
    pub namespace: String,
    pub topic: String,
    pub key_name: String,
    pub key: Secret,
    /// Another base URL for the REST API (a local peer); `None` in Azure.
    pub endpoint: Option<url::Url>,
    pub timeout: Duration,
    pub max_attempts: u32,
}

/// Where and how to reach Cosmos DB.
#[derive(Debug, Clone)]
pub struct CosmosConfig {
    pub endpoint: url::Url,
    /// `None`: authenticate with the app's managed identity.
    pub key: Option<Secret>,
    pub database: String,
    pub container: String,
    pub dead_letter_container: String,
    pub idempotency_container: String,
    pub create_if_missing: bool,
    /// The most one operation may take, retries included.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct AzureConfig {
    pub servicebus: ServiceBusConfig,
    pub cosmos: CosmosConfig,
}

/// The parts of a Service Bus connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceBusConnection {
    pub namespace: String,
    pub key_name: String,
    pub key: String,
    pub entity_path: Option<String>,
}

impl ServiceBusConnection {
    /// Parses `Endpoint=sb://{ns}.servicebus.windows.net/;SharedAccessKeyName=…;SharedAccessKey=…[;EntityPath=…]`.
    /// Errors never quote the value: it holds a key.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut endpoint = None;
        let mut key_name = None;
        let mut key = None;
        let mut entity_path = None;
        for part in raw.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err("has a part without `=`".into());
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value.trim().to_owned()),
                "sharedaccesskeyname" => key_name = Some(value.trim().to_owned()),
                "sharedaccesskey" => key = Some(value.trim().to_owned()),
                "entitypath" => entity_path = Some(value.trim().to_owned()).filter(|v| !v.is_empty()),
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or("has no Endpoint")?;
        let url = url::Url::parse(&endpoint).map_err(|_| "has an Endpoint that is not a URL".to_owned())?;
        let host = url.host_str().ok_or("has an Endpoint without a host")?;
        let namespace = host
            .strip_suffix(".servicebus.windows.net")
            .ok_or("has an Endpoint outside servicebus.windows.net")?
            .to_owned();
        let key_name = key_name.filter(|k| !k.is_empty()).ok_or("has no SharedAccessKeyName")?;
        let key = key.filter(|k| !k.is_empty()).ok_or("has no SharedAccessKey")?;
        Ok(Self { namespace, key_name, key, entity_path })
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    /// The key every request must carry, when set.
    pub api_key: Option<Secret>,
    pub port: u16,
    pub backend: Backend,
    pub data_dir: PathBuf,
    pub max_record_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_records: usize,
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub worker: bool,
    pub max_delivery_count: u32,
    pub consume_retry_budget: Duration,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub shutdown_grace: Duration,
    /// Where to export telemetry besides stdout and `/metrics`.
    pub app_insights: Option<AppInsightsConfig>,
}

/// An Application Insights resource, from its connection string.
#[derive(Debug, Clone)]
pub struct AppInsightsConfig {
    /// Not a credential, but it lets anyone write telemetry to the resource: kept out of logs.
    pub instrumentation_key: Secret,
    /// `{IngestionEndpoint}/v2.1/track`.
    pub track_url: url::Url,
    pub interval: Duration,
}

impl AppInsightsConfig {
    /// Reads `InstrumentationKey=…;IngestionEndpoint=https://…/;…`. Errors never repeat the value.
    pub fn parse(connection_string: &str, interval: Duration) -> anyhow::Result<Self> {
        let mut key = None;
        let mut endpoint = None;
        for part in connection_string.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                bail!("APPLICATIONINSIGHTS_CONNECTION_STRING has a part without `=`");
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "instrumentationkey" => key = Some(value.trim().to_owned()),
                "ingestionendpoint" => endpoint = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        let key = key
            .filter(|k| !k.is_empty())
            .context("APPLICATIONINSIGHTS_CONNECTION_STRING has no InstrumentationKey")?;
        // The global endpoint, for connection strings of the old form.
        let endpoint = endpoint.unwrap_or_else(|| "https://dc.services.visualstudio.com/".into());
        let mut base =
            url::Url::parse(&endpoint).ok().filter(|u| matches!(u.scheme(), "https" | "http")).context(
                "APPLICATIONINSIGHTS_CONNECTION_STRING has an IngestionEndpoint that is not an http(s) URL",
            )?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let track_url = base.join("v2.1/track").context("cannot build the track URL")?;
        Ok(Self { instrumentation_key: Secret::new(key), track_url, interval })
    }
}

/// Command-line values, which win over the environment (except the host's port).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub port: Option<u16>,
    pub host: Option<IpAddr>,
    pub data_dir: Option<PathBuf>,
}

pub const DEFAULT_PORT: u16 = 7071;

impl Config {
    /// Reads the process environment.
    pub fn from_env(overrides: Overrides) -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok(), overrides)
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        overrides: Overrides,
    ) -> anyhow::Result<Self> {
        let get = |name: &str| -> Option<String> {
            debug_assert!(SETTINGS.iter().any(|s| s.name == name), "{name} is missing from SETTINGS");
            lookup(name).filter(|v| !v.trim().is_empty())
        };
        let parse = |name: &str, default: &str| -> anyhow::Result<u64> {
            let raw = get(name).unwrap_or_else(|| default.to_owned());
            raw.trim().parse::<u64>().with_context(|| format!("{name} must be a whole number, not {raw:?}"))
        };

        // The Functions host tells us the port; nothing may override it.
        let port = match get("FUNCTIONS_CUSTOMHANDLER_PORT") {
            Some(raw) => raw.trim().parse::<u16>().with_context(|| {
                format!("FUNCTIONS_CUSTOMHANDLER_PORT must be a port number, not {raw:?}")
            })?,
            None => overrides.port.unwrap_or(DEFAULT_PORT),
        };
        let bind = match overrides.host {
            Some(host) => host,
            None => {
                let raw = get("BIND_ADDRESS").unwrap_or_else(|| "127.0.0.1".into());
                raw.trim()
                    .parse()
                    .with_context(|| format!("BIND_ADDRESS must be an IP address, not {raw:?}"))?
            }
        };
        let api_key = get("INGEST_API_KEY").map(|k| Secret::new(k.trim()));
        if !bind.is_loopback() && api_key.is_none() {
            bail!(
                "the service would listen on {bind}, which is not a loopback address, without an API key: \
                 set INGEST_API_KEY (clients send it as x-functions-key), or listen on 127.0.0.1"
            );
        }
        let backend = match get("INGEST_BACKEND").as_deref().map(str::trim) {
            None | Some("embedded") => Backend::Embedded,
            Some("azure") => {
                Backend::Azure(AzureConfig::from_lookup(&get).map(Box::new).map_err(|e| format!("{e:#}")))
            }
            Some(other) => bail!("INGEST_BACKEND must be `embedded` or `azure`, not {other:?}"),
        };
        let data_dir = overrides
            .data_dir
            .or_else(|| get("DATA_DIR").map(PathBuf::from))
            .unwrap_or_else(|| "./data".into());
        let worker = match get("INGEST_WORKER").as_deref().map(str::trim) {
            None | Some("on") | Some("true") | Some("1") => true,
            Some("off") | Some("false") | Some("0") => false,
            Some(other) => bail!("INGEST_WORKER must be `on` or `off`, not {other:?}"),
        };
        let max_record_bytes = parse("MAX_RECORD_BYTES", "65536")?;
        if !(1024..=16 * 1024 * 1024).contains(&max_record_bytes) {
            bail!("MAX_RECORD_BYTES must be between 1024 and 16777216, not {max_record_bytes}");
        }
        let max_batch_bytes = parse("MAX_BATCH_BYTES", "1048576")?;
        if !(max_record_bytes..=64 * 1024 * 1024).contains(&max_batch_bytes) {
            bail!("MAX_BATCH_BYTES must be between MAX_RECORD_BYTES ({max_record_bytes}) and 67108864, not {max_batch_bytes}");
        }
        let max_batch_records = parse("MAX_BATCH_RECORDS", "500")?;
        if !(1..=10_000).contains(&max_batch_records) {
            bail!("MAX_BATCH_RECORDS must be between 1 and 10000, not {max_batch_records}");
        }
        let max_delivery_count = parse("MAX_DELIVERY_COUNT", "10")?;
        if !(1..=1000).contains(&max_delivery_count) {
            bail!("MAX_DELIVERY_COUNT must be between 1 and 1000, not {max_delivery_count}");
        }
        Ok(Self {
            bind,
            api_key,
            port,
            backend,
            data_dir,
            max_record_bytes: max_record_bytes as usize,
            max_batch_bytes: max_batch_bytes as usize,
            max_batch_records: max_batch_records as usize,
            max_connections: parse("MAX_CONNECTIONS", "1024")?.clamp(1, 1_000_000) as usize,
            max_in_flight: parse("MAX_IN_FLIGHT", "512")?.clamp(1, 1_000_000) as usize,
            header_timeout: Duration::from_millis(parse("HEADER_TIMEOUT_MS", "10000")?.max(100)),
            body_timeout: Duration::from_millis(parse("BODY_TIMEOUT_MS", "30000")?.max(100)),
            worker,
            max_delivery_count: max_delivery_count as u32,
            consume_retry_budget: Duration::from_millis(parse("CONSUME_RETRY_BUDGET_MS", "30000")?),
            retry_base: Duration::from_millis(parse("RETRY_BACKOFF_MS", "500")?.max(1)),
            retry_max: Duration::from_millis(parse("RETRY_BACKOFF_MAX_MS", "60000")?.max(1)),
            shutdown_grace: Duration::from_secs(parse("SHUTDOWN_GRACE_SECS", "10")?),
            app_insights: match get("APPLICATIONINSIGHTS_CONNECTION_STRING") {
                None => None,
                Some(raw) => {
                    let interval =
                        Duration::from_millis(parse("TELEMETRY_EXPORT_INTERVAL_MS", "60000")?.max(50));
                    Some(AppInsightsConfig::parse(&raw, interval)?)
                }
            },
        })
    }
}

impl AzureConfig {
    fn from_lookup(get: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let required =
            |name: &str| get(name).with_context(|| format!("{name} is required when INGEST_BACKEND=azure"));
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match get(name) {
                None => Ok(default),
                Some(raw) => {
                    raw.trim().parse().with_context(|| format!("{name} must be a whole number, not {raw:?}"))
                }
            }
        };

        let connection = ServiceBusConnection::parse(&required("SERVICEBUS_CONNECTION_STRING")?)
            .map_err(|why| anyhow::anyhow!("SERVICEBUS_CONNECTION_STRING {why}"))?;
        let topic = match (get("SERVICEBUS_TOPIC"), &connection.entity_path) {
            (Some(topic), Some(path)) if topic.trim() != path => bail!(
                "SERVICEBUS_TOPIC ({}) differs from the EntityPath of SERVICEBUS_CONNECTION_STRING ({path})",
                topic.trim()
            ),
            (Some(topic), _) => topic.trim().to_owned(),
            (None, Some(path)) => path.clone(),
            (None, None) => {
                bail!("SERVICEBUS_TOPIC is required (or an EntityPath in SERVICEBUS_CONNECTION_STRING)")
            }
        };
        let endpoint = match get("SERVICEBUS_ENDPOINT") {
            None => None,
            Some(raw) => Some(
                url::Url::parse(raw.trim())
                    .with_context(|| format!("SERVICEBUS_ENDPOINT must be a URL, not {raw:?}"))?,
            ),
        };
        let max_attempts = number("SERVICEBUS_MAX_ATTEMPTS", 3)?;
        if !(1..=10).contains(&max_attempts) {
            bail!("SERVICEBUS_MAX_ATTEMPTS must be between 1 and 10, not {max_attempts}");
        }
        let timeout = number("SERVICEBUS_TIMEOUT_MS", 5000)?;
        if !(100..=60_000).contains(&timeout) {
            bail!("SERVICEBUS_TIMEOUT_MS must be between 100 and 60000, not {timeout}");
        }
        let servicebus = ServiceBusConfig {
            namespace: connection.namespace,
            topic,
            key_name: connection.key_name,
            key: Secret::new(connection.key),
            endpoint,
            timeout: Duration::from_millis(timeout),
            max_attempts: max_attempts as u32,
        };

        let raw_endpoint = required("COSMOS_ENDPOINT")?;
        let cosmos_endpoint = url::Url::parse(raw_endpoint.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http") && u.host_str().is_some())
            .with_context(|| format!("COSMOS_ENDPOINT must be an https:// URL, not {raw_endpoint:?}"))?;
        let name = |setting: &str, default: &str| -> anyhow::Result<String> {
            let value = get(setting).unwrap_or_else(|| default.to_owned()).trim().to_owned();
            let ok = !value.is_empty()
                && value.len() <= 255
                && !value.contains(['/', '\\', '?', '#'])
                && !value.ends_with(' ');
            if !ok {
                bail!("{setting} must be a Cosmos DB resource name (no / \\ ? #), not {value:?}");
            }
            Ok(value)
        };
        let create_if_missing = match get("COSMOS_CREATE_IF_MISSING").as_deref().map(str::trim) {
            None | Some("false") | Some("0") | Some("off") => false,
            Some("true") | Some("1") | Some("on") => true,
            Some(other) => bail!("COSMOS_CREATE_IF_MISSING must be `true` or `false`, not {other:?}"),
        };
        let cosmos_timeout = number("COSMOS_TIMEOUT_MS", 5000)?;
        if !(1000..=60_000).contains(&cosmos_timeout) {
            bail!("COSMOS_TIMEOUT_MS must be between 1000 and 60000, not {cosmos_timeout}");
        }
        let cosmos = CosmosConfig {
            endpoint: cosmos_endpoint,
            key: get("COSMOS_KEY").map(|k| Secret::new(k.trim())),
            database: name("COSMOS_DATABASE", "ingestion")?,
            container: name("COSMOS_CONTAINER", "users")?,
            dead_letter_container: name("COSMOS_DEADLETTER_CONTAINER", "deadletters")?,
            idempotency_container: name("COSMOS_IDEMPOTENCY_CONTAINER", "idempotency")?,
            create_if_missing,
            timeout: Duration::from_millis(cosmos_timeout),
        };
        Ok(Self { servicebus, cosmos })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)], overrides: Overrides) -> anyhow::Result<Config> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned(), overrides)
    }

    #[test]
    fn defaults_serve_the_embedded_backend_on_loopback_port_7071() {
        let c = config(&[], Overrides::default()).unwrap();
        assert_eq!(c.port, 7071);
        assert_eq!(c.bind.to_string(), "127.0.0.1");
        assert!(matches!(c.backend, Backend::Embedded));
        assert_eq!(c.max_record_bytes, 65536);
        assert!(c.worker);
    }

    #[test]
    fn the_hosts_port_wins_over_the_flag_and_the_flag_over_the_default() {
        let flag = Overrides { port: Some(9000), ..Default::default() };
        assert_eq!(config(&[("FUNCTIONS_CUSTOMHANDLER_PORT", "4242")], flag.clone()).unwrap().port, 4242);
        assert_eq!(config(&[], flag).unwrap().port, 9000);
    }

    #[test]
    fn a_malformed_setting_is_named_in_the_error() {
        for (name, value) in [
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "http"),
            ("BIND_ADDRESS", "localhost:80"),
            ("INGEST_BACKEND", "postgres"),
            ("MAX_RECORD_BYTES", "64k"),
            ("MAX_RECORD_BYTES", "10"),
            ("INGEST_WORKER", "maybe"),
            ("MAX_DELIVERY_COUNT", "0"),
            ("RETRY_BACKOFF_MS", "-1"),
        ] {
            let err = config(&[(name, value)], Overrides::default()).unwrap_err();
            assert!(format!("{err:#}").contains(name), "{name}={value}: {err:#}");
        }
    }

    const CONNECTION: &str =
        "Endpoint=sb://ingest-ns.servicebus.windows.net/;SharedAccessKeyName=api-send;SharedAccessKey=c2VjcmV0a2V5PQ==";

    fn azure(vars: &[(&str, &str)]) -> Result<Box<AzureConfig>, String> {
        let mut all = vec![
            ("INGEST_BACKEND", "azure"),
            ("SERVICEBUS_CONNECTION_STRING", CONNECTION),
            ("SERVICEBUS_TOPIC", "users"),
            ("COSMOS_ENDPOINT", "https://acct.documents.azure.com:443/"),
        ];
        for (k, v) in vars {
            all.retain(|(name, _)| name != k);
            all.push((k, v));
        }
        match config(&all, Overrides::default()).unwrap().backend {
            Backend::Azure(result) => result,
            Backend::Embedded => panic!("INGEST_BACKEND=azure gave the embedded backend"),
        }
    }

    #[test]
    fn the_azure_settings_are_read_with_their_defaults() {
        let c = azure(&[]).unwrap();
        assert_eq!(c.servicebus.namespace, "ingest-ns");
        assert_eq!(c.servicebus.key_name, "api-send");
        assert_eq!(c.servicebus.key.expose(), "c2VjcmV0a2V5PQ==", "a key keeps its trailing `=`");
        assert_eq!(c.servicebus.topic, "users");
        assert_eq!(c.servicebus.max_attempts, 3);
        assert_eq!(c.cosmos.database, "ingestion");
        assert_eq!(c.cosmos.container, "users");
        assert_eq!(c.cosmos.dead_letter_container, "deadletters");
        assert_eq!(c.cosmos.idempotency_container, "idempotency");
        assert!(c.cosmos.key.is_none(), "no key means managed identity");
        assert!(!c.cosmos.create_if_missing);
    }

    #[test]
    fn the_entity_path_of_the_connection_string_names_the_topic() {
        let with_path = format!("{CONNECTION};EntityPath=ingest");
        assert_eq!(
            azure(&[("SERVICEBUS_CONNECTION_STRING", &with_path), ("SERVICEBUS_TOPIC", "")])
                .unwrap()
                .servicebus
                .topic,
            "ingest"
        );
        let err = azure(&[("SERVICEBUS_CONNECTION_STRING", &with_path), ("SERVICEBUS_TOPIC", "other")])
            .unwrap_err();
        assert!(err.contains("SERVICEBUS_TOPIC") && err.contains("EntityPath"), "{err}");
    }

    #[test]
    fn a_missing_or_malformed_azure_setting_is_named_and_no_secret_is_quoted() {
        for (name, value) in [
            ("SERVICEBUS_CONNECTION_STRING", ""),
            (
                "SERVICEBUS_CONNECTION_STRING",
                "Endpoint=sb://x.example.com/;SharedAccessKeyName=a;SharedAccessKey=TOPSECRET",
            ),
            ("SERVICEBUS_CONNECTION_STRING", "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=a"),
            ("SERVICEBUS_CONNECTION_STRING", "TOPSECRET"),
            ("SERVICEBUS_TOPIC", ""),
            ("SERVICEBUS_ENDPOINT", "not a url"),
            ("SERVICEBUS_MAX_ATTEMPTS", "0"),
            ("SERVICEBUS_TIMEOUT_MS", "5s"),
            ("COSMOS_ENDPOINT", ""),
            ("COSMOS_ENDPOINT", "acct.documents.azure.com"),
            ("COSMOS_CONTAINER", "a/b"),
            ("COSMOS_CREATE_IF_MISSING", "yes please"),
            ("COSMOS_TIMEOUT_MS", "10"),
        ] {
            let err = azure(&[(name, value)]).unwrap_err();
            assert!(err.contains(name), "{name}={value}: {err}");
            assert!(!err.contains("TOPSECRET"), "a secret leaked into: {err}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let c = azure(&[("COSMOS_KEY", "TOPSECRET")]).unwrap();
        let printed = format!("{c:?}");
        assert!(!printed.contains("TOPSECRET") && !printed.contains("c2VjcmV0a2V5PQ=="), "{printed}");
    }

    #[test]
    fn every_setting_is_described_once() {
        let mut names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SETTINGS.len());
        assert!(SETTINGS.iter().all(|s| !s.description.is_empty()));
    }
}
