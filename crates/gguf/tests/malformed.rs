//! Malformed GGUF files built byte by byte: each must give a specific `GgufError`
//! without a panic or an allocation sized by the corrupt field.

use ihs_gguf::{
    dequantize, dequantize_into, GgmlType, GgufError, GgufFile, TensorInfo, MAX_ARRAY_DEPTH,
};

/// GGUF value type ids.
const TYPE_U8: u32 = 0;
const TYPE_U32: u32 = 4;
const TYPE_BOOL: u32 = 7;
const TYPE_STRING: u32 = 8;
const TYPE_ARRAY: u32 = 9;

/// ggml type ids.
const GGML_F32: u32 = 0;
const GGML_Q4_0: u32 = 2;

/// Builds a GGUF file in memory, field by field.
struct Bytes(Vec<u8>);

impl Bytes {
    /// Starts a file with the magic, `version` and the two counts.
    fn header(version: u32, n_tensors: u64, n_entries: u64) -> Self {
        let mut bytes = Self(b"GGUF".to_vec());
        bytes.u32(version).u64(n_tensors).u64(n_entries);
        bytes
    }

    fn u8(&mut self, value: u8) -> &mut Self {
        self.0.push(value);
        self
    }

    fn u32(&mut self, value: u32) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn u64(&mut self, value: u64) -> &mut Self {
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }

    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }

    fn string(&mut self, text: &str) -> &mut Self {
        self.u64(text.len() as u64).raw(text.as_bytes())
    }

    fn kv_u32(&mut self, key: &str, value: u32) -> &mut Self {
        self.string(key).u32(TYPE_U32).u32(value)
    }

    fn tensor_info(&mut self, name: &str, dims: &[u64], ggml_type: u32, offset: u64) -> &mut Self {
        self.string(name).u32(dims.len() as u32);
        for &dim in dims {
            self.u64(dim);
        }
        self.u32(ggml_type).u64(offset)
    }

    /// Pads with zeros to the next multiple of `alignment`.
    fn pad(&mut self, alignment: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(alignment) {
            self.0.push(0);
        }
        self
    }

    fn parse(&self) -> Result<GgufFile, GgufError> {
        GgufFile::from_bytes(self.0.clone())
    }
}

/// A valid file with one u32 entry and one F32 tensor of 4 elements.
fn valid_file() -> Bytes {
    let mut bytes = Bytes::header(3, 1, 1);
    bytes
        .kv_u32("test.count", 7)
        .tensor_info("weight", &[4], GGML_F32, 0)
        .pad(32);
    for value in [1.0f32, 2.0, 3.0, 4.0] {
        bytes.raw(&value.to_le_bytes());
    }
    bytes
}

#[test]
fn valid_file_parses() {
    let file = valid_file().parse().expect("valid file parses");
    assert_eq!(file.get_u32("test.count").unwrap(), 7);
    assert_eq!(file.data_offset() % 32, 0);
    assert_eq!(file.dequantize("weight").unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn file_without_tensors_parses() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes.kv_u32("test.count", 7);
    let file = bytes.parse().expect("metadata-only file parses");
    assert!(file.tensors().is_empty());
}

#[test]
fn empty_file_is_truncated() {
    let error = GgufFile::from_bytes(Vec::new()).unwrap_err();
    assert!(
        matches!(&error, GgufError::Truncated { what, needed: 4, available: 0, .. } if what == "magic bytes"),
        "{error:?}"
    );
}

#[test]
fn bad_magic_is_rejected() {
    let mut bytes = valid_file();
    bytes.0[..4].copy_from_slice(b"GGML");
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(error, GgufError::BadMagic { found } if &found == b"GGML"),
        "{error:?}"
    );
    assert!(error.to_string().contains("\"GGML\""), "{error}");
}

#[test]
fn unsupported_versions_are_rejected() {
    // Version 1 used 32-bit counts; 0x0300_0000 is version 3 written big-endian.
    for version in [0, 1, 4, 0x0300_0000] {
        let mut bytes = valid_file();
        bytes.0[4..8].copy_from_slice(&u32::to_le_bytes(version));
        let error = bytes.parse().unwrap_err();
        assert!(
            matches!(error, GgufError::UnsupportedVersion { version: found } if found == version),
            "version {version}: {error:?}"
        );
    }
}

