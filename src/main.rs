//! The `data-ingestion-api` binary: `serve` (the default) or `import`.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use data_ingestion_api::{app, cli, config, telemetry};

#[derive(Parser)]
#[command(name = "data-ingestion-api", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API and run the pipeline (what runs with no subcommand).
    Serve(ServeArgs),
    /// Post the records of an NDJSON or JSON-array file to a running service.
    Import(cli::import::ImportArgs),
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
        Some(Command::Import(args)) => cli::import::main(args),
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
