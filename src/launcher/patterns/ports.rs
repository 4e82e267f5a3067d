//! Port pairs for patterns launched by name: GRPC_PORT and HEALTH_PORT =
//! GRPC_PORT + 1, as pattern-launcher gave them, from a configured range.
//!
//! A pair is taken under one lock, so two launches never get the same
//! one; it belongs to its process until the process is forgotten (its
//! revocation finished). Ports of processes already held (restored from
//! the state directory) are taken back at start-up.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, TcpListener},
    ops::RangeInclusive,
    sync::Mutex,
};

/// pattern-launcher's first port.
pub const DEFAULT_RANGE: RangeInclusive<u16> = 50051..=51050;

#[derive(Debug)]
pub struct Ports {
    range: RangeInclusive<u16>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// First port of each pair in use → its process.
    taken: BTreeMap<u16, String>,
    by_process: HashMap<String, u16>,
    /// Where the next search starts (a freed pair is not reused at once).
    next: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    pub grpc: u16,
    pub health: u16,
}

impl Pair {
    fn from_first(first: u16) -> Self {
        Pair {
            grpc: first,
            health: first + 1,
        }
    }
}

impl Ports {
    /// `range` holds at least one pair (checked by the configuration).
    pub fn new(range: RangeInclusive<u16>) -> Self {
        let next = *range.start();
        Self {
            range,
            inner: Mutex::new(Inner {
                next,
                ..Inner::default()
            }),
        }
    }

    pub fn range(&self) -> &RangeInclusive<u16> {
        &self.range
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("port table poisoned")
    }

    /// The pair of `process`, if it has one.
    pub fn of(&self, process: &str) -> Option<Pair> {
        self.inner()
            .by_process
            .get(process)
            .map(|p| Pair::from_first(*p))
    }

    /// Take back the pair a held process was given (after a restart).
    /// False if it lies outside the range or is another's.
    pub fn restore(&self, process: &str, grpc: u16) -> bool {
        if !self.range.contains(&grpc) || !self.range.contains(&(grpc.saturating_add(1))) {
            return false;
        }
        let mut inner = self.inner();
        match inner.taken.get(&grpc) {
            Some(owner) => owner == process,
            None => {
                inner.taken.insert(grpc, process.to_owned());
                inner.by_process.insert(process.to_owned(), grpc);
                true
            }
        }
    }

    /// A free pair for `process` (its own if it has one), skipping ports
    /// something else on the host is listening on. None when the range is
    /// used up.
    pub fn take(&self, process: &str) -> Option<Pair> {
        let mut inner = self.inner();
        if let Some(first) = inner.by_process.get(process) {
            return Some(Pair::from_first(*first));
        }
        let (start, end) = (*self.range.start(), *self.range.end());
        let pairs = u32::from(end - start).div_ceil(2);
        let mut candidate = inner.next;
        for _ in 0..pairs {
            if candidate < start || u32::from(candidate) + 1 > u32::from(end) {
                candidate = start;
            }
            let free = !inner.taken.contains_key(&candidate)
                && !inner.taken.contains_key(&(candidate.wrapping_sub(1)))
                && !inner.taken.contains_key(&(candidate + 1))
                && bindable(candidate)
                && bindable(candidate + 1);
            if free {
                inner.taken.insert(candidate, process.to_owned());
                inner.by_process.insert(process.to_owned(), candidate);
                inner.next = candidate.saturating_add(2);
                return Some(Pair::from_first(candidate));
            }
            candidate = candidate.saturating_add(2);
        }
        None
    }

    /// `process` is gone: its pair may be given again.
    pub fn release(&self, process: &str) {
        let mut inner = self.inner();
        if let Some(first) = inner.by_process.remove(process) {
            inner.taken.remove(&first);
        }
    }

    /// Processes holding a pair.
    pub fn owners(&self) -> Vec<String> {
        self.inner().by_process.keys().cloned().collect()
    }

    /// Pairs in use.
    pub fn in_use(&self) -> usize {
        self.inner().taken.len()
    }
}

/// Nothing on the host listens on `port` (on any IPv4 address).
fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_distinct_reused_by_their_process_and_released() {
        let ports = Ports::new(40101..=40110);
        let a = ports.take("a").unwrap();
        assert_eq!(a.health, a.grpc + 1);
        assert_eq!(ports.take("a"), Some(a));
        let b = ports.take("b").unwrap();
        assert_ne!(a.grpc, b.grpc);
        assert!(b.grpc > a.health || b.health < a.grpc);
        ports.release("a");
        assert_eq!(ports.of("a"), None);
        assert_eq!(ports.in_use(), 1);
    }

    #[test]
    fn a_used_up_range_gives_none_and_restores_keep_their_owner() {
        let ports = Ports::new(40121..=40124);
        assert!(ports.restore("x", 40121));
        assert!(!ports.restore("y", 40121));
        assert!(!ports.restore("z", 40124), "its health port is outside");
        let second = ports.take("y").unwrap();
        assert_eq!(second.grpc, 40123);
        assert_eq!(ports.take("z"), None);
    }

    #[test]
    fn concurrent_takes_never_share_a_port() {
        let ports = std::sync::Arc::new(Ports::new(40201..=40400));
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let ports = ports.clone();
                std::thread::spawn(move || {
                    (0..10)
                        .filter_map(|i| ports.take(&format!("p{t}-{i}")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u16> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .flat_map(|p| [p.grpc, p.health])
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(n, 160);
    }
}
