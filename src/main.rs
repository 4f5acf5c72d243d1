//! The `data-ingestion-api` binary: `serve` (the default), `import`, and the operator's
//! `get`, `export`, `deadletters` and `completions`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use data_ingestion_api::cli::{completions, deadletters, export, get, import, restore, store_settings_help};
use data_ingestion_api::{app, config, telemetry};

const LONG_ABOUT: &str = "\
Ingests user records over HTTP, queues them durably in a topic (an embedded SQLite queue, or
Azure Service Bus), stores them in a document store (embedded SQLite, or Cosmos DB) and serves
them back by id.

With no command it serves the API (`serve`); the other commands are tools for operators.";

const AFTER_HELP: &str = "\
Examples:
  data-ingestion-api                             serve http://127.0.0.1:7071 on ./data
  data-ingestion-api import users.ndjson         post a file's records to the running service
  data-ingestion-api get usr-1                   print one stored user
  data-ingestion-api export -o users.ndjson      write every stored user as NDJSON
  data-ingestion-api deadletters list            list the parked messages, with their reasons
  data-ingestion-api completions bash            print the bash completion script

`data-ingestion-api COMMAND --help` describes a command, its flags and its settings.";

#[derive(Parser)]
#[command(
    name = "data-ingestion-api",
    version,
    about,
    long_about = LONG_ABOUT,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API and run the pipeline (what runs with no subcommand).
    #[command(
        long_about = "Serve the HTTP API and run the pipeline: what runs with no subcommand.\n\n\
            POST /api/users accepts a record once it is durable in the topic; the consumer (an \
            in-process worker on the embedded backend, the Functions host's /ingest-consume calls \
            in Azure) stores it; GET /api/users/{id} reads it back. The backend and everything \
            else come from the environment (listed below with --help); the flags win over it.",
        after_help = SERVE_EXAMPLES,
        after_long_help = serve_settings_help()
    )]
    Serve(ServeArgs),
    /// Send the records of an NDJSON, JSON-array or CSV file to a running service, in batches.
    #[command(long_about = "Send the records of an NDJSON file (one record per line), a JSON array or a \
            CSV file to a running service, through its API, in batches of up to 500 records \
            (--batch-size 1: one by one), a few in flight. A record without an id gets one derived \
            from its content, so a retry, a resumed run or a second import (also of the file with \
            other lines fixed) never duplicates a user; versions of a user are sent in file order; 429, 503 and connection failures are retried honouring Retry-After. \
            Progress is saved to FILE.checkpoint: run the same command again after an interruption \
            to carry on (--restart starts over). The id of every accepted record goes to \
            FILE.accepted.ndjson, every rejected record with its errors to FILE.rejected.ndjson (in \
            the current directory); the exit status is non-zero when anything was not accepted.")]
    Import(import::ImportArgs),
    /// Print one stored user, read from the store directly.
    #[command(
        long_about = "Print one stored user as GET /api/users/{ID} serves it (the user's fields and \
            ingestedAt), read from the store DIRECTLY with the configuration `serve` uses: the \
            embedded store under DATA_DIR (read-only, so the service may be running), or Cosmos \
            DB when INGEST_BACKEND=azure. Indented by default; --compact prints the API's exact bytes.",
        after_help = get::AFTER_HELP,
        after_long_help = format!("{}\n\n{}", get::AFTER_HELP, store_settings_help())
    )]
    Get(get::GetArgs),
    /// Write every stored user as NDJSON, read from the store directly.
    #[command(
        long_about = "Write every stored user as NDJSON: one compact document per line, exactly as \
            GET /api/users/{id} serves it, in the store's order. Read from the store DIRECTLY with \
            the configuration `serve` uses (the embedded store read-only, so the service may be \
            running; Cosmos DB through a paged cross-partition query when INGEST_BACKEND=azure), \
            one page at a time: memory stays constant however many users there are. The file it \
            writes can be posted to a service again with `import`.",
        after_help = export::AFTER_HELP,
        after_long_help = format!("{}\n\n{}", export::AFTER_HELP, store_settings_help())
    )]
    Export(export::ExportArgs),
    /// Write the users of an export back into a store, exactly as they were.
    #[command(
        long_about = "Write the users of an export (NDJSON as `export` writes it) into the store             DIRECTLY, exactly as they were — ingestedAt included, which the API sets itself. The             store is the one `serve` would use (DATA_DIR, created if missing, or Cosmos DB when             INGEST_BACKEND=azure). Each line is checked as the API checks a record; a user the             store holds in a newer version is left as it is.",
        after_help = restore::AFTER_HELP,
        after_long_help = format!("{}\n\n{}", restore::AFTER_HELP, store_settings_help())
    )]
    Restore(restore::RestoreArgs),
    /// List, show, replay or purge the messages the pipeline parked (dead letters).
    #[command(
        long_about = "List, show, replay or purge the messages the pipeline parked, with the reason \
            they could not be stored (dead letters): the dead_letters table of DATA_DIR/queue.db, or the Cosmos DB dead-letter container \
            (COSMOS_DEADLETTER_CONTAINER) when INGEST_BACKEND=azure, with the configuration `serve` \
            uses; the service may be running. `list` never prints a body (it holds personal data); \
            `show ID` prints one whole. `replay` publishes bodies to the topic again as new \
            messages (through Service Bus in azure mode), repaired with --edit or as they are; \
            `purge` deletes them.",
        after_help = deadletters::AFTER_HELP,
        after_long_help = format!("{}\n\n{}", deadletters::AFTER_HELP, deadletters::settings())
    )]
    Deadletters(deadletters::DeadLettersArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or PowerShell.
    #[command(
        long_about = "Print the completion script of this command line (every command and flag) \
            for a shell to stdout.",
        after_help = completions::AFTER_HELP
    )]
    Completions(completions::CompletionsArgs),
}

