//! File-system helpers for atomic, durable outputs: write to a temporary
//! name, fsync, rename into place, fsync the folder.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file in the same folder, so
/// that readers see either the old file or the whole new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = parent.join(format!(".{name}.tmp"));
    {
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    fs::rename(&temporary, path)?;
    sync_dir(parent)
}

/// Flushes a folder's entries (new names, renames) to disk.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// Flushes every file and folder under `dir`, and `dir` itself.
pub(crate) fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir)
}

/// A file found under an output folder.
#[derive(Debug, Clone)]
pub(crate) struct ListedFile {
    /// Path relative to the listed folder, with `/` separators.
    pub relative: String,
    pub path: PathBuf,
    /// False for symbolic links, sockets and other special files.
    pub regular: bool,
}

/// Lists every non-folder entry under `dir`, sorted by relative path.
pub(crate) fn list_files(dir: &Path) -> io::Result<Vec<ListedFile>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<ListedFile>) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(&entry.path(), &relative, out)?;
            } else {
                out.push(ListedFile {
                    relative,
                    path: entry.path(),
                    regular: kind.is_file(),
                });
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    files.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(files)
}

/// Removes a folder and everything in it; a missing folder is not an error.
pub(crate) fn remove_dir_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Removes a file; a missing file is not an error.
pub(crate) fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Renames folder `from` to `to`. An existing `to` is first moved into
/// `trash` (same file system) and deleted after the rename, so `to` is never
/// a mix of old and new files.
pub(crate) fn replace_dir(from: &Path, to: &Path, trash: &Path) -> io::Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut moved_aside = None;
    if fs::symlink_metadata(to).is_ok() {
        fs::create_dir_all(trash)?;
        let aside = unique_child(trash, "old");
        fs::rename(to, &aside)?;
        moved_aside = Some(aside);
    }
    fs::rename(from, to)?;
    if let Some(parent) = to.parent() {
        sync_dir(parent)?;
    }
    if let Some(aside) = moved_aside {
        remove_dir_if_exists(&aside)?;
    }
    Ok(())
}

/// Returns a path under `dir` that does not exist yet.
pub(crate) fn unique_child(dir: &Path, stem: &str) -> PathBuf {
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let mut attempt = 0_u32;
    loop {
        let candidate = dir.join(format!("{stem}-{pid}-{nanos}-{attempt}"));
        if fs::symlink_metadata(&candidate).is_err() {
            return candidate;
        }
        attempt += 1;
    }
}
