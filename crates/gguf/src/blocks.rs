//! Per-block dequantization kernels for each supported ggml type.
//!
//! Block layouts are ggml's `block_*` structs from `ggml-common.h`. Each kernel
//! performs the same f32 operations in the same order as `gguf.quants.dequantize`
//! in gguf-py 0.19.0 (for example `(d * sc) * q - (dmin * m)` for `Q4_K`), with no
//! fused multiply-add, so the results are bit-identical to that reference.

use half::f16;

use crate::types::{GgmlType, QK_K};

/// Dequantizes whole blocks of `ggml_type` from `data` into `out`.
///
/// The caller guarantees that the type is supported, that `data` is a whole number
/// of blocks, and that `out` has room for exactly those blocks' elements.
pub(crate) fn dequantize_blocks(ggml_type: GgmlType, data: &[u8], out: &mut [f32]) {
    debug_assert_eq!(data.len() % ggml_type.block_bytes(), 0);
    debug_assert_eq!(
        data.len() / ggml_type.block_bytes() * ggml_type.block_len(),
        out.len()
    );
    match ggml_type {
        GgmlType::F32 => each_block::<4, 1>(data, out, |bytes, value| {
            value[0] = f32::from_le_bytes(*bytes);
        }),
        GgmlType::F16 => each_block::<2, 1>(data, out, |bytes, value| {
            value[0] = f16::from_le_bytes(*bytes).to_f32();
        }),
        GgmlType::BF16 => each_block::<2, 1>(data, out, |bytes, value| {
            // bf16 is the upper half of an f32, so widening is a shift.
            value[0] = f32::from_bits(u32::from(u16::from_le_bytes(*bytes)) << 16);
        }),
        GgmlType::Q4_0 => each_block(data, out, q4_0),
        GgmlType::Q4_1 => each_block(data, out, q4_1),
        GgmlType::Q5_0 => each_block(data, out, q5_0),
        GgmlType::Q5_1 => each_block(data, out, q5_1),
        GgmlType::Q8_0 => each_block(data, out, q8_0),
        GgmlType::Q2_K => each_block(data, out, q2_k),
        GgmlType::Q3_K => each_block(data, out, q3_k),
        GgmlType::Q4_K => each_block(data, out, q4_k),
        GgmlType::Q5_K => each_block(data, out, q5_k),
        GgmlType::Q6_K => each_block(data, out, q6_k),
        GgmlType::Q8_K => each_block(data, out, q8_k),
        GgmlType::MXFP4 => each_block(data, out, mxfp4),
        unsupported => unreachable!("dequantize_blocks called with unsupported type {unsupported}"),
    }
}

/// Applies `kernel` to each block of `B` bytes and its `N` output values.
fn each_block<const B: usize, const N: usize>(
    data: &[u8],
    out: &mut [f32],
    kernel: impl Fn(&[u8; B], &mut [f32; N]),
) {
    for (block, values) in data.chunks_exact(B).zip(out.chunks_exact_mut(N)) {
        let block = block.try_into().expect("chunks_exact yields B-byte blocks");
        let values = values
            .try_into()
            .expect("chunks_exact_mut yields N-element chunks");
        kernel(block, values);
    }
}

