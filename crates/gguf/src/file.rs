//! Opening a GGUF file: header, metadata, tensor infos and the tensor data section.
//!
//! The layout follows ggml's `docs/gguf.md`: the magic `GGUF`, a u32 version, a u64
//! tensor count, a u64 metadata entry count, the metadata entries, the tensor infos,
//! padding to the alignment, and then the tensor data. Every count and length is
//! checked against the bytes that remain before anything is allocated for it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use crate::cursor::{Cursor, MAX_PREALLOCATED};
use crate::error::GgufError;
use crate::metadata::{read_value, MetadataArray, MetadataValue};
use crate::types::GgmlType;

/// Alignment of the tensor data section and of each tensor's data when the file has
/// no `general.alignment` key.
pub const DEFAULT_ALIGNMENT: u32 = 32;

/// Metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// Maximum number of dimensions of a ggml tensor (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;

const MAGIC: &[u8; 4] = b"GGUF";

/// Smallest encoding of a metadata entry: u64 key length, u32 value type, 1-byte value.
const MIN_METADATA_ENTRY_BYTES: usize = 8 + 4 + 1;

/// Smallest encoding of a tensor info: u64 name length, u32 dimension count,
/// u32 type and u64 offset.
const MIN_TENSOR_INFO_BYTES: usize = 8 + 4 + 4 + 8;

/// Name, shape, type and location of one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    n_elements: u64,
    n_bytes: u64,
}

impl TensorInfo {
    /// Describes a tensor with dimensions in GGUF order (see [`TensorInfo::dims`]),
    /// for dequantizing data that did not come from a [`GgufFile`]. The offset is 0.
    ///
    /// Fails if the element count overflows or the row length is not a multiple of
    /// the type's block length.
    pub fn new(
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
    ) -> Result<Self, GgufError> {
        let name = name.into();
        let n_dims = u32::try_from(dims.len()).unwrap_or(u32::MAX);
        if n_dims > MAX_DIMS {
            return Err(GgufError::TooManyDims {
                tensor: name,
                n_dims,
                max: MAX_DIMS,
            });
        }
        let (n_elements, n_bytes) = tensor_size(&name, dims, ggml_type)?;
        Ok(Self {
            name,
            dims: dims.to_vec(),
            ggml_type,
            offset: 0,
            n_elements,
            n_bytes,
        })
    }

    /// Returns the tensor name, such as `blk.0.attn_q.weight`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the dimensions in GGUF (ggml) order: `dims()[0]` is the length of a row, the
    /// fastest-varying index. A `PyTorch` weight of shape `[out, in]` has dims `[in, out]`.
    #[must_use]
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Returns the dimensions in row-major order, outermost first, as `PyTorch` and
    /// `NumPy` use them: the reverse of [`TensorInfo::dims`].
    #[must_use]
    pub fn shape(&self) -> Vec<usize> {
        // tensor_size checked that every dimension fits in usize.
        self.dims.iter().rev().map(|&dim| dim as usize).collect()
    }

    /// Returns the element type of the stored data.
    #[must_use]
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Returns the start of the tensor's data relative to the start of the data section.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Returns the number of elements: the product of the dimensions, or 1 for a
    /// tensor with no dimensions.
    #[must_use]
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// Returns the number of bytes that the stored data takes.
    #[must_use]
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }
}

/// Computes the element count and byte size of a tensor, or fails on overflow or a row
/// length that is not a whole number of blocks.
fn tensor_size(name: &str, dims: &[u64], ggml_type: GgmlType) -> Result<(u64, u64), GgufError> {
    let overflow = || GgufError::ElementCountOverflow {
        tensor: name.to_owned(),
        dims: dims.to_vec(),
    };
    let max_count = i64::MAX as u64;
    let mut n_elements: u64 = 1;
    for &dim in dims {
        if dim > max_count || usize::try_from(dim).is_err() {
            return Err(overflow());
        }
        n_elements = n_elements
            .checked_mul(dim)
            .filter(|&n| n <= max_count)
            .ok_or_else(overflow)?;
    }
    if usize::try_from(n_elements).is_err() {
        return Err(overflow());
    }

    let row_len = dims.first().copied().unwrap_or(1);
    let block_len = ggml_type.block_len();
    if row_len % block_len as u64 != 0 {
        return Err(GgufError::RowNotMultipleOfBlock {
            tensor: name.to_owned(),
            ggml_type,
            row_len,
            block_len,
        });
    }

    // The product can overflow u64 for types with 8-byte elements: 2^62 I64 values
    // need 2^65 bytes.
    let n_bytes = (n_elements / block_len as u64)
        .checked_mul(ggml_type.block_bytes() as u64)
        .ok_or_else(overflow)?;
    Ok((n_elements, n_bytes))
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(map) => map,
            Self::Owned(bytes) => bytes,
        }
    }
}

