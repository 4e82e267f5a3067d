//! A fleet of real hosts for the partition tests: `devstack::fleet` (the
//! same as `prismctl local up --hosts`), with what the tests read back
//! from it: every host's units from its own systemd manager, sampled all
//! through a fault, and the admins' view through their operator API.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use prism_launcher::{
    auth::dial::{Address, channel},
    devstack::fleet::{self, Binaries, Fleet},
    pb::prism::{
        self as pb,
        admin::v1::{self as apb, admin_client::AdminClient},
        control_plane_client::ControlPlaneClient,
    },
    systemd::{DbusSystemd, Systemd},
    unit,
};
use tonic::transport::Channel;

/// Heartbeats every second, a lease of five.
pub const INTERVAL: Duration = Duration::from_secs(1);
pub const LEASE: Duration = Duration::from_secs(5);
/// What the issue allows for convergence after heal: heartbeat interval +
/// lease + 2 s.
pub const CONVERGE: Duration = Duration::from_secs(1 + 5 + 2);
pub const DEADLINE: Duration = Duration::from_secs(30);

/// One partition test at a time: their clocks are what they measure.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

pub struct Net {
    pub fleet: Fleet,
    engines: HashMap<String, Arc<DbusSystemd>>,
    pub demo: PathBuf,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh fleet (`None`: skipped, outside CI, when not root).
pub async fn up(hosts: usize, ha: bool, admin_args: &[&str]) -> Option<Net> {
    let uid = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(u32::MAX);
    if uid != 0 {
        assert!(!in_ci(), "the partition tests need root (uid {uid})");
        eprintln!("SKIPPED: hosts in network namespaces need root (uid is {uid})");
        return None;
    }
    let pid = std::process::id();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let home = Path::new(prism_launcher::sandbox::DEFAULT_BASE).join(format!("fleet-{pid}-{n}"));
    let _ = std::fs::remove_dir_all(&home);
    let spec = fleet::Spec {
        tag: fleet::tag_for(&home),
        home,
        hosts,
        ha,
        heartbeat: INTERVAL,
        lease: Some(LEASE),
        admin_args: admin_args.iter().map(|s| s.to_string()).collect(),
        launcher_args: vec![],
        pid: Some(pid),
        binaries: Binaries {
            admin: env!("CARGO_BIN_EXE_prism-admin").into(),
            launcher: env!("CARGO_BIN_EXE_prism-launcher").into(),
            demo: env!("CARGO_BIN_EXE_prism-demo").into(),
            ctl: env!("CARGO_BIN_EXE_prismctl").into(),
        },
        extra_binary_dir: None,
    };
    let fleet = match Fleet::up(&spec).await {
        // PRISM_PARTITION_KEEP=1 leaves it up for a post-mortem (the next
        // run sweeps it).
        Ok(f) if std::env::var_os("PRISM_PARTITION_KEEP").is_some() => f.keep(),
        Ok(f) => f.down_on_drop(),
        Err(e) => panic!("cannot bring the fleet up: {e}"),
    };
    let mut engines = HashMap::new();
    for host in fleet.layout.launchers() {
        engines.insert(
            host.clone(),
            Arc::new(fleet.engine(&host).await.expect("the host's manager")),
        );
    }
    let demo = fleet.bin_dir().join("prism-demo");
    Some(Net {
        fleet,
        engines,
        demo,
    })
}

fn unix(path: &Path) -> Channel {
    channel(
        &Address::Unix(path.to_owned()),
        None,
        Duration::from_secs(3),
    )
    .expect("socket")
}

/// A unit that runs (or is still stopping: its process lives).
fn alive(state: &str) -> bool {
    matches!(
        state,
        "active" | "activating" | "deactivating" | "reloading"
    )
}

/// A demo process: `id`, `on` a launcher when given, with `on_disconnect`.
pub fn demo(net: &Net, id: &str) -> pb::ProcessAssignment {
    pb::ProcessAssignment {
        process_id: id.into(),
        process_type: "utility".into(),
        version: 1,
        config: Some(pb::ProcessConfig {
            binary: net.demo.display().to_string(),
            // A quick stop: the tests count the graceful stop in margins.
            graceful_timeout_seconds: 1,
            utility: Some(pb::UtilityProcessConfig {
                utility_type: "test".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn with_disconnect(
    mut a: pb::ProcessAssignment,
    stop_ms: Option<i64>,
    replace_ms: Option<i64>,
    twice: bool,
) -> pb::ProcessAssignment {
    a.config.as_mut().expect("config").on_disconnect = Some(pb::OnDisconnect {
        stop_after_ms: stop_ms,
        replace_after_ms: replace_ms,
        at_least_once: twice,
    });
    a
}

/// What an assignment through the admins answered, and how long it took.
#[derive(Debug)]
pub struct Answer {
    pub result: Result<pb::ProcessAssignmentAck, tonic::Status>,
    pub took: Duration,
    /// Unix ms when it was sent.
    pub at_ms: i64,
}

impl Answer {
    /// The acknowledgement, which there must be.
    pub fn ack(&self, what: &str) -> &pb::ProcessAssignmentAck {
        match &self.result {
            Ok(ack) => ack,
            Err(s) => panic!("{what}: {:?}: {}", s.code(), s.message()),
        }
    }
}

impl Net {
    pub fn admins(&self) -> usize {
        self.fleet.layout.admins()
    }

    /// Admin `k`'s prism.ControlPlane.
    pub fn cp(&self, k: usize) -> ControlPlaneClient<Channel> {
        ControlPlaneClient::new(unix(&self.fleet.admin_socket(k)))
    }

    pub fn api(&self, k: usize) -> AdminClient<Channel> {
        AdminClient::new(unix(&self.fleet.admin_socket(k)))
    }

    /// The admin that leads, by index.
    pub async fn leader(&self) -> Option<usize> {
        let host = self.fleet.leader().await?;
        host.strip_prefix("admin-")?
            .parse::<usize>()
            .ok()
            .map(|k| k - 1)
    }

    /// Assign through admin `k` as a client with a 5 s deadline would;
    /// `launcher` pins it.
    pub async fn assign_via(
        &self,
        k: usize,
        a: pb::ProcessAssignment,
        launcher: Option<&str>,
    ) -> Answer {
        let mut request = tonic::Request::new(a);
        request.set_timeout(Duration::from_secs(5));
        if let Some(l) = launcher {
            request
                .metadata_mut()
                .insert("prism-launcher-id", l.parse().expect("metadata"));
        }
        let at = Instant::now();
        let at_ms = prism_launcher::clock::unix_ms();
        let result =
            tokio::time::timeout(Duration::from_secs(6), self.cp(k).assign_process(request))
                .await
                .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within 6 s")))
                .map(tonic::Response::into_inner);
        Answer {
            result,
            took: at.elapsed(),
            at_ms,
        }
    }

    /// Assign through whichever admin answers (the leader, or a follower
    /// passing it on).
    pub async fn assign(&self, a: pb::ProcessAssignment, launcher: Option<&str>) -> Answer {
        let k = self.leader().await.unwrap_or(0);
        self.assign_via(k, a, launcher).await
    }

    /// Every process, from the first admin that answers.
    pub async fn processes(&self) -> BTreeMap<String, apb::ProcessInfo> {
        self.try_processes()
            .await
            .expect("no admin answered ListProcesses")
    }

    /// [`Self::processes`], `None` when no admin answers within 10 s.
    pub async fn try_processes(&self) -> Option<BTreeMap<String, apb::ProcessInfo>> {
        for k in self.order().await {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(10),
                self.api(k)
                    .list_processes(apb::ListProcessesRequest::default()),
            )
            .await
            {
                return Some(
                    r.into_inner()
                        .processes
                        .into_iter()
                        .map(|p| (p.assignment.clone().unwrap_or_default().process_id, p))
                        .collect(),
                );
            }
        }
        None
    }

    pub async fn process(&self, id: &str) -> apb::ProcessInfo {
        for k in self.order().await {
            if let Ok(Ok(r)) = tokio::time::timeout(
                Duration::from_secs(3),
                self.api(k).get_process(apb::GetProcessRequest {
                    process_id: id.into(),
                    history_limit: 50,
                }),
            )
            .await
            {
                return r.into_inner();
            }
        }
        panic!("no admin answered GetProcess {id}");
    }

    pub async fn launchers(&self) -> BTreeMap<String, apb::LauncherInfo> {
        self.try_launchers()
            .await
            .expect("no admin answered ListLaunchers")
    }

    /// Admin `k`'s launchers, `None` when it does not answer within 10 s.
    pub async fn launchers_at(&self, k: usize) -> Option<BTreeMap<String, apb::LauncherInfo>> {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            self.api(k).list_launchers(apb::ListLaunchersRequest {}),
        )
        .await
        .ok()?
        .ok()?;
        Some(
            r.into_inner()
                .launchers
                .into_iter()
                .map(|l| (l.launcher_id.clone(), l))
                .collect(),
        )
    }

    /// [`Self::launchers`], `None` when no admin answers within 10 s.
    pub async fn try_launchers(&self) -> Option<BTreeMap<String, apb::LauncherInfo>> {
        for k in self.order().await {
            if let Some(launchers) = self.launchers_at(k).await {
                return Some(launchers);
            }
        }
        None
    }

    /// The leader first, then the others.
    async fn order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.admins()).collect();
        if let Some(l) = self.leader().await {
            order.retain(|k| *k != l);
            order.insert(0, l);
        }
        order
    }

    /// The processes whose units run on `host`, with their MainPID, from
    /// the host's own manager.
    pub async fn running_on(&self, host: &str) -> BTreeMap<String, u32> {
        running_on(&self.engines[host]).await
    }

    /// Where each process runs now, over every launcher host.
    pub async fn where_running(&self) -> BTreeMap<String, BTreeMap<String, u32>> {
        let mut all: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
        for host in self.fleet.layout.launchers() {
            for (id, pid) in self.running_on(&host).await {
                all.entry(id).or_default().insert(host.clone(), pid);
            }
        }
        all
    }

    /// Sample every launcher host's units every 100 ms until stopped.
    pub fn sampler(&self) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let engines: Vec<(String, Arc<DbusSystemd>)> = self
            .engines
            .iter()
            .map(|(h, e)| (h.clone(), e.clone()))
            .collect();
        let task = {
            let (stop, samples) = (stop.clone(), samples.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let mut on: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
                    let mut whole = true;
                    for (host, engine) in &engines {
                        match alive_units(engine).await {
                            Some(ids) => {
                                for id in ids {
                                    on.entry(id).or_default().insert(host.clone());
                                }
                            }
                            None => whole = false,
                        }
                    }
                    // A host that did not answer would hide a copy.
                    if whole {
                        samples.lock().unwrap().push(Sample { at, on });
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Sampler {
            stop,
            samples,
            task,
        }
    }

    /// Wait until every launcher is healthy, every process placed runs
    /// (at the admin, and on its launcher's manager, and nowhere else),
    /// and `also` holds; returns how long that took.
    pub async fn converged(&self, within: Duration, also: &[&str]) -> Duration {
        let start = Instant::now();
        loop {
            let last = match self.settled(also).await {
                Ok(()) => return start.elapsed(),
                Err(why) => why,
            };
            if start.elapsed() > within {
                panic!(
                    "not converged within {within:?}: {last}\n--- host-1 ---\n{}",
                    self.fleet.journal_tail("host-1", 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn settled(&self, also: &[&str]) -> Result<(), String> {
        if self.leader().await.is_none() {
            return Err("no admin leads".into());
        }
        let launchers = self
            .try_launchers()
            .await
            .ok_or("no admin answers ListLaunchers")?;
        if let Some(l) = launchers.values().find(|l| l.health != "healthy") {
            return Err(format!("{} is {}", l.launcher_id, l.health));
        }
        let placed = self
            .try_processes()
            .await
            .ok_or("no admin answers ListProcesses")?;
        let running = self.where_running().await;
        for id in also {
            if !placed.contains_key(*id) {
                return Err(format!("{id} is not placed"));
            }
        }
        for (id, p) in &placed {
            let status = p.health.as_ref().map(|h| h.status.as_str()).unwrap_or("");
            if status != "running" || p.placement != "placed" {
                return Err(format!("{id} is {status} ({})", p.placement));
            }
            let hosts: Vec<&String> = running
                .get(id)
                .map(|m| m.keys().collect())
                .unwrap_or_default();
            if hosts != [&p.launcher_id] {
                return Err(format!(
                    "{id} is placed on {} but runs on {hosts:?}",
                    p.launcher_id
                ));
            }
        }
        if let Some(extra) = running.keys().find(|id| !placed.contains_key(*id)) {
            return Err(format!("{extra} runs but is not placed"));
        }
        Ok(())
    }

    /// A launcher host's metrics, over the fleet's network.
    pub async fn launcher_metrics(&self, host: &str) -> String {
        let addr = format!(
            "{}:{}",
            self.fleet.addr(host).expect("host"),
            fleet::LAUNCHER_PORT + 1
        );
        fleet::metrics_text(&addr).await.unwrap_or_default()
    }

    /// The last words of every admin and of host-1, for a failure.
    pub fn dump(&self) -> String {
        let mut text = String::new();
        for host in self
            .fleet
            .layout
            .admin_hosts()
            .into_iter()
            .chain(["host-1".to_owned()])
        {
            text.push_str(&format!(
                "\n--- {host} ---\n{}",
                self.fleet.journal_tail(&host, 40)
            ));
        }
        text
    }

    /// `host`'s journal (every identifier).
    pub fn journal(&self, host: &str) -> String {
        self.fleet.journal_tail(host, 2000)
    }
}

/// The processes whose units are alive on a host's manager.
async fn alive_units(engine: &DbusSystemd) -> Option<BTreeSet<String>> {
    let units = engine.list().await.ok()?;
    Some(
        units
            .into_iter()
            .filter(|u| alive(&u.active_state))
            .filter_map(|u| unit::parse_description(&u.description).map(|i| i.id))
            .collect(),
    )
}

async fn running_on(engine: &DbusSystemd) -> BTreeMap<String, u32> {
    let Ok(units) = engine.list().await else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for u in units.into_iter().filter(|u| alive(&u.active_state)) {
        let Some(identity) = unit::parse_description(&u.description) else {
            continue;
        };
        let pid = match engine.status(&u.name).await {
            Ok(s) => s.main_pid,
            Err(_) => 0,
        };
        out.insert(identity.id, pid);
    }
    out
}

pub struct Sample {
    pub at: Instant,
    /// Process → the launcher hosts its unit runs on.
    pub on: BTreeMap<String, BTreeSet<String>>,
}

pub struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

/// Every sample in which a process ran on two hosts at once (except those
/// in `twice_ok`), as "id on [a, b] at +1.2 s".
pub fn doubled(samples: &[Sample], twice_ok: &[&str]) -> Vec<String> {
    let Some(t0) = samples.first().map(|s| s.at) else {
        return vec!["no samples".into()];
    };
    samples
        .iter()
        .flat_map(|s| {
            s.on.iter()
                .filter(|(id, hosts)| hosts.len() > 1 && !twice_ok.contains(&id.as_str()))
                .map(move |(id, hosts)| {
                    format!(
                        "{id} on {hosts:?} at +{:.1} s",
                        s.at.duration_since(t0).as_secs_f64()
                    )
                })
        })
        .collect()
}

/// Wait for `check` to give a value, for at most `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status the admin reports for a process.
pub fn status(p: &apb::ProcessInfo) -> &str {
    p.health.as_ref().map(|h| h.status.as_str()).unwrap_or("")
}
