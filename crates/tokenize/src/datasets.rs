//! Prompt datasets: one text column read from a CSV, JSONL, JSON or Parquet
//! file, with an optional seeded sample, a punctuation rule and duplicate
//! removal.
//!
//! Rules, in the order they apply:
//! 1. Rows whose text is empty after trimming whitespace are errors that name
//!    the file and row, as are missing columns and text that is not UTF-8.
//! 2. Duplicates: a row whose trimmed text equals an earlier row's of the same
//!    file is dropped (`drop_duplicates`, on by default) and counted.
//! 3. Limit: with a `limit` below the row count and a `seed`, `limit` rows
//!    are drawn without replacement by a seeded shuffle and kept in file
//!    order; without a seed the first `limit` rows are kept.
//! 4. Punctuation: with `punctuation` on, "." is appended to a text that ends
//!    in neither "." nor "?" (after trimming trailing whitespace).

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, LargeStringArray, StringArray, StringViewArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The file formats a dataset can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
    Json,
    Parquet,
}

impl Format {
    /// Parses a format name (`csv`, `jsonl`, `json`, `parquet`).
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            "json" => Some(Self::Json),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }

    /// Infers the format from a file extension.
    pub fn from_path(path: &Path) -> Option<Self> {
        path.extension()
            .and_then(|e| e.to_str())
            .and_then(Self::parse)
    }
}

/// The source and reading rules of one class's prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    pub path: PathBuf,
    pub format: Option<Format>,
    pub column: String,
    pub limit: Option<usize>,
    pub seed: Option<u64>,
    pub punctuation: bool,
    pub drop_duplicates: bool,
}

/// One prompt and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetRow {
    /// 0-based data row in the file (a CSV header is not counted).
    pub row: usize,
    pub text: String,
}

/// The prompts of one dataset and what the rules removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub rows: Vec<DatasetRow>,
    pub rows_in_file: usize,
    pub duplicates_dropped: usize,
    pub sampled_out: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("failed to read dataset {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot tell the format of dataset {path}: name it with `format` (csv, jsonl, json or parquet)")]
    UnknownFormat { path: PathBuf },
    #[error("dataset {path} has no rows")]
    Empty { path: PathBuf },
    #[error("dataset {path} has no column {column:?}; columns found: {found}")]
    MissingColumn {
        path: PathBuf,
        column: String,
        found: String,
    },
    #[error("dataset {path}, row {row}: {message}")]
    Row {
        path: PathBuf,
        row: usize,
        message: String,
    },
    #[error("dataset {path} is not valid {format}: {message}")]
    Parse {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
}

type Result<T> = std::result::Result<T, DatasetError>;

/// Reads a dataset and applies the rules in the module documentation.
pub fn load(spec: &DatasetSpec) -> Result<Dataset> {
    let path = &spec.path;
    let format = spec
        .format
        .or_else(|| Format::from_path(path))
        .ok_or_else(|| DatasetError::UnknownFormat { path: path.clone() })?;
    let texts = match format {
        Format::Csv => read_csv(path, &spec.column)?,
        Format::Jsonl => read_jsonl(path, &spec.column)?,
        Format::Json => read_json(path, &spec.column)?,
        Format::Parquet => read_parquet(path, &spec.column)?,
    };
    if texts.is_empty() {
        return Err(DatasetError::Empty { path: path.clone() });
    }
    let rows_in_file = texts.len();

    let mut seen = std::collections::HashSet::new();
    let mut rows = Vec::with_capacity(texts.len());
    let mut duplicates_dropped = 0;
    for (row, text) in texts.into_iter().enumerate() {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(DatasetError::Row {
                path: path.clone(),
                row,
                message: format!("column {:?} is empty", spec.column),
            });
        }
        if spec.drop_duplicates && !seen.insert(trimmed.to_owned()) {
            duplicates_dropped += 1;
            continue;
        }
        rows.push(DatasetRow { row, text });
    }

    let mut sampled_out = 0;
    if let Some(limit) = spec.limit {
        if limit < rows.len() {
            sampled_out = rows.len() - limit;
            if let Some(seed) = spec.seed {
                let mut order: Vec<usize> = (0..rows.len()).collect();
                shuffle(&mut order, seed);
                let mut keep: Vec<usize> = order[..limit].to_vec();
                keep.sort_unstable();
                rows = keep.into_iter().map(|i| rows[i].clone()).collect();
            } else {
                rows.truncate(limit);
            }
        }
    }

    if spec.punctuation {
        for row in &mut rows {
            let end = row.text.trim_end();
            if !end.ends_with('.') && !end.ends_with('?') {
                row.text = format!("{end}.");
            }
        }
    }

    Ok(Dataset {
        rows,
        rows_in_file,
        duplicates_dropped,
        sampled_out,
    })
}

/// Fisher-Yates with `SplitMix64`, so a seed gives the same sample on every
/// platform and version.
fn shuffle(items: &mut [usize], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for i in (1..items.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        items.swap(i, j);
    }
}

