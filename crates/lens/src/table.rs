//! Small Parquet helpers: write one record batch to a file, and read typed
//! columns back with errors that name the file and column.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::Schema;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

/// A Parquet file that cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },

    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
}

impl TableError {
    pub(crate) fn write(path: &Path, error: impl std::fmt::Display) -> Self {
        Self::Write {
            path: path.to_owned(),
            message: error.to_string(),
        }
    }

    pub(crate) fn read(path: &Path, error: impl std::fmt::Display) -> Self {
        Self::Read {
            path: path.to_owned(),
            message: error.to_string(),
        }
    }
}

/// Writes `columns` under `schema` to a zstd-compressed Parquet file.
pub(crate) fn write_table(
    path: &Path,
    schema: Schema,
    columns: Vec<ArrayRef>,
) -> Result<(), TableError> {
    let schema = Arc::new(schema);
    let batch =
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| TableError::write(path, e))?;
    let file = File::create(path).map_err(|e| TableError::write(path, e))?;
    let level = ZstdLevel::try_new(3).map_err(|e| TableError::write(path, e))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema, Some(properties))
        .map_err(|e| TableError::write(path, e))?;
    writer
        .write(&batch)
        .map_err(|e| TableError::write(path, e))?;
    let file = writer
        .into_inner()
        .map_err(|e| TableError::write(path, e))?;
    file.sync_all().map_err(|e| TableError::write(path, e))
}

/// Reads every record batch of a Parquet file.
pub(crate) fn read_batches(path: &Path) -> Result<Vec<RecordBatch>, TableError> {
    let file = File::open(path).map_err(|e| TableError::read(path, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(ParquetRecordBatchReaderBuilder::build)
        .map_err(|e| TableError::read(path, e))?;
    reader
        .map(|batch| batch.map_err(|e| TableError::read(path, e)))
        .collect()
}

/// Returns column `name` of `batch` as the array type `T`.
pub(crate) fn column<'a, T: Array + 'static>(
    batch: &'a RecordBatch,
    name: &str,
    expected: &str,
    path: &Path,
) -> Result<&'a T, TableError> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| TableError::read(path, format!("column `{name}` is missing")))?;
    column.as_any().downcast_ref::<T>().ok_or_else(|| {
        TableError::read(
            path,
            format!(
                "column `{name}` has type {}, expected {expected}",
                column.data_type()
            ),
        )
    })
}

/// Lists the `part-*.parquet` files of `dir`, sorted by name.
pub(crate) fn part_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("part-") && name.ends_with(".parquet"))
        })
        .collect();
    files.sort();
    Ok(files)
}
