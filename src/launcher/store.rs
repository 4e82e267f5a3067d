//! Durable desired state: one protobuf file per process under
//! `<state-dir>/processes/`.
//!
//! Writes are atomic (temp file, fsync, rename, fsync of the directory), so
//! a crash leaves either the old or the new file, never a torn one. A file
//! that cannot be read back is moved to `<state-dir>/corrupt/` and reported,
//! never silently dropped.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use prost::Message;

use crate::{
    pb::prism::{ProcessAssignment, launcher::v1::StoredProcess},
    unit,
};

#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {source}")]
pub struct StoreError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// A state file that could not be used, and where it was moved.
#[derive(Debug, Clone)]
pub struct Corrupt {
    pub file: PathBuf,
    pub moved_to: PathBuf,
    pub reason: String,
}

/// What the state directory holds.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Processes that are desired.
    pub desired: Vec<Stored>,
    /// Processes whose revocation was recorded but may not have finished.
    pub revoked: Vec<Stored>,
    pub corrupt: Vec<Corrupt>,
}

/// One process as its state file records it.
#[derive(Debug)]
pub struct Stored {
    pub assignment: ProcessAssignment,
    /// When the file was last written (Unix milliseconds).
    pub recorded_at_ms: i64,
    /// The admin placed it.
    pub placed_by_admin: bool,
}

#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    corrupt_dir: PathBuf,
    counter: AtomicU64,
}

fn private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

