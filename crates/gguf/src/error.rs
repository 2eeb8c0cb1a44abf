//! The error type for reading GGUF files and dequantizing their tensors.

use std::path::PathBuf;

use crate::types::GgmlType;

/// Everything that can go wrong while opening a GGUF file, reading its metadata or
/// dequantizing a tensor.
///
/// Parse errors carry the byte offset of the offending field. They do not carry the
/// file path, except for [`GgufError::Io`], so callers that open several files
/// should add the path as context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("failed to read GGUF file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "not a GGUF file: it starts with the bytes \"{}\" instead of \"GGUF\"; \
         check that the path names a llama.cpp .gguf model",
        found.escape_ascii()
    )]
    BadMagic { found: [u8; 4] },

    #[error(
        "GGUF version {version} is not supported: this reader handles versions 2 and 3 \
         in little-endian byte order, so convert the model to little-endian GGUF version 3 \
         with a current llama.cpp"
    )]
    UnsupportedVersion { version: u32 },

    #[error(
        "GGUF file is truncated: {what} at byte offset {offset} needs {needed} bytes, \
         but only {available} remain; the file is incomplete or corrupt, \
         so copy or download it again"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },

    #[error(
        "{what} at byte offset {offset} is {count}, but the remaining {available} bytes \
         can hold at most {max} entries of at least {min_entry_bytes} bytes each; \
         the file is corrupt"
    )]
    CountTooLarge {
        what: String,
        count: u64,
        offset: u64,
        available: u64,
        min_entry_bytes: u64,
        max: u64,
    },

    #[error(
        "{what} at byte offset {offset} has length {length}, but only {available} bytes \
         remain in the file; the file is corrupt"
    )]
    StringTooLong {
        what: String,
        length: u64,
        offset: u64,
        available: u64,
    },

    #[error("{what} at byte offset {offset} is not valid UTF-8; the file is corrupt")]
    InvalidUtf8 { what: String, offset: u64 },

    #[error(
        "metadata key {key:?} has unknown value type {type_id} at byte offset {offset}; \
         valid types are 0 to 12, so the file is corrupt or uses a newer GGUF revision"
    )]
    InvalidValueType {
        key: String,
        type_id: u32,
        offset: u64,
    },

    #[error(
        "metadata key {key:?} has bool byte {value} at byte offset {offset}, \
         but a GGUF bool must be 0 or 1; the file is corrupt"
    )]
    InvalidBool { key: String, value: u8, offset: u64 },

    #[error(
        "metadata key {key:?} nests arrays more than {max_depth} levels deep; \
         the file is corrupt or was not written by a GGUF writer"
    )]
    ArrayNestingTooDeep { key: String, max_depth: usize },

    #[error("metadata key {key:?} appears more than once; the file is corrupt")]
    DuplicateKey { key: String },

    #[error("tensor name {name:?} appears more than once; the file is corrupt")]
    DuplicateTensor { name: String },

    #[error(
        "general.alignment is {alignment}, but it must be a non-zero power of two; \
         the file is corrupt"
    )]
    InvalidAlignment { alignment: u32 },

    #[error(
        "tensor {tensor:?} has {n_dims} dimensions, but ggml tensors have at most {max}; \
         the file is corrupt"
    )]
    TooManyDims {
        tensor: String,
        n_dims: u32,
        max: u32,
    },

    #[error(
        "tensor {tensor:?} has dimensions {dims:?}, whose element count does not fit \
         in a signed 64-bit integer; the file is corrupt"
    )]
    ElementCountOverflow { tensor: String, dims: Vec<u64> },

    #[error(
        "tensor {tensor:?} has unknown ggml type id {type_id}; the file is corrupt or uses \
         a ggml type newer than this reader knows"
    )]
    UnknownTensorType { tensor: String, type_id: u32 },

    #[error(
        "tensor {tensor:?} of type {ggml_type} has rows of {row_len} elements, which is not \
         a multiple of the {block_len}-element block size; the file is corrupt"
    )]
    RowNotMultipleOfBlock {
        tensor: String,
        ggml_type: GgmlType,
        row_len: u64,
        block_len: usize,
    },

    #[error(
        "tensor {tensor:?} starts at data offset {offset}, which is not a multiple of \
         the file alignment {alignment}; the file is corrupt"
    )]
    MisalignedTensorOffset {
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    #[error(
        "data of tensor {tensor:?} needs {len} bytes from byte offset {start}, but the file \
         has only {file_len} bytes; the file is truncated, so copy or download it again"
    )]
    TensorOutOfBounds {
        tensor: String,
        start: u64,
        len: u64,
        file_len: u64,
    },

    #[error(
        "tensor {name:?} is not in the GGUF file; list the file's tensors to find the right name"
    )]
    TensorNotFound { name: String },

    #[error("metadata key {key:?} is missing from the GGUF file")]
    MissingKey { key: String },

    #[error("metadata key {key:?} has type {found}, but {expected} was expected")]
    WrongType {
        key: String,
        expected: &'static str,
        found: String,
    },

    #[error("metadata key {key:?} has value {value}, which is out of range for {expected}")]
    ValueOutOfRange {
        key: String,
        value: String,
        expected: &'static str,
    },

    #[error(
        "tensor {tensor:?} has type {ggml_type}, which this reader cannot dequantize; \
         supported types are {}; use a model file quantized to one of them",
        supported_type_names()
    )]
    UnsupportedTensorType { tensor: String, ggml_type: GgmlType },

    #[error(
        "tensor {tensor:?} of type {ggml_type} needs {expected} bytes of data, but {found} \
         bytes were given; pass the slice returned by GgufFile::tensor_data"
    )]
    DataLengthMismatch {
        tensor: String,
        ggml_type: GgmlType,
        expected: u64,
        found: u64,
    },

    #[error(
        "tensor {tensor:?} has {expected} elements, but the output buffer has {found}; \
         size the buffer with TensorInfo::n_elements"
    )]
    OutputLengthMismatch {
        tensor: String,
        expected: u64,
        found: u64,
    },
}

fn supported_type_names() -> String {
    let names: Vec<&str> = GgmlType::DEQUANTIZE_SUPPORTED
        .iter()
        .map(|ggml_type| ggml_type.name())
        .collect();
    names.join(", ")
}
