//! Compares parsing and dequantization against the fixture written by
//! `scripts/gguf_reference.py` with gguf-py 0.19.0.
//!
//! The fixture holds one small tensor per type (2 to 4 blocks each) and metadata of
//! every GGUF value type. `tests/fixtures/reference/<tensor>.f32` contains the values
//! that `gguf.quants.dequantize` computed from the same bytes, as raw little-endian f32.

// Metadata floats are compared exactly because the file stores them exactly.
#![allow(clippy::float_cmp)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ihs_gguf::half::{bf16, f16};
use ihs_gguf::{
    dequantize, dequantize_chunked, dequantize_into, dequantize_to_bf16, dequantize_to_f16,
    GgmlType, GgufError, GgufFile, MetadataArray, MetadataValue,
};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn open_fixture() -> GgufFile {
    GgufFile::open(fixture_dir().join("reference.gguf")).expect("fixture opens")
}

fn read_reference(name: &str) -> Vec<f32> {
    let path = fixture_dir().join("reference").join(format!("{name}.f32"));
    let bytes =
        std::fs::read(&path).unwrap_or_else(|error| panic!("reading {}: {error}", path.display()));
    assert_eq!(
        bytes.len() % 4,
        0,
        "{} is not a whole number of f32",
        path.display()
    );
    bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
        .collect()
}

/// Asserts that two value sequences are bit-identical.
///
/// The comparison is exact because the kernels perform the same f32 operations in
/// the same order as gguf-py: widen f16 or bf16 scales exactly, multiply, then add or
/// subtract, each rounded to f32, with no fused multiply-add. IEEE 754 makes each of
/// those operations deterministic. A tolerance would hide a wrong nibble order whose
/// effect happens to be small.
fn assert_bit_equal(tensor: &str, actual: &[f32], expected: &[f32]) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "tensor {tensor}: element count"
    );
    for (index, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert_eq!(
            a.to_bits(),
            e.to_bits(),
            "tensor {tensor}: element {index} is {a}, reference is {e}"
        );
    }
}

#[test]
fn fixture_header_fields() {
    let file = open_fixture();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    assert_eq!(file.tensors().len(), 14);
}

#[test]
fn every_tensor_matches_reference() {
    let file = open_fixture();
    for info in file.tensors() {
        let data = file.tensor_data(info).expect("tensor data in bounds");
        let values = dequantize(info, data).expect("dequantize");
        assert_bit_equal(info.name(), &values, &read_reference(info.name()));
    }
}

#[test]
fn fixture_covers_supported_types() {
    let file = open_fixture();
    let covered: BTreeSet<&str> = file
        .tensors()
        .iter()
        .map(|info| info.ggml_type().name())
        .collect();
    for ggml_type in GgmlType::DEQUANTIZE_SUPPORTED {
        // gguf-py 0.19.0 cannot dequantize Q8_K; a unit test in blocks.rs covers it.
        if *ggml_type == GgmlType::Q8_K {
            continue;
        }
        assert!(
            covered.contains(ggml_type.name()),
            "no fixture tensor of type {ggml_type}"
        );
    }
}

#[test]
fn tensor_dims_and_shape() {
    let file = open_fixture();
    let info = file.tensor("f32").expect("tensor f32");
    assert_eq!(info.dims(), &[4, 3, 2]);
    assert_eq!(info.shape(), vec![2, 3, 4]);
    assert_eq!(info.n_elements(), 24);
    assert_eq!(info.n_bytes(), 96);
    assert_eq!(info.offset() % 64, 0);

    let q4_k = file.tensor("q4_k").expect("tensor q4_k");
    assert_eq!(q4_k.ggml_type(), GgmlType::Q4_K);
    assert_eq!(q4_k.dims(), &[512, 2]);
    assert_eq!(q4_k.n_bytes(), 4 * 144);
}

#[test]
fn chunked_matches_whole_tensor() {
    let file = open_fixture();
    for info in file.tensors() {
        let data = file.tensor_data(info).expect("tensor data");
        let whole = dequantize(info, data).expect("dequantize");
        // 40 elements rounds up to whole blocks, and 1 gives one block per chunk.
        for chunk_elements in [1, 40, 300, usize::MAX / 2] {
            let mut collected = Vec::new();
            dequantize_chunked(info, data, chunk_elements, |start, chunk: &[f32]| {
                assert_eq!(
                    start,
                    collected.len(),
                    "tensor {}: chunk start",
                    info.name()
                );
                collected.extend_from_slice(chunk);
                Ok::<(), GgufError>(())
            })
            .expect("dequantize_chunked");
            assert_bit_equal(info.name(), &collected, &whole);
        }
    }
}

