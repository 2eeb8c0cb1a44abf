//! Reader for llama.cpp GGUF files (versions 2 and 3, little-endian).
//!
//! [`GgufFile::open`] memory-maps a file and parses its header, metadata and tensor
//! infos. Tensor data stays in the map until [`GgufFile::tensor_data`] borrows it,
//! and [`dequantize`] and its variants convert it to f32.
//!
//! ```no_run
//! use ihs_gguf::GgufFile;
//!
//! # fn main() -> Result<(), ihs_gguf::GgufError> {
//! let file = GgufFile::open("model.gguf")?;
//! let architecture = file.get_str("general.architecture")?;
//! let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
//! let info = file.tensor("token_embd.weight")?;
//! let values = ihs_gguf::dequantize(info, file.tensor_data(info)?)?;
//! assert_eq!(values.len() as u64, info.n_elements());
//! # let _ = (architecture, tokens);
//! # Ok(())
//! # }
//! ```
//!
//! Malformed files produce a [`GgufError`] that names the field and byte offset.
//! Every count and length read from the file is checked against the bytes that
//! remain before memory is allocated for it.

mod blocks;
mod cursor;
mod dequant;
mod error;
mod file;
mod metadata;
mod types;

pub use dequant::{
    dequantize, dequantize_chunked, dequantize_into, dequantize_to_bf16, dequantize_to_f16,
};
pub use error::GgufError;
pub use file::{GgufFile, TensorInfo, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAX_DIMS};
pub use metadata::{MetadataArray, MetadataValue, MAX_ARRAY_DEPTH};
pub use types::GgmlType;

/// Re-export of the `half` crate, whose `f16` and `bf16` types appear in this API.
pub use half;