const SERVE_EXAMPLES: &str = "\
Examples:
  data-ingestion-api serve --port 8080 --data-dir /var/lib/ingest
  INGEST_BACKEND=azure COSMOS_ENDPOINT=… SERVICEBUS_CONNECTION_STRING=… data-ingestion-api serve";

/// `serve --help`: the examples, then every setting with its default, from [`config::SETTINGS`].
fn serve_settings_help() -> String {
    let mut help = format!(
        "{SERVE_EXAMPLES}\n\nEnvironment (the flags win over it, but FUNCTIONS_CUSTOMHANDLER_PORT wins over --port):\n"
    );
    for setting in config::SETTINGS {
        let default = if setting.default.is_empty() { "–" } else { setting.default };
        help.push_str(&format!("  {} [default: {default}]\n      {}\n", setting.name, setting.description));
    }
    help
}

#[derive(Args, Default)]
struct ServeArgs {
    /// Port to listen on; FUNCTIONS_CUSTOMHANDLER_PORT wins when set [default: 7071].
    #[arg(long)]
    port: Option<u16>,
    /// Address to listen on [env: BIND_ADDRESS] [default: 127.0.0.1].
    #[arg(long)]
    host: Option<IpAddr>,
    /// Directory of the embedded queue and store [env: DATA_DIR] [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Import(args)) => import::main(args),
        Some(Command::Get(args)) => get::main(args),
        Some(Command::Export(args)) => export::main(args),
        Some(Command::Restore(args)) => restore::main(args),
        Some(Command::Deadletters(args)) => deadletters::main(args),
        Some(Command::Completions(args)) => completions::main(args, Cli::command()),
        Some(Command::Serve(args)) => serve(args),
        None => serve(cli.serve),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let _logs = telemetry::init();
    let overrides = config::Overrides { port: args.port, host: args.host, data_dir: args.data_dir };
    let config = match config::Config::from_env(overrides) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "invalid configuration");
            eprintln!("data-ingestion-api: invalid configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("data-ingestion-api: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::serve(config, app::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "the service stopped on an error");
            eprintln!("data-ingestion-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}