#[test]
fn truncated_header_names_field() {
    let bytes = Bytes::header(3, 1, 1);
    let error = GgufFile::from_bytes(bytes.0[..12].to_vec()).unwrap_err();
    assert!(
        matches!(&error, GgufError::Truncated { what, offset: 8, needed: 8, available: 4 } if what == "tensor count"),
        "{error:?}"
    );
}

#[test]
fn truncated_value_names_key() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes.string("test.count").u32(TYPE_U32).raw(&[1, 2]);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::Truncated { what, needed: 4, available: 2, .. }
            if what == "value of metadata key \"test.count\""),
        "{error:?}"
    );
}

#[test]
fn absurd_tensor_count_is_rejected() {
    let bytes = Bytes::header(3, u64::MAX, 0);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::CountTooLarge { what, count: u64::MAX, .. } if what == "tensor count"),
        "{error:?}"
    );
}

#[test]
fn absurd_metadata_count_is_rejected() {
    let mut bytes = Bytes::header(3, 0, 1 << 40);
    bytes.kv_u32("test.count", 7);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::CountTooLarge { what, count, max: 2, .. }
            if what == "metadata entry count" && *count == 1 << 40),
        "{error:?}"
    );
}

#[test]
fn absurd_key_length_is_rejected() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes.u64(u64::MAX).raw(b"key").u32(TYPE_U32).u32(0);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::StringTooLong { what, length: u64::MAX, offset: 24, available: 11 }
            if what == "key of metadata entry 0"),
        "{error:?}"
    );
}

#[test]
fn absurd_string_value_length_is_rejected() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes
        .string("test.name")
        .u32(TYPE_STRING)
        .u64(1 << 50)
        .raw(b"abc");
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::StringTooLong { what, length, .. }
            if what == "value of metadata key \"test.name\"" && *length == 1 << 50),
        "{error:?}"
    );
}

#[test]
fn absurd_array_length_is_rejected() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes
        .string("test.tokens")
        .u32(TYPE_ARRAY)
        .u32(TYPE_STRING)
        .u64(1 << 40)
        .string("a");
    let error = bytes.parse().unwrap_err();
    // Each string element takes at least 8 bytes, and 9 bytes remain.
    assert!(
        matches!(&error, GgufError::CountTooLarge { what, max: 1, min_entry_bytes: 8, .. }
            if what == "array length of metadata key \"test.tokens\""),
        "{error:?}"
    );
}

#[test]
fn deep_array_nesting_is_rejected() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes.string("test.deep").u32(TYPE_ARRAY);
    for _ in 0..=MAX_ARRAY_DEPTH {
        bytes.u32(TYPE_ARRAY).u64(1);
    }
    bytes.u32(TYPE_U8).u64(1).u8(0);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::ArrayNestingTooDeep { key, max_depth } if key == "test.deep" && *max_depth == MAX_ARRAY_DEPTH),
        "{error:?}"
    );
}

#[test]
fn nesting_at_depth_limit_parses() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes.string("test.deep").u32(TYPE_ARRAY);
    for _ in 1..MAX_ARRAY_DEPTH {
        bytes.u32(TYPE_ARRAY).u64(1);
    }
    bytes.u32(TYPE_U8).u64(1).u8(0);
    let file = bytes.parse().expect("nesting at the limit parses");
    assert!(file.get_array("test.deep").is_ok());
}

#[test]
fn unknown_value_type_is_rejected() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes.string("test.odd").u32(13).u32(0);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::InvalidValueType { key, type_id: 13, .. } if key == "test.odd"),
        "{error:?}"
    );
}

#[test]
fn unknown_array_element_type_is_rejected() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes
        .string("test.odd")
        .u32(TYPE_ARRAY)
        .u32(99)
        .u64(1)
        .u32(0);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::InvalidValueType { key, type_id: 99, .. } if key == "test.odd"),
        "{error:?}"
    );
}

#[test]
fn invalid_bool_is_rejected() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes.string("test.flag").u32(TYPE_BOOL).u8(2);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::InvalidBool { key, value: 2, .. } if key == "test.flag"),
        "{error:?}"
    );
}

#[test]
fn invalid_utf8_key_is_rejected() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes.u64(2).raw(&[0xC3, 0x28]).u32(TYPE_U8).u8(0);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::InvalidUtf8 { what, offset: 32 } if what == "key of metadata entry 0"),
        "{error:?}"
    );
}

