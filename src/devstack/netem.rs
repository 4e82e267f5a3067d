//! A host's outgoing packets, delayed: what `tc qdisc … netem delay` does,
//! for kernels built without netem. The network queues the host's packets
//! (iptables `NFQUEUE`, see [`super::net::Net::queue_outgoing`]); this holds
//! each for the delay, in order, then lets it go. Runs inside the host's
//! namespace, as a unit of the host's manager (`prismctl local netem`).

use std::{
    collections::VecDeque,
    io,
    time::{Duration, Instant},
};

/// The longest a packet waits for its turn to be looked at again: the
/// delay is accurate to this.
const TICK: Duration = Duration::from_millis(1);

/// How long a stopping delay still holds what it holds: packets due later
/// go at once (the unit's stop must not time out).
const DRAIN_MAX: Duration = Duration::from_secs(4);

/// Set once SIGTERM came: the rule is gone by then (`heal` removes it
/// first), and what is held goes on its schedule instead of being dropped
/// with the queue. A dropped packet costs its connection a retransmission
/// timeout, which at a one-second round trip is seconds: a heal would be a
/// fault of its own.
fn stop_requested() -> io::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let mut term = {
        let _entered = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?
    };
    let set = flag.clone();
    std::thread::spawn(move || {
        runtime.block_on(term.recv());
        set.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    Ok(flag)
}

/// Hold every packet of queue `queue` for `delay`, until SIGTERM, then let
/// what is held go (on time, within [`DRAIN_MAX`]) and return. `ready`
/// runs once the queue is bound (the rule may be added then).
pub fn delay_forever(queue: u16, delay: Duration, ready: impl FnOnce()) -> io::Result<()> {
    let stopping = stop_requested()?;
    let mut drain_until: Option<Instant> = None;
    let mut q = nfq::Queue::open()?;
    q.bind(queue)?;
    // Only the headers cross to this process: it never reads a payload.
    q.set_copy_range(queue, 64)?;
    // A full queue lets packets through rather than dropping them.
    q.set_fail_open(queue, true)?;
    q.set_queue_max_len(queue, 65_536)?;
    // Large segments whole, not cut up for this process.
    q.set_recv_gso(queue, true)?;
    q.set_nonblocking(true);
    ready();
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    msg.set_verdict(nfq::Verdict::Accept);
                    held.push_back((Instant::now() + delay, msg));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let now = Instant::now();
        if drain_until.is_none() && stopping.load(std::sync::atomic::Ordering::Relaxed) {
            drain_until = Some(now + DRAIN_MAX);
        }
        let release = |due: &Instant| *due <= now || drain_until.is_some_and(|end| now >= end);
        while held.front().is_some_and(|(due, _)| release(due)) {
            let (_, msg) = held.pop_front().expect("looked at");
            q.verdict(msg)?;
        }
        if drain_until.is_some() && held.is_empty() {
            return Ok(());
        }
        let wait = held.front().map_or(TICK, |(due, _)| {
            due.saturating_duration_since(now).min(TICK)
        });
        std::thread::sleep(wait);
    }
}