#[test]
fn chunked_stops_on_sink_error() {
    let file = open_fixture();
    let info = file.tensor("q8_0").expect("tensor q8_0");
    let data = file.tensor_data(info).expect("tensor data");
    let mut calls = 0;
    let result = dequantize_chunked(info, data, 32, |_, _| {
        calls += 1;
        Err(GgufError::MissingKey { key: "stop".into() })
    });
    assert!(
        matches!(result, Err(GgufError::MissingKey { .. })),
        "{result:?}"
    );
    assert_eq!(calls, 1);
}

#[test]
fn dequantize_into_matches_whole_tensor() {
    let file = open_fixture();
    let info = file.tensor("q6_k").expect("tensor q6_k");
    let data = file.tensor_data(info).expect("tensor data");
    let mut out = vec![f32::NAN; 1024];
    dequantize_into(info, data, &mut out).expect("dequantize_into");
    assert_bit_equal("q6_k", &out, &read_reference("q6_k"));
}

#[test]
fn half_conversions_round_each_value() {
    let file = open_fixture();
    for info in file.tensors() {
        let data = file.tensor_data(info).expect("tensor data");
        let reference = read_reference(info.name());
        let halves = dequantize_to_f16(info, data).expect("dequantize_to_f16");
        let brains = dequantize_to_bf16(info, data).expect("dequantize_to_bf16");
        for (index, &value) in reference.iter().enumerate() {
            assert_eq!(
                halves[index],
                f16::from_f32(value),
                "tensor {}: f16 element {index}",
                info.name()
            );
            assert_eq!(
                brains[index],
                bf16::from_f32(value),
                "tensor {}: bf16 element {index}",
                info.name()
            );
        }
    }
}