/// A parsed GGUF file whose tensor data stays in the memory map (or byte buffer).
pub struct GgufFile {
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("file_len", &self.storage.bytes().len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("metadata_entries", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish_non_exhaustive()
    }
}

/// The parsed header, metadata and tensor infos of a file.
struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: BTreeMap<String, MetadataValue>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Memory-maps and parses the GGUF file at `path`.
    ///
    /// The header, metadata and tensor infos are read at once. Tensor data is read
    /// from the map on demand, so opening a large model is fast.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let io_error = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_error)?;
        // SAFETY: the map is read-only and lives as long as this GgufFile, and parsing
        // tolerates any byte values. If another process truncates or rewrites the file
        // while it is mapped, reads may fault or see changed bytes. Model files are not
        // modified in place in normal use, so this risk is accepted, as llama.cpp does.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(io_error)?;
        Self::from_storage(Storage::Mapped(map))
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::from_storage(Storage::Owned(bytes))
    }

    fn from_storage(storage: Storage) -> Result<Self, GgufError> {
        let header = parse_header(storage.bytes())?;
        Ok(Self {
            storage,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            tensors: header.tensors,
            tensor_index: header.tensor_index,
        })
    }

    /// Returns the GGUF format version, 2 or 3.
    #[must_use]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Returns the alignment of tensor data in bytes: `general.alignment`, or 32 when it is absent.
    #[must_use]
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Returns the byte offset of the tensor data section from the start of the file.
    #[must_use]
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Returns all metadata entries, sorted by key.
    #[must_use]
    pub fn metadata(&self) -> &BTreeMap<String, MetadataValue> {
        &self.metadata
    }

    /// Returns all tensor infos in file order.
    #[must_use]
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Looks up a tensor info by name.
    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor_index
            .get(name)
            .map(|&index| &self.tensors[index])
            .ok_or_else(|| GgufError::TensorNotFound {
                name: name.to_owned(),
            })
    }

    /// Returns the stored bytes of a tensor.
    ///
    /// The ranges of this file's tensors were checked when it was opened. An info from
    /// another file whose range does not fit in this one fails with
    /// [`GgufError::TensorOutOfBounds`].
    pub fn tensor_data(&self, info: &TensorInfo) -> Result<&[u8], GgufError> {
        let bytes = self.storage.bytes();
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|start| start.checked_add(info.n_bytes));
        let range = start.zip(end).and_then(|(start, end)| {
            Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
        });
        range
            .and_then(|range| bytes.get(range))
            .ok_or_else(|| GgufError::TensorOutOfBounds {
                tensor: info.name.clone(),
                start: self.data_offset.saturating_add(info.offset),
                len: info.n_bytes,
                file_len: bytes.len() as u64,
            })
    }

    /// Looks up a tensor by name and dequantizes it to f32 values in GGUF element order.
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor(name)?;
        crate::dequantize(info, self.tensor_data(info)?)
    }

    /// Returns the value of a metadata key, or [`GgufError::MissingKey`].
    pub fn get(&self, key: &str) -> Result<&MetadataValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_owned(),
        })
    }

    /// Returns the value of `key` as a u64 if it is an integer of any width that is
    /// not negative, such as a count stored as u32 by one converter and u64 by another.
    pub fn get_uint(&self, key: &str) -> Result<u64, GgufError> {
        let value = self.get(key)?;
        value.as_u64().ok_or_else(|| match value.as_i64() {
            Some(negative) => GgufError::ValueOutOfRange {
                key: key.to_owned(),
                value: negative.to_string(),
                expected: "a non-negative integer",
            },
            None => wrong_type(key, "an integer", value),
        })
    }

    /// Returns the value of `key` as an i64 if it is an integer of any width that fits.
    pub fn get_int(&self, key: &str) -> Result<i64, GgufError> {
        let value = self.get(key)?;
        value.as_i64().ok_or_else(|| match value.as_u64() {
            Some(large) => GgufError::ValueOutOfRange {
                key: key.to_owned(),
                value: large.to_string(),
                expected: "an i64",
            },
            None => wrong_type(key, "an integer", value),
        })
    }

    /// Returns the value of `key` as an f64 if it is an f32 or f64.
    pub fn get_float(&self, key: &str) -> Result<f64, GgufError> {
        let value = self.get(key)?;
        value
            .as_f64()
            .ok_or_else(|| wrong_type(key, "f32 or f64", value))
    }

    /// Returns the value of `key` if it is a string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let value = self.get(key)?;
        value
            .as_str()
            .ok_or_else(|| wrong_type(key, "string", value))
    }

    /// Returns the value of `key` if it is an array of any element type.
    pub fn get_array(&self, key: &str) -> Result<&MetadataArray, GgufError> {
        let value = self.get(key)?;
        value
            .as_array()
            .ok_or_else(|| wrong_type(key, "an array", value))
    }
}

