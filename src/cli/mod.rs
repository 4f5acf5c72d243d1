//! Commands besides `serve`: clients and operator tools.
//!
//! - [`import`]: posts a file of records to a running service, through the API.
//! - [`get`] and [`export`]: read the store DIRECTLY, with the configuration `serve` reads
//!   (the embedded store read-only, so they work while the service runs).
//! - [`completions`]: shell completion scripts.
//!
//! The store commands share their exit codes: 0 done, 1 not found, 2 anything else
//! (configuration, connection, I/O), 130 interrupted.

pub mod completions;
pub mod export;
pub mod get;
pub mod import;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::app::STORE_FILE;
use crate::config::{Backend, Config, Overrides, SETTINGS};
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
    let mut help = String::from("Environment (the same settings as `serve`; flags win):\n");
    for name in STORE_SETTINGS {
        if let Some(setting) = SETTINGS.iter().find(|s| s.name == name) {
            let default = if setting.default.is_empty() { "–" } else { setting.default };
            help.push_str(&format!("  {name} [default: {default}]\n      {}\n", setting.description));
        }
    }
    help.push_str(
        "  COSMOS_DEADLETTER_CONTAINER must exist too (the service's connection opens it);\n  \
         the Service Bus settings are not needed.",
    );
    help
}

/// What a store command reads from the environment: the backend, the embedded store's
/// directory and the Cosmos settings. Everything else keeps its default, so a setting only
/// `serve` uses can neither break nor slow these commands. They never touch Service Bus, so
/// its two required settings get placeholders that pass the azure configuration's checks.
fn store_setting(name: &str) -> Option<String> {
    match name {
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

/// Opens the store `serve` would use, for reading: the embedded one read-only (it must exist
/// already), or the Cosmos DB container (never created here).
pub async fn open_store(args: &StoreArgs) -> anyhow::Result<Arc<dyn UserStore>> {
    let overrides = Overrides { data_dir: args.data_dir.clone(), ..Overrides::default() };
    let config = Config::from_lookup(store_setting, overrides).context("invalid configuration")?;
    match config.backend {
        Backend::Embedded => {
            let path = config.data_dir.join(STORE_FILE);
            let store = SqliteUserStore::open_read_only(&path)
                .with_context(|| format!("cannot open the store {}", path.display()))?;
            Ok(Arc::new(store))
        }
        Backend::Azure(Err(why)) => Err(anyhow::anyhow!("invalid Azure configuration: {why}")),
        Backend::Azure(Ok(azure)) => {
            let mut cosmos = azure.cosmos.clone();
            // A reader never creates the database or its containers, whatever the service does.
            cosmos.create_if_missing = false;
            let stores = tokio::time::timeout(CONNECT_TIMEOUT, CosmosStores::connect(&cosmos))
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "COSMOS_ENDPOINT {} did not answer within {} s",
                        cosmos.endpoint,
                        CONNECT_TIMEOUT.as_secs()
                    )
                })??;
            Ok(stores.users)
        }
    }
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
