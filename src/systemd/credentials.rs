//! Root-only credential files, handed to units with `LoadCredential=`.
//!
//! Why not `SetCredential=`: systemd writes its data in plain text into the
//! transient unit file (`/run/systemd/transient/<unit>`, mode 0644) and
//! exposes it as a D-Bus property, so any local user could read a backend's
//! password. With `LoadCredential=` the unit only names a file that root
//! alone can read; systemd copies it into the unit's private
//! `$CREDENTIALS_DIRECTORY` at every start, including restarts while the
//! launcher is down. The default location is under `/run`, a tmpfs, so
//! secrets never reach a disk this way.
//!
//! Layout: `<root>/<unit>/<generation>/<credential id>`, directories 0700,
//! files 0400. Each start writes a fresh generation, so a start that loses to
//! an existing unit (`UnitExists`) never touches the files that unit uses.

use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use std::io::Write;

use crate::unit::Credential;

/// Where credential files live unless configured otherwise.
pub const DEFAULT_CREDENTIALS_DIR: &str = "/run/prism-launcher/credentials";

#[derive(Debug)]
pub struct CredentialStore {
    root: PathBuf,
    counter: AtomicU64,
}

/// The files written for one start of one unit.
#[derive(Debug)]
pub struct Generation {
    pub dir: PathBuf,
    /// `(credential id, file)` pairs for `LoadCredential=`.
    pub files: Vec<(String, String)>,
}

fn mkdir_private(path: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o700).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

impl CredentialStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            counter: AtomicU64::new(0),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Write one generation of credentials for `unit`.
    pub fn write(&self, unit: &str, credentials: &[Credential]) -> io::Result<Generation> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)?;
        let unit_dir = self.root.join(unit);
        mkdir_private(&unit_dir)?;
        let nanos = crate::clock::since_epoch().as_nanos();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = unit_dir.join(format!("{nanos:x}-{n}"));
        mkdir_private(&dir)?;
        let write_all = || -> io::Result<Vec<(String, String)>> {
            let mut files = Vec::with_capacity(credentials.len());
            for c in credentials {
                let path = dir.join(&c.id);
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o400)
                    .open(&path)?;
                f.write_all(c.value.expose().as_bytes())?;
                files.push((c.id.clone(), path.display().to_string()));
            }
            Ok(files)
        };
        match write_all() {
            Ok(files) => Ok(Generation { dir, files }),
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    /// Drop one generation (its start did not happen).
    pub fn discard(&self, generation: &Generation) {
        let _ = fs::remove_dir_all(&generation.dir);
    }

    /// Remove every generation of `unit` but `keep`.
    pub fn prune(&self, unit: &str, keep: &Generation) -> io::Result<()> {
        let unit_dir = self.root.join(unit);
        for entry in fs::read_dir(&unit_dir)? {
            let path = entry?.path();
            if path != keep.dir {
                fs::remove_dir_all(&path)?;
            }
        }
        Ok(())
    }

    /// Remove everything of `unit` (it is gone).
    pub fn remove(&self, unit: &str) -> io::Result<()> {
        match fs::remove_dir_all(self.root.join(unit)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    /// Units that have credential files, for sweeping orphans.
    pub fn units(&self) -> io::Result<Vec<String>> {
        match fs::read_dir(&self.root) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e),
            Ok(dir) => dir
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect(),
        }
    }
}