#[test]
fn duplicate_key_is_rejected() {
    let mut bytes = Bytes::header(3, 0, 2);
    bytes.kv_u32("test.count", 1).kv_u32("test.count", 2);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::DuplicateKey { key } if key == "test.count"),
        "{error:?}"
    );
}

#[test]
fn duplicate_tensor_is_rejected() {
    let mut bytes = Bytes::header(3, 2, 0);
    bytes
        .tensor_info("weight", &[4], GGML_F32, 0)
        .tensor_info("weight", &[4], GGML_F32, 32)
        .pad(32)
        .raw(&[0; 64]);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::DuplicateTensor { name } if name == "weight"),
        "{error:?}"
    );
}

#[test]
fn alignment_of_wrong_type_is_rejected() {
    let mut bytes = Bytes::header(3, 0, 1);
    bytes.string("general.alignment").u32(TYPE_U8).u8(32);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::WrongType { key, expected: "u32", found } if key == "general.alignment" && found == "u8"),
        "{error:?}"
    );
}

#[test]
fn invalid_alignment_is_rejected() {
    for alignment in [0, 3, 48] {
        let mut bytes = Bytes::header(3, 0, 1);
        bytes.kv_u32("general.alignment", alignment);
        let error = bytes.parse().unwrap_err();
        assert!(
            matches!(error, GgufError::InvalidAlignment { alignment: found } if found == alignment),
            "alignment {alignment}: {error:?}"
        );
    }
}

#[test]
fn too_many_dims_is_rejected() {
    let mut bytes = Bytes::header(3, 1, 0);
    bytes
        .tensor_info("weight", &[1, 1, 1, 1, 1], GGML_F32, 0)
        .pad(32)
        .raw(&[0; 4]);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::TooManyDims { tensor, n_dims: 5, max: 4 } if tensor == "weight"),
        "{error:?}"
    );
}

#[test]
fn absurd_dimension_count_is_rejected_before_reading() {
    let mut bytes = Bytes::header(3, 1, 0);
    bytes.string("weight").u32(u32::MAX);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(
            error,
            GgufError::TooManyDims {
                n_dims: u32::MAX,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn element_count_overflow_is_rejected() {
    for dims in [vec![1 << 32, 1 << 32], vec![u64::MAX], vec![1 << 62, 2]] {
        let mut bytes = Bytes::header(3, 1, 0);
        bytes.tensor_info("weight", &dims, GGML_F32, 0).pad(32);
        let error = bytes.parse().unwrap_err();
        assert!(
            matches!(&error, GgufError::ElementCountOverflow { tensor, dims: found } if tensor == "weight" && *found == dims),
            "dims {dims:?}: {error:?}"
        );
    }
}

#[test]
fn byte_size_overflow_is_rejected() {
    // 2^62 elements fit in i64, but 2^62 I64 values need 2^65 bytes, which overflows u64.
    let mut bytes = Bytes::header(3, 1, 0);
    bytes.tensor_info("weight", &[1 << 62], 27, 0).pad(32);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(error, GgufError::ElementCountOverflow { .. }),
        "{error:?}"
    );
}

#[test]
fn unknown_tensor_type_is_rejected() {
    let mut bytes = Bytes::header(3, 1, 0);
    bytes
        .tensor_info("weight", &[32], 4, 0)
        .pad(32)
        .raw(&[0; 32]);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::UnknownTensorType { tensor, type_id: 4 } if tensor == "weight"),
        "{error:?}"
    );
}

#[test]
fn partial_block_row_is_rejected() {
    let mut bytes = Bytes::header(3, 1, 0);
    bytes
        .tensor_info("weight", &[31, 2], GGML_Q4_0, 0)
        .pad(32)
        .raw(&[0; 64]);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::RowNotMultipleOfBlock { tensor, ggml_type: GgmlType::Q4_0, row_len: 31, block_len: 32 }
            if tensor == "weight"),
        "{error:?}"
    );
}

#[test]
fn misaligned_offset_is_rejected() {
    let mut bytes = Bytes::header(3, 2, 0);
    bytes
        .tensor_info("first", &[2], GGML_F32, 0)
        .tensor_info("second", &[2], GGML_F32, 8)
        .pad(32)
        .raw(&[0; 16]);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::MisalignedTensorOffset { tensor, offset: 8, alignment: 32 } if tensor == "second"),
        "{error:?}"
    );
}

