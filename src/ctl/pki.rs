//! `prismctl pki`: a CA for a fleet, and certificates for each role that
//! name it as the daemons expect (README "Security model").

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Subcommand, ValueEnum};

use super::{Error, output::out};
use crate::auth::{
    Role,
    pki::{Authority, PkiError},
};

#[derive(Args, Debug)]
pub struct PkiArgs {
    /// Where the CA (ca.crt, ca.key) and issued certificates live.
    #[arg(long, global = true, value_name = "DIR", default_value = "prism-pki")]
    pub dir: PathBuf,
    /// Days a certificate is valid.
    #[arg(long, global = true, value_name = "N", default_value_t = 397)]
    pub days: i64,
    #[command(subcommand)]
    pub action: PkiAction,
}

#[derive(Subcommand, Debug)]
pub enum PkiAction {
    /// Create a CA: DIR/ca.crt (give it to every daemon and client as
    /// --tls-ca) and DIR/ca.key (keep it offline).
    Init {
        /// The CA's common name.
        #[arg(long, default_value = "prism fleet CA")]
        name: String,
    },
    /// Issue DIR/<name>.crt and DIR/<name>.key for one role.
    Issue {
        #[arg(value_enum)]
        role: RoleArg,
        /// The launcher's id, or the operator's or viewer's name; for the
        /// admin, a name for the files.
        name: String,
        /// A DNS name the daemon is reached by (repeat for several).
        #[arg(long, value_name = "NAME")]
        dns: Vec<String>,
        /// An IP address the daemon is reached by (repeat for several).
        #[arg(long, value_name = "ADDR")]
        ip: Vec<IpAddr>,
        /// The trust domain roles are named in.
        #[arg(long, default_value = crate::auth::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Admin,
    Launcher,
    Operator,
    Viewer,
}

fn failed(e: PkiError) -> Error {
    match e {
        PkiError::Invalid(m) => Error::Usage(m),
        other => Error::Failed(other.to_string()),
    }
}

pub fn run(args: &PkiArgs) -> Result<(), Error> {
    if !(1..=3650).contains(&args.days) {
        return Err(Error::Usage(format!(
            "--days {} is outside 1..=3650",
            args.days
        )));
    }
    match &args.action {
        PkiAction::Init { name } => {
            let ca = Authority::create(name, args.days).map_err(failed)?;
            ca.save_dir(&args.dir).map_err(failed)?;
            out(&format!(
                "created {0}/ca.crt and {0}/ca.key (keep ca.key offline)\n",
                args.dir.display()
            ));
        }
        PkiAction::Issue {
            role,
            name,
            dns,
            ip,
            trust_domain,
        } => {
            let ca = Authority::load_dir(&args.dir).map_err(failed)?;
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Launcher => Role::Launcher(name.clone()),
                RoleArg::Operator => Role::Operator,
                RoleArg::Viewer => Role::Viewer,
            };
            let issued = ca
                .issue(&role, name, trust_domain, dns, ip, args.days)
                .map_err(failed)?;
            issued.save(&args.dir, name).map_err(failed)?;
            out(&format!(
                "issued {0}/{name}.crt and {0}/{name}.key for {role} ({1})\n",
                args.dir.display(),
                role.uri(trust_domain, name)
            ));
        }
    }
    Ok(())
}
