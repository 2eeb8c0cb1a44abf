//! `aggregate` on probe output folders of two made-up models: the tables,
//! the summary and the charts.

mod common;

use std::path::Path;

use common::{
    find_row, floats, ints, optional_floats, optional_ints, read_csv, read_parquet, strings,
};
use ihs_aggregate::{aggregate, AggregateError, AggregateReport, ProbeOutput};
use polars::prelude::*;

/// Writes both models' metrics under `root` and aggregates them into
/// `root/aggregate` with a threshold of 0.95.
fn run(root: &Path) -> AggregateReport {
    let outputs = [
        ProbeOutput {
            model: "small".to_owned(),
            dir: root.join("small/probe"),
        },
        ProbeOutput {
            model: "large".to_owned(),
            dir: root.join("large/probe"),
        },
    ];
    common::write_metrics(&outputs[0].dir, &common::small_model());
    common::write_metrics(&outputs[1].dir, &common::large_model());
    let out = root.join("aggregate");
    std::fs::create_dir_all(&out).unwrap();
    aggregate(&outputs, 0.95, &out).unwrap_or_else(|error| panic!("aggregate failed: {error}"))
}

#[test]
fn first_layer_from_test_split() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path());
    assert_eq!(report.first_layer_rows, 6);
    let table = read_parquet(&dir.path().join("aggregate/first_layer.parquet"));
    assert_eq!(table.height(), 6);

    let first = optional_ints(&table, "first_layer");
    let first_depth = optional_floats(&table, "first_depth");
    let best = floats(&table, "best_accuracy");
    let best_layer = ints(&table, "best_layer");
    let best_depth = floats(&table, "best_depth");
    let threshold = floats(&table, "threshold");
    assert!(threshold.iter().all(|&value| value == 0.95));

    // Reaches the threshold exactly at layer 2; the cv rows, above it
    // from layer 0, do not count.
    let row = find_row(&table, "small", "harmful", "svm");
    assert_eq!(first[row], Some(2));
    assert_eq!(first_depth[row], Some(0.5));
    assert_eq!(best[row], 0.99);
    assert_eq!(best_layer[row], 3);
    assert_eq!(best_depth[row], 0.75);

    // Never reaches it; the best value is tied and the lower layer wins.
    let row = find_row(&table, "small", "harmful", "logistic");
    assert_eq!(first[row], None);
    assert_eq!(first_depth[row], None);
    assert_eq!(best[row], 0.94);
    assert_eq!(best_layer[row], 3);

    // The test split of a transfer task decides, not its transfer split.
    let row = find_row(&table, "small", "jailbreak-transfer", "svm");
    assert_eq!(first[row], Some(1));
    assert_eq!(first_depth[row], Some(0.25));

    let row = find_row(&table, "large", "harmful", "svm");
    assert_eq!(first[row], Some(4));
    assert_eq!(first_depth[row], Some(0.5));
    assert_eq!(best_layer[row], 6);
    assert_eq!(best_depth[row], 0.75);

    // Reaches it at layer 2, drops below and rises again: still layer 2.
    let row = find_row(&table, "large", "harmful", "logistic");
    assert_eq!(first[row], Some(2));
    assert_eq!(first_depth[row], Some(0.25));
    assert_eq!(best[row], 0.98);
    assert_eq!(best_layer[row], 5);
}

#[test]
fn accuracy_depth_per_model() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path());
    let table = read_parquet(&dir.path().join("aggregate/accuracy.parquet"));
    let expected_rows = 5 * 5 + 4 * 9;
    assert_eq!(report.accuracy_rows, expected_rows);
    assert_eq!(table.height(), expected_rows);

    let columns: Vec<&str> = table
        .get_column_names()
        .into_iter()
        .map(PlSmallStr::as_str)
        .collect();
    assert_eq!(
        columns,
        [
            "model",
            "task",
            "classifier",
            "layer",
            "depth",
            "split",
            "accuracy",
            "f1_macro"
        ]
    );

    let models = strings(&table, "model");
    let layers = ints(&table, "layer");
    let depths = floats(&table, "depth");
    for i in 0..table.height() {
        let blocks = if models[i] == "small" { 4.0 } else { 8.0 };
        assert_eq!(
            depths[i],
            layers[i] as f64 / blocks,
            "row {i}: {} layer {}",
            models[i],
            layers[i]
        );
    }
    let deepest = (0..table.height()).filter(|&i| depths[i] == 1.0).count();
    assert_eq!(deepest, 9, "one row at depth 1 per curve");
}

