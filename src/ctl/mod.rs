//! `prismctl`: the operator CLI. One file per subcommand.

pub mod local;
mod table;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{sandbox::SandboxError, systemd::SystemdError};

#[derive(Parser, Debug)]
#[command(
    name = "prismctl",
    version,
    about = "Operate Prism processes, launchers and local stacks",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a Prism stack on this machine, with its own systemd manager when
    /// the host has none (containers, CI).
    Local(local::LocalArgs),
}

/// Why a command failed; each maps to an exit code and names the next step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}; is it running? (`prismctl local status`)")]
    Unreachable(String),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Systemd(#[from] SystemdError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// 0 success, 1 the operation failed, 2 usage, 3 unreachable.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) | Self::Sandbox(SandboxError::NotRoot { .. }) => ExitCode::from(2),
            Self::Systemd(SystemdError::Unavailable { .. }) | Self::Unreachable(_) => {
                ExitCode::from(3)
            }
            _ => ExitCode::from(1),
        }
    }
}

/// Run one parsed command line.
pub async fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Local(args) => local::run(args).await,
    }
}