impl Store {
    /// Open (creating) the store under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("processes");
        let corrupt_dir = state_dir.join("corrupt");
        for d in [state_dir, &dir] {
            private_dir(d).map_err(|source| StoreError {
                path: d.to_owned(),
                source,
            })?;
        }
        Ok(Self {
            dir,
            corrupt_dir,
            counter: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The state directory the store is in (beside `processes/`).
    pub fn state_dir(&self) -> &Path {
        self.dir.parent().unwrap_or(&self.dir)
    }

    /// `<escaped id>.pb`: the escaping keeps ids such as `..` harmless.
    pub fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{}.pb", unit::escape(id)))
    }

    /// Record `assignment` as desired (or as revoked), atomically.
    pub fn save(
        &self,
        assignment: &ProcessAssignment,
        revoked: bool,
        placed_by_admin: bool,
    ) -> Result<(), StoreError> {
        let path = self.path_of(&assignment.process_id);
        let now = crate::clock::since_epoch();
        let record = StoredProcess {
            assignment: Some(assignment.clone()),
            revoked,
            updated_at: now.as_secs() as i64,
            updated_at_ms: now.as_millis() as i64,
            placed_by_admin,
        };
        self.write_atomic(&path, &record.encode_to_vec())
            .map_err(|source| StoreError { path, source })
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".tmp-{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            // The rename is durable only once the directory is.
            fs::File::open(&self.dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Forget a process (its unit is gone).
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError { path, source: e }),
            _ => fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| StoreError {
                    path: self.dir.clone(),
                    source,
                }),
        }
    }

    /// Read every state file. Unreadable ones are moved aside and listed in
    /// `corrupt`; `check` may reject a decoded assignment (it then counts as
    /// corrupt too, with its reason).
    pub fn load(
        &self,
        mut check: impl FnMut(&ProcessAssignment) -> Result<(), String>,
    ) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        let entries = fs::read_dir(&self.dir).map_err(|source| StoreError {
            path: self.dir.clone(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with(".tmp-") {
                // A write that never completed: the rename did not happen,
                // so the previous state (if any) is intact.
                let _ = fs::remove_file(&path);
                continue;
            }
            let parsed = fs::read(&path)
                .map_err(|e| format!("cannot be read: {e}"))
                .and_then(|bytes| {
                    StoredProcess::decode(bytes.as_slice())
                        .map_err(|e| format!("is not a valid state record: {e}"))
                })
                .and_then(|record| match record.assignment {
                    Some(assignment) => Ok((
                        Stored {
                            assignment,
                            recorded_at_ms: match record.updated_at_ms {
                                0 => record.updated_at.saturating_mul(1000),
                                ms => ms,
                            },
                            placed_by_admin: record.placed_by_admin,
                        },
                        record.revoked,
                    )),
                    None => Err("holds no assignment".to_owned()),
                })
                .and_then(|(stored, revoked)| {
                    let a = &stored.assignment;
                    if !name.ends_with(".pb") {
                        return Err("is not a state file (*.pb)".to_owned());
                    }
                    if self.path_of(&a.process_id) != path {
                        return Err(format!(
                            "names process {:?}, which belongs in another file",
                            a.process_id
                        ));
                    }
                    check(a).map(|()| (stored, revoked))
                });
            match parsed {
                Ok((stored, false)) => loaded.desired.push(stored),
                Ok((stored, true)) => loaded.revoked.push(stored),
                Err(reason) => loaded.corrupt.push(self.move_aside(&path, reason)?),
            }
        }
        Ok(loaded)
    }

    fn move_aside(&self, path: &Path, reason: String) -> Result<Corrupt, StoreError> {
        private_dir(&self.corrupt_dir).map_err(|source| StoreError {
            path: self.corrupt_dir.clone(),
            source,
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let moved_to = self
            .corrupt_dir
            .join(format!("{name}.{}", crate::clock::unix_secs()));
        fs::rename(path, &moved_to).map_err(|source| StoreError {
            path: path.to_owned(),
            source,
        })?;
        Ok(Corrupt {
            file: path.to_owned(),
            moved_to,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(id: &str, version: i64) -> ProcessAssignment {
        ProcessAssignment {
            process_id: id.into(),
            version,
            ..Default::default()
        }
    }

    #[test]
    fn saves_loads_revokes_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save(&assignment("kv-1", 1), false, false).unwrap();
        store.save(&assignment("kv-1", 2), false, false).unwrap();
        store.save(&assignment("..", 1), false, false).unwrap();
        store.save(&assignment("gone", 1), true, false).unwrap();
        let loaded = store.load(|_| Ok(())).unwrap();
        let mut desired: Vec<(String, i64)> = loaded
            .desired
            .iter()
            .map(|s| (s.assignment.process_id.clone(), s.assignment.version))
            .collect();
        desired.sort();
        assert_eq!(desired, [("..".to_owned(), 1), ("kv-1".to_owned(), 2)]);
        assert_eq!(loaded.revoked[0].assignment.process_id, "gone");
        assert!(loaded.corrupt.is_empty());
        // Only the store's own files, with private modes, no temp files.
        let mut names: Vec<String> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [r"\x2e..pb", "gone.pb", r"kv\x2d1.pb"]);
        store.remove("gone").unwrap();
        store.remove("never-there").unwrap();
        assert_eq!(store.load(|_| Ok(())).unwrap().revoked.len(), 0);
    }

    #[test]
    fn corrupt_files_are_moved_aside_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save(&assignment("good", 1), false, false).unwrap();
        store
            .save(&assignment("rejected", 1), false, false)
            .unwrap();
        fs::write(store.dir().join("junk.pb"), b"\xff\xff\xff garbage").unwrap();
        fs::write(store.dir().join(".tmp-1-1"), b"half").unwrap();
        let loaded = store
            .load(|a| {
                if a.process_id == "rejected" {
                    Err("config.binary: gone".into())
                } else {
                    Ok(())
                }
            })
            .unwrap();
        assert_eq!(loaded.desired.len(), 1);
        assert_eq!(loaded.corrupt.len(), 2);
        for c in &loaded.corrupt {
            assert!(c.moved_to.exists(), "{c:?}");
            assert!(!c.file.exists(), "{c:?}");
        }
        assert!(
            loaded
                .corrupt
                .iter()
                .any(|c| c.reason.contains("config.binary"))
        );
        assert!(!store.dir().join(".tmp-1-1").exists());
    }
}
