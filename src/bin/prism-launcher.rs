//! prism-launcher: the host agent. Parses arguments and configuration
//! (exit 64 on a bad setting, before anything is bound), sets up logging,
//! runs until SIGTERM or SIGINT. Invoked as pattern-launcher, it takes that
//! launcher's flags first (see `launcher::legacy`).

use std::process::ExitCode;

use clap::Parser;
use prism_launcher::launcher::{self, Args, legacy};
use prism_launcher::serve::{self, terminated};

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let old_name = legacy::invoked_as_legacy(argv.first().map(|a| a.as_os_str()));
    let args = if old_name {
        legacy::parse(argv)
    } else {
        Args::try_parse_from(argv)
    };
    let resolve = |mut args: Args| {
        if old_name {
            legacy::translate(&mut args)?;
        }
        args.resolve()
    };
    let config = match serve::start("prism-launcher", args, resolve, |c| {
        prism_launcher::logging::init(
            c.log_format,
            &[("PRISM_LAUNCHER_ID", c.launcher_id.as_str())],
        )
    }) {
        Ok(config) => config,
        Err(code) => return code,
    };
    for notice in &config.notices {
        tracing::warn!("{notice}");
    }
    serve::run("prism-launcher", async move {
        let io = launcher::Io::open(&config).await?;
        launcher::run(config, io, terminated()).await
    })
}
