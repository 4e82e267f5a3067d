//! Where the daemons' logs go: the journal under systemd (structured:
//! `PRISM_PROCESS_ID=`, `UNIT=`, `PRISM_LAUNCHER_ID=` are journal fields),
//! otherwise human-readable text on stderr, or JSON lines on request.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// The journal when stderr is systemd's journal stream (`JOURNAL_STREAM`
    /// names it), text otherwise.
    #[default]
    Auto,
    /// Human-readable lines on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// Native journal entries with structured fields.
    Journal,
}

/// Install the global subscriber. `fields` are added to every journal
/// entry (e.g. the launcher's id). The level filter comes from `RUST_LOG`,
/// default `info` (PostgreSQL's notices, such as a migration table that
/// already exists, only from `warn`).
pub fn init(format: LogFormat, fields: &[(&str, &str)]) -> Result<(), String> {
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| "info,sqlx::postgres::notice=warn".into())
    };
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journal,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };
    match format {
        LogFormat::Journal => {
            let journald = tracing_journald::layer()
                .map_err(|e| format!("cannot log to the journal: {e}"))?
                // Field names as they are: `UNIT=` ties a message to its
                // unit the way systemd's own messages are.
                .with_field_prefix(None)
                .with_custom_fields(fields.iter().map(|(k, v)| (*k, v.as_bytes())));
            tracing_subscriber::registry()
                .with(filter())
                .with(journald)
                .try_init()
                .map_err(|e| e.to_string())
        }
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .try_init()
            .map_err(|e| e.to_string()),
        LogFormat::Text | LogFormat::Auto => tracing_subscriber::fmt()
            .with_env_filter(filter())
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
            .map_err(|e| e.to_string()),
    }
}

/// Whether stderr is the stream systemd connected to the journal:
/// `JOURNAL_STREAM` holds its `device:inode`. A process started from a
/// service inherits the variable, but not the stream if its stderr was
/// redirected, and then must not log to the journal.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2")
        .is_ok_and(|stderr| names_stream(&stream.to_string_lossy(), stderr.dev(), stderr.ino()))
}

/// `JOURNAL_STREAM`'s `device:inode` against a file's.
fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

#[cfg(test)]
mod tests {
    use super::names_stream;

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346));
        assert!(!names_stream("9:12345", 8, 12345));
        for malformed in ["", "8", "8:", ":12345", "8:12345:1", "x:y"] {
            assert!(!names_stream(malformed, 8, 12345), "{malformed:?}");
        }
    }
}
