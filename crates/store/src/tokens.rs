//! `tokens.parquet`: one row per prompt with its source, the rendered chat
//! prompt and its token ids.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::ListBuilder;
use arrow::array::{
    Array, ArrayRef, BooleanArray, ListArray, RecordBatch, StringArray, UInt32Array, UInt32Builder,
    UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Result, StoreError};

/// One tokenized prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Stable id: the class and the row in its dataset file, `malicious-00012`.
    pub prompt_id: String,
    pub class: String,
    pub source_file: String,
    /// 0-based data row in the source file (the header is not counted).
    pub source_row: u64,
    /// The request as the dataset has it (after the punctuation rule).
    pub text: String,
    /// The request rendered through the chat template.
    pub prompt: String,
    pub input_ids: Vec<u32>,
    /// Whether tokens were dropped from the left to fit the maximum length.
    pub truncated: bool,
}

fn schema() -> Schema {
    Schema::new(vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("source_file", DataType::Utf8, false),
        Field::new("source_row", DataType::UInt64, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new(
            "input_ids",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))),
            false,
        ),
        Field::new("n_tokens", DataType::UInt32, false),
        Field::new("truncated", DataType::Boolean, false),
    ])
}

/// Writes `rows` to `path` with `metadata` as Parquet key-value metadata.
pub fn write_tokens(path: &Path, rows: &[TokenRow], metadata: &[(&str, String)]) -> Result<()> {
    let pairs: std::collections::HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let schema = Arc::new(schema().with_metadata(pairs));

    let mut ids = ListBuilder::new(UInt32Builder::new());
    for row in rows {
        ids.values().append_slice(&row.input_ids);
        ids.append(true);
    }
    let strings = |f: fn(&TokenRow) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        strings(|r| &r.prompt_id),
        strings(|r| &r.class),
        strings(|r| &r.source_file),
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.source_row),
        )),
        strings(|r| &r.text),
        strings(|r| &r.prompt),
        Arc::new(ids.finish()),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.input_ids.len() as u32),
        )),
        Arc::new(BooleanArray::from(
            rows.iter().map(|r| r.truncated).collect::<Vec<_>>(),
        )),
    ];
    let batch =
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| StoreError::write(path, e))?;

    let file = File::create(path).map_err(|e| StoreError::io(path, e))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).map_err(|e| StoreError::write(path, e))?,
        ))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(properties))
        .map_err(|e| StoreError::write(path, e))?;
    writer
        .write(&batch)
        .map_err(|e| StoreError::write(path, e))?;
    let file = writer
        .into_inner()
        .map_err(|e| StoreError::write(path, e))?;
    file.sync_all().map_err(|e| StoreError::io(path, e))
}

/// Reads every row of a `tokens.parquet` file.
pub fn read_tokens(path: &Path) -> Result<Vec<TokenRow>> {
    let file = File::open(path).map_err(|e| StoreError::io(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(ParquetRecordBatchReaderBuilder::build)
        .map_err(|e| StoreError::read(path, e))?;

    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| StoreError::read(path, e))?;
        let text = |name: &str| -> Result<StringArray> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned())
                .ok_or_else(|| {
                    StoreError::read(path, format!("column {name:?} is missing or not a string"))
                })
        };
        let (prompt_id, class, source_file, text_column, prompt) = (
            text("prompt_id")?,
            text("class")?,
            text("source_file")?,
            text("text")?,
            text("prompt")?,
        );
        let source_row = batch
            .column_by_name("source_row")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .ok_or_else(|| {
                StoreError::read(path, "column \"source_row\" is missing or not UInt64")
            })?;
        let input_ids = batch
            .column_by_name("input_ids")
            .and_then(|c| c.as_any().downcast_ref::<ListArray>())
            .ok_or_else(|| {
                StoreError::read(path, "column \"input_ids\" is missing or not a list")
            })?;
        let truncated = batch
            .column_by_name("truncated")
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
            .ok_or_else(|| {
                StoreError::read(path, "column \"truncated\" is missing or not boolean")
            })?;

        for i in 0..batch.num_rows() {
            let ids = input_ids.value(i);
            let ids = ids
                .as_any()
                .downcast_ref::<UInt32Array>()
                .ok_or_else(|| StoreError::read(path, "input_ids items are not UInt32"))?;
            rows.push(TokenRow {
                prompt_id: prompt_id.value(i).to_owned(),
                class: class.value(i).to_owned(),
                source_file: source_file.value(i).to_owned(),
                source_row: source_row.value(i),
                text: text_column.value(i).to_owned(),
                prompt: prompt.value(i).to_owned(),
                input_ids: ids.values().to_vec(),
                truncated: truncated.value(i),
            });
        }
    }
    Ok(rows)
}