fn wrong_type(key: &str, expected: &'static str, found: &MetadataValue) -> GgufError {
    GgufError::WrongType {
        key: key.to_owned(),
        expected,
        found: found.type_name(),
    }
}

/// Defines getters that return a metadata value only if it has exactly one type.
macro_rules! exact_getters {
    ($($(#[$doc:meta])* $name:ident => $variant:ident, $scalar:ty, $type_name:literal;)*) => {
        impl GgufFile {
            $(
                $(#[$doc])*
                pub fn $name(&self, key: &str) -> Result<$scalar, GgufError> {
                    match self.get(key)? {
                        MetadataValue::$variant(value) => Ok(*value),
                        other => Err(wrong_type(key, $type_name, other)),
                    }
                }
            )*
        }
    };
}

exact_getters! {
    /// Returns the value of `key` if it is a u8.
    get_u8 => U8, u8, "u8";
    /// Returns the value of `key` if it is an i8.
    get_i8 => I8, i8, "i8";
    /// Returns the value of `key` if it is a u16.
    get_u16 => U16, u16, "u16";
    /// Returns the value of `key` if it is an i16.
    get_i16 => I16, i16, "i16";
    /// Returns the value of `key` if it is a u32.
    get_u32 => U32, u32, "u32";
    /// Returns the value of `key` if it is an i32.
    get_i32 => I32, i32, "i32";
    /// Returns the value of `key` if it is a u64.
    get_u64 => U64, u64, "u64";
    /// Returns the value of `key` if it is an i64.
    get_i64 => I64, i64, "i64";
    /// Returns the value of `key` if it is an f32.
    get_f32 => F32, f32, "f32";
    /// Returns the value of `key` if it is an f64.
    get_f64 => F64, f64, "f64";
    /// Returns the value of `key` if it is a bool.
    get_bool => Bool, bool, "bool";
}

/// Defines getters that return a metadata array only if its elements have exactly one type.
macro_rules! array_getters {
    ($($(#[$doc:meta])* $name:ident => $variant:ident, $element:ty, $type_name:literal;)*) => {
        impl GgufFile {
            $(
                $(#[$doc])*
                pub fn $name(&self, key: &str) -> Result<&[$element], GgufError> {
                    match self.get(key)? {
                        MetadataValue::Array(MetadataArray::$variant(values)) => Ok(values),
                        other => Err(wrong_type(key, $type_name, other)),
                    }
                }
            )*
        }
    };
}

array_getters! {
    /// Returns the value of `key` if it is an array of u8.
    get_u8_array => U8, u8, "array of u8";
    /// Returns the value of `key` if it is an array of i8.
    get_i8_array => I8, i8, "array of i8";
    /// Returns the value of `key` if it is an array of u16.
    get_u16_array => U16, u16, "array of u16";
    /// Returns the value of `key` if it is an array of i16.
    get_i16_array => I16, i16, "array of i16";
    /// Returns the value of `key` if it is an array of u32.
    get_u32_array => U32, u32, "array of u32";
    /// Returns the value of `key` if it is an array of i32, such as `tokenizer.ggml.token_type`.
    get_i32_array => I32, i32, "array of i32";
    /// Returns the value of `key` if it is an array of u64.
    get_u64_array => U64, u64, "array of u64";
    /// Returns the value of `key` if it is an array of i64.
    get_i64_array => I64, i64, "array of i64";
    /// Returns the value of `key` if it is an array of f32, such as `tokenizer.ggml.scores`.
    get_f32_array => F32, f32, "array of f32";
    /// Returns the value of `key` if it is an array of f64.
    get_f64_array => F64, f64, "array of f64";
    /// Returns the value of `key` if it is an array of bool.
    get_bool_array => Bool, bool, "array of bool";
    /// Returns the value of `key` if it is an array of strings, such as `tokenizer.ggml.tokens`.
    get_str_array => String, String, "array of string";
    /// Returns the value of `key` if it is an array of arrays.
    get_array_array => Array, MetadataArray, "array of array";
}

/// Parses everything before the tensor data and checks every tensor's data range.
fn parse_header(bytes: &[u8]) -> Result<Header, GgufError> {
    let mut cursor = Cursor::new(bytes);

    let magic = cursor.take(4, &format_args!("magic bytes"))?;
    if magic != MAGIC {
        let mut found = [0u8; 4];
        found.copy_from_slice(magic);
        return Err(GgufError::BadMagic { found });
    }

    // Version 1 used 32-bit counts and lengths. Versions 2 and 3 share one layout,
    // because version 3 only added big-endian files, which are marked by a byte-swapped
    // version number and rejected here.
    let version = cursor.read_u32(&format_args!("version"))?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion { version });
    }

    let n_tensors = cursor.read_count(MIN_TENSOR_INFO_BYTES, &format_args!("tensor count"))?;
    let n_entries = cursor.read_count(
        MIN_METADATA_ENTRY_BYTES,
        &format_args!("metadata entry count"),
    )?;

    let metadata = parse_metadata(&mut cursor, n_entries)?;
    let alignment = read_alignment(&metadata)?;
    let (tensors, tensor_index) = parse_tensor_infos(&mut cursor, n_tensors, alignment)?;

    let data_offset = align_up(cursor.position() as u64, alignment);
    let file_len = bytes.len() as u64;
    for info in &tensors {
        let start = data_offset.checked_add(info.offset);
        let end = start.and_then(|start| start.checked_add(info.n_bytes));
        if end.is_none_or(|end| end > file_len) {
            return Err(GgufError::TensorOutOfBounds {
                tensor: info.name.clone(),
                start: data_offset.saturating_add(info.offset),
                len: info.n_bytes,
                file_len,
            });
        }
    }

    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
        tensor_index,
    })
}

fn parse_metadata(
    cursor: &mut Cursor<'_>,
    n_entries: usize,
) -> Result<BTreeMap<String, MetadataValue>, GgufError> {
    let mut metadata = BTreeMap::new();
    for index in 0..n_entries {
        let key = cursor.read_string(&format_args!("key of metadata entry {index}"))?;
        let value = read_value(cursor, &key)?;
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey { key });
        }
        metadata.insert(key, value);
    }
    Ok(metadata)
}