/// Reads the little-endian f16 at `at` and widens it to f32 (exact).
fn f16_at(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// `Q4_0`: f16 scale `d`, then 16 bytes whose low nibbles are elements 0..16 and high
/// nibbles elements 16..32. Value: `d * (q - 8)`.
fn q4_0(block: &[u8; 18], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let quants = &block[2..];
    for j in 0..16 {
        out[j] = d * f32::from(i16::from(quants[j] & 0x0F) - 8);
        out[j + 16] = d * f32::from(i16::from(quants[j] >> 4) - 8);
    }
}

/// `Q4_1`: f16 scale `d`, f16 minimum `m`, then nibbles as in `Q4_0`. Value: `d * q + m`.
fn q4_1(block: &[u8; 20], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let quants = &block[4..];
    for j in 0..16 {
        out[j] = d * f32::from(quants[j] & 0x0F) + m;
        out[j + 16] = d * f32::from(quants[j] >> 4) + m;
    }
}

/// Returns the 5-bit quant of element `j` (0..32) from its low nibble and bit `j` of `high_bits`.
fn five_bit_quant(low_nibbles: &[u8], high_bits: u32, j: usize) -> u8 {
    let nibble = if j < 16 {
        low_nibbles[j] & 0x0F
    } else {
        low_nibbles[j - 16] >> 4
    };
    let high = ((high_bits >> j) & 1) as u8;
    nibble | (high << 4)
}

/// `Q5_0`: f16 scale `d`, u32 of fifth bits (bit j for element j), then nibbles as in
/// `Q4_0`. Value: `d * (q - 16)`.
fn q5_0(block: &[u8; 22], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let high_bits = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
    let nibbles = &block[6..];
    for (j, value) in out.iter_mut().enumerate() {
        let q = five_bit_quant(nibbles, high_bits, j);
        *value = d * f32::from(i16::from(q) - 16);
    }
}

/// `Q5_1`: f16 scale `d`, f16 minimum `m`, u32 of fifth bits, then nibbles. Value: `d * q + m`.
fn q5_1(block: &[u8; 24], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    let high_bits = u32::from_le_bytes([block[4], block[5], block[6], block[7]]);
    let nibbles = &block[8..];
    for (j, value) in out.iter_mut().enumerate() {
        let q = five_bit_quant(nibbles, high_bits, j);
        *value = d * f32::from(q) + m;
    }
}

/// `Q8_0`: f16 scale `d`, then 32 signed bytes. Value: `d * q`.
fn q8_0(block: &[u8; 34], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    for (value, &q) in out.iter_mut().zip(&block[2..]) {
        *value = d * f32::from(q as i8);
    }
}

/// `Q8_K`: f32 scale `d`, 256 signed bytes, then 16 i16 group sums that dequantization
/// does not need. Value: `d * q`.
fn q8_k(block: &[u8; 292], out: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    for (value, &q) in out.iter_mut().zip(&block[4..4 + QK_K]) {
        *value = d * f32::from(q as i8);
    }
}

/// `Q2_K`: 16 scale bytes (low nibble scales, high nibble mins, one per 16 elements),
/// 64 bytes of 2-bit quants, f16 `d`, f16 `dmin`. Quant byte `h * 32 + l` stores
/// element `h * 128 + j * 32 + l` at bits `2 * j`. Value: `(d * sc) * q - (dmin * m)`.
fn q2_k(block: &[u8; 84], out: &mut [f32; QK_K]) {
    let scales = &block[0..16];
    let quants = &block[16..80];
    let d = f16_at(block, 80);
    let dmin = f16_at(block, 82);
    for (group, values) in out.chunks_exact_mut(16).enumerate() {
        let group_scale = d * f32::from(scales[group] & 0x0F);
        let group_min = dmin * f32::from(scales[group] >> 4);
        for (k, value) in values.iter_mut().enumerate() {
            let i = group * 16 + k;
            let (half, shift, lane) = (i / 128, (i % 128) / 32, i % 32);
            let q = (quants[half * 32 + lane] >> (2 * shift)) & 3;
            *value = group_scale * f32::from(q) - group_min;
        }
    }
}

/// Unpacks the sixteen 6-bit `Q3_K` scales and subtracts their offset of 32.
///
/// Bytes 0..8 hold the low four bits (scale i < 8 in the low nibble of byte i, scale
/// i >= 8 in the high nibble of byte i - 8), and bytes 8..12 hold the high two bits
/// of scale i at bits `2 * (i / 4)` of byte `8 + i % 4`.
fn q3_k_scales(packed: &[u8]) -> [i8; 16] {
    let mut scales = [0i8; 16];
    for (i, scale) in scales.iter_mut().enumerate() {
        let low = if i < 8 {
            packed[i] & 0x0F
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *scale = (low | (high << 4)) as i8 - 32;
    }
    scales
}

/// `Q3_K`: 32 bytes of high bits, 64 bytes of 2-bit quants laid out as in `Q2_K`, 12 bytes
/// of packed 6-bit scales (one per 16 elements), then f16 `d`. Element i takes its high
/// bit from bit `i / 32` of byte `i % 32`, and a clear high bit subtracts 4.
/// Value: `(d * scale) * q`.
fn q3_k(block: &[u8; 110], out: &mut [f32; QK_K]) {
    let high_bits = &block[0..32];
    let quants = &block[32..96];
    let scales = q3_k_scales(&block[96..108]);
    let d = f16_at(block, 108);
    for (group, values) in out.chunks_exact_mut(16).enumerate() {
        let group_scale = d * f32::from(scales[group]);
        for (k, value) in values.iter_mut().enumerate() {
            let i = group * 16 + k;
            let (half, shift, lane) = (i / 128, (i % 128) / 32, i % 32);
            let low = ((quants[half * 32 + lane] >> (2 * shift)) & 3) as i8;
            let high_set = (high_bits[lane] >> (i / 32)) & 1 == 1;
            let q = if high_set { low } else { low - 4 };
            *value = group_scale * f32::from(q);
        }
    }
}

/// Unpacks the eight 6-bit (scale, min) pairs of `Q4_K` and `Q5_K` from 12 bytes.
///
/// Pairs 0..4 are the low six bits of bytes 0..4 (scales) and 4..8 (mins). Pairs
/// 4..8 take their low four bits from the nibbles of bytes 8..12 and their high two
/// bits from the top two bits of bytes 0..4 (scales) and 4..8 (mins).
fn k_scale_min(packed: &[u8]) -> [(u8, u8); 8] {
    let mut pairs = [(0u8, 0u8); 8];
    for (j, pair) in pairs.iter_mut().enumerate() {
        *pair = if j < 4 {
            (packed[j] & 0x3F, packed[j + 4] & 0x3F)
        } else {
            (
                (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4),
                (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
            )
        };
    }
    pairs
}

/// `Q4_K`: f16 `d`, f16 `dmin`, 12 bytes of scales and mins (one pair per 32 elements),
/// then 128 bytes of nibbles. Quant byte `c * 32 + l` stores element `c * 64 + l` in its
/// low nibble and element `c * 64 + 32 + l` in its high nibble.
/// Value: `(d * sc) * q - (dmin * m)`.
fn q4_k(block: &[u8; 144], out: &mut [f32; QK_K]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let pairs = k_scale_min(&block[4..16]);
    let quants = &block[16..144];
    for (group, values) in out.chunks_exact_mut(32).enumerate() {
        let (scale, min) = pairs[group];
        let group_scale = d * f32::from(scale);
        let group_min = dmin * f32::from(min);
        let bytes = &quants[(group / 2) * 32..(group / 2) * 32 + 32];
        let shift = 4 * (group % 2);
        for (value, &byte) in values.iter_mut().zip(bytes) {
            let q = (byte >> shift) & 0x0F;
            *value = group_scale * f32::from(q) - group_min;
        }
    }
}

/// `Q5_K`: as `Q4_K` with 32 bytes of fifth bits after the scales: element i takes bit
/// `i / 32` of byte `i % 32`. Value: `(d * sc) * q - (dmin * m)`.
fn q5_k(block: &[u8; 176], out: &mut [f32; QK_K]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let pairs = k_scale_min(&block[4..16]);
    let high_bits = &block[16..48];
    let quants = &block[48..176];
    for (group, values) in out.chunks_exact_mut(32).enumerate() {
        let (scale, min) = pairs[group];
        let group_scale = d * f32::from(scale);
        let group_min = dmin * f32::from(min);
        let bytes = &quants[(group / 2) * 32..(group / 2) * 32 + 32];
        let shift = 4 * (group % 2);
        for ((value, &byte), &high_byte) in values.iter_mut().zip(bytes).zip(high_bits) {
            let low = (byte >> shift) & 0x0F;
            let high = (high_byte >> group) & 1;
            let q = low | (high << 4);
            *value = group_scale * f32::from(q) - group_min;
        }
    }
}

/// `Q6_K`: 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed scales (one
/// per 16 elements), then f16 `d`. In half h of the block, element `h * 128 + r` takes
/// nibble `r / 64` of low byte `h * 64 + r % 64` and bits `2 * (r / 32)` of high byte
/// `h * 32 + r % 32`. Value: `(d * scale) * (q - 32)`.
fn q6_k(block: &[u8; 210], out: &mut [f32; QK_K]) {
    let low_nibbles = &block[0..128];
    let high_pairs = &block[128..192];
    let scales = &block[192..208];
    let d = f16_at(block, 208);
    for (group, values) in out.chunks_exact_mut(16).enumerate() {
        let group_scale = d * f32::from(scales[group] as i8);
        for (k, value) in values.iter_mut().enumerate() {
            let i = group * 16 + k;
            let (half, r) = (i / 128, i % 128);
            let low = (low_nibbles[half * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
            let high = (high_pairs[half * 32 + r % 32] >> (2 * (r / 32))) & 3;
            let q = (low | (high << 4)) as i8 - 32;
            *value = group_scale * f32::from(q);
        }
    }
}

/// E2M1 values doubled, indexed by a 4-bit MXFP4 code. The halving is folded into
/// the scale by [`e8m0_half`].
const MXFP4_VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Returns half of the E8M0 scale `2^(e - 127)` as an f32. Exponents 0 and 1 give
/// subnormal results, which are built from their bit patterns.
fn e8m0_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// MXFP4: one E8M0 exponent byte, then 16 bytes of 4-bit E2M1 codes, low nibbles for
/// elements 0..16 and high nibbles for 16..32. Value: `e8m0_half(e) * value(code)`.
fn mxfp4(block: &[u8; 17], out: &mut [f32; 32]) {
    let d = e8m0_half(block[0]);
    let codes = &block[1..];
    for j in 0..16 {
        out[j] = d * f32::from(MXFP4_VALUES[usize::from(codes[j] & 0x0F)]);
        out[j + 16] = d * f32::from(MXFP4_VALUES[usize::from(codes[j] >> 4)]);
    }
}

#[cfg(test)]
// Every expected value is exactly representable, so exact comparison is intended.
#[allow(clippy::float_cmp)]
mod tests {
    use super::*;

    fn f16_bytes(value: f32) -> [u8; 2] {
        f16::from_f32(value).to_le_bytes()
    }

    #[test]
    fn q4_0_nibble_order() {
        let mut block = [0u8; 18];
        block[..2].copy_from_slice(&f16_bytes(0.5));
        // Element 0 gets nibble 9, element 16 gets nibble 2.
        block[2] = 0x29;
        let mut out = [0.0f32; 32];
        q4_0(&block, &mut out);
        assert_eq!(out[0], 0.5);
        assert_eq!(out[16], -3.0);
        assert_eq!(out[1], -4.0);
    }

    #[test]
    fn q5_0_high_bit_order() {
        let mut block = [0u8; 22];
        block[..2].copy_from_slice(&f16_bytes(1.0));
        // Fifth bits of elements 0 and 17.
        block[2..6].copy_from_slice(&((1u32 << 0) | (1u32 << 17)).to_le_bytes());
        block[6] = 0x03;
        block[7] = 0x50;
        let mut out = [0.0f32; 32];
        q5_0(&block, &mut out);
        assert_eq!(out[0], 3.0); // (16 + 3) - 16
        assert_eq!(out[1], -16.0);
        assert_eq!(out[17], 5.0); // (16 + 5) - 16
        assert_eq!(out[16], -16.0);
    }

    #[test]
    fn q8_k_scales_signed_quants() {
        let mut block = [0u8; 292];
        block[..4].copy_from_slice(&0.25f32.to_le_bytes());
        block[4] = 8;
        block[5] = (-12i8) as u8;
        block[4 + 255] = 127;
        // Group sums are ignored.
        block[260..292].fill(0xAB);
        let mut out = [0.0f32; QK_K];
        q8_k(&block, &mut out);
        assert_eq!(out[0], 2.0);
        assert_eq!(out[1], -3.0);
        assert_eq!(out[255], 31.75);
        assert_eq!(out[2], 0.0);
    }

    #[test]
    fn e8m0_half_powers_of_two() {
        assert_eq!(e8m0_half(127), 0.5);
        assert_eq!(e8m0_half(128), 1.0);
        // f32::MIN_POSITIVE is 2^-126, and halving it stays exact in the subnormal range.
        assert_eq!(e8m0_half(1), f32::MIN_POSITIVE / 2.0);
        assert_eq!(e8m0_half(0), f32::MIN_POSITIVE / 4.0);
    }
}
