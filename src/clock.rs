//! The wall clock: time since the Unix epoch, read one way everywhere
//! (zero for a clock set before 1970). Timers and deadlines use tokio's
//! monotonic `Instant` instead.
//!
//! In this crate's unit tests the wall clock follows tokio's: it starts at
//! the real time and moves with `Instant`, so paused time moves timestamps
//! (heartbeats, liveness) as it moves timers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch.
pub fn since_epoch() -> Duration {
    #[cfg(test)]
    {
        following_tokio()
    }
    #[cfg(not(test))]
    {
        system()
    }
}

fn system() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The wall clock at the first reading, plus tokio's time since.
#[cfg(test)]
fn following_tokio() -> Duration {
    static BASE: std::sync::OnceLock<(Duration, std::time::Instant)> = std::sync::OnceLock::new();
    let (wall, at) = *BASE.get_or_init(|| (system(), std::time::Instant::now()));
    let now = tokio::time::Instant::now().into_std();
    wall + now.saturating_duration_since(at)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    since_epoch().as_millis() as i64
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> i64 {
    since_epoch().as_secs() as i64
}

/// Microseconds since the Unix epoch (systemd's timestamps).
pub fn unix_usec() -> u64 {
    since_epoch().as_micros() as u64
}

/// A Unix-milliseconds instant as RFC 3339 in UTC, to the millisecond
/// (`2026-12-03T12:30:05.123Z`).
pub fn format_rfc3339_ms(unix_ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => unix_ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_reading_in_three_units() {
        let ms = unix_ms();
        // After 2020, and each unit agrees with the others.
        assert!(ms > 1_577_836_800_000, "{ms}");
        assert!((unix_secs() - ms / 1000).abs() <= 1);
        assert!((unix_usec() as i64 / 1000 - ms).abs() < 1000);
    }
}
