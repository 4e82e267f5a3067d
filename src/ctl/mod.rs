//! `prismctl`: the operator CLI. One file per concern: `local` (a whole
//! stack on this machine), `fleet` (launchers, ps, revoke, drain), `assign`,
//! `inspect` (describe, logs), `pki` (certificates), `bench` (assignment
//! latency and throughput), `ui` (signing a browser in to the fleet status
//! page).
//!
//! Exit codes: 0 success, 1 the operation failed, 2 usage, 3 prism-admin
//! (or the local stack) unreachable, 130 interrupted (`bench`, by Ctrl-C).

pub mod assign;
pub mod bench;
pub mod client;
pub mod fleet;
pub mod inspect;
pub mod local;
pub mod output;
pub mod pki;
pub mod ui;
pub mod watch;

use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::{sandbox::SandboxError, systemd::SystemdError};

#[derive(Parser, Debug)]
#[command(
    name = "prismctl",
    version,
    about = "Operate Prism processes, launchers and local stacks",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    #[command(flatten)]
    pub admin: client::AdminOpts,
    /// How listings are printed.
    #[arg(short, long, global = true, value_enum, default_value_t = output::Format::Table)]
    pub output: output::Format,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a whole Prism stack (admin, launcher, demo processes) on this
    /// machine, with its own systemd manager when the host has none.
    Local(local::LocalArgs),
    /// Registered launchers: address, region, health, slots, types.
    Launchers,
    /// Processes with their placement and health.
    #[command(visible_alias = "processes")]
    Ps(fleet::PsArgs),
    /// The pattern manifests a launcher launches by name (its
    /// --patterns-dir), and those it skipped, with why.
    Patterns(fleet::PatternsArgs),
    /// Assign processes, from a spec file or flags, and wait for them.
    Assign(Box<assign::AssignArgs>),
    /// Assign N harmless processes with C in flight, report latency
    /// percentiles and throughput, then revoke them all (also on Ctrl-C).
    Bench(bench::BenchArgs),
    /// Stop a process gracefully (SIGTERM, then SIGKILL).
    Revoke(fleet::RevokeArgs),
    /// Everything about one process, and how to inspect it on its host.
    Describe(inspect::DescribeArgs),
    /// A process's output, from the journal of this host.
    Logs(inspect::LogsArgs),
    /// What happens in the fleet: processes placed, started, failed,
    /// restarted…, launchers registered or disconnected, leaders elected.
    Events(watch::EventsArgs),
    /// Place nothing new on a launcher.
    Drain(fleet::DrainArgs),
    /// Let a drained launcher take new processes again.
    Undrain(fleet::DrainArgs),
    /// Re-place a launcher's processes elsewhere, one at a time (each starts
    /// on its new launcher before it stops on the old one).
    Move(fleet::DrainArgs),
    /// Sign a browser in to the admin's fleet status page: prints a
    /// one-time address (valid 60 s) that opens a session with your role.
    Ui,
    /// A CA for a fleet, and a certificate per daemon and operator.
    Pki(pki::PkiArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff): prismctl's, or prism-launcher's or
    /// prism-admin's (the packages install all three).
    Man {
        #[arg(value_enum, default_value_t = Program::Prismctl)]
        program: Program,
    },
}

/// The programs with man pages.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Program {
    Prismctl,
    PrismLauncher,
    PrismAdmin,
}

impl Program {
    /// The program's command line, and its manual section (the daemons are
    /// administration commands).
    pub fn command(self) -> (clap::Command, &'static str) {
        match self {
            Self::Prismctl => (Cli::command(), "1"),
            Self::PrismLauncher => (crate::launcher::Args::command(), "8"),
            // The daemon is `prism-admin serve`: its page documents serve's
            // options.
            Self::PrismAdmin => {
                let admin = crate::admin::Cli::command();
                let serve = admin
                    .find_subcommand("serve")
                    .cloned()
                    .unwrap_or_else(|| admin.clone());
                let about = admin.get_about().cloned().unwrap_or_default();
                (
                    serve
                        .name("prism-admin")
                        .bin_name("prism-admin serve")
                        .about(about)
                        .version(env!("CARGO_PKG_VERSION")),
                    "8",
                )
            }
        }
    }
}

/// Why a command failed; each maps to an exit code and names the next step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Unreachable(String),
    /// Stopped by Ctrl-C (exit 130, as a shell reports SIGINT).
    #[error("{0}")]
    Interrupted(String),
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
    /// 0 success, 1 the operation failed, 2 usage, 3 unreachable, 130 interrupted.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Self::Usage(_) | Self::Sandbox(SandboxError::NotRoot { .. }) => ExitCode::from(2),
            Self::Systemd(SystemdError::Unavailable { .. }) | Self::Unreachable(_) => {
                ExitCode::from(3)
            }
            Self::Interrupted(_) => ExitCode::from(130),
            _ => ExitCode::from(1),
        }
    }
}

/// Run one parsed command line.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let g = &cli.global;
    match &cli.command {
        Command::Local(args) => local::run(g, args).await,
        Command::Launchers => fleet::launchers(g).await,
        Command::Ps(args) => fleet::ps(g, args).await,
        Command::Patterns(args) => fleet::patterns(g, args).await,
        Command::Assign(args) => assign::assign(g, args).await,
        Command::Bench(args) => bench::bench(g, args).await,
        Command::Revoke(args) => fleet::revoke(g, args).await,
        Command::Describe(args) => inspect::describe(g, args).await,
        Command::Logs(args) => inspect::logs(g, args).await,
        Command::Events(args) => watch::events(g, args).await,
        Command::Drain(args) => fleet::drain(g, args, true).await,
        Command::Undrain(args) => fleet::drain(g, args, false).await,
        Command::Move(args) => fleet::move_processes(g, args).await,
        Command::Ui => ui::ui(g).await,
        Command::Pki(args) => pki::run(args),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "prismctl", &mut buf);
            output::out(&String::from_utf8_lossy(&buf));
            Ok(())
        }
        Command::Man { program } => {
            let mut buf = Vec::new();
            let (command, section) = program.command();
            clap_mangen::Man::new(command)
                .section(section)
                .render(&mut buf)
                .map_err(|source| Error::Io {
                    what: "rendering the man page".into(),
                    source,
                })?;
            output::out(&String::from_utf8_lossy(&buf));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (duplicate flags, bad defaults...).
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        crate::launcher::Args::command().debug_assert();
        crate::admin::Cli::command().debug_assert();
    }
}