fn read_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_csv(path: &Path, column: &str) -> Result<Vec<String>> {
    let bytes = read_bytes(path)?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(bytes.as_slice());
    let headers = reader
        .byte_headers()
        .map_err(|e| parse_error(path, "CSV", &e))?
        .clone();
    if headers.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_path_buf(),
        });
    }
    let index = headers
        .iter()
        .position(|h| h == column.as_bytes())
        .ok_or_else(|| DatasetError::MissingColumn {
            path: path.to_path_buf(),
            column: column.to_owned(),
            found: headers
                .iter()
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .collect::<Vec<_>>()
                .join(", "),
        })?;

    let mut texts = Vec::new();
    for (row, record) in reader.byte_records().enumerate() {
        let record = record.map_err(|e| DatasetError::Row {
            path: path.to_path_buf(),
            row,
            message: e.to_string(),
        })?;
        let field = record.get(index).unwrap_or_default();
        let text = std::str::from_utf8(field).map_err(|e| DatasetError::Row {
            path: path.to_path_buf(),
            row,
            message: format!("column {column:?} is not valid UTF-8 ({e})"),
        })?;
        texts.push(text.to_owned());
    }
    Ok(texts)
}

fn text_of(value: &serde_json::Value, column: &str, path: &Path, row: usize) -> Result<String> {
    match value.get(column) {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(other) => Err(DatasetError::Row {
            path: path.to_path_buf(),
            row,
            message: format!("column {column:?} is not a string: {other}"),
        }),
        None => {
            let found = value.as_object().map_or_else(
                || "none (the row is not an object)".into(),
                |o| o.keys().cloned().collect::<Vec<_>>().join(", "),
            );
            Err(DatasetError::MissingColumn {
                path: path.to_path_buf(),
                column: format!("{column} (row {row})"),
                found,
            })
        }
    }
}

fn utf8(path: &Path, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let row = bytecount_newlines(&e.as_bytes()[..offset]);
        DatasetError::Row {
            path: path.to_path_buf(),
            row,
            message: format!("text is not valid UTF-8 at byte {offset}"),
        }
    })
}

/// Counts newlines; the inputs are small, so the naive loop is fine.
#[allow(clippy::naive_bytecount)]
fn bytecount_newlines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b == b'\n').count()
}

fn read_jsonl(path: &Path, column: &str) -> Result<Vec<String>> {
    let text = utf8(path, read_bytes(path)?)?;
    let mut texts = Vec::new();
    for (line_number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| DatasetError::Row {
                path: path.to_path_buf(),
                row: line_number,
                message: format!("invalid JSON: {e}"),
            })?;
        texts.push(text_of(&value, column, path, texts.len())?);
    }
    Ok(texts)
}

fn read_json(path: &Path, column: &str) -> Result<Vec<String>> {
    let text = utf8(path, read_bytes(path)?)?;
    if text.trim().is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_path_buf(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| parse_error(path, "JSON", &e))?;
    let items = value.as_array().ok_or_else(|| DatasetError::Parse {
        path: path.to_path_buf(),
        format: "JSON",
        message: "expected an array of objects".into(),
    })?;
    items
        .iter()
        .enumerate()
        .map(|(row, item)| text_of(item, column, path, row))
        .collect()
}

fn read_parquet(path: &Path, column: &str) -> Result<Vec<String>> {
    let file = File::open(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| parse_error(path, "Parquet", &e))?;
    let schema = builder.schema().clone();
    if schema.field_with_name(column).is_err() {
        return Err(DatasetError::MissingColumn {
            path: path.to_path_buf(),
            column: column.to_owned(),
            found: schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let reader = builder
        .build()
        .map_err(|e| parse_error(path, "Parquet", &e))?;

    let mut texts = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| parse_error(path, "Parquet", &e))?;
        let array = batch
            .column_by_name(column)
            .expect("column checked in the schema");
        let values: Vec<Option<&str>> =
            if let Some(a) = array.as_any().downcast_ref::<StringArray>() {
                a.iter().collect()
            } else if let Some(a) = array.as_any().downcast_ref::<LargeStringArray>() {
                a.iter().collect()
            } else if let Some(a) = array.as_any().downcast_ref::<StringViewArray>() {
                a.iter().collect()
            } else {
                return Err(DatasetError::Parse {
                    path: path.to_path_buf(),
                    format: "Parquet",
                    message: format!(
                        "column {column:?} has type {}, expected a string column",
                        array.data_type()
                    ),
                });
            };
        for value in values {
            let row = texts.len();
            let text = value.ok_or_else(|| DatasetError::Row {
                path: path.to_path_buf(),
                row,
                message: format!("column {column:?} is null"),
            })?;
            texts.push(text.to_owned());
        }
    }
    Ok(texts)
}

fn parse_error(path: &Path, format: &'static str, error: &dyn std::fmt::Display) -> DatasetError {
    DatasetError::Parse {
        path: path.to_path_buf(),
        format,
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_permutation_and_seeded() {
        let mut a: Vec<usize> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, 42);
        shuffle(&mut b, 42);
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        let mut c: Vec<usize> = (0..50).collect();
        shuffle(&mut c, 43);
        assert_ne!(a, c);
    }
}
