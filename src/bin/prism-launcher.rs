//! prism-launcher: the host agent. Parses arguments and configuration
//! (exit 64 on a bad setting, before anything is bound), sets up logging,
//! runs until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use prism_launcher::launcher::{self, Args, legacy};
use prism_launcher::serve::{self, EX_USAGE, terminated};

fn main() -> ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let argv0 = argv.first().cloned();
    let parsed = if legacy::invoked_as_legacy(argv0.as_deref()) {
        legacy::parse(argv)
    } else {
        Args::try_parse_from(argv)
    };
    let args = match parsed {
        Ok(args) => args,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(EX_USAGE);
        }
        Err(e) => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let mut args = args;
    let translated = if legacy::invoked_as_legacy(argv0.as_deref()) {
        legacy::translate(&mut args)
    } else {
        Ok(())
    };
    let config = match translated.and_then(|()| args.resolve()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("prism-launcher: bad configuration: {e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    if let Err(e) = prism_launcher::logging::init(
        config.log_format,
        &[("PRISM_LAUNCHER_ID", config.launcher_id.as_str())],
    ) {
        eprintln!("prism-launcher: {e}");
        return ExitCode::from(EX_USAGE);
    }
    for notice in &config.notices {
        tracing::warn!("{notice}");
    }
    serve::run("prism-launcher", async move {
        let io = launcher::Io::open(&config).await?;
        launcher::run(config, io, terminated()).await
    })
}
