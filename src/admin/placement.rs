//! Where a process goes: pure functions over the fleet as the admin sees
//! it, so the rules are tested with tables.

use std::{collections::BTreeMap, time::Duration};

use crate::model::PlacementRules;

/// A launcher's liveness, from its last heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    Healthy,
    /// 3 heartbeat intervals missed: nothing new is placed on it.
    Unhealthy,
    /// 6 intervals missed: its processes are `unknown`, and those that
    /// allow it are replaced elsewhere.
    Disconnected,
}

impl Liveness {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Disconnected => "disconnected",
        }
    }
}

/// The specs placed on one launcher, encoded, stay under this, so that its
/// registration ack (which carries all of them) fits the largest message
/// both ends accept, with room for the ack's own fields.
pub const SPEC_BYTES_PER_LAUNCHER: usize = crate::serve::MAX_RESPONSE_BYTES - (1 << 20);

/// A launcher silent this many intervals has missed a heartbeat: still
/// healthy, but nothing new is placed on it (an assignment pushed to a host
/// that has just dropped off the network would wait for nothing).
pub const LATE_AFTER_MISSED: u32 = 2;
pub const UNHEALTHY_AFTER_MISSED: u32 = 3;
pub const DISCONNECTED_AFTER_MISSED: u32 = 6;

/// How long a launcher last heard of at `last_heartbeat_ms` has been silent.
pub fn silence(last_heartbeat_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(last_heartbeat_ms).max(0) as u64)
}

pub fn liveness(last_heartbeat_ms: i64, now_ms: i64, interval: Duration) -> Liveness {
    let silent = silence(last_heartbeat_ms, now_ms);
    if silent >= interval * DISCONNECTED_AFTER_MISSED {
        Liveness::Disconnected
    } else if silent >= interval * UNHEALTHY_AFTER_MISSED {
        Liveness::Unhealthy
    } else {
        Liveness::Healthy
    }
}

/// One launcher as placement sees it.
#[derive(Clone, Debug)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub region: &'a str,
    pub process_types: &'a [String],
    pub max_processes: u32,
    pub used: u32,
    /// Encoded size of the specs placed on it.
    pub spec_bytes: usize,
    pub draining: bool,
    pub liveness: Liveness,
    /// Since its last heartbeat.
    pub silent: Duration,
    /// [`LATE_AFTER_MISSED`] intervals: it is late past this.
    pub late_after: Duration,
    /// What it registered in its metadata (`--label`s, hostname...).
    pub labels: &'a BTreeMap<String, String>,
    /// Processes of the request's spread group on it (the process being
    /// placed not included).
    pub in_group: u32,
}

impl Candidate<'_> {
    fn free(&self) -> u32 {
        self.max_processes.saturating_sub(self.used)
    }

    /// A label as placement rules see it: `region`, or its metadata.
    fn label(&self, key: &str) -> Option<&str> {
        if key == "region" {
            Some(self.region)
        } else {
            self.labels.get(key).map(String::as_str)
        }
    }

    /// How many preferred labels it matches.
    fn preference(&self, rules: Option<&PlacementRules>) -> usize {
        rules.map_or(0, |r| {
            r.prefer_labels
                .iter()
                .filter(|(k, v)| self.label(k) == Some(v.as_str()))
                .count()
        })
    }
}

/// Why the rules of `req` keep the process off `c`, if they do.
fn rules_refusal(c: &Candidate<'_>, rules: &PlacementRules) -> Option<String> {
    for (key, want) in &rules.require_labels {
        match c.label(key) {
            Some(have) if have == want => {}
            Some(have) => return Some(format!("its label {key} is {have:?}, not {want:?}")),
            None => return Some(format!("it has no label {key} (required: {want:?})")),
        }
    }
    if let Some(group) = &rules.spread_group
        && c.in_group >= rules.max_per_launcher
    {
        return Some(format!(
            "it runs {} of spread group {group} already (at most {} per launcher)",
            c.in_group, rules.max_per_launcher
        ));
    }
    None
}

#[derive(Clone, Debug, Default)]
pub struct Request<'a> {
    pub process_type: &'a str,
    /// Preferred region (from the request's `prism-region` metadata).
    pub region: Option<&'a str>,
    /// Only this launcher (from `prism-launcher-id` metadata).
    pub launcher: Option<&'a str>,
    /// Never these launchers (moving away from them).
    pub exclude: &'a [&'a str],
    /// Encoded size of the spec to place.
    pub spec_bytes: usize,
    /// The assignment's spread and affinity.
    pub rules: Option<&'a PlacementRules>,
}

