//! The binary: its path as assigned, and the host's step on it (the
//! allowlist, the file, and who may write to it).

use super::*;

pub(super) fn has_dot_components(path: &Path) -> bool {
    path.components()
        .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        || path.to_string_lossy().contains("//")
}

pub(super) fn inside_allowlist(path: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter()
        .any(|d| path.parent().is_some_and(|p| p.starts_with(d)))
}

/// The path as assigned, and the file to execute (see
/// [`ManagedProcess::executable`]).
pub(super) fn check_binary(binary: &str) -> Result<(PathBuf, PathBuf)> {
    const F: &str = "config.binary";
    if binary.is_empty() {
        return err(F, "required");
    }
    check_text(F, binary, 4096)?;
    let path = PathBuf::from(binary);
    if !path.is_absolute() {
        return err(F, format!("{binary:?} is not an absolute path"));
    }
    if has_dot_components(&path) || binary.ends_with('/') {
        return err(F, format!("{binary:?} is not a normalised path"));
    }
    Ok((path.clone(), path))
}

impl ManagedProcess {
    /// The host's step, apart from the pure conversion: with
    /// `policy.check_binary_on_host`, the binary against this host's
    /// allowlist and filesystem ([`check_binary_on_host`]), and the file
    /// to execute resolved. Run at assignment, and before each start of a
    /// process held from an earlier run.
    pub fn on_host(mut self, policy: &Policy) -> Result<Self> {
        if policy.check_binary_on_host {
            self.executable = check_binary_on_host(&self.binary, policy)?;
        }
        Ok(self)
    }
}

/// The host's part of the binary check, run at assignment and again before
/// each start of a process held from an earlier run: inside the allowlist
/// (after resolving symlinks), an executable regular file, and nothing on
/// the way to it writable by anyone but root. Returns the canonical path.
pub fn check_binary_on_host(path: &Path, policy: &Policy) -> Result<PathBuf> {
    const F: &str = "config.binary";
    let binary = path.display().to_string();
    let allowed = || {
        policy
            .binary_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !inside_allowlist(path, &policy.binary_dirs) {
        return err(
            F,
            format!(
                "{binary:?} is outside the allowed directories ({})",
                allowed()
            ),
        );
    }
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return err(F, format!("{binary:?} does not exist"));
        }
        Err(e) => return err(F, format!("{binary:?} cannot be read: {e}")),
    };
    if !meta.is_file() {
        return err(F, format!("{binary:?} is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return err(F, format!("{binary:?} is not executable"));
    }
    // A symlink inside the allowlist must not lead outside it.
    let canonical = fs::canonicalize(path)
        .map_err(|e| ValidationError::new(F, format!("{binary:?} cannot be resolved: {e}")))?;
    let Some(dir) = policy
        .binary_dirs
        .iter()
        .filter_map(|d| fs::canonicalize(d).ok())
        .find(|d| canonical.parent().is_some_and(|p| p.starts_with(d)))
    else {
        return err(
            F,
            format!(
                "{binary:?} resolves to {} outside the allowed directories ({})",
                canonical.display(),
                allowed()
            ),
        );
    };
    check_ownership(&binary, &canonical, &dir)?;
    Ok(canonical)
}

/// Who may replace what runs: the owner of the file and of every
/// directory above it. Only root (or the launcher's own user, which is
/// root-equivalent to it) may; group and others may write none of them.
/// Above the allowlisted directory, a sticky directory such as `/tmp` may be
/// writable by all: nobody can rename another user's entry in it.
pub(super) fn check_ownership(binary: &str, canonical: &Path, allowed_dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    const F: &str = "config.binary";
    let me = crate::host::own_uid().unwrap_or(0);
    let mut checked = Some(canonical);
    while let Some(path) = checked {
        let meta = fs::metadata(path).map_err(|e| {
            ValidationError::new(F, format!("{} cannot be read: {e}", path.display()))
        })?;
        let what = if path == canonical {
            format!("{binary:?} ({})", canonical.display())
        } else {
            format!("directory {}", path.display())
        };
        if meta.uid() != 0 && meta.uid() != me {
            return err(
                F,
                format!(
                    "{what} is owned by uid {}; only root may own a binary the launcher runs and \
                     the directories above it",
                    meta.uid()
                ),
            );
        }
        let mode = meta.mode();
        let sticky_above = mode & 0o1000 != 0 && !path.starts_with(allowed_dir);
        if mode & 0o022 != 0 && !sticky_above {
            return err(
                F,
                format!(
                    "{what} is writable by {} (mode {:04o}); only its owner may write a binary the \
                     launcher runs and the directories above it",
                    if mode & 0o002 != 0 {
                        "others"
                    } else {
                        "its group"
                    },
                    mode & 0o7777
                ),
            );
        }
        checked = path.parent();
    }
    Ok(())
}
