//! prism-admin: the Prism control plane. Parses arguments and configuration
//! (exit 64 on a bad setting, before anything is bound), sets up logging,
//! runs until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use prism_launcher::admin::{self, Cli, Command};
use tokio::signal::unix::{SignalKind, signal};

/// sysexits.h EX_USAGE.
const EX_USAGE: u8 = 64;

async fn terminated() {
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let Command::Serve(args) = cli.command;
    let config = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("prism-admin: bad configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(e) = prism_launcher::logging::init(config.log_format, &[]) {
        eprintln!("prism-admin: {e}");
        return ExitCode::from(EX_USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("prism-admin: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(admin::run(config, terminated())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("prism-admin failed: {e}");
            eprintln!("prism-admin: {e}");
            ExitCode::FAILURE
        }
    }
}
