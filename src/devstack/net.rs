//! Hosts on one machine: each a network namespace with one address, all on
//! a bridge of their own, for `prismctl local up --hosts N` and the
//! partition tests.
//!
//! ```text
//!   root namespace ── pr<tag> ─┐            (the observer: prismctl, tests)
//!   prism-<tag>-admin-1 eth0 ──┤
//!   prism-<tag>-host-1  eth0 ──┼── br0 in prism-<tag>-sw
//!   prism-<tag>-host-2  eth0 ──┘
//! ```
//!
//! Addresses come from 198.18.0.0/15, the range RFC 2544 sets aside for
//! benchmarks, one /24 per network, so they never meet a real network; the
//! /24 is taken with a lock directory under `/run/prism-net`, so that two
//! networks on one machine (a local stack and a test run) never share one.
//! The bridge lives in a namespace of its own: the host's own firewall and
//! bridge settings never see the traffic, and nothing of the network but
//! the observer's link is in the root namespace.
//!
//! Faults are the kernel's own: a partition drops a peer's packets where
//! they arrive (iptables `INPUT`, chain `PRISM`), so the sender sees
//! silence, as on a real network, not an error; a delay holds a host's
//! outgoing packets in a netfilter queue that [`super::netem`] releases
//! late. Both are read back from the kernel, never from a file.

use std::{
    fs,
    io::{self, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde::{Deserialize, Serialize};

/// Where networks take their /24: one lock directory per subnet.
pub const LOCK_BASE: &str = "/run/prism-net";
/// 198.18.0.0/15: 512 subnets of 256 addresses.
const SUBNETS: u16 = 512;
/// The observer's address in each subnet (the root namespace).
const OBSERVER: u8 = 254;
/// The chain every fault of a host lives in, in its `filter` table.
const CHAIN: &str = "PRISM";
/// The netfilter queue a host's delayed packets wait in.
pub const DELAY_QUEUE: u16 = 7;
/// The longest host name: interface names on the bridge are `p-<name>`,
/// and Linux allows 15 bytes.
pub const MAX_HOST_NAME: usize = 13;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("no free /24 left in 198.18.0.0/15 ({LOCK_BASE} holds {SUBNETS} networks)")]
    Full,
    #[error("host name {0:?}: use 1 to {MAX_HOST_NAME} of a-z, 0-9 and -")]
    HostName(String),
    #[error("no host {host} on this network (hosts: {known})")]
    UnknownHost { host: String, known: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Io { what, source }
}

/// Run a program (never a shell) and fail with what it said.
fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    let what = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(what.clone()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetError::Command {
            what,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// What a network's tools need on this machine.
pub fn preflight() -> Result<(), NetError> {
    for (what, path) in [
        ("ip (iproute2)", "/usr/sbin/ip"),
        ("iptables-legacy (iptables)", "/usr/sbin/iptables-legacy"),
        ("nsenter (util-linux)", "/usr/bin/nsenter"),
    ] {
        if !Path::new(path).exists() {
            return Err(NetError::Command {
                what: format!("{what} is needed for hosts in network namespaces"),
                detail: format!("{path} not found; install it"),
            });
        }
    }
    Ok(())
}

/// One host of a network.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetHost {
    pub name: String,
    pub addr: Ipv4Addr,
}

/// Who keeps a network: its directory (a local stack's state; the network
/// goes when that is removed) and, for a test run, its process too (the
/// network goes when that dies).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Owner {
    pub home: PathBuf,
    pub pid: Option<u32>,
}

impl Owner {
    pub fn gone(&self) -> bool {
        !self.home.exists()
            || self
                .pid
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    }
}

/// A network of hosts, as created (and saved in its lock directory).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Net {
    /// Names its namespaces and its observer link.
    pub tag: String,
    /// Which /24 of 198.18.0.0/15 (0..512).
    pub subnet: u16,
    pub hosts: Vec<NetHost>,
    pub owner: Owner,
}

