//! What a bench run reports: latency figures, the report, and progress
//! on a terminal.

use super::*;

/// Latency figures in milliseconds.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// Figures of `samples` (sorted here); zeros for none.
    pub fn of(samples: &mut [Duration]) -> Latency {
        samples.sort();
        let Some(last) = samples.len().checked_sub(1) else {
            return Latency::default();
        };
        // Milliseconds, to the microsecond.
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let at = |p: f64| ms(samples[((last as f64) * p).round() as usize]);
        Latency {
            min: ms(samples[0]),
            mean: ms(samples.iter().sum::<Duration>() / samples.len() as u32),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            max: ms(samples[last]),
        }
    }
}

/// What a run did (the `-o json` document).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The admin's or the launcher's address.
    pub target: String,
    pub namespace: String,
    pub binary: String,
    pub requested: usize,
    pub concurrency: usize,
    /// Acknowledged assignments (each one's unit was started).
    pub assigned: usize,
    pub failed: usize,
    /// Ctrl-C stopped the run before every assignment was sent.
    pub interrupted: bool,
    pub seconds: f64,
    /// Acknowledged assignments per second.
    pub per_second: f64,
    /// Latency of the acknowledged assignments, until the ack.
    pub latency_ms: Latency,
    /// The distinct errors, with how many times each was seen.
    pub errors: BTreeMap<String, usize>,
    pub revoked: usize,
    pub revoke_seconds: f64,
    /// Processes still in the namespace at the end (none, normally).
    pub left: Vec<String>,
}

/// A progress line on stderr, on a terminal only, at most 10 times a
/// second.
pub(super) struct Progress {
    tty: bool,
    last: Option<Instant>,
}

impl Progress {
    pub(super) fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    pub(super) fn show(&mut self, what: &str, done: usize, total: usize, extra: &str, force: bool) {
        if !self.tty
            || (!force
                && self
                    .last
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(100)))
        {
            return;
        }
        self.last = Some(Instant::now());
        const WIDTH: usize = 30;
        let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
        eprint!(
            "\r\x1b[K{what} [{}{}] {done}/{total}{extra}",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled)
        );
        let _ = std::io::stderr().flush();
    }

    pub(super) fn done(&mut self) {
        if self.tty && self.last.is_some() {
            eprintln!();
        }
        self.last = None;
    }
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

pub(super) fn print_report(format: Format, r: &Report) -> Result<(), Error> {
    if let Some(text) = structured(format, r)? {
        out(&text);
        return Ok(());
    }
    let l = &r.latency_ms;
    let latency = if r.assigned == 0 {
        "-".to_owned()
    } else {
        format!(
            "min {:.1} ms, mean {:.1}, p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
            l.min, l.mean, l.p50, l.p90, l.p99, l.max
        )
    };
    let mut text = format!(
        "target:      {}\nworkload:    {} (namespace {})\n\
         assigned:    {} of {} ({} failed{}) with {} in flight\n\
         duration:    {:.2} s\nthroughput:  {:.1} assignments/s\n\
         latency:     {latency}\nrevoked:     {} in {:.2} s\n",
        r.target,
        r.binary,
        r.namespace,
        r.assigned,
        r.requested,
        r.failed,
        if r.interrupted { ", interrupted" } else { "" },
        r.concurrency,
        r.seconds,
        r.per_second,
        r.revoked,
        r.revoke_seconds,
    );
    for (e, n) in &r.errors {
        text.push_str(&format!("error ({n}×): {e}\n"));
    }
    out(&text);
    Ok(())
}