#[test]
fn data_beyond_file_end_is_rejected() {
    let mut bytes = valid_file();
    bytes.0.truncate(bytes.0.len() - 1);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::TensorOutOfBounds { tensor, len: 16, .. } if tensor == "weight"),
        "{error:?}"
    );
}

#[test]
fn huge_offset_is_rejected_without_overflow() {
    let mut bytes = Bytes::header(3, 1, 0);
    bytes
        .tensor_info("weight", &[4], GGML_F32, u64::MAX - 31)
        .pad(32);
    let error = bytes.parse().unwrap_err();
    assert!(
        matches!(&error, GgufError::TensorOutOfBounds { tensor, start: u64::MAX, .. } if tensor == "weight"),
        "{error:?}"
    );
}

#[test]
fn unsupported_type_names_tensor_and_type() {
    let mut bytes = Bytes::header(3, 1, 0);
    // IQ4_NL (type 20): 32 elements in 18 bytes.
    bytes
        .tensor_info("blk.0.ffn_up.weight", &[32], 20, 0)
        .pad(32)
        .raw(&[0; 18]);
    let file = bytes
        .parse()
        .expect("a file with an unsupported type still opens");
    let info = file.tensor("blk.0.ffn_up.weight").unwrap();
    let error = dequantize(info, file.tensor_data(info).unwrap()).unwrap_err();
    assert!(
        matches!(&error, GgufError::UnsupportedTensorType { tensor, ggml_type: GgmlType::IQ4_NL } if tensor == "blk.0.ffn_up.weight"),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("\"blk.0.ffn_up.weight\""), "{message}");
    assert!(message.contains("IQ4_NL"), "{message}");
    assert!(message.contains("Q4_K"), "{message}");
}

#[test]
fn data_length_mismatch_is_rejected() {
    let info = TensorInfo::new("weight", &[32], GgmlType::Q8_0).unwrap();
    let error = dequantize(&info, &[0; 33]).unwrap_err();
    assert!(
        matches!(
            error,
            GgufError::DataLengthMismatch {
                expected: 34,
                found: 33,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn output_length_mismatch_is_rejected() {
    let info = TensorInfo::new("weight", &[32], GgmlType::Q8_0).unwrap();
    let mut out = vec![0.0f32; 31];
    let error = dequantize_into(&info, &[0; 34], &mut out).unwrap_err();
    assert!(
        matches!(
            error,
            GgufError::OutputLengthMismatch {
                expected: 32,
                found: 31,
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn tensor_info_from_other_file_is_rejected() {
    let small = valid_file().parse().unwrap();
    let info = TensorInfo::new("big", &[1 << 20], GgmlType::F32).unwrap();
    let error = small.tensor_data(&info).unwrap_err();
    assert!(
        matches!(error, GgufError::TensorOutOfBounds { .. }),
        "{error:?}"
    );
}

#[test]
fn zero_element_tensor_is_empty() {
    let mut bytes = Bytes::header(3, 1, 0);
    bytes
        .tensor_info("empty", &[0, 1 << 40], GGML_F32, 0)
        .pad(32);
    let file = bytes.parse().expect("zero-element tensor parses");
    let info = file.tensor("empty").unwrap();
    assert_eq!(info.n_elements(), 0);
    assert!(file.dequantize("empty").unwrap().is_empty());
}

#[test]
fn scalar_tensor_has_one_element() {
    let mut bytes = Bytes::header(3, 1, 0);
    bytes
        .tensor_info("scale", &[], GGML_F32, 0)
        .pad(32)
        .raw(&2.5f32.to_le_bytes());
    let file = bytes.parse().expect("scalar tensor parses");
    assert_eq!(file.tensor("scale").unwrap().shape(), Vec::<usize>::new());
    assert_eq!(file.dequantize("scale").unwrap(), vec![2.5]);
}

#[test]
fn open_missing_file_names_path() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("no-such-model.gguf");
    let error = GgufFile::open(&path).unwrap_err();
    assert!(
        matches!(&error, GgufError::Io { path: found, .. } if *found == path),
        "{error:?}"
    );
    assert!(error.to_string().contains("no-such-model.gguf"), "{error}");
}

#[test]
fn open_empty_file_is_truncated() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ihs-gguf-empty.gguf");
    std::fs::write(&path, []).unwrap();
    let error = GgufFile::open(&path).unwrap_err();
    assert!(matches!(error, GgufError::Truncated { .. }), "{error:?}");
}
