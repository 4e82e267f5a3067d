//! prism-admin: the Prism control plane. Parses arguments and configuration
//! (exit 64 on a bad setting, before anything is bound), sets up logging,
//! runs until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use prism_launcher::admin::{self, Cli, Command};
use prism_launcher::serve::{self, EX_USAGE, terminated};

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
    serve::run("prism-admin", async move {
        let io = admin::Io::open(&config).await?;
        admin::run(config, io, terminated()).await
    })
}
