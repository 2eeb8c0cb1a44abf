//! Checkpoint weights: safetensors, one file or sharded with
//! `model.safetensors.index.json`, or a GGUF file (see [`crate::gguf`]).
//!
//! Files are memory-mapped and each tensor is converted to the requested dtype
//! and device on its own, so loading never keeps a second full copy of the
//! model. Pickled checkpoints (`.bin`, `.pt`, `.pth`) are rejected because
//! unpickling can run arbitrary code.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype as StDtype, Metadata};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use crate::error::{ModelError, Result};
use crate::gguf::GgufWeights;

const SINGLE_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";

struct MappedFile {
    path: PathBuf,
    mmap: Mmap,
    /// Byte offset of the data section: 8 bytes of header length plus the header.
    data_start: usize,
    metadata: Metadata,
}

/// The tensors of one checkpoint, looked up by their HF names: safetensors
/// files, or a GGUF file whose tensors are renamed and dequantized on load.
pub struct Weights {
    files: Vec<MappedFile>,
    locations: HashMap<String, usize>,
    gguf: Option<GgufWeights>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("files", &self.paths())
            .field("tensors", &self.names().len())
            .finish()
    }
}

impl Weights {
    /// Serves the tensors of a GGUF file under their HF names.
    #[must_use]
    pub fn from_gguf(gguf: GgufWeights) -> Self {
        Self {
            files: Vec::new(),
            locations: HashMap::new(),
            gguf: Some(gguf),
        }
    }

