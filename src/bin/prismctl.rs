//! prismctl: the operator CLI. Parses arguments, sets up logging, runs.

use std::process::ExitCode;

use clap::Parser;
use prism_launcher::ctl;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = ctl::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match ctl::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prismctl: {e}");
            e.exit_code()
        }
    }
}
