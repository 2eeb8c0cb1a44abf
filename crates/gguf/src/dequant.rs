//! Conversion of stored tensor data to f32, whole or in chunks.
//!
//! Values come out in GGUF element order: `dims()[0]` varies fastest, which is the
//! row-major order of [`TensorInfo::shape`].

use half::{bf16, f16};

use crate::blocks;
use crate::error::GgufError;
use crate::file::TensorInfo;

/// Dequantizes a whole tensor to a new `Vec<f32>`.
///
/// `data` is the tensor's stored bytes, as returned by [`crate::GgufFile::tensor_data`].
pub fn dequantize(info: &TensorInfo, data: &[u8]) -> Result<Vec<f32>, GgufError> {
    check_input(info, data)?;
    // check_input verified that the data length matches the info, so the element count
    // is bounded by the data the caller already holds.
    let mut values = vec![0.0f32; info.n_elements() as usize];
    blocks::dequantize_blocks(info.ggml_type(), data, &mut values);
    Ok(values)
}

/// Dequantizes a whole tensor into `out`, which must have exactly
/// [`TensorInfo::n_elements`] elements.
pub fn dequantize_into(info: &TensorInfo, data: &[u8], out: &mut [f32]) -> Result<(), GgufError> {
    check_input(info, data)?;
    if out.len() as u64 != info.n_elements() {
        return Err(GgufError::OutputLengthMismatch {
            tensor: info.name().to_owned(),
            expected: info.n_elements(),
            found: out.len() as u64,
        });
    }
    blocks::dequantize_blocks(info.ggml_type(), data, out);
    Ok(())
}

/// Dequantizes a tensor in chunks of about `chunk_elements` values and passes each
/// chunk to `sink` with the index of its first element.
///
/// Chunks are whole blocks: `chunk_elements` is rounded up to a multiple of the
/// type's block length, and the last chunk may be shorter. Only one chunk of f32
/// values exists at a time, so a caller can convert a large tensor to f16 or bf16
/// without holding an f32 copy of all of it. An error from `sink` stops the
/// conversion and is returned.
pub fn dequantize_chunked<E, F>(
    info: &TensorInfo,
    data: &[u8],
    chunk_elements: usize,
    mut sink: F,
) -> Result<(), E>
where
    E: From<GgufError>,
    F: FnMut(usize, &[f32]) -> Result<(), E>,
{
    check_input(info, data)?;
    let ggml_type = info.ggml_type();
    let block_len = ggml_type.block_len();
    let block_bytes = ggml_type.block_bytes();

    let n_blocks = data.len() / block_bytes;
    let blocks_per_chunk = chunk_elements.div_ceil(block_len).clamp(1, n_blocks.max(1));
    let mut buffer = vec![0.0f32; blocks_per_chunk.min(n_blocks) * block_len];

    let chunk_bytes = blocks_per_chunk * block_bytes;
    for (chunk_index, chunk_data) in data.chunks(chunk_bytes).enumerate() {
        let values = &mut buffer[..chunk_data.len() / block_bytes * block_len];
        blocks::dequantize_blocks(ggml_type, chunk_data, values);
        sink(chunk_index * blocks_per_chunk * block_len, values)?;
    }
    Ok(())
}

/// Number of elements per chunk in the f16 and bf16 conversions: 256 KiB of f32.
const CONVERSION_CHUNK_ELEMENTS: usize = 1 << 16;

/// Dequantizes a tensor and rounds each value to f16 (round to nearest, ties to even).
///
/// F16 tensors come back unchanged. Values beyond the f16 range become infinities.
pub fn dequantize_to_f16(info: &TensorInfo, data: &[u8]) -> Result<Vec<f16>, GgufError> {
    let mut values = Vec::with_capacity(output_capacity(info, data)?);
    dequantize_chunked(info, data, CONVERSION_CHUNK_ELEMENTS, |_, chunk| {
        values.extend(chunk.iter().map(|&value| f16::from_f32(value)));
        Ok::<(), GgufError>(())
    })?;
    Ok(values)
}

/// Dequantizes a tensor and rounds each value to bf16 (round to nearest, ties to even).
///
/// BF16 tensors come back unchanged.
pub fn dequantize_to_bf16(info: &TensorInfo, data: &[u8]) -> Result<Vec<bf16>, GgufError> {
    let mut values = Vec::with_capacity(output_capacity(info, data)?);
    dequantize_chunked(info, data, CONVERSION_CHUNK_ELEMENTS, |_, chunk| {
        values.extend(chunk.iter().map(|&value| bf16::from_f32(value)));
        Ok::<(), GgufError>(())
    })?;
    Ok(values)
}

/// Checks the input before an output of `n_elements` is allocated.
fn output_capacity(info: &TensorInfo, data: &[u8]) -> Result<usize, GgufError> {
    check_input(info, data)?;
    Ok(info.n_elements() as usize)
}

/// Checks that the type is supported and that `data` is exactly the tensor's bytes.
fn check_input(info: &TensorInfo, data: &[u8]) -> Result<(), GgufError> {
    let ggml_type = info.ggml_type();
    if !ggml_type.is_dequantize_supported() {
        return Err(GgufError::UnsupportedTensorType {
            tensor: info.name().to_owned(),
            ggml_type,
        });
    }
    if data.len() as u64 != info.n_bytes() {
        return Err(GgufError::DataLengthMismatch {
            tensor: info.name().to_owned(),
            ggml_type,
            expected: info.n_bytes(),
            found: data.len() as u64,
        });
    }
    Ok(())
}
