//! BLAKE3 digests of the files a node reads, and canonical JSON for keys.
//!
//! Datasets, configs and tokenizer files are hashed in full. Weight files are
//! hashed by their header only, so a 100 GB checkpoint costs a few reads:
//! - safetensors: the 8-byte little-endian header length and the JSON header
//!   (tensor names, dtypes, shapes and offsets, plus `__metadata__`);
//! - GGUF: every byte before the tensor data (magic, version, metadata,
//!   tensor infos and alignment padding).
//!
//! The file size is part of every digest, so a weight file truncated or
//! rewritten with another length also changes the key. A change inside the
//! tensor data that keeps the header and size is not detected.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{is_gguf_path, Spec};

/// Largest safetensors JSON header accepted, the limit the `safetensors`
/// crate (0.8) also applies.
const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// How much of a file its digest covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashMethod {
    /// Every byte.
    Content,
    /// The length prefix and JSON header of a safetensors file.
    SafetensorsHeader,
    /// The bytes before the tensor data of a GGUF file.
    GgufHeader,
}

/// The digest of one input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub method: HashMethod,
    /// File size in bytes.
    pub size: u64,
    /// BLAKE3 of the hashed bytes, in hex.
    pub blake3: String,
}

/// A file that cannot be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("input file `{role}` not found: {}", path.display())]
    Missing { role: String, path: PathBuf },

    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid safetensors file {}: {reason}", path.display())]
    InvalidSafetensors { path: PathBuf, reason: String },

    #[error("invalid GGUF file {}: {source}", path.display())]
    InvalidGguf {
        path: PathBuf,
        #[source]
        source: ihs_gguf::GgufError,
    },
}

/// One file a node reads, declared by its stage before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputFile {
    pub path: PathBuf,
    pub method: HashMethod,
    /// A missing required file makes the node's key unknown; a missing
    /// optional one is left out of the key.
    pub required: bool,
}

/// The files a node reads, by role (`dataset/normal`, `model/config.json`).
/// The role, not the path, names a file in the key, so moving a dataset
/// without changing it keeps outputs cached.
#[derive(Debug, Clone, Default)]
pub struct InputFiles {
    files: BTreeMap<String, InputFile>,
}

const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
];

impl InputFiles {
    fn add(&mut self, role: String, path: PathBuf, method: HashMethod, required: bool) {
        self.files.insert(
            role,
            InputFile {
                path,
                method,
                required,
            },
        );
    }

    /// Declares a file hashed in full.
    pub fn content(&mut self, role: impl Into<String>, path: impl Into<PathBuf>) {
        self.add(role.into(), path.into(), HashMethod::Content, true);
    }

    /// Declares a file hashed in full if it exists.
    pub fn content_if_exists(&mut self, role: impl Into<String>, path: impl Into<PathBuf>) {
        self.add(role.into(), path.into(), HashMethod::Content, false);
    }

    /// Declares the dataset file of `class`, as role `dataset/<class>`.
    pub fn dataset(&mut self, spec: &Spec, class: &str) {
        if let Some(dataset) = spec.datasets.get(class) {
            self.content(format!("dataset/{class}"), dataset.path.clone());
        }
    }

    /// Declares every dataset of the spec.
    pub fn datasets(&mut self, spec: &Spec) {
        for class in spec.datasets.keys() {
            self.dataset(spec, class);
        }
    }

    /// Declares a model's `config.json` and `generation_config.json`, or the
    /// header of a GGUF file.
    pub fn model_config(&mut self, model: &Path) {
        if is_gguf_path(model) {
            self.gguf(model);
            return;
        }
        self.content("model/config.json", model.join("config.json"));
        self.content_if_exists(
            "model/generation_config.json",
            model.join("generation_config.json"),
        );
    }

    /// Declares the tokenizer and chat-template files that exist in a model
    /// folder, or the header of a GGUF file (which embeds the tokenizer).
    pub fn tokenizer(&mut self, model: &Path) {
        if is_gguf_path(model) {
            self.gguf(model);
            return;
        }
        for name in TOKENIZER_FILES {
            self.content_if_exists(format!("model/{name}"), model.join(name));
        }
    }

