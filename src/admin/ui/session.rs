//! Who a browser is: one-time login tickets that `prismctl ui` obtains for
//! an authenticated caller, and the sessions they open. Both live in this
//! admin's memory only; a session carries its caller (and so its role),
//! a CSRF token, and ends after being idle or old enough, whichever comes
//! first.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::auth::Caller;

/// How long a login ticket may wait to be used (once).
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// A session unused this long ends, by default.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(3600);
/// A session ends this long after it began, used or not, by default.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(12 * 3600);
/// Tickets and sessions one admin holds at most: a caller who asks for
/// more makes room by ending the oldest.
pub const MAX_TICKETS: usize = 1024;
pub const MAX_SESSIONS: usize = 4096;

/// 256 random bits, as 64 hex digits.
pub fn token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal, in a time that does not depend on where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A signed-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub caller: Caller,
    /// Every form carries it; every POST must bring it back.
    pub csrf: String,
    pub started: Instant,
    pub last_used: Instant,
}

impl Session {
    /// When it ends if not used again.
    pub fn ends(&self, idle: Duration, max_age: Duration) -> Instant {
        (self.last_used + idle).min(self.started + max_age)
    }
}

struct Ticket {
    caller: Caller,
    issued: Instant,
}

#[derive(Default)]
struct Inner {
    tickets: HashMap<String, Ticket>,
    sessions: HashMap<String, Session>,
}

/// The tickets and sessions of one admin's page.
pub struct Sessions {
    inner: Mutex<Inner>,
    pub idle: Duration,
    pub max_age: Duration,
}

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            idle,
            max_age,
        }
    }

    /// A one-time ticket that signs a browser in as `caller`.
    pub fn issue(&self, caller: Caller, now: Instant) -> String {
        let ticket = token();
        let mut inner = self.inner.lock().expect("poisoned");
        inner
            .tickets
            .retain(|_, t| now.saturating_duration_since(t.issued) < TICKET_TTL);
        if inner.tickets.len() >= MAX_TICKETS
            && let Some(oldest) = inner
                .tickets
                .iter()
                .min_by_key(|(_, t)| t.issued)
                .map(|(k, _)| k.clone())
        {
            inner.tickets.remove(&oldest);
        }
        inner.tickets.insert(
            ticket.clone(),
            Ticket {
                caller,
                issued: now,
            },
        );
        ticket
    }

    /// Use a ticket (it is gone afterwards, whatever the outcome): the new
    /// session's id and the session, or `None` for a ticket unknown, used
    /// or older than [`TICKET_TTL`].
    pub fn redeem(&self, ticket: &str, now: Instant) -> Option<(String, Session)> {
        let mut inner = self.inner.lock().expect("poisoned");
        let t = inner.tickets.remove(ticket)?;
        if now.saturating_duration_since(t.issued) >= TICKET_TTL {
            return None;
        }
        let (idle, max_age) = (self.idle, self.max_age);
        inner.sessions.retain(|_, s| s.ends(idle, max_age) > now);
        if inner.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone())
        {
            inner.sessions.remove(&oldest);
        }
        let session = Session {
            caller: t.caller,
            csrf: token(),
            started: now,
            last_used: now,
        };
        let id = token();
        inner.sessions.insert(id.clone(), session.clone());
        Some((id, session))
    }

    /// The live session `id` names, marked used now; an expired one is
    /// ended.
    pub fn get(&self, id: &str, now: Instant) -> Option<Session> {
        let mut inner = self.inner.lock().expect("poisoned");
        let s = inner.sessions.get_mut(id)?;
        if s.ends(self.idle, self.max_age) <= now {
            inner.sessions.remove(id);
            return None;
        }
        s.last_used = now;
        Some(s.clone())
    }

    /// Whether `id` is still a live session, without marking it used (a
    /// live feed checks this; it is not the operator's activity).
    pub fn alive(&self, id: &str, now: Instant) -> bool {
        let inner = self.inner.lock().expect("poisoned");
        inner
            .sessions
            .get(id)
            .is_some_and(|s| s.ends(self.idle, self.max_age) > now)
    }

    /// Sign out.
    pub fn end(&self, id: &str) {
        self.inner.lock().expect("poisoned").sessions.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(Duration::from_secs(3600), Duration::from_secs(12 * 3600))
    }

    #[test]
    fn tokens_are_256_bits_and_differ() {
        let (a, b) = (token(), token());
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn a_ticket_opens_one_session_once_within_a_minute() {
        let s = sessions();
        let t0 = Instant::now();
        let ticket = s.issue(Caller::Root, t0);
        let (id, session) = s.redeem(&ticket, t0 + Duration::from_secs(59)).unwrap();
        assert_eq!(session.caller, Caller::Root);
        assert_eq!(session.csrf.len(), 64);
        assert!(
            s.redeem(&ticket, t0 + Duration::from_secs(59)).is_none(),
            "used"
        );
        assert!(s.get(&id, t0 + Duration::from_secs(60)).is_some());
        let late = s.issue(Caller::Root, t0);
        assert!(s.redeem(&late, t0 + TICKET_TTL).is_none(), "expired");
        assert!(s.redeem("nonsense", t0).is_none());
    }

    #[test]
    fn sessions_end_when_idle_or_old() {
        let s = Sessions::new(Duration::from_secs(10), Duration::from_secs(25));
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let (id, _) = s.redeem(&s.issue(Caller::Root, t0), t0).unwrap();
        // Used every 9 s, it lives on...
        assert!(s.get(&id, at(9)).is_some());
        assert!(s.get(&id, at(18)).is_some());
        assert!(s.alive(&id, at(24)));
        // ...until its absolute end, whatever its use.
        assert!(s.get(&id, at(25)).is_none());
        assert!(s.get(&id, at(1)).is_none(), "ended for good");
        // Idle 10 s: over.
        let (id, _) = s.redeem(&s.issue(Caller::Root, t0), t0).unwrap();
        assert!(!s.alive(&id, at(10)));
        assert!(s.get(&id, at(10)).is_none());
        // Signing out ends it at once.
        let (id, _) = s.redeem(&s.issue(Caller::Root, t0), t0).unwrap();
        s.end(&id);
        assert!(s.get(&id, t0).is_none());
    }

    #[test]
    fn alive_does_not_count_as_use() {
        let s = Sessions::new(Duration::from_secs(10), Duration::from_secs(100));
        let t0 = Instant::now();
        let (id, _) = s.redeem(&s.issue(Caller::Root, t0), t0).unwrap();
        assert!(s.alive(&id, t0 + Duration::from_secs(9)));
        assert!(!s.alive(&id, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn the_oldest_make_room() {
        let s = sessions();
        let t0 = Instant::now();
        let first = s.issue(Caller::Root, t0);
        for i in 0..MAX_TICKETS {
            s.issue(Caller::Root, t0 + Duration::from_millis(1 + i as u64));
        }
        assert!(s.redeem(&first, t0 + Duration::from_secs(1)).is_none());
    }
}
