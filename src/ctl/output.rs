//! How listings are printed: aligned tables that fit the terminal
//! (80 columns unless `$COLUMNS` says otherwise), or JSON/YAML with the
//! admin API's own field names.

use clap::ValueEnum;
use serde::Serialize;

use super::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    /// Aligned columns, fitted to the terminal.
    #[default]
    Table,
    /// The table with every column, unfitted.
    Wide,
    Json,
    Yaml,
}

/// Print `text` to stdout; a closed pipe (`| head`) is not an error.
pub fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// JSON or YAML of `value`, or `None` for the table formats.
pub fn structured<T: Serialize>(format: Format, value: &T) -> Result<Option<String>, Error> {
    match format {
        Format::Json => serde_json::to_string_pretty(value)
            .map(|s| Some(s + "\n"))
            .map_err(|e| Error::Failed(format!("cannot encode JSON: {e}"))),
        Format::Yaml => serde_norway::to_string(value)
            .map(Some)
            .map_err(|e| Error::Failed(format!("cannot encode YAML: {e}"))),
        Format::Table | Format::Wide => Ok(None),
    }
}

/// The width tables must fit.
pub fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|w: &usize| *w >= 40)
        .unwrap_or(80)
}

fn truncate(cell: &str, width: usize) -> String {
    if cell.chars().count() <= width {
        cell.to_owned()
    } else {
        let mut s: String = cell.chars().take(width.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

/// Render rows under a header, columns padded to their widest cell. With
/// `max_width`, the widest columns are cut (with `…`) until the table fits.
pub fn table(header: &[&str], rows: &[Vec<String>], max_width: Option<usize>) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    if let Some(max) = max_width {
        let floor: Vec<usize> = header.iter().map(|h| h.chars().count().max(6)).collect();
        let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * (columns.saturating_sub(1));
        while total(&widths) > max {
            // Shrink the widest column that can still give.
            let Some((i, _)) = widths
                .iter()
                .enumerate()
                .filter(|(i, w)| **w > floor[*i])
                .max_by_key(|(_, w)| **w)
            else {
                break;
            };
            widths[i] -= 1;
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let cell = truncate(cell, widths[i]);
            if i + 1 == columns {
                out.push_str(&cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                out.push_str(&cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_owned()
    };
    let mut text = line(header.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        text.push('\n');
        text.push_str(&line(row.clone()));
    }
    text.push('\n');
    text
}

pub use crate::display::{ago, duration};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_fit() {
        let rows = vec![
            vec![
                "kv-1".into(),
                "running".into(),
                "a long error message that goes on".into(),
            ],
            vec!["proxy-long".into(), "failed".into(), "-".into()],
        ];
        let t = table(&["ID", "STATUS", "LAST ERROR"], &rows, None);
        assert_eq!(
            t,
            "ID          STATUS   LAST ERROR\n\
             kv-1        running  a long error message that goes on\n\
             proxy-long  failed   -\n"
        );
        let fitted = table(&["ID", "STATUS", "LAST ERROR"], &rows, Some(40));
        assert!(fitted.lines().all(|l| l.chars().count() <= 40), "{fitted}");
        assert!(fitted.contains('…'), "{fitted}");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(45), "45s");
        assert_eq!(duration(192), "3m12s");
        assert_eq!(duration(7380), "2h03m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d04h");
    }
}
