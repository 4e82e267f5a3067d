//! prism-admin: the Prism control plane (launcher registry, placement,
//! dispatch). Parses arguments, sets up logging, runs.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "prism-admin", version, about = "The Prism control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve prism.ControlPlane for launchers and operators.
    Serve,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve => {
            eprintln!("prism-admin: `serve` is not available in this build yet");
            ExitCode::FAILURE
        }
    }
}