    /// Declares the headers of every `*.safetensors` file in a model folder
    /// and its shard index, or the header of a GGUF file.
    pub fn weights(&mut self, model: &Path) -> Result<(), HashError> {
        if is_gguf_path(model) {
            self.gguf(model);
            return Ok(());
        }
        let entries = std::fs::read_dir(model).map_err(|source| HashError::Io {
            path: model.to_owned(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| HashError::Io {
                path: model.to_owned(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors") {
                self.add(
                    format!("model/{name}"),
                    entry.path(),
                    HashMethod::SafetensorsHeader,
                    true,
                );
            }
        }
        self.content_if_exists(
            "model/model.safetensors.index.json",
            model.join("model.safetensors.index.json"),
        );
        Ok(())
    }

    /// Declares everything a forward pass reads: config, tokenizer and
    /// weight headers.
    pub fn model(&mut self, model: &Path) -> Result<(), HashError> {
        self.model_config(model);
        self.tokenizer(model);
        self.weights(model)
    }

    fn gguf(&mut self, path: &Path) {
        let name = path
            .file_name()
            .map_or_else(|| "model.gguf".into(), |name| name.to_string_lossy());
        self.add(
            format!("model/{name}"),
            path.to_owned(),
            HashMethod::GgufHeader,
            true,
        );
    }

    /// Returns the declared files by role.
    #[must_use]
    pub fn files(&self) -> &BTreeMap<String, InputFile> {
        &self.files
    }
}

/// Digests computed during one engine run, reused while a file's size and
/// modification time stay the same (datasets are shared by every model).
#[derive(Debug, Default)]
pub(crate) struct HashCache {
    entries: Mutex<HashMap<(PathBuf, HashMethod), (SystemTime, FileDigest)>>,
}

impl HashCache {
    pub fn digest(&self, path: &Path, method: HashMethod) -> Result<FileDigest, HashError> {
        let metadata = std::fs::metadata(path).map_err(|source| HashError::Io {
            path: path.to_owned(),
            source,
        })?;
        let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let cache_key = (path.to_owned(), method);
        if let Ok(entries) = self.entries.lock() {
            if let Some((time, digest)) = entries.get(&cache_key) {
                if *time == modified && digest.size == metadata.len() {
                    return Ok(digest.clone());
                }
            }
        }
        let digest = digest_file(path, method)?;
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(cache_key, (modified, digest.clone()));
        }
        Ok(digest)
    }

    /// Hashes every declared file; a missing optional file is skipped.
    pub fn digest_all(
        &self,
        inputs: &InputFiles,
    ) -> Result<BTreeMap<String, FileDigest>, HashError> {
        let mut digests = BTreeMap::new();
        for (role, file) in inputs.files() {
            if !file.path.exists() {
                if file.required {
                    return Err(HashError::Missing {
                        role: role.clone(),
                        path: file.path.clone(),
                    });
                }
                continue;
            }
            digests.insert(role.clone(), self.digest(&file.path, file.method)?);
        }
        Ok(digests)
    }
}

/// Hashes one file with `method`.
pub fn digest_file(path: &Path, method: HashMethod) -> Result<FileDigest, HashError> {
    let io = |source| HashError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut hasher = blake3::Hasher::new();
    match method {
        HashMethod::Content => {
            hasher.update_reader(&mut file).map_err(io)?;
        }
        HashMethod::SafetensorsHeader => {
            let invalid = |reason: String| HashError::InvalidSafetensors {
                path: path.to_owned(),
                reason,
            };
            let mut prefix = [0_u8; 8];
            file.read_exact(&mut prefix)
                .map_err(|_| invalid(format!("{size} bytes is too short for a header")))?;
            let length = u64::from_le_bytes(prefix);
            if length > MAX_SAFETENSORS_HEADER || length > size - 8 {
                return Err(invalid(format!(
                    "header length {length} does not fit the {size}-byte file"
                )));
            }
            hasher.update(&prefix);
            hasher.update_reader((&mut file).take(length)).map_err(io)?;
        }
        HashMethod::GgufHeader => {
            let gguf = ihs_gguf::GgufFile::open(path).map_err(|source| HashError::InvalidGguf {
                path: path.to_owned(),
                source,
            })?;
            let end = gguf.data_offset().min(size);
            drop(gguf);
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            hasher.update_reader((&mut file).take(end)).map_err(io)?;
        }
    }
    Ok(FileDigest {
        method,
        size,
        blake3: hasher.finalize().to_hex().to_string(),
    })
}

/// Hashes a whole file for output checksums: returns its size and BLAKE3.
pub(crate) fn checksum_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(&mut file)?;
    let size = file.metadata()?.len();
    Ok((size, hasher.finalize().to_hex().to_string()))
}

/// Writes `value` as JSON with object keys sorted at every level and no
/// whitespace, so that equal values always give equal text.
#[must_use]
pub fn canonical_json(value: &Value) -> String {
    let mut text = String::new();
    write_canonical(value, &mut text);
    text
}

fn write_canonical(value: &Value, text: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            text.push('{');
            for (index, key) in keys.into_iter().enumerate() {
                if index > 0 {
                    text.push(',');
                }
                text.push_str(&Value::String(key.clone()).to_string());
                text.push(':');
                write_canonical(&map[key], text);
            }
            text.push('}');
        }
        Value::Array(items) => {
            text.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    text.push(',');
                }
                write_canonical(item, text);
            }
            text.push(']');
        }
        scalar => text.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 2, "c": 3}], "x": null}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,{"c":3,"d":2}]},"b":1}"#
        );
    }

    #[test]
    fn safetensors_header_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        std::fs::write(&path, &bytes).unwrap();
        let first = digest_file(&path, HashMethod::SafetensorsHeader).unwrap();

        // The same header and size with other tensor data: same digest.
        let last = bytes.len() - 1;
        bytes[last] = 9;
        std::fs::write(&path, &bytes).unwrap();
        let second = digest_file(&path, HashMethod::SafetensorsHeader).unwrap();
        assert_eq!(first, second);

        // A different header: a different digest.
        bytes[10] = b'v';
        std::fs::write(&path, &bytes).unwrap();
        let third = digest_file(&path, HashMethod::SafetensorsHeader).unwrap();
        assert_ne!(first.blake3, third.blake3);
    }

    #[test]
    fn safetensors_bad_length_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        std::fs::write(&path, 1000_u64.to_le_bytes()).unwrap();
        let error = digest_file(&path, HashMethod::SafetensorsHeader).unwrap_err();
        assert!(error.to_string().contains("header length 1000"), "{error}");
    }
}
