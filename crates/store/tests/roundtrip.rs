//! Writing and reading back token tables and activation shards as real
//! Parquet files.

use ihs_store::{
    layer_dir, read_layer, read_tokens, shard_file_name, write_activation_shard, write_tokens,
    ActivationRows, StoreDtype, TokenRow, MEAN_POSITION,
};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ihs-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rows(offset: usize, count: usize, width: usize) -> ActivationRows {
    ActivationRows {
        prompt_ids: (offset..offset + count)
            .map(|i| format!("normal-{i:05}"))
            .collect(),
        classes: (offset..offset + count)
            .map(|i| if i % 2 == 0 { "normal" } else { "malicious" }.to_owned())
            .collect(),
        positions: (offset..offset + count)
            .map(|i| if i % 3 == 0 { MEAN_POSITION } else { i as i32 })
            .collect(),
        hidden: (0..count * width)
            .map(|v| (v + offset * width) as f32 * 0.37 - 11.0)
            .collect(),
        hidden_size: width,
    }
}

#[test]
fn shards_read_back_in_order() {
    let root = temp_dir("shards");
    let dir = layer_dir(&root, 7);
    std::fs::create_dir_all(&dir).unwrap();
    for (shard, offset) in [(0, 0), (1, 5)] {
        let path = dir.join(shard_file_name(shard));
        write_activation_shard(
            &path,
            &rows(offset, 5, 6),
            7,
            StoreDtype::F32,
            &[("ihs.model", "test".into())],
        )
        .unwrap();
    }

    let matrix = read_layer(&root, 7).unwrap();
    let expected_first = rows(0, 5, 6);
    let expected_second = rows(5, 5, 6);
    assert_eq!(matrix.states.dim(), (10, 6));
    assert_eq!(matrix.prompt_ids[..5], expected_first.prompt_ids[..]);
    assert_eq!(matrix.prompt_ids[5..], expected_second.prompt_ids[..]);
    assert_eq!(matrix.positions[..5], expected_first.positions[..]);
    assert_eq!(matrix.stored_dtype, "f32");
    let flat: Vec<f32> = matrix.states.iter().copied().collect();
    assert_eq!(flat[..30], expected_first.hidden[..]);
    assert_eq!(flat[30..], expected_second.hidden[..]);
}

#[test]
fn half_dtypes_round_to_nearest() {
    for (dtype, tolerance) in [(StoreDtype::F16, 1e-3_f32), (StoreDtype::Bf16, 8e-3)] {
        let root = temp_dir(dtype.name());
        let dir = layer_dir(&root, 0);
        std::fs::create_dir_all(&dir).unwrap();
        let written = rows(0, 4, 3);
        write_activation_shard(&dir.join(shard_file_name(0)), &written, 0, dtype, &[]).unwrap();

        let matrix = read_layer(&root, 0).unwrap();
        assert_eq!(matrix.stored_dtype, dtype.name());
        for (read, wrote) in matrix.states.iter().zip(&written.hidden) {
            assert!(
                (read - wrote).abs() <= tolerance * wrote.abs().max(1.0),
                "{dtype:?}: {read} vs {wrote}"
            );
        }
    }
}

#[test]
fn missing_layer_is_an_error() {
    let root = temp_dir("missing");
    let message = read_layer(&root, 3).unwrap_err().to_string();
    assert!(message.contains("layer 3"), "{message}");
}

#[test]
fn inconsistent_rows_are_rejected() {
    let root = temp_dir("inconsistent");
    let mut bad = rows(0, 3, 4);
    bad.hidden.pop();
    let message = write_activation_shard(&root.join("x.parquet"), &bad, 0, StoreDtype::F32, &[])
        .unwrap_err()
        .to_string();
    assert!(message.contains("11 values"), "{message}");
}

#[test]
fn tokens_round_trip() {
    let root = temp_dir("tokens");
    let path = root.join("tokens.parquet");
    let written = vec![
        TokenRow {
            prompt_id: "normal-00000".into(),
            class: "normal".into(),
            source_file: "data/normal.csv".into(),
            source_row: 0,
            text: "Bake bread.".into(),
            prompt: "<s>[INST] Bake bread. [/INST]".into(),
            input_ids: vec![1, 733, 16289, 28793],
            truncated: false,
        },
        TokenRow {
            prompt_id: "malicious-00004".into(),
            class: "malicious".into(),
            source_file: "data/malicious.csv".into(),
            source_row: 4,
            text: "ünïcode ✓".into(),
            prompt: "ünïcode ✓".into(),
            input_ids: vec![],
            truncated: true,
        },
    ];
    write_tokens(&path, &written, &[("ihs.model", "x".into())]).unwrap();
    assert_eq!(read_tokens(&path).unwrap(), written);
}