#[test]
fn accuracy_rows_sorted_in_model_order() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path());
    let table = read_parquet(&dir.path().join("aggregate/accuracy.parquet"));
    let models = strings(&table, "model");
    let tasks = strings(&table, "task");
    let classifiers = strings(&table, "classifier");
    let splits = strings(&table, "split");
    let layers = ints(&table, "layer");

    let model_rank = |model: &str| usize::from(model == "large");
    for i in 1..table.height() {
        let previous = (
            model_rank(&models[i - 1]),
            &tasks[i - 1],
            &classifiers[i - 1],
            &splits[i - 1],
            layers[i - 1],
        );
        let current = (
            model_rank(&models[i]),
            &tasks[i],
            &classifiers[i],
            &splits[i],
            layers[i],
        );
        assert!(
            previous < current,
            "row {i} is out of order: {previous:?} then {current:?}"
        );
    }

    let accuracy = floats(&table, "accuracy");
    let f1 = floats(&table, "f1_macro");
    assert_eq!(
        &accuracy[..5],
        &[0.55, 0.90, 0.93, 0.94, 0.94],
        "small harmful logistic test"
    );
    assert!((f1[0] - 0.54).abs() < 1e-12);
}

/// Casts the CSV frame's columns to the Parquet frame's types, since CSV
/// reading infers i64 for integers.
fn assert_csv_matches_parquet(dir: &Path, stem: &str) {
    let parquet = read_parquet(&dir.join(format!("{stem}.parquet")));
    let csv = read_csv(&dir.join(format!("{stem}.csv")));
    assert_eq!(
        csv.get_column_names(),
        parquet.get_column_names(),
        "{stem}: columns"
    );
    assert_eq!(csv.height(), parquet.height(), "{stem}: rows");
    for column in parquet.columns() {
        let from_csv = csv
            .column(column.name())
            .unwrap()
            .cast(column.dtype())
            .unwrap();
        assert!(
            from_csv.equals_missing(column),
            "{stem}: column `{}` differs between CSV and Parquet:\n{:?}\n{:?}",
            column.name(),
            from_csv,
            column
        );
    }
}

#[test]
fn csv_equals_parquet() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path());
    let out = dir.path().join("aggregate");
    assert_csv_matches_parquet(&out, "accuracy");
    assert_csv_matches_parquet(&out, "first_layer");
}

#[test]
fn summary_lists_each_model() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path());
    let summary = std::fs::read_to_string(dir.path().join("aggregate/summary.md")).unwrap();
    assert!(summary.contains("## small (4 blocks)"), "{summary}");
    assert!(summary.contains("## large (8 blocks)"), "{summary}");
    assert!(
        summary.find("## small").unwrap() < summary.find("## large").unwrap(),
        "models keep the order of the outputs"
    );
    assert!(
        summary.contains("| harmful | svm | 2 | 0.50 | 0.990 | 3 | 0.75 |"),
        "{summary}"
    );
    assert!(
        summary.contains("| harmful | logistic | none | – | 0.940 | 3 | 0.75 |"),
        "{summary}"
    );
    // Accuracy at depths 0, 0.25, 0.5, 0.75 and 1 of the large model.
    assert!(
        summary.contains(
            "| harmful | svm | 0.500 (0) | 0.700 (2) | 0.960 (4) | 0.990 (6) | 0.980 (8) |"
        ),
        "{summary}"
    );
    assert!(summary.contains("Transfer accuracy"), "{summary}");
    assert!(
        summary.contains("| jailbreak-transfer | svm | 0.100 (0) | 0.350 (1) | 0.620 (2) | 0.810 (3) | 0.740 (4) |"),
        "{summary}"
    );
}

/// Returns the width and height from a PNG file's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (width, height)
}