/// Why nothing fits; the message says which constraint failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoCandidate {
    #[error("no launchers support process type: {0}")]
    Unsupported(String),
    #[error("no launcher can take a {process_type}: {detail}")]
    Unavailable {
        process_type: String,
        detail: String,
    },
    #[error("launcher {launcher} cannot take a {process_type}: {reason}")]
    Explicit {
        launcher: String,
        process_type: String,
        reason: String,
    },
}

fn refusal(c: &Candidate<'_>, req: &Request<'_>) -> Option<String> {
    let process_type = req.process_type;
    if !c.process_types.iter().any(|t| t == process_type) {
        Some(format!("it does not run {process_type} processes"))
    } else if c.liveness != Liveness::Healthy {
        Some(format!("it is {}", c.liveness.as_str()))
    } else if c.silent >= c.late_after {
        Some(format!(
            "it has missed a heartbeat (silent for {:.1} s)",
            c.silent.as_secs_f64()
        ))
    } else if c.draining {
        Some("it is draining".into())
    } else if let Some(why) = req.rules.and_then(|r| rules_refusal(c, r)) {
        Some(why)
    } else if c.free() == 0 {
        Some(format!("it is full ({} of {})", c.used, c.max_processes))
    } else if c.spec_bytes + req.spec_bytes > SPEC_BYTES_PER_LAUNCHER {
        Some(format!(
            "its specs would exceed {} MiB, the most its registration ack carries",
            SPEC_BYTES_PER_LAUNCHER >> 20
        ))
    } else {
        None
    }
}

/// Whether a new version may stay on the launcher that runs the old one:
/// its rules (labels, spread) still allow it there.
pub fn may_stay(c: &Candidate<'_>, rules: &PlacementRules) -> bool {
    rules_refusal(c, rules).is_none()
}