    /// Opens the checkpoint in `dir`: the shard index when present, else
    /// `model.safetensors`, else the only `*.safetensors` file.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::open_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::open_files(&[single]);
        }

        let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
        let mut safetensors = Vec::new();
        let mut pickled = None;
        for entry in entries.flatten() {
            let path = entry.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("safetensors") => safetensors.push(path),
                Some("bin" | "pt" | "pth" | "ckpt") => pickled = Some(path),
                _ => {}
            }
        }
        match (safetensors.len(), pickled) {
            (1, _) => Self::open_files(&safetensors),
            (0, Some(path)) => Err(ModelError::PickledCheckpoint { path }),
            _ => Err(ModelError::WeightsNotFound {
                dir: dir.to_path_buf(),
            }),
        }
    }

    /// Opens the shards listed in a `model.safetensors.index.json`.
    pub fn open_index(index: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Safetensors {
                path: index.to_path_buf(),
                message: format!("invalid index JSON: {e}"),
            })?;
        let map = value
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .ok_or_else(|| ModelError::Safetensors {
                path: index.to_path_buf(),
                message: "missing object \"weight_map\"".into(),
            })?;

        let dir = index.parent().unwrap_or(Path::new("."));
        let mut shard_names: Vec<&str> =
            map.values().filter_map(serde_json::Value::as_str).collect();
        shard_names.sort_unstable();
        shard_names.dedup();
        let shards: Vec<PathBuf> = shard_names.iter().map(|name| dir.join(name)).collect();
        let weights = Self::open_files(&shards)?;

        for (name, shard) in map {
            if !weights.locations.contains_key(name) {
                return Err(ModelError::MissingTensor {
                    name: name.clone(),
                    path: dir.join(shard.as_str().unwrap_or_default()),
                });
            }
        }
        Ok(weights)
    }

    /// Opens the given safetensors files.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut locations = HashMap::new();
        for path in paths {
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("bin" | "pt" | "pth" | "ckpt")
            ) {
                return Err(ModelError::PickledCheckpoint { path: path.clone() });
            }
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the map is read-only. A checkpoint changed by another
            // process while it loads is outside what ihs can guard against.
            #[allow(unsafe_code)]
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for name in metadata.tensors().keys() {
                locations.insert(name.clone(), files.len());
            }
            files.push(MappedFile {
                path: path.clone(),
                mmap,
                data_start: 8 + header_len,
                metadata,
            });
        }
        Ok(Self {
            files,
            locations,
            gguf: None,
        })
    }

    /// Returns whether the checkpoint has a tensor of this name.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        match &self.gguf {
            Some(gguf) => gguf.contains(name),
            None => self.locations.contains_key(name),
        }
    }

    /// Returns every tensor name, sorted.
    #[must_use]
    pub fn names(&self) -> Vec<&str> {
        if let Some(gguf) = &self.gguf {
            return gguf.names();
        }
        let mut names: Vec<&str> = self.locations.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Returns the number of stored values and the stored dtypes, read from
    /// the headers alone.
    #[must_use]
    pub fn summary(&self) -> (u64, Vec<String>) {
        if let Some(gguf) = &self.gguf {
            return gguf.summary();
        }
        let mut count = 0_u64;
        let mut dtypes = Vec::new();
        for file in &self.files {
            for info in file.metadata.tensors().values() {
                count += info.shape.iter().map(|&d| d as u64).product::<u64>();
                let dtype = format!("{:?}", info.dtype);
                if !dtypes.contains(&dtype) {
                    dtypes.push(dtype);
                }
            }
        }
        dtypes.sort();
        (count, dtypes)
    }

    /// Returns the paths of the files this checkpoint is read from.
    #[must_use]
    pub fn paths(&self) -> Vec<&Path> {
        if let Some(gguf) = &self.gguf {
            return vec![gguf.path()];
        }
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// Loads one tensor, checks its shape, and converts it to `kind` on `device`.
    pub fn load(&self, name: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        if let Some(gguf) = &self.gguf {
            return gguf.load(name, shape, kind, device);
        }
        let file = self.file_of(name)?;
        let info = file
            .metadata
            .info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
                path: file.path.clone(),
            })?;

        let found: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        if found != shape {
            return Err(ModelError::TensorShape {
                name: name.to_owned(),
                path: file.path.clone(),
                expected: shape.to_vec(),
                found,
            });
        }

        let stored = match info.dtype {
            StDtype::F32 => Kind::Float,
            StDtype::F16 => Kind::Half,
            StDtype::BF16 => Kind::BFloat16,
            other => {
                return Err(ModelError::TensorDtype {
                    name: name.to_owned(),
                    path: file.path.clone(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let (start, end) = info.data_offsets;
        let bytes = file
            .mmap
            .get(file.data_start + start..file.data_start + end)
            .ok_or_else(|| ModelError::Safetensors {
                path: file.path.clone(),
                message: format!("data of tensor {name:?} lies beyond the end of the file"),
            })?;

        copy_in_chunks(bytes, shape, stored, kind, device, |offset, len| {
            release_pages(&file.mmap, file.data_start + start + offset, len);
        })
    }

    fn file_of(&self, name: &str) -> Result<&MappedFile> {
        self.locations
            .get(name)
            .map(|&index| &self.files[index])
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
                path: self
                    .files
                    .first()
                    .map_or_else(PathBuf::new, |f| f.path.clone()),
            })
    }
}

/// Source bytes converted per step: large enough for fast copies, small
/// enough that the file pages and the temporary tensor stay a few MiB.
const CHUNK_BYTES: usize = 16 << 20;

/// Builds a `kind` tensor on `device` from little-endian `stored` values,
/// converting about [`CHUNK_BYTES`] of rows at a time. Peak memory is the
/// destination plus one chunk, never a whole second copy of the tensor, and
/// `release` receives each source range once it has been copied.
fn copy_in_chunks(
    bytes: &[u8],
    shape: &[i64],
    stored: Kind,
    kind: Kind,
    device: Device,
    mut release: impl FnMut(usize, usize),
) -> Result<Tensor> {
    if shape.is_empty() || bytes.is_empty() {
        let tensor = Tensor::f_from_data_size(bytes, shape, stored)?;
        return Ok(tensor.f_to_kind(kind)?.f_to_device(device)?);
    }

    let rows = shape[0];
    let row_bytes = bytes.len() / rows as usize;
    let rows_per_chunk = (CHUNK_BYTES / row_bytes.max(1)).max(1) as i64;
    let destination = Tensor::f_empty(shape, (kind, device))?;
    let mut row = 0;
    while row < rows {
        let count = rows_per_chunk.min(rows - row);
        let offset = row as usize * row_bytes;
        let len = count as usize * row_bytes;
        let mut chunk_shape = vec![count];
        chunk_shape.extend_from_slice(&shape[1..]);
        let source = Tensor::f_from_data_size(&bytes[offset..offset + len], &chunk_shape, stored)?;
        destination.narrow(0, row, count).f_copy_(&source)?;
        release(offset, len);
        row += count;
    }
    Ok(destination)
}

/// Drops the page-cache pages of a tensor that has been copied out, so that
/// the process's resident memory stays near the loaded model's size instead of
/// growing by the whole checkpoint file. Failure only costs memory.
fn release_pages(mmap: &Mmap, offset: usize, len: usize) {
    let page = 4096;
    let start = offset.div_ceil(page) * page;
    let end = (offset + len) / page * page;
    if end <= start {
        return;
    }
    // SAFETY: the map is a read-only shared file mapping, so MADV_DONTNEED
    // only drops clean cached pages; later reads fault them in from the file
    // with the same contents.
    #[allow(unsafe_code)]
    let result = unsafe {
        mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
    };
    if let Err(error) = result {
        tracing::debug!(%error, "could not release checkpoint pages");
    }
}
