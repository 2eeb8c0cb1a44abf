//! The manifest written last into every output folder, and the checks that
//! decide whether an output can be reused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::hash::checksum_file;
use crate::key::KeyParts;
use crate::layout::MANIFEST_FILE;

/// Version of the manifest layout; a manifest with another one is stale.
pub const MANIFEST_FORMAT: u32 = 1;

/// The record that makes an output folder exist.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// Node id, such as `llama2/extract`.
    pub node: String,
    pub stage: String,
    pub model: Option<String>,
    pub key: String,
    pub key_parts: KeyParts,
    /// Paths of the input files at the time of the run, by role.
    pub input_paths: BTreeMap<String, PathBuf>,
    /// Output digests of the upstream nodes that were read, by node id.
    pub upstream_outputs: BTreeMap<String, String>,
    /// Every file of the output except this manifest, sorted by path.
    pub files: Vec<FileEntry>,
    /// BLAKE3 over `files`, for downstream nodes to record.
    pub output_digest: String,
    /// Committed shards and their rows, for sharded stages.
    pub shards: Option<ShardTotals>,
    /// Shards that were committed by an earlier, interrupted run.
    pub resumed_shards: usize,
    pub rows: BTreeMap<String, u64>,
    pub metrics: BTreeMap<String, f64>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    pub host: String,
    pub pid: u32,
    pub tool: ToolInfo,
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the output folder, with `/` separators.
    pub path: String,
    pub size: u64,
    pub blake3: String,
}

/// Shard count and rows of a sharded output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTotals {
    pub count: usize,
    pub rows: u64,
}

/// The program that wrote a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

impl ToolInfo {
    pub(crate) fn current() -> Self {
        Self {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}

/// Depth of the checks on existing outputs before they are reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Sizes and BLAKE3 checksums of every file (reads all outputs).
    #[default]
    Full,
    /// File presence and sizes only.
    Sizes,
}

/// Returns the digest that names an output's content: BLAKE3 over the
/// sorted `path size blake3` lines of its files.
#[must_use]
pub fn output_digest(files: &[FileEntry]) -> String {
    let mut hasher = blake3::Hasher::new();
    for file in files {
        hasher.update(format!("{} {} {}\n", file.path, file.size, file.blake3).as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Reading a manifest found a folder that is not a finished output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ManifestProblem {
    /// No manifest: the folder does not count as an output.
    Missing,
    Unreadable(String),
}

pub(crate) fn read_manifest(dir: &Path) -> Result<Manifest, ManifestProblem> {
    let path = dir.join(MANIFEST_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(ManifestProblem::Missing);
        }
        Err(error) => {
            return Err(ManifestProblem::Unreadable(format!(
                "cannot read {}: {error}",
                path.display()
            )))
        }
    };
    serde_json::from_str(&text).map_err(|error| {
        ManifestProblem::Unreadable(format!("invalid manifest {}: {error}", path.display()))
    })
}

/// Checks the files listed in a manifest against the folder. Returns a
/// description of the first mismatch.
pub(crate) fn verify_files(dir: &Path, files: &[FileEntry], verify: Verify) -> Result<(), String> {
    for entry in files {
        let path = dir.join(&entry.path);
        let size = match std::fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() => metadata.len(),
            Ok(_) => return Err(format!("{} is not a regular file", entry.path)),
            Err(_) => return Err(format!("{} is missing", entry.path)),
        };
        if size != entry.size {
            return Err(format!(
                "{} has {size} bytes; the manifest records {}",
                entry.path, entry.size
            ));
        }
        if verify == Verify::Full {
            let (_, blake3) = checksum_file(&path)
                .map_err(|error| format!("cannot read {}: {error}", entry.path))?;
            if blake3 != entry.blake3 {
                return Err(format!(
                    "{} does not match its checksum in the manifest",
                    entry.path
                ));
            }
        }
    }
    Ok(())
}
