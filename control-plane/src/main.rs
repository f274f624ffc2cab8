//! `fleetml`: parses the command line, starts tracing and calls into the library
//! (`fleetml_plane::cli::run`).

use std::process::ExitCode;

use clap::Parser;
use fleetml_plane::cli::{self, Cli};
use fleetml_plane::config::ConfigError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format, cli.command.default_log_filter());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fleetml: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            if let Some(config_error) = error.downcast_ref::<ConfigError>() {
                eprintln!("fleetml: {config_error}");
                return ExitCode::from(64);
            }
            eprintln!("fleetml: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: &str, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEETML_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
