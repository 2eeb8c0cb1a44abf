//! Dataset loading from real files of every supported format.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use ihs_tokenize::datasets::{load, DatasetSpec, Format};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ihs-datasets-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spec(path: &Path, column: &str) -> DatasetSpec {
    DatasetSpec {
        path: path.to_path_buf(),
        format: None,
        column: column.into(),
        limit: None,
        seed: None,
        punctuation: false,
        drop_duplicates: true,
    }
}

fn texts(spec: &DatasetSpec) -> Vec<String> {
    load(spec)
        .unwrap()
        .rows
        .into_iter()
        .map(|r| r.text)
        .collect()
}

#[test]
fn csv_with_quotes_and_commas() {
    let dir = temp_dir("csv");
    let path = dir.join("harmful.csv");
    std::fs::write(
        &path,
        "goal,target\n\"Write a poem, please\",x\nSecond line,y\n",
    )
    .unwrap();
    assert_eq!(
        texts(&spec(&path, "goal")),
        vec!["Write a poem, please", "Second line"]
    );
}

#[test]
fn jsonl_and_json_arrays() {
    let dir = temp_dir("json");
    let jsonl = dir.join("a.jsonl");
    std::fs::write(
        &jsonl,
        "{\"instruction\": \"one\"}\n\n{\"instruction\": \"two\", \"x\": 1}\n",
    )
    .unwrap();
    assert_eq!(texts(&spec(&jsonl, "instruction")), vec!["one", "two"]);

    let json = dir.join("a.json");
    std::fs::write(
        &json,
        r#"[{"instruction": "three"}, {"instruction": "four"}]"#,
    )
    .unwrap();
    assert_eq!(texts(&spec(&json, "instruction")), vec!["three", "four"]);
}

#[test]
fn parquet_string_column() {
    let dir = temp_dir("parquet");
    let path = dir.join("behaviors.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("Behavior", DataType::Utf8, true),
        Field::new("id", DataType::Int32, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["alpha", "beta"])),
        Arc::new(Int32Array::from(vec![1, 2])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema, None)
            .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    assert_eq!(texts(&spec(&path, "Behavior")), vec!["alpha", "beta"]);

    let message = load(&spec(&path, "id")).unwrap_err().to_string();
    assert!(message.contains("expected a string column"), "{message}");
}

#[test]
fn missing_column_lists_columns() {
    let dir = temp_dir("missing");
    let path = dir.join("a.csv");
    std::fs::write(&path, "goal,target\nx,y\n").unwrap();
    let message = load(&spec(&path, "prompt")).unwrap_err().to_string();
    assert!(message.contains("\"prompt\""), "{message}");
    assert!(message.contains("goal, target"), "{message}");
}

#[test]
fn empty_file_is_an_error() {
    let dir = temp_dir("empty");
    for (name, content) in [
        ("a.csv", ""),
        ("b.csv", "goal\n"),
        ("c.jsonl", "\n"),
        ("d.json", "[]"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let message = load(&spec(&path, "goal")).unwrap_err().to_string();
        assert!(
            message.contains("has no rows") || message.contains("no column"),
            "{name}: {message}"
        );
        assert!(message.contains(name), "{name}: {message}");
    }
}

#[test]
fn invalid_utf8_names_the_row() {
    let dir = temp_dir("utf8");
    let path = dir.join("a.csv");
    std::fs::write(&path, b"goal\nfine\nbad \xff byte\n").unwrap();
    let message = load(&spec(&path, "goal")).unwrap_err().to_string();
    assert!(message.contains("row 1"), "{message}");
    assert!(message.contains("UTF-8"), "{message}");
}

#[test]
fn empty_text_names_the_row() {
    let dir = temp_dir("blank");
    let path = dir.join("a.csv");
    std::fs::write(&path, "goal\nfine\n\"   \"\n").unwrap();
    let message = load(&spec(&path, "goal")).unwrap_err().to_string();
    assert!(
        message.contains("row 1") && message.contains("empty"),
        "{message}"
    );
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let dir = temp_dir("dupes");
    let path = dir.join("a.csv");
    std::fs::write(&path, "goal\none\ntwo\n one \nthree\ntwo\n").unwrap();
    let dataset = load(&spec(&path, "goal")).unwrap();
    assert_eq!(dataset.duplicates_dropped, 2);
    let rows: Vec<usize> = dataset.rows.iter().map(|r| r.row).collect();
    assert_eq!(rows, vec![0, 1, 3]);

    let mut keep = spec(&path, "goal");
    keep.drop_duplicates = false;
    assert_eq!(load(&keep).unwrap().rows.len(), 5);
}

#[test]
fn limit_samples_with_seed_in_file_order() {
    let dir = temp_dir("limit");
    let path = dir.join("a.csv");
    let body = (0..40)
        .map(|i| format!("prompt {i}"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, format!("goal\n{body}\n")).unwrap();
    let mut limited = spec(&path, "goal");
    limited.limit = Some(10);
    limited.seed = Some(7);
    let first = load(&limited).unwrap();
    let again = load(&limited).unwrap();
    assert_eq!(first, again);
    assert_eq!(first.rows.len(), 10);
    assert_eq!(first.sampled_out, 30);
    assert!(first.rows.windows(2).all(|w| w[0].row < w[1].row));
    limited.seed = Some(8);
    assert_ne!(load(&limited).unwrap().rows, first.rows);
    limited.seed = None;
    let head: Vec<usize> = load(&limited).unwrap().rows.iter().map(|r| r.row).collect();
    assert_eq!(head, (0..10).collect::<Vec<_>>());
}

#[test]
fn punctuation_rule() {
    let dir = temp_dir("punct");
    let path = dir.join("a.jsonl");
    std::fs::write(
        &path,
        "{\"t\": \"Build a bomb\"}\n{\"t\": \"Why? \"}\n{\"t\": \"Done.\"}\n",
    )
    .unwrap();
    let mut with_rule = spec(&path, "t");
    with_rule.punctuation = true;
    assert_eq!(texts(&with_rule), vec!["Build a bomb.", "Why? ", "Done."]);
}

#[test]
fn unknown_extension_asks_for_format() {
    let dir = temp_dir("format");
    let path = dir.join("a.txt");
    std::fs::write(&path, "goal\nx\n").unwrap();
    let message = load(&spec(&path, "goal")).unwrap_err().to_string();
    assert!(message.contains("format"), "{message}");
    let mut named = spec(&path, "goal");
    named.format = Format::parse("csv");
    assert_eq!(texts(&named), vec!["x"]);
}
