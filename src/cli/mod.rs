//! Commands besides `serve`: clients and operator tools.
//!
//! - [`import`]: posts a file of records to a running service, through the API.
//! - [`get`] and [`export`]: read the store DIRECTLY, with the configuration `serve` reads
//!   (the embedded store read-only, so they work while the service runs).
//! - [`restore`]: writes an export back into a store directly, `ingestedAt` included.
//! - [`deadletters`]: lists, shows, replays and purges parked messages, in the embedded queue
//!   or the Cosmos DB dead-letter container (replays go through Service Bus there).
//! - [`completions`]: shell completion scripts.
//!
//! The store commands share their exit codes: 0 done, 1 not found, 2 anything else
//! (configuration, connection, I/O), 130 interrupted.

pub mod completions;
pub mod deadletters;
pub mod export;
pub mod get;
pub mod import;
pub mod restore;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::app::STORE_FILE;
use crate::config::{Backend, Config, CosmosConfig, Overrides, SETTINGS};
use crate::store::{CosmosStores, SqliteUserStore, UserStore};

pub const EXIT_NOT_FOUND: u8 = 1;
pub const EXIT_ERROR: u8 = 2;
/// 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Where the store commands find the store, besides the environment.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArgs {
    /// Directory of the embedded store, `DIR/users.db` [env: DATA_DIR] [default: ./data].
    /// Unused when INGEST_BACKEND=azure.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

/// The settings the store commands use, named in their `--help`.
const STORE_SETTINGS: [&str; 7] = [
    "INGEST_BACKEND",
    "DATA_DIR",
    "COSMOS_ENDPOINT",
    "COSMOS_KEY",
    "COSMOS_DATABASE",
    "COSMOS_CONTAINER",
    "COSMOS_TIMEOUT_MS",
];

/// The environment section of a store command's `--help`, from [`SETTINGS`].
pub fn store_settings_help() -> String {
    settings_help(
        &STORE_SETTINGS,
        "  COSMOS_DEADLETTER_CONTAINER must exist too (the service's connection opens it);\n  \
         the Service Bus settings are not needed.",
    )
}

/// An environment section for `--help`: the settings named, with their defaults and
/// descriptions from [`SETTINGS`], then `footer`.
pub fn settings_help(names: &[&str], footer: &str) -> String {
    let mut help = String::from("Environment (the same settings as `serve`; flags win):\n");
    for &name in names {
        if let Some(setting) = SETTINGS.iter().find(|s| s.name == name) {
            let default = if setting.default.is_empty() { "–" } else { setting.default };
            help.push_str(&format!("  {name} [default: {default}]\n      {}\n", setting.description));
        }
    }
    help.push_str(footer);
    help
}

/// What an operator's command reads from the environment: the backend, the embedded
/// directory and the Cosmos settings. Everything else keeps its default, so a setting only
/// `serve` uses can neither break nor slow these commands. Unless the command `publishes`
/// (replaying dead letters), it never touches Service Bus, so its two required settings get
/// placeholders that pass the azure configuration's checks; a command that publishes reads
/// the Service Bus settings, required as `serve` requires them.
fn command_setting(name: &str, publishes: bool) -> Option<String> {
    match name {
        _ if publishes && name.starts_with("SERVICEBUS_") => std::env::var(name).ok(),
        "SERVICEBUS_CONNECTION_STRING" => Some(
            "Endpoint=sb://unused.servicebus.windows.net/;SharedAccessKeyName=unused;SharedAccessKey=unused"
                .into(),
        ),
        "SERVICEBUS_TOPIC" => Some("unused".into()),
        "INGEST_BACKEND" | "DATA_DIR" => std::env::var(name).ok(),
        _ if name.starts_with("COSMOS_") => std::env::var(name).ok(),
        _ => None,
    }
}

/// How long connecting to Cosmos DB may take before a store command gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The configuration an operator's command reads from the environment (see
/// [`command_setting`]), with `--data-dir`.
pub fn command_config(data_dir: Option<PathBuf>, publishes: bool) -> anyhow::Result<Config> {
    let overrides = Overrides { data_dir, ..Overrides::default() };
    Config::from_lookup(|name| command_setting(name, publishes), overrides).context("invalid configuration")
}

/// Opens the store `serve` would use, for reading: the embedded one read-only (it must exist
/// already), or the Cosmos DB container (never created here).
pub async fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn UserStore>> {
    let config = command_config(args.data_dir.clone(), false)?;
    match config.backend {
        Backend::Embedded => {
            let path = config.data_dir.join(STORE_FILE);
            let store = SqliteUserStore::open_read_only(&path)
                .with_context(|| format!("cannot open the store {}", path.display()))?;
            Ok(Arc::new(store))
        }
        Backend::Azure(Err(why)) => Err(anyhow::anyhow!("invalid Azure configuration: {why}")),
        Backend::Azure(Ok(azure)) => Ok(connect_cosmos(&azure.cosmos).await?.users),
    }
}

/// Connects to Cosmos DB as the service does, within [`CONNECT_TIMEOUT`], never creating the
/// database or its containers (whatever COSMOS_CREATE_IF_MISSING says).
pub async fn connect_cosmos(config: &CosmosConfig) -> anyhow::Result<CosmosStores> {
    let mut cosmos = config.clone();
    cosmos.create_if_missing = false;
    tokio::time::timeout(CONNECT_TIMEOUT, CosmosStores::connect(&cosmos)).await.map_err(|_| {
        anyhow::anyhow!(
            "COSMOS_ENDPOINT {} did not answer within {} s",
            cosmos.endpoint,
            CONNECT_TIMEOUT.as_secs()
        )
    })?
}

/// A runtime for one command; `None` (after saying why) when it cannot start.
fn runtime(command: &str) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            eprintln!("{command}: cannot start the runtime: {e}");
            None
        }
    }
}