/// A fault a host's kernel holds now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// `host` drops every packet from `from`.
    Drops { host: String, from: String },
    /// `host`'s outgoing packets (to `to`, or to everyone) are held by its
    /// delay service.
    Delayed { host: String, to: Option<String> },
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Drops { host, from } => write!(f, "{host} drops every packet from {from}"),
            Self::Delayed { host, to: None } => write!(f, "{host}'s outgoing packets are delayed"),
            Self::Delayed { host, to: Some(to) } => {
                write!(f, "{host}'s packets to {to} are delayed")
            }
        }
    }
}

pub fn valid_host_name(name: &str) -> bool {
    (1..=MAX_HOST_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

impl Net {
    fn base(subnet: u16) -> [u8; 3] {
        [198, 18 + (subnet / 256) as u8, (subnet % 256) as u8]
    }

    fn address(subnet: u16, last: u8) -> Ipv4Addr {
        let [a, b, c] = Self::base(subnet);
        Ipv4Addr::new(a, b, c, last)
    }

    /// The subnet, as `198.18.k.0/24`.
    pub fn cidr(&self) -> String {
        format!("{}/24", Self::address(self.subnet, 0))
    }

    /// The root namespace's address on this network.
    pub fn observer(&self) -> Ipv4Addr {
        Self::address(self.subnet, OBSERVER)
    }

    fn lock_dir(subnet: u16) -> PathBuf {
        Path::new(LOCK_BASE).join(format!("subnet-{subnet}"))
    }

    /// `prism-<tag>-<host>`.
    pub fn netns(&self, host: &str) -> String {
        format!("prism-{}-{host}", self.tag)
    }

    /// The namespace's file, for `nsenter --net=` and systemd's
    /// `NetworkNamespacePath=`.
    pub fn netns_path(&self, host: &str) -> PathBuf {
        Path::new("/run/netns").join(self.netns(host))
    }

    fn switch(&self) -> String {
        self.netns("sw")
    }

    /// The observer's end of its link, in the root namespace.
    fn observer_link(&self) -> String {
        format!("pr{}", self.tag)
    }

    pub fn host(&self, name: &str) -> Result<&NetHost, NetError> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| NetError::UnknownHost {
                host: name.to_owned(),
                known: self
                    .hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Make the network: a /24 of its own, the bridge, and one namespace
    /// per host with its address. Whatever failed half way is undone.
    pub fn create(tag: &str, names: &[&str], owner: Owner) -> Result<Self, NetError> {
        preflight()?;
        for n in names {
            if !valid_host_name(n) || *n == "sw" {
                return Err(NetError::HostName((*n).to_owned()));
            }
        }
        fs::create_dir_all(LOCK_BASE).map_err(io_err(format!("creating {LOCK_BASE}")))?;
        // The first subnet nobody holds; owned once its directory exists.
        let subnet = (0..SUBNETS)
            .find(|k| fs::create_dir(Self::lock_dir(*k)).is_ok())
            .ok_or(NetError::Full)?;
        let net = Self {
            tag: tag.to_owned(),
            subnet,
            hosts: names
                .iter()
                .enumerate()
                .map(|(i, n)| NetHost {
                    name: (*n).to_owned(),
                    addr: Self::address(subnet, i as u8 + 1),
                })
                .collect(),
            owner,
        };
        if let Err(e) = net.save().and_then(|()| net.build()) {
            net.destroy();
            return Err(e);
        }
        Ok(net)
    }

    fn save(&self) -> Result<(), NetError> {
        let path = Self::lock_dir(self.subnet).join("net.toml");
        let text = toml::to_string(self).unwrap_or_default();
        let mut f =
            fs::File::create(&path).map_err(io_err(format!("writing {}", path.display())))?;
        f.write_all(text.as_bytes())
            .map_err(io_err(format!("writing {}", path.display())))
    }

    /// The network saved for `tag`, if it still stands.
    pub fn find(tag: &str) -> Option<Self> {
        all().into_iter().find(|n| n.tag == tag)
    }

    fn build(&self) -> Result<(), NetError> {
        let sw = self.switch();
        run("ip", &["netns", "add", &sw])?;
        run("ip", &["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &sw, "link", "set", "br0", "up"])?;
        for h in &self.hosts {
            let ns = self.netns(&h.name);
            let port = format!("p-{}", h.name);
            run("ip", &["netns", "add", &ns])?;
            run(
                "ip",
                &[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ],
            )?;
            run("ip", &["-n", &sw, "link", "set", &port, "master", "br0"])?;
            run("ip", &["-n", &sw, "link", "set", &port, "up"])?;
            let cidr = format!("{}/24", h.addr);
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            // Every fault of this host goes in one chain, read back and
            // flushed as one.
            self.iptables(&h.name, &["-N", CHAIN])?;
            self.iptables(&h.name, &["-A", "INPUT", "-j", CHAIN])?;
        }
        let link = self.observer_link();
        run(
            "ip",
            &[
                "link",
                "add",
                &link,
                "type",
                "veth",
                "peer",
                "name",
                "p-observer",
                "netns",
                &sw,
            ],
        )?;
        run(
            "ip",
            &["-n", &sw, "link", "set", "p-observer", "master", "br0"],
        )?;
        run("ip", &["-n", &sw, "link", "set", "p-observer", "up"])?;
        let cidr = format!("{}/24", self.observer());
        run("ip", &["addr", "add", &cidr, "dev", &link])?;
        run("ip", &["link", "set", &link, "up"])?;
        Ok(())
    }

    /// `iptables-legacy -w` in `host`'s namespace (the kernel's own tables;
    /// nftables' queue statement is not built into every kernel).
    fn iptables(&self, host: &str, args: &[&str]) -> Result<String, NetError> {
        let ns = self.netns(host);
        let mut all = vec!["netns", "exec", &ns, "iptables-legacy", "-w"];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `host` drops every packet from `from` (one way: `from` hears `host`).
    pub fn drop_from(&self, host: &str, from: &str) -> Result<(), NetError> {
        let source = format!("{}/32", self.host(from)?.addr);
        self.host(host)?;
        if self
            .rules(host)?
            .iter()
            .any(|r| r.contains(&format!("-s {source} ")))
        {
            return Ok(());
        }
        self.iptables(host, &["-A", CHAIN, "-s", &source, "-j", "DROP"])
            .map(drop)
    }

    /// The rules of `host`'s fault chain, as `iptables -S` prints them.
    fn rules(&self, host: &str) -> Result<Vec<String>, NetError> {
        let text = self.iptables(host, &["-S", CHAIN])?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(|l| format!("{l} "))
            .collect())
    }

    /// Queue what `host` sends (to `to` only, or to everyone) for its
    /// delay service, which must be listening: `--queue-bypass` lets the
    /// packets through otherwise.
    pub fn queue_outgoing(&self, host: &str, to: Option<&str>) -> Result<(), NetError> {
        self.host(host)?;
        let dest = to
            .map(|t| self.host(t).map(|h| format!("{}/32", h.addr)))
            .transpose()?;
        let queue = DELAY_QUEUE.to_string();
        let mut rule = vec!["-t", "mangle", "-A", "POSTROUTING", "-o", "eth0"];
        if let Some(d) = &dest {
            rule.extend(["-d", d.as_str()]);
        }
        rule.extend(["-j", "NFQUEUE", "--queue-num", &queue, "--queue-bypass"]);
        self.iptables(host, &rule).map(drop)
    }

    /// Queue nothing `host` sends any more.
    pub fn unqueue(&self, host: &str) -> Result<(), NetError> {
        self.host(host)?;
        let rules = self.iptables(host, &["-t", "mangle", "-S", "POSTROUTING"])?;
        for rule in rules.lines().filter(|l| l.contains("NFQUEUE")) {
            let Some(spec) = rule.strip_prefix("-A ") else {
                continue;
            };
            let mut args = vec!["-t", "mangle", "-D"];
            args.extend(spec.split_whitespace());
            self.iptables(host, &args)?;
        }
        Ok(())
    }

    /// The faults the kernel holds now, host by host.
    pub fn faults(&self) -> Result<Vec<Fault>, NetError> {
        let mut faults = Vec::new();
        for h in &self.hosts {
            for rule in self.rules(&h.name)? {
                if let Some(from) = self
                    .hosts
                    .iter()
                    .find(|o| rule.contains(&format!("-s {}/32 ", o.addr)))
                {
                    faults.push(Fault::Drops {
                        host: h.name.clone(),
                        from: from.name.clone(),
                    });
                }
            }
            for rule in self
                .iptables(&h.name, &["-t", "mangle", "-S", "POSTROUTING"])?
                .lines()
                .filter(|l| l.contains("NFQUEUE"))
            {
                let to = self
                    .hosts
                    .iter()
                    .find(|o| rule.contains(&format!("-d {}/32 ", o.addr)))
                    .map(|o| o.name.clone());
                faults.push(Fault::Delayed {
                    host: h.name.clone(),
                    to,
                });
            }
        }
        Ok(faults)
    }

    /// Undo the partitions that involve `host` (every one, for `None`): its
    /// own rules, and its peers' rules against it. Delays are the netem
    /// service's to undo (see `queue_outgoing`).
    pub fn heal(&self, host: Option<&str>) -> Result<(), NetError> {
        if let Some(h) = host {
            self.host(h)?;
        }
        for peer in &self.hosts {
            if host.is_none_or(|h| h == peer.name) {
                self.iptables(&peer.name, &["-F", CHAIN])?;
                continue;
            }
            let source = format!("{}/32", self.host(host.unwrap_or_default())?.addr);
            // Every copy of the rule (there is one; a race may add two).
            while self
                .iptables(&peer.name, &["-D", CHAIN, "-s", &source, "-j", "DROP"])
                .is_ok()
            {}
        }
        Ok(())
    }

    /// Remove the namespaces (and with them every link and rule), the
    /// observer's link and the lock. Processes still in a namespace keep
    /// it alive but unreachable: stop them first.
    pub fn destroy(&self) {
        let _ = run("ip", &["link", "del", &self.observer_link()]);
        for h in &self.hosts {
            let _ = run("ip", &["netns", "del", &self.netns(&h.name)]);
        }
        let _ = run("ip", &["netns", "del", &self.switch()]);
        let _ = fs::remove_dir_all(Self::lock_dir(self.subnet));
    }
}

/// Every network saved under [`LOCK_BASE`].
pub fn all() -> Vec<Net> {
    let Ok(entries) = fs::read_dir(LOCK_BASE) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("net.toml")).ok())
        .filter_map(|text| toml::from_str(&text).ok())
        .collect()
}

/// Remove the networks whose owner is gone (a test run killed before it
/// cleaned up; a local stack's directory removed by hand), and subnet
/// locks left empty by a creation that died half way. `before` runs first
/// for each (to stop what runs on its hosts).
pub fn sweep_stale_with(before: impl Fn(&Net)) {
    for net in all() {
        if net.owner.gone() {
            before(&net);
            net.destroy();
        }
    }
    if let Ok(entries) = fs::read_dir(LOCK_BASE) {
        for e in entries.flatten() {
            let path = e.path();
            let young = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default().as_secs() < 60);
            if !path.join("net.toml").exists() && !young {
                let _ = fs::remove_dir(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_cover_the_benchmark_range_and_nothing_else() {
        assert_eq!(Net::address(0, 1), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(Net::address(255, 254), Ipv4Addr::new(198, 18, 255, 254));
        assert_eq!(Net::address(256, 1), Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(
            Net::address(SUBNETS - 1, OBSERVER),
            Ipv4Addr::new(198, 19, 255, 254)
        );
    }

    #[test]
    fn host_names_fit_an_interface_name() {
        assert!(valid_host_name("host-12"));
        assert!(valid_host_name("admin-3"));
        assert!(!valid_host_name(""));
        assert!(!valid_host_name("-x"));
        assert!(!valid_host_name("Host"));
        assert!(!valid_host_name("a-very-long-host"));
        assert!(!valid_host_name("a b"));
    }
}
