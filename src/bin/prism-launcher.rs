//! prism-launcher: the host agent. Parses arguments, sets up logging, runs.

use std::process::ExitCode;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "prism-launcher",
    version,
    about = "Runs Prism processes as transient systemd units"
)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("prism-launcher: the daemon is not available in this build yet");
    ExitCode::FAILURE
}