fn read_alignment(metadata: &BTreeMap<String, MetadataValue>) -> Result<u64, GgufError> {
    let alignment = match metadata.get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(MetadataValue::U32(alignment)) => *alignment,
        Some(other) => return Err(wrong_type(ALIGNMENT_KEY, "u32", other)),
    };
    if !alignment.is_power_of_two() {
        return Err(GgufError::InvalidAlignment { alignment });
    }
    Ok(alignment.into())
}

fn parse_tensor_infos(
    cursor: &mut Cursor<'_>,
    n_tensors: usize,
    alignment: u64,
) -> Result<(Vec<TensorInfo>, HashMap<String, usize>), GgufError> {
    let mut tensors = Vec::with_capacity(n_tensors.min(MAX_PREALLOCATED));
    let mut tensor_index = HashMap::with_capacity(n_tensors.min(MAX_PREALLOCATED));
    for index in 0..n_tensors {
        let info = read_tensor_info(cursor, index, alignment)?;
        if tensor_index.contains_key(&info.name) {
            return Err(GgufError::DuplicateTensor { name: info.name });
        }
        tensor_index.insert(info.name.clone(), index);
        tensors.push(info);
    }
    Ok((tensors, tensor_index))
}

fn read_tensor_info(
    cursor: &mut Cursor<'_>,
    index: usize,
    alignment: u64,
) -> Result<TensorInfo, GgufError> {
    let name = cursor.read_string(&format_args!("name of tensor {index}"))?;

    let n_dims = cursor.read_u32(&format_args!("dimension count of tensor {name:?}"))?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDims {
            tensor: name,
            n_dims,
            max: MAX_DIMS,
        });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for axis in 0..n_dims {
        dims.push(cursor.read_u64(&format_args!("dimension {axis} of tensor {name:?}"))?);
    }

    let type_id = cursor.read_u32(&format_args!("ggml type of tensor {name:?}"))?;
    let Some(ggml_type) = GgmlType::from_id(type_id) else {
        return Err(GgufError::UnknownTensorType {
            tensor: name,
            type_id,
        });
    };

    let offset = cursor.read_u64(&format_args!("data offset of tensor {name:?}"))?;
    if offset % alignment != 0 {
        return Err(GgufError::MisalignedTensorOffset {
            tensor: name,
            offset,
            alignment,
        });
    }

    let (n_elements, n_bytes) = tensor_size(&name, &dims, ggml_type)?;
    Ok(TensorInfo {
        name,
        dims,
        ggml_type,
        offset,
        n_elements,
        n_bytes,
    })
}

/// Rounds `offset` up to a multiple of `alignment`, a power of two of at most 2^31.
fn align_up(offset: u64, alignment: u64) -> u64 {
    // offset is at most the file length, so the sum cannot overflow.
    (offset + alignment - 1) & !(alignment - 1)
}
