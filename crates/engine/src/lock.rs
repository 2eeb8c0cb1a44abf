//! One lock per output folder: an OS file lock (`flock`) on
//! `<output>/.ihs/lock`, which also records the holder's pid, host and
//! start time.
//!
//! The OS releases the lock when its process exits, SIGKILL included, so a
//! lock whose file still names a holder but can be taken was left by a dead
//! process and is taken over. NOTE: `flock` on NFS depends on the server's
//! lock support; on a file system without it, taking the lock fails with
//! [`EngineError::LockFailed`].

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use fs4::fs_std::FileExt;
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// The process that holds, or held, an output folder's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub pid: u32,
    pub host: String,
    /// RFC 3339 time the lock was taken.
    pub started_at: String,
}

impl LockHolder {
    fn current() -> Self {
        Self {
            pid: std::process::id(),
            host: host_name(),
            started_at: chrono::Utc::now().to_rfc3339(),
        }
    }

    /// Returns whether the holder is a live process on this host. `None`
    /// when it ran on another host or liveness cannot be checked.
    #[must_use]
    pub fn is_alive_here(&self) -> Option<bool> {
        if self.host != host_name() || !Path::new("/proc/self").exists() {
            return None;
        }
        Some(Path::new(&format!("/proc/{}", self.pid)).exists())
    }
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} on host {} (since {})",
            self.pid, self.host, self.started_at
        )
    }
}

/// Tries to take a busy lock this many times, `LOCK_RETRY_DELAY` apart.
const LOCK_ATTEMPTS: u32 = 20;
const LOCK_RETRY_DELAY: Duration = Duration::from_millis(25);

pub(crate) fn host_name() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// A held lock on an output folder, released when dropped.
#[derive(Debug)]
pub struct OutputLock {
    file: File,
    path: PathBuf,
    previous: Option<LockHolder>,
}

impl OutputLock {
    /// Returns the lock file path of an output folder.
    #[must_use]
    pub fn path_for(output_dir: &Path) -> PathBuf {
        output_dir.join(".ihs").join("lock")
    }

    /// Takes the lock on `output_dir`, creating the folder if needed. Fails
    /// with [`EngineError::Locked`], naming the holder, when another process
    /// (or another lock in this process) still holds it after half a second.
    pub fn acquire(output_dir: &Path) -> Result<Self, EngineError> {
        let path = Self::path_for(output_dir);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| EngineError::io("create", parent, source))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| EngineError::io("open the lock file", &path, source))?;

        // A lock can stay held for a moment after its owner drops it, while
        // a child that another thread is starting shares the descriptor
        // between fork and exec, so a busy lock is tried a few more times.
        let mut holder = None;
        for attempt in 0..LOCK_ATTEMPTS {
            let acquired = file
                .try_lock_exclusive()
                .map_err(|source| EngineError::LockFailed {
                    path: path.clone(),
                    source,
                })?;
            if acquired {
                break;
            }
            // The owner may still be writing its record right after locking.
            holder = read_holder_from(&mut file).or(holder);
            if attempt + 1 == LOCK_ATTEMPTS {
                return Err(EngineError::Locked {
                    path: output_dir.to_owned(),
                    holder,
                });
            }
            std::thread::sleep(LOCK_RETRY_DELAY);
        }

        let previous = read_holder_from(&mut file);
        if let Some(previous) = &previous {
            tracing::warn!(
                lock = %path.display(),
                previous_pid = previous.pid,
                previous_host = %previous.host,
                previous_start = %previous.started_at,
                "taking over a lock left by a process that no longer holds it"
            );
        }
        let holder = LockHolder::current();
        let text = serde_json::to_string(&holder).unwrap_or_default();
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()
        };
        write(&mut file).map_err(|source| EngineError::io("write", &path, source))?;
        tracing::debug!(lock = %path.display(), "output folder locked");
        Ok(Self {
            file,
            path,
            previous,
        })
    }

    /// Returns the holder recorded in the lock file when this lock was taken
    /// over from a process that had died without releasing it.
    #[must_use]
    pub fn previous_holder(&self) -> Option<&LockHolder> {
        self.previous.as_ref()
    }

    /// Returns the holder recorded in `output_dir`'s lock file without
    /// taking the lock; `None` when no run holds it or left it behind.
    #[must_use]
    pub fn recorded_holder(output_dir: &Path) -> Option<LockHolder> {
        let mut file = File::open(Self::path_for(output_dir)).ok()?;
        read_holder_from(&mut file)
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // An empty lock file means "not held"; the OS lock goes with the file.
        if let Err(error) = self.file.set_len(0) {
            tracing::warn!(lock = %self.path.display(), %error, "cannot clear the lock file");
        }
    }
}

fn read_holder_from(file: &mut File) -> Option<LockHolder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    if text.trim().is_empty() {
        return None;
    }
    serde_json::from_str(&text).ok()
}
