//! What authorization costs per RPC: `cargo bench --bench auth`.
//!
//! 1. The gate's own work, in process: reading the role from a client
//!    certificate and checking the table (every RPC over mutual TLS), the
//!    uid and groups of a local-socket peer, the table alone.
//! 2. End to end, one RPC (`GetLauncher`, answered from memory) against
//!    prism-admin over each transport, sequentially: plaintext TCP with
//!    `--insecure` (the gate trusts the peer: the floor), mutual TLS as an
//!    operator, and the local socket as root. Medians and p99 in the same
//!    run, and the ratio to the floor.

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use prism_launcher::{
    auth::{
        Caller, OperatorGroup, authorize,
        dial::{Address, Expect, channel},
        identity::role_of_cert,
    },
    pb::prism::admin::v1::{GetLauncherRequest, admin_client::AdminClient},
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use support::{
    daemon::Daemon,
    percentile,
    pki::{Pki, unix_channel},
};
use tonic::transport::Channel;

fn per_call(n: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed() / n
}

async fn latencies(channel: Channel, n: usize) -> Vec<Duration> {
    let mut api = AdminClient::new(channel);
    // Warm the connection (and the TLS session) first.
    for _ in 0..50 {
        let _ = api
            .get_launcher(GetLauncherRequest {
                launcher_id: "nobody".into(),
            })
            .await;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = api
            .get_launcher(GetLauncherRequest {
                launcher_id: "nobody".into(),
            })
            .await;
        out.push(t.elapsed());
        assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
    }
    out.sort();
    out
}

fn main() {
    let n: usize = support::arg("--calls", 2000);
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(&dir.path().join("pki"));
    let admin_cert = pki.issue("admin", "spiffe://prism/admin");
    let operator = pki.issue("alice", "spiffe://prism/operator/alice");

    // 1. The gate's own work.
    let der = CertificateDer::from_pem_slice(&std::fs::read(&operator.cert).unwrap()).unwrap();
    let path = "/prism.admin.v1.Admin/GetLauncher";
    let cert = per_call(100_000, || {
        let (role, uri) = role_of_cert(&der, "prism").unwrap();
        let caller = Caller::Certified { role, uri };
        authorize(path, &caller, false).unwrap();
    });
    let group = OperatorGroup::resolve("nogroup");
    let me = std::process::id() as i32;
    let socket = per_call(100_000, || {
        let caller = group.classify(65534, 4242, Some(me));
        let _ = authorize(path, &caller, false);
    });
    let table = per_call(1_000_000, || {
        authorize(path, &Caller::Root, false).unwrap();
    });
    println!("gate, in process (per RPC):");
    println!("  client certificate: read the role + check the table  {cert:>10.2?}");
    println!("  local socket peer (not root): uid, /proc groups + check {socket:>10.2?}");
    println!("  the table alone                                   {table:>10.2?}");

    // 2. End to end.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let plain = Daemon::admin(&dir.path().join("plain"), &["--metrics-listen", "none"]).await;
        let flags = pki.flags(&admin_cert);
        let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
        args.extend(["--metrics-listen", "none"]);
        let secure = Daemon::admin_secure(&dir.path().join("secure"), &args).await;
        let timeout = Duration::from_secs(5);

        let address = Address::parse(&format!("127.0.0.1:{}", plain.port)).unwrap();
        let floor = latencies(channel(&address, None, timeout).unwrap(), n).await;

        let tls = latencies(pki.channel(secure.port, &operator, Expect::Admin), n).await;
        let unix = latencies(unix_channel(&dir.path().join("secure/admin.sock")), n).await;

        println!("\nGetLauncher end to end, {n} sequential calls each:");
        println!(
            "  {:<44} {:>10} {:>10} {:>8}",
            "transport (caller)", "p50", "p99", "p50 ×"
        );
        let p50f = percentile(&floor, 0.5);
        for (name, l) in [
            ("plaintext TCP, --insecure (floor)", &floor),
            ("mutual TLS (operator certificate)", &tls),
            ("local socket (root, SO_PEERCRED)", &unix),
        ] {
            let p50 = percentile(l, 0.5);
            println!(
                "  {name:<44} {:>10.1?} {:>10.1?} {:>8.2}",
                p50,
                percentile(l, 0.99),
                p50.as_secs_f64() / p50f.as_secs_f64()
            );
        }
    });
}