/// Pick a launcher: healthy, not draining, running the type, matching the
/// required labels, under its spread group's maximum, with a free slot; the
/// requested region first, then the most preferred labels, then the most
/// free slots, then the smallest id (deterministic).
pub fn choose(candidates: &[Candidate<'_>], req: &Request<'_>) -> Result<String, NoCandidate> {
    let ty = req.process_type;
    if let Some(wanted) = req.launcher {
        let Some(c) = candidates.iter().find(|c| c.id == wanted) else {
            return Err(NoCandidate::Explicit {
                launcher: wanted.into(),
                process_type: ty.into(),
                reason: "it is not registered".into(),
            });
        };
        return match refusal(c, req) {
            Some(reason) => Err(NoCandidate::Explicit {
                launcher: wanted.into(),
                process_type: ty.into(),
                reason,
            }),
            None => Ok(c.id.to_owned()),
        };
    }
    let pool: Vec<&Candidate<'_>> = candidates
        .iter()
        .filter(|c| !req.exclude.contains(&c.id))
        .collect();
    let supporting: Vec<&&Candidate<'_>> = pool
        .iter()
        .filter(|c| c.process_types.iter().any(|t| t == ty))
        .collect();
    if supporting.is_empty() {
        return Err(NoCandidate::Unsupported(ty.into()));
    }
    let best = supporting
        .iter()
        .filter(|c| refusal(c, req).is_none())
        .min_by(|a, b| {
            let in_region = |c: &Candidate<'_>| req.region.is_some_and(|r| r == c.region);
            in_region(b)
                .cmp(&in_region(a))
                .then(b.preference(req.rules).cmp(&a.preference(req.rules)))
                .then(b.free().cmp(&a.free()))
                .then(a.id.cmp(b.id))
        });
    match best {
        Some(c) => Ok(c.id.to_owned()),
        None => {
            let mut reasons: Vec<String> = supporting
                .iter()
                .filter_map(|c| refusal(c, req).map(|r| format!("{}: {r}", c.id)))
                .collect();
            reasons.sort();
            Err(NoCandidate::Unavailable {
                process_type: ty.into(),
                detail: format!("{} support it; {}", supporting.len(), reasons.join("; ")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn no_labels() -> &'static BTreeMap<String, String> {
        Box::leak(Box::default())
    }

    fn labels(pairs: &[(&str, &str)]) -> &'static BTreeMap<String, String> {
        Box::leak(Box::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ))
    }

    #[test]
    fn spread_and_affinity() {
        let all: &'static [String] = Box::leak(types(&["proxy"]).into_boxed_slice());
        let host = |id: &'static str, zone: &str, disk: &str, in_group: u32| Candidate {
            id,
            region: "eu",
            process_types: all,
            max_processes: 10,
            used: in_group,
            spec_bytes: 0,
            draining: false,
            liveness: Liveness::Healthy,
            silent: Duration::ZERO,
            late_after: Duration::from_secs(2),
            labels: labels(&[("zone", zone), ("disk", disk)]),
            in_group,
        };
        let rules =
            |group: Option<&str>, max: u32, require: &[(&str, &str)], prefer: &[(&str, &str)]| {
                PlacementRules {
                    spread_group: group.map(str::to_owned),
                    max_per_launcher: max,
                    require_labels: labels(require).clone(),
                    prefer_labels: labels(prefer).clone(),
                }
            };
        let req = |r: &'static PlacementRules| Request {
            process_type: "proxy",
            rules: Some(r),
            ..Request::default()
        };
        let leak = |r: PlacementRules| -> &'static PlacementRules { Box::leak(Box::new(r)) };
        // Anti-affinity: replicas never share a host.
        let spread = leak(rules(Some("proxies"), 1, &[], &[]));
        let fleet = [host("a", "z1", "ssd", 1), host("b", "z2", "hdd", 0)];
        assert_eq!(choose(&fleet, &req(spread)).unwrap(), "b");
        let full = [host("a", "z1", "ssd", 1), host("b", "z2", "hdd", 1)];
        let e = choose(&full, &req(spread)).unwrap_err().to_string();
        assert!(
            e.contains("a: it runs 1 of spread group proxies already (at most 1 per launcher)"),
            "{e}"
        );
        assert!(e.contains("b: it runs 1 of spread group proxies"), "{e}");
        // A higher maximum per launcher.
        let two = leak(rules(Some("proxies"), 2, &[], &[]));
        assert_eq!(choose(&full, &req(two)).unwrap(), "a");
        // Required labels, explained per launcher when none has them.
        let ssd = leak(rules(None, 1, &[("disk", "ssd")], &[]));
        assert_eq!(choose(&fleet, &req(ssd)).unwrap(), "a");
        let nvme = leak(rules(None, 1, &[("disk", "nvme"), ("region", "eu")], &[]));
        let e = choose(&fleet, &req(nvme)).unwrap_err().to_string();
        assert!(
            e.contains("a: its label disk is \"ssd\", not \"nvme\""),
            "{e}"
        );
        assert!(
            e.contains("b: its label disk is \"hdd\", not \"nvme\""),
            "{e}"
        );
        let rack = leak(rules(None, 1, &[("rack", "r1")], &[]));
        let e = choose(&fleet, &req(rack)).unwrap_err().to_string();
        assert!(e.contains("it has no label rack"), "{e}");
        // The region is a label too.
        let us = leak(rules(None, 1, &[("region", "us")], &[]));
        assert!(choose(&fleet, &req(us)).is_err());
        // Preferred labels order the candidates, before free slots; they
        // never exclude.
        let prefer = leak(rules(None, 1, &[], &[("zone", "z1"), ("disk", "ssd")]));
        assert_eq!(choose(&fleet, &req(prefer)).unwrap(), "a");
        let elsewhere = leak(rules(None, 1, &[], &[("zone", "z9")]));
        assert_eq!(
            choose(&fleet, &req(elsewhere)).unwrap(),
            "b",
            "most free slots"
        );
        assert!(may_stay(&fleet[0], ssd) && !may_stay(&fleet[1], ssd));
    }

    #[test]
    fn liveness_by_missed_heartbeats() {
        let i = Duration::from_secs(10);
        assert_eq!(liveness(0, 29_999, i), Liveness::Healthy);
        assert_eq!(liveness(0, 30_000, i), Liveness::Unhealthy);
        assert_eq!(liveness(0, 60_000, i), Liveness::Disconnected);
        assert_eq!(liveness(100, 0, i), Liveness::Healthy);
    }

    #[test]
    fn choices() {
        let all = types(&["pattern", "proxy", "backend", "utility"]);
        let patterns = types(&["pattern"]);
        let c =
            |id: &'static str, region: &'static str, t: &'static [String], used, draining, l| {
                Candidate {
                    id,
                    region,
                    process_types: t,
                    max_processes: 10,
                    used,
                    spec_bytes: 0,
                    draining,
                    liveness: l,
                    silent: Duration::ZERO,
                    late_after: Duration::from_secs(2),
                    labels: no_labels(),
                    in_group: 0,
                }
            };
        let all: &'static [String] = Box::leak(all.into_boxed_slice());
        let patterns: &'static [String] = Box::leak(patterns.into_boxed_slice());
        use Liveness::*;
        let fleet = vec![
            c("a", "eu", all, 5, false, Healthy),
            c("b", "us", all, 2, false, Healthy),
            c("c", "us", patterns, 0, false, Healthy),
            c("d", "eu", all, 0, true, Healthy),
            c("e", "eu", all, 0, false, Disconnected),
        ];
        let req = |ty, region| Request {
            process_type: ty,
            region,
            ..Request::default()
        };
        // Most free slots among eligible.
        assert_eq!(choose(&fleet, &req("pattern", None)).unwrap(), "c");
        assert_eq!(choose(&fleet, &req("proxy", None)).unwrap(), "b");
        // Region first, then free slots.
        assert_eq!(choose(&fleet, &req("proxy", Some("eu"))).unwrap(), "a");
        // Deterministic tie-break by id.
        let tie = vec![
            c("y", "eu", all, 1, false, Healthy),
            c("x", "eu", all, 1, false, Healthy),
        ];
        assert_eq!(choose(&tie, &req("utility", None)).unwrap(), "x");
        // Nothing supports the type.
        let only_patterns = vec![c("c", "us", patterns, 0, false, Healthy)];
        assert_eq!(
            choose(&only_patterns, &req("proxy", None))
                .unwrap_err()
                .to_string(),
            "no launchers support process type: proxy"
        );
        // Something supports it but cannot take it, and the reasons say why.
        let stuck = vec![
            c("full", "eu", all, 10, false, Healthy),
            c("drain", "eu", all, 0, true, Healthy),
            c("sick", "eu", all, 0, false, Unhealthy),
        ];
        let e = choose(&stuck, &req("backend", None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 support it"), "{e}");
        assert!(e.contains("full: it is full (10 of 10)"), "{e}");
        assert!(e.contains("drain: it is draining"), "{e}");
        assert!(e.contains("sick: it is unhealthy"), "{e}");
        // A launcher that has missed a heartbeat takes nothing new, though
        // it is not unhealthy yet.
        let mut late = c("late", "eu", all, 0, false, Healthy);
        late.silent = Duration::from_millis(2500);
        let e = choose(&[late.clone()], &req("backend", None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("late: it has missed a heartbeat (silent for 2.5 s)"),
            "{e}"
        );
        let on_time = c("on-time", "eu", all, 9, false, Healthy);
        assert_eq!(
            choose(&[late, on_time], &req("backend", None)).unwrap(),
            "on-time"
        );
        // Explicit launcher, and exclusions.
        let explicit = Request {
            process_type: "proxy",
            launcher: Some("c"),
            ..Request::default()
        };
        assert!(
            choose(&fleet, &explicit)
                .unwrap_err()
                .to_string()
                .contains("does not run proxy")
        );
        let away = Request {
            process_type: "pattern",
            exclude: &["c"],
            ..Request::default()
        };
        assert_eq!(choose(&fleet, &away).unwrap(), "b");
        // A launcher whose registration ack would outgrow the message limit
        // takes nothing more.
        let mut heavy = c("h", "eu", all, 0, false, Healthy);
        heavy.spec_bytes = SPEC_BYTES_PER_LAUNCHER - 10;
        let big = Request {
            process_type: "pattern",
            spec_bytes: 11,
            ..Request::default()
        };
        let e = choose(&[heavy.clone()], &big).unwrap_err().to_string();
        assert!(e.contains("registration ack"), "{e}");
        let small = Request {
            spec_bytes: 10,
            ..big
        };
        assert_eq!(choose(&[heavy], &small).unwrap(), "h");
    }
}
