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
        name: "INGEST_BACKEND",
        default: "embedded",
        description: "`embedded`: SQLite queue and store under DATA_DIR.",
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
        name: "INGEST_WORKER",
        default: "on",
        description: "`on`: the in-process worker drains the embedded queue; `off`: messages stay queued.",
    },
    Setting {
        name: "MAX_DELIVERY_COUNT",
        default: "10",
        description: "Deliveries of a failing message before the worker dead-letters it.",
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
];

/// Which adapters back the topic and the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    pub backend: Backend,
    pub data_dir: PathBuf,
    pub max_record_bytes: usize,
    pub worker: bool,
    pub max_delivery_count: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub shutdown_grace: Duration,
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
        let backend = match get("INGEST_BACKEND").as_deref().map(str::trim) {
            None | Some("embedded") => Backend::Embedded,
            Some(other) => bail!("INGEST_BACKEND must be `embedded`, not {other:?}"),
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
        let max_delivery_count = parse("MAX_DELIVERY_COUNT", "10")?;
        if !(1..=1000).contains(&max_delivery_count) {
            bail!("MAX_DELIVERY_COUNT must be between 1 and 1000, not {max_delivery_count}");
        }
        Ok(Self {
            bind,
            port,
            backend,
            data_dir,
            max_record_bytes: max_record_bytes as usize,
            worker,
            max_delivery_count: max_delivery_count as u32,
            retry_base: Duration::from_millis(parse("RETRY_BACKOFF_MS", "500")?.max(1)),
            retry_max: Duration::from_millis(parse("RETRY_BACKOFF_MAX_MS", "60000")?.max(1)),
            shutdown_grace: Duration::from_secs(parse("SHUTDOWN_GRACE_SECS", "10")?),
        })
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
        assert_eq!(c.backend, Backend::Embedded);
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

    #[test]
    fn every_setting_is_described_once() {
        let mut names: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), SETTINGS.len());
        assert!(SETTINGS.iter().all(|s| !s.description.is_empty()));
    }
}
