//! The faults of a fleet's network, by host: partitions (both ways or one),
//! delays, and healing; what the kernel holds now, read back.

use std::time::Duration;

use super::{
    fleet::{Fleet, FleetError, NETEM_UNIT},
    net::{Fault, NetError},
};
use crate::{
    systemd::{Systemd, SystemdError},
    unit,
};

/// Which peers a partition cuts a host from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// Every other host.
    All,
    Admins,
    /// The admin that leads now.
    Leader,
    Db,
    Host(String),
}

/// Which way packets are lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Both,
    /// What the host sends is lost; it still hears its peers.
    Out,
    /// What its peers send it is lost; they still hear it.
    In,
}

impl Fleet {
    /// The hosts `peers` names, as seen from `host`.
    async fn resolve(&self, host: &str, peers: &Peers) -> Result<Vec<String>, FleetError> {
        let others =
            |list: Vec<String>| -> Vec<String> { list.into_iter().filter(|h| h != host).collect() };
        Ok(match peers {
            Peers::All => others(self.layout.host_names()),
            Peers::Admins => others(self.layout.admin_hosts()),
            Peers::Leader => {
                let leader = self.leader().await.ok_or_else(|| {
                    FleetError::Failed("no admin leads now (see `prismctl local status`)".into())
                })?;
                others(vec![leader])
            }
            Peers::Db if self.layout.ha => others(vec!["db".into()]),
            Peers::Db => {
                return Err(FleetError::Usage(
                    "this fleet has no database host: its admin keeps SQLite (bring it up with \
                     --ha for one)"
                        .into(),
                ));
            }
            Peers::Host(h) => {
                self.net
                    .host(h)
                    .map_err(|e| FleetError::Usage(e.to_string()))?;
                others(vec![h.clone()])
            }
        })
    }

    /// Cut `host` from `peers`; returns the peers cut.
    pub async fn partition(
        &self,
        host: &str,
        peers: &Peers,
        direction: Direction,
    ) -> Result<Vec<String>, FleetError> {
        self.net
            .host(host)
            .map_err(|e| FleetError::Usage(e.to_string()))?;
        let cut = self.resolve(host, peers).await?;
        if cut.is_empty() {
            return Err(FleetError::Usage(format!(
                "{host} has no such peer to be cut from"
            )));
        }
        for peer in &cut {
            if direction != Direction::In {
                // What `host` sends never reaches `peer`.
                self.net.drop_from(peer, host)?;
            }
            if direction != Direction::Out {
                self.net.drop_from(host, peer)?;
            }
        }
        Ok(cut)
    }

    /// Hold every packet `host` sends (to `to` only, or to every host) for
    /// `delay` (zero: no longer).
    pub async fn delay(
        &self,
        host: &str,
        to: Option<&str>,
        delay: Duration,
    ) -> Result<(), FleetError> {
        for h in std::iter::once(host).chain(to) {
            self.net
                .host(h)
                .map_err(|e| FleetError::Usage(e.to_string()))?;
        }
        self.undelay(host).await?;
        if delay.is_zero() {
            return Ok(());
        }
        let argv = vec![
            self.bin_dir().join("prismctl").display().to_string(),
            "local".into(),
            "netem".into(),
            "--delay".into(),
            format!("{}ms", delay.as_millis()),
        ];
        let description = format!(
            "delays what {host} sends{} by {}ms",
            to.map(|t| format!(" to {t}")).unwrap_or_default(),
            delay.as_millis()
        );
        self.start_unit(
            host,
            &unit::daemon(NETEM_UNIT, &description, argv, "prism-netem"),
        )
        .await?;
        // The queue has a reader now: route the packets through it.
        self.net.queue_outgoing(host, to)?;
        Ok(())
    }

    async fn undelay(&self, host: &str) -> Result<(), FleetError> {
        self.net.unqueue(host)?;
        if self.running(host) {
            let engine = self.engine(host).await?;
            match engine.stop(NETEM_UNIT, Duration::from_secs(5)).await {
                Ok(_) | Err(SystemdError::NoSuchUnit { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Undo every fault of `host` (of every host, for `None`).
    pub async fn heal(&self, host: Option<&str>) -> Result<(), FleetError> {
        self.net.heal(host).map_err(|e| match e {
            NetError::UnknownHost { .. } => FleetError::Usage(e.to_string()),
            e => e.into(),
        })?;
        let hosts = match host {
            Some(h) => vec![h.to_owned()],
            None => self.layout.host_names(),
        };
        for h in hosts {
            self.undelay(&h).await?;
        }
        Ok(())
    }

    /// The faults in place now, read back from each host's kernel, with
    /// each delay as its service describes it.
    pub fn faults(&self) -> Result<Vec<String>, FleetError> {
        let mut out = Vec::new();
        for f in self.net.faults()? {
            match &f {
                Fault::Delayed { host, .. } => {
                    let described = self
                        .systemctl(host)
                        .args(["show", "-P", "Description", NETEM_UNIT])
                        .output()
                        .ok()
                        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                        .filter(|d| !d.is_empty());
                    out.push(match described {
                        Some(d) => format!("{host}: {d}"),
                        None => f.to_string(),
                    });
                }
                Fault::Drops { .. } => out.push(f.to_string()),
            }
        }
        Ok(out)
    }
}
