//! prism-admin: the Prism control plane. Parses arguments and configuration
//! (exit 64 on a bad setting, before anything is bound), sets up logging,
//! runs until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use prism_launcher::admin::{self, Cli, Command, ServeArgs};
use prism_launcher::serve::{self, terminated};

fn main() -> ExitCode {
    let args = Cli::try_parse().map(|cli| {
        let Command::Serve(args) = cli.command;
        args
    });
    let config = match serve::start("prism-admin", args, ServeArgs::resolve, |c| {
        prism_launcher::logging::init(c.log_format, &[])
    }) {
        Ok(config) => config,
        Err(code) => return code,
    };
    serve::run("prism-admin", async move {
        let io = admin::Io::open(&config).await?;
        admin::run(config, io, terminated()).await
    })
}
