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

/// Hold every packet of queue `queue` for `delay`, until the process ends.
/// `ready` runs once the queue is bound (the rule may be added then).
pub fn delay_forever(queue: u16, delay: Duration, ready: impl FnOnce()) -> io::Result<()> {
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
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, msg) = held.pop_front().expect("looked at");
            q.verdict(msg)?;
        }
        let wait = held.front().map_or(TICK, |(due, _)| {
            due.saturating_duration_since(now).min(TICK)
        });
        std::thread::sleep(wait);
    }
}
