//! What the admin does with the processes of a launcher it no longer hears
//! from: pure decisions, tested with tables.
//!
//! A process keeps running on its launcher, and nowhere else, unless it
//! allows a replacement: it stops itself on a cut-off launcher
//! (`on_disconnect.stop_after_ms`) early enough that the copy elsewhere
//! never overlaps it, or it accepts running twice (`at_least_once`).

use std::time::Duration;

use crate::{model::OnDisconnect, pb::prism as pb};

/// A stored (validated) assignment's `on_disconnect`.
pub fn of(spec: &pb::ProcessAssignment) -> OnDisconnect {
    let d = spec.config.as_ref().and_then(|c| c.on_disconnect.as_ref());
    let ms = |v: Option<i64>| {
        v.filter(|v| *v > 0)
            .map(|v| Duration::from_millis(v as u64))
    };
    OnDisconnect {
        stop_after: d.and_then(|d| ms(d.stop_after_ms)),
        replace_after: d.and_then(|d| ms(d.replace_after_ms)),
        at_least_once: d.is_some_and(|d| d.at_least_once),
    }
}

/// A stored assignment's graceful stop (0 means 30 s).
fn grace(spec: &pb::ProcessAssignment) -> Duration {
    match spec
        .config
        .as_ref()
        .map_or(0, |c| c.graceful_timeout_seconds)
    {
        s if s > 0 => Duration::from_secs(s as u64),
        _ => crate::model::ManagedProcess::DEFAULT_STOP_TIMEOUT,
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64()).replace(".0s", "s")
}

/// Why `replace_after` could let two copies run at once, if it could.
pub fn overlap(
    spec: &pb::ProcessAssignment,
    replace_after: Duration,
    interval: Duration,
    lease: Duration,
) -> Option<String> {
    let d = of(spec);
    if d.at_least_once {
        return None;
    }
    let Some(stop_after) = d.stop_after else {
        return Some(
            "the process does not stop itself on a cut-off launcher (no \
             config.on_disconnect.stop_after_ms), so a copy elsewhere would run beside it; set \
             it, or config.on_disconnect.at_least_once"
                .into(),
        );
    };
    let grace = grace(spec);
    let margin = OnDisconnect::margin(stop_after, grace, interval, lease);
    (replace_after <= margin).then(|| {
        format!(
            "{} could let two copies run at once: it must exceed \
             config.on_disconnect.stop_after_ms ({}) + the graceful stop ({}, \
             config.graceful_timeout_seconds) + one heartbeat interval ({}) + the admins' lease \
             ({}) = {}; or set config.on_disconnect.at_least_once",
            secs(replace_after),
            secs(stop_after),
            secs(grace),
            secs(interval),
            secs(lease),
            secs(margin)
        )
    })
}

/// After how long a silent launcher's copy of `spec` is replaced: its own
/// `replace_after_ms`, else the fleet's, when either leaves no overlap.
/// `Err` says why it never is.
pub fn replace_after(
    spec: &pb::ProcessAssignment,
    fleet_wide: Option<Duration>,
    interval: Duration,
    lease: Duration,
) -> Result<Duration, String> {
    let Some(after) = of(spec).replace_after.or(fleet_wide) else {
        return Err("replacement is off (no replace_after_ms, no --replace-after)".into());
    };
    match overlap(spec, after, interval, lease) {
        Some(why) => Err(format!("replace_after {why}")),
        None => Ok(after),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        stop: Option<i64>,
        replace: Option<i64>,
        twice: bool,
        grace: i32,
    ) -> pb::ProcessAssignment {
        pb::ProcessAssignment {
            process_id: "p".into(),
            config: Some(pb::ProcessConfig {
                graceful_timeout_seconds: grace,
                on_disconnect: Some(pb::OnDisconnect {
                    stop_after_ms: stop,
                    replace_after_ms: replace,
                    at_least_once: twice,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    const I: Duration = Duration::from_secs(1);
    const L: Duration = Duration::from_secs(5);

    #[test]
    fn replacement_leaves_no_overlap_or_is_refused() {
        let s = |ms: u64| Duration::from_millis(ms);
        // stop 10 s + grace 2 s + interval 1 s + lease 5 s = 18 s.
        let cases = [
            (
                spec(Some(10_000), Some(18_001), false, 2),
                None,
                Ok(s(18_001)),
            ),
            (
                spec(Some(10_000), Some(18_000), false, 2),
                None,
                Err("= 18s"),
            ),
            (
                spec(Some(10_000), None, false, 2),
                Some(s(30_000)),
                Ok(s(30_000)),
            ),
            (
                spec(Some(10_000), None, false, 2),
                Some(s(10_000)),
                Err("must exceed"),
            ),
            // The graceful stop's default is 30 s.
            (
                spec(Some(10_000), Some(40_000), false, 0),
                None,
                Err("(30s, config.graceful_timeout_seconds)"),
            ),
            (spec(None, Some(1_000), true, 0), None, Ok(s(1_000))),
            (spec(None, None, true, 0), Some(s(2_000)), Ok(s(2_000))),
            (
                spec(None, None, false, 0),
                Some(s(60_000)),
                Err("does not stop itself"),
            ),
            (
                spec(Some(10_000), None, false, 0),
                None,
                Err("replacement is off"),
            ),
            (
                pb::ProcessAssignment::default(),
                None,
                Err("replacement is off"),
            ),
        ];
        for (spec, fleet, want) in cases {
            let got = replace_after(&spec, fleet, I, L);
            match (want, &got) {
                (Ok(d), Ok(g)) => assert_eq!(*g, d),
                (Err(part), Err(why)) => assert!(why.contains(part), "{why} lacks {part}"),
                (want, got) => panic!("{spec:?} {fleet:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_refusal_names_both_fields_and_the_margin() {
        let why = overlap(
            &spec(Some(10_000), Some(12_000), false, 1),
            Duration::from_secs(12),
            I,
            L,
        )
        .unwrap();
        assert!(
            why.contains("config.on_disconnect.stop_after_ms (10s)"),
            "{why}"
        );
        assert!(why.contains("one heartbeat interval (1s)"), "{why}");
        assert!(why.contains("the admins' lease (5s) = 17s"), "{why}");
        assert!(
            why.starts_with("12s could let two copies run at once"),
            "{why}"
        );
    }
}