#[test]
fn charts_written_as_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(dir.path());
    let plots = dir.path().join("aggregate/plots");
    let stems = [
        "accuracy-harmful-svm",
        "accuracy-harmful-logistic",
        "accuracy-jailbreak-transfer-svm",
        "accuracy-depth-harmful-svm",
        "accuracy-depth-harmful-logistic",
        "accuracy-depth-jailbreak-transfer-svm",
        "transfer-jailbreak-transfer-svm",
        "transfer-depth-jailbreak-transfer-svm",
    ];
    let mut listed: Vec<String> = std::fs::read_dir(&plots)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = stems
        .iter()
        .flat_map(|stem| [format!("{stem}.png"), format!("{stem}.svg")])
        .collect();
    expected.sort();
    assert_eq!(listed, expected);

    for stem in stems {
        let svg = std::fs::read_to_string(plots.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{stem}.svg is not SVG");
        assert!(svg.len() > 5_000, "{stem}.svg has only {} bytes", svg.len());
        assert!(svg.contains("<polyline"), "{stem}.svg has no line");
        assert!(
            svg.contains("small"),
            "{stem}.svg has no legend entry for small"
        );
        assert!(
            svg.contains("large"),
            "{stem}.svg has no legend entry for large"
        );

        let png = std::fs::read(plots.join(format!("{stem}.png"))).unwrap();
        assert_eq!(png_size(&png), (960, 600), "{stem}.png size");
        assert!(
            png.len() > 20_000,
            "{stem}.png has only {} bytes",
            png.len()
        );
    }
    let chart_files = report
        .files
        .iter()
        .filter(|path| path.starts_with(&plots))
        .count();
    assert_eq!(chart_files, expected.len());
}

#[test]
fn single_model_has_no_depth_charts() {
    let dir = tempfile::tempdir().unwrap();
    let output = ProbeOutput {
        model: "small".to_owned(),
        dir: dir.path().join("small/probe"),
    };
    common::write_metrics(&output.dir, &common::small_model());
    let out = dir.path().join("aggregate");
    std::fs::create_dir_all(&out).unwrap();
    aggregate(&[output], 0.95, &out).unwrap();
    let names: Vec<String> = std::fs::read_dir(out.join("plots"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(
        names.iter().all(|name| !name.contains("depth")),
        "{names:?}"
    );
}

#[test]
fn missing_column_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("small/probe");
    std::fs::create_dir_all(&probe).unwrap();
    let mut frame = df!("task" => ["harmful"], "layer" => [0i32], "split" => ["test"]).unwrap();
    ParquetWriter::new(std::fs::File::create(probe.join("metrics.parquet")).unwrap())
        .finish(&mut frame)
        .unwrap();
    let output = ProbeOutput {
        model: "small".to_owned(),
        dir: probe,
    };
    let error = aggregate(&[output], 0.95, dir.path()).unwrap_err();
    assert!(
        matches!(
            error,
            AggregateError::Read { .. } | AggregateError::Column { .. }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("metrics.parquet"), "{error}");
}

#[test]
fn missing_metrics_file_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let output = ProbeOutput {
        model: "small".to_owned(),
        dir: dir.path().join("small/probe"),
    };
    let error = aggregate(&[output], 0.95, dir.path()).unwrap_err();
    assert!(
        matches!(error, AggregateError::Io { action: "open", .. }),
        "{error:?}"
    );
}

#[test]
fn invalid_inputs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let error = aggregate(&[], 0.95, dir.path()).unwrap_err();
    assert!(matches!(error, AggregateError::NoProbeOutputs), "{error:?}");

    let output = ProbeOutput {
        model: "small".to_owned(),
        dir: dir.path().join("small/probe"),
    };
    let error = aggregate(std::slice::from_ref(&output), 1.5, dir.path()).unwrap_err();
    assert!(
        matches!(error, AggregateError::InvalidThreshold { .. }),
        "{error:?}"
    );

    let error = aggregate(&[output.clone(), output], 0.95, dir.path()).unwrap_err();
    assert!(
        matches!(error, AggregateError::DuplicateModel { .. }),
        "{error:?}"
    );
}
