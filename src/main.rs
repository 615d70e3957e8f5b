//! The `webhook-ingestor` binary: parse the command line and the
//! configuration, then hand over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::error;

use webhook_ingestor::{app, config::Config, shutdown, telemetry};

#[derive(Parser)]
#[command(version, about = "Thread-per-core webhook gateway: 202 only after Redis has the job")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve `POST /webhooks/:provider` (the default). Configured by the
    /// environment and `.env`; see the README for the variables.
    Serve,
    /// Read and validate the configuration, print it (secrets redacted), exit.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("webhook-ingestor: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{config:#?}");
            ExitCode::SUCCESS
        }
        Command::Serve => serve(&config),
    }
}

fn serve(config: &Config) -> ExitCode {
    telemetry::init(&config.log_level);
    let running = match app::start(config) {
        Ok(r) => r,
        Err(e) => {
            error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = shutdown::cancel_on_signals(running.shutdown_token()) {
        error!(error = %e, "cannot install signal handlers");
        running.stop();
        return ExitCode::FAILURE;
    }
    running.wait();
    ExitCode::SUCCESS
}