#[test]
fn native_half_types_are_unchanged() {
    let file = open_fixture();
    let f16_info = file.tensor("f16").expect("tensor f16");
    let f16_data = file.tensor_data(f16_info).expect("tensor data");
    let halves = dequantize_to_f16(f16_info, f16_data).expect("dequantize_to_f16");
    let stored: Vec<f16> = f16_data
        .chunks_exact(2)
        .map(|pair| f16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    assert_eq!(halves, stored);

    let bf16_info = file.tensor("bf16").expect("tensor bf16");
    let bf16_data = file.tensor_data(bf16_info).expect("tensor data");
    let brains = dequantize_to_bf16(bf16_info, bf16_data).expect("dequantize_to_bf16");
    let stored: Vec<bf16> = bf16_data
        .chunks_exact(2)
        .map(|pair| bf16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    assert_eq!(brains, stored);
}

#[test]
fn file_dequantize_by_name() {
    let file = open_fixture();
    let values = file.dequantize("q4_0").expect("dequantize q4_0");
    assert_bit_equal("q4_0", &values, &read_reference("q4_0"));
}

#[test]
fn scalar_metadata_values() {
    let file = open_fixture();
    assert_eq!(file.get_str("general.architecture").unwrap(), "test");
    assert_eq!(file.get_u32("general.alignment").unwrap(), 64);
    assert_eq!(file.get_u8("test.u8").unwrap(), 200);
    assert_eq!(file.get_i8("test.i8").unwrap(), -100);
    assert_eq!(file.get_u16("test.u16").unwrap(), 60000);
    assert_eq!(file.get_i16("test.i16").unwrap(), -30000);
    assert_eq!(file.get_u32("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(file.get_i32("test.i32").unwrap(), -2_000_000_000);
    assert_eq!(file.get_u64("test.u64").unwrap(), (1 << 63) + 5);
    assert_eq!(file.get_i64("test.i64").unwrap(), -(1 << 62));
    assert_eq!(file.get_f32("test.f32").unwrap(), 1.5);
    assert_eq!(file.get_f64("test.f64").unwrap(), -2.25e300);
    assert!(file.get_bool("test.bool").unwrap());
    assert_eq!(file.get_str("test.string").unwrap(), "h\u{e9}llo \u{2713}");
}

#[test]
fn array_metadata_values() {
    let file = open_fixture();
    assert_eq!(file.get_u8_array("test.array.u8").unwrap(), &[0, 1, 255]);
    assert_eq!(file.get_i8_array("test.array.i8").unwrap(), &[-128, 0, 127]);
    assert_eq!(file.get_u16_array("test.array.u16").unwrap(), &[0, 65535]);
    assert_eq!(
        file.get_i16_array("test.array.i16").unwrap(),
        &[-32768, 32767]
    );
    assert_eq!(
        file.get_u32_array("test.array.u32").unwrap(),
        &[7, u32::MAX]
    );
    assert_eq!(
        file.get_i32_array("test.array.i32").unwrap(),
        &[-7, i32::MAX]
    );
    assert_eq!(file.get_u64_array("test.array.u64").unwrap(), &[u64::MAX]);
    assert_eq!(
        file.get_i64_array("test.array.i64").unwrap(),
        &[i64::MIN, 3]
    );
    assert_eq!(file.get_f32_array("test.array.f32").unwrap(), &[0.5, -1.25]);
    assert_eq!(
        file.get_f64_array("test.array.f64").unwrap(),
        &[1e-300, 2.5]
    );
    assert_eq!(
        file.get_bool_array("test.array.bool").unwrap(),
        &[true, false, true]
    );
    assert_eq!(
        file.get_str_array("test.array.string").unwrap(),
        &["a", "", "\u{fc}"]
    );
    assert_eq!(
        file.get_array_array("test.array.nested").unwrap(),
        &[MetadataArray::I32(vec![1, 2]), MetadataArray::I32(vec![3])]
    );
    assert_eq!(
        file.get_array_array("test.array.nested_string").unwrap(),
        &[
            MetadataArray::String(vec!["x".into()]),
            MetadataArray::String(vec!["y".into(), "z".into()])
        ]
    );
}

#[test]
fn lenient_numeric_getters() {
    let file = open_fixture();
    assert_eq!(file.get_uint("test.u8").unwrap(), 200);
    assert_eq!(file.get_uint("test.u64").unwrap(), (1 << 63) + 5);
    assert_eq!(file.get_int("test.i8").unwrap(), -100);
    assert_eq!(file.get_int("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(file.get_float("test.f32").unwrap(), 1.5);
    assert_eq!(file.get_float("test.f64").unwrap(), -2.25e300);

    let negative = file.get_uint("test.i8").unwrap_err();
    assert!(
        matches!(negative, GgufError::ValueOutOfRange { .. }),
        "{negative:?}"
    );
    let too_large = file.get_int("test.u64").unwrap_err();
    assert!(
        matches!(too_large, GgufError::ValueOutOfRange { .. }),
        "{too_large:?}"
    );
    let not_integer = file.get_uint("test.string").unwrap_err();
    assert!(
        matches!(not_integer, GgufError::WrongType { .. }),
        "{not_integer:?}"
    );
}

#[test]
fn getter_errors_name_key_and_types() {
    let file = open_fixture();

    let wrong = file.get_u32("test.string").unwrap_err();
    assert_eq!(
        wrong.to_string(),
        "metadata key \"test.string\" has type string, but u32 was expected"
    );

    let wrong_array = file.get_str_array("test.array.f32").unwrap_err();
    assert_eq!(
        wrong_array.to_string(),
        "metadata key \"test.array.f32\" has type array of f32, but array of string was expected"
    );

    let missing = file.get_str("tokenizer.ggml.model").unwrap_err();
    assert!(matches!(&missing, GgufError::MissingKey { key } if key == "tokenizer.ggml.model"));
    assert!(
        missing.to_string().contains("\"tokenizer.ggml.model\""),
        "{missing}"
    );

    let value = file
        .metadata()
        .get("test.array.nested")
        .expect("nested array key");
    assert_eq!(value.type_name(), "array of array");
    assert!(matches!(value, MetadataValue::Array(array) if array.len() == 2));
}

#[test]
fn unknown_tensor_name_is_error() {
    let file = open_fixture();
    let error = file.tensor("output.weight").unwrap_err();
    assert!(matches!(&error, GgufError::TensorNotFound { name } if name == "output.weight"));
}

#[test]
fn version_2_reads_like_version_3() {
    let mut bytes = std::fs::read(fixture_dir().join("reference.gguf")).expect("read fixture");
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let file = GgufFile::from_bytes(bytes).expect("version 2 parses");
    assert_eq!(file.version(), 2);
    let reference = open_fixture();
    assert_eq!(file.metadata(), reference.metadata());
    assert_eq!(file.tensors(), reference.tensors());
    let values = file.dequantize("q5_k").expect("dequantize q5_k");
    assert_bit_equal("q5_k", &values, &read_reference("q5_k"));
}

#[test]
fn every_truncation_of_fixture_is_error() {
    let bytes = std::fs::read(fixture_dir().join("reference.gguf")).expect("read fixture");
    // The padding after the last tensor's data is optional, so the file is complete
    // up to the end of that data.
    let file = open_fixture();
    let data_end = file
        .tensors()
        .iter()
        .map(|info| file.data_offset() + info.offset() + info.n_bytes())
        .max()
        .expect("fixture has tensors");
    assert!(GgufFile::from_bytes(bytes[..data_end as usize].to_vec()).is_ok());
    for len in 0..data_end as usize {
        let result = GgufFile::from_bytes(bytes[..len].to_vec());
        let error = result.expect_err("a truncated file must not parse");
        assert!(
            matches!(
                error,
                GgufError::Truncated { .. }
                    | GgufError::StringTooLong { .. }
                    | GgufError::CountTooLarge { .. }
                    | GgufError::TensorOutOfBounds { .. }
            ),
            "prefix of {len} bytes: {error}"
        );
    }
}
