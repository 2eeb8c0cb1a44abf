//! Activation shards: `activations/layer=LLL/part-SSSSS.parquet` with columns
//! `prompt_id`, `class`, `position` and `hidden`, and a reader that loads one
//! layer as a matrix with its labels.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, Int32Array, RecordBatch, StringArray,
    UInt16Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use half::{bf16, f16};
use ndarray::Array2;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Result, StoreError};

/// The `position` value of a state averaged over the prompt's tokens.
pub const MEAN_POSITION: i32 = -1;

/// The dtype states are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    F32,
    F16,
    Bf16,
}

impl StoreDtype {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }

    /// Parses `f32`, `f16` or `bf16`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            other => Err(StoreError::Invalid {
                what: "store dtype".into(),
                message: format!("{other:?} is not one of f32, f16, bf16"),
            }),
        }
    }
}

/// The rows of one activation shard for one layer, in row order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActivationRows {
    pub prompt_ids: Vec<String>,
    pub classes: Vec<String>,
    /// Token index in the prompt (0-based), or [`MEAN_POSITION`].
    pub positions: Vec<i32>,
    /// Row-major `[rows, hidden_size]` states.
    pub hidden: Vec<f32>,
    pub hidden_size: usize,
}

impl ActivationRows {
    #[must_use]
    pub fn len(&self) -> usize {
        self.prompt_ids.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.prompt_ids.is_empty()
    }

    fn validate(&self) -> Result<()> {
        let rows = self.len();
        let consistent = self.classes.len() == rows
            && self.positions.len() == rows
            && self.hidden.len() == rows * self.hidden_size;
        if consistent && self.hidden_size > 0 {
            Ok(())
        } else {
            Err(StoreError::Invalid {
                what: "activation rows".into(),
                message: format!(
                    "{rows} prompt ids, {} classes, {} positions and {} values do not form rows of {} values",
                    self.classes.len(),
                    self.positions.len(),
                    self.hidden.len(),
                    self.hidden_size
                ),
            })
        }
    }
}

/// Returns the folder of one layer's shards: `root/layer=LLL`.
#[must_use]
pub fn layer_dir(root: &Path, layer: usize) -> PathBuf {
    root.join(format!("layer={layer:03}"))
}

/// Returns the file name of shard `index`: `part-SSSSS.parquet`.
#[must_use]
pub fn shard_file_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

fn schema(hidden_size: usize, dtype: StoreDtype, metadata: HashMap<String, String>) -> Schema {
    let element = match dtype {
        StoreDtype::F32 => DataType::Float32,
        StoreDtype::F16 | StoreDtype::Bf16 => DataType::UInt16,
    };
    let item = Arc::new(Field::new("item", element, false));
    Schema::new(vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("position", DataType::Int32, false),
        Field::new(
            "hidden",
            DataType::FixedSizeList(item, hidden_size as i32),
            false,
        ),
    ])
    .with_metadata(metadata)
}

/// Writes one shard of one layer to `path` (the caller makes it atomic).
/// `metadata` is added to the file's key-value metadata next to `ihs.dtype`,
/// `ihs.layer` and `ihs.hidden_size`.
pub fn write_activation_shard(
    path: &Path,
    rows: &ActivationRows,
    layer: usize,
    dtype: StoreDtype,
    metadata: &[(&str, String)],
) -> Result<()> {
    rows.validate()?;
    let mut pairs: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    pairs.insert("ihs.dtype".into(), dtype.name().into());
    pairs.insert("ihs.layer".into(), layer.to_string());
    pairs.insert("ihs.hidden_size".into(), rows.hidden_size.to_string());
    let schema = Arc::new(schema(rows.hidden_size, dtype, pairs));

    let values: ArrayRef = match dtype {
        StoreDtype::F32 => Arc::new(Float32Array::from(rows.hidden.clone())),
        StoreDtype::F16 => Arc::new(UInt16Array::from_iter_values(
            rows.hidden.iter().map(|&v| f16::from_f32(v).to_bits()),
        )),
        StoreDtype::Bf16 => Arc::new(UInt16Array::from_iter_values(
            rows.hidden.iter().map(|&v| bf16::from_f32(v).to_bits()),
        )),
    };
    let DataType::FixedSizeList(item, size) = schema.field(3).data_type().clone() else {
        unreachable!("the hidden column is a fixed-size list");
    };
    let hidden = FixedSizeListArray::try_new(item, size, values, None)
        .map_err(|e| StoreError::write(path, e))?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(rows.prompt_ids.clone())),
        Arc::new(StringArray::from(rows.classes.clone())),
        Arc::new(Int32Array::from(rows.positions.clone())),
        Arc::new(hidden),
    ];
    let batch =
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| StoreError::write(path, e))?;

    let file = File::create(path).map_err(|e| StoreError::io(path, e))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).map_err(|e| StoreError::write(path, e))?,
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

/// One layer's states as a matrix, one row per stored prompt and position.
#[derive(Debug, Clone)]
pub struct LayerMatrix {
    pub layer: usize,
    pub prompt_ids: Vec<String>,
    pub classes: Vec<String>,
    pub positions: Vec<i32>,
    /// `[rows, hidden_size]` f32 states, whatever dtype they were stored in.
    pub states: Array2<f32>,
    /// The dtype the shards stored (`f32`, `f16` or `bf16`).
    pub stored_dtype: String,
}

/// Reads every shard of `layer` under `activations` (in shard order) into one
/// matrix.
pub fn read_layer(activations: &Path, layer: usize) -> Result<LayerMatrix> {
    let dir = layer_dir(activations, layer);
    let mut shards: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "parquet"))
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(StoreError::io(&dir, error)),
    };
    shards.sort();
    if shards.is_empty() {
        return Err(StoreError::NoShards { layer, dir });
    }

    let mut matrix = LayerMatrix {
        layer,
        prompt_ids: Vec::new(),
        classes: Vec::new(),
        positions: Vec::new(),
        states: Array2::zeros((0, 0)),
        stored_dtype: String::new(),
    };
    let mut values: Vec<f32> = Vec::new();
    let mut width = 0;
    for shard in &shards {
        let file = File::open(shard).map_err(|e| StoreError::io(shard, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| StoreError::read(shard, e))?;
        let metadata = builder.schema().metadata().clone();
        let dtype = metadata
            .get("ihs.dtype")
            .cloned()
            .unwrap_or_else(|| "f32".into());
        if matrix.stored_dtype.is_empty() {
            matrix.stored_dtype.clone_from(&dtype);
        }
        let reader = builder.build().map_err(|e| StoreError::read(shard, e))?;
        for batch in reader {
            let batch = batch.map_err(|e| StoreError::read(shard, e))?;
            width = append_batch(&batch, &dtype, shard, &mut matrix, &mut values, width)?;
        }
    }

    let rows = matrix.prompt_ids.len();
    matrix.states =
        Array2::from_shape_vec((rows, width), values).map_err(|e| StoreError::read(&dir, e))?;
    Ok(matrix)
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, shard: &Path) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            StoreError::read(
                shard,
                format!("column {name:?} is missing or has the wrong type"),
            )
        })
}

fn append_batch(
    batch: &RecordBatch,
    dtype: &str,
    shard: &Path,
    matrix: &mut LayerMatrix,
    values: &mut Vec<f32>,
    width: usize,
) -> Result<usize> {
    let ids: &StringArray = column(batch, "prompt_id", shard)?;
    let classes: &StringArray = column(batch, "class", shard)?;
    let positions: &Int32Array = column(batch, "position", shard)?;
    let hidden: &FixedSizeListArray = column(batch, "hidden", shard)?;
    let size = hidden.value_length() as usize;
    if width != 0 && size != width {
        return Err(StoreError::read(
            shard,
            format!("hidden size {size} differs from {width} in earlier shards"),
        ));
    }

    matrix
        .prompt_ids
        .extend(ids.iter().map(|v| v.unwrap_or_default().to_owned()));
    matrix
        .classes
        .extend(classes.iter().map(|v| v.unwrap_or_default().to_owned()));
    matrix.positions.extend(positions.values().iter().copied());
    let flat = hidden.values();
    let start = hidden.offset() * size;
    let len = hidden.len() * size;
    match dtype {
        "f32" => {
            let floats = flat
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| {
                    StoreError::read(
                        shard,
                        "hidden values are not Float32 although ihs.dtype is f32",
                    )
                })?;
            values.extend_from_slice(&floats.values()[start..start + len]);
        }
        "f16" | "bf16" => {
            let bits = flat.as_any().downcast_ref::<UInt16Array>().ok_or_else(|| {
                StoreError::read(
                    shard,
                    format!("hidden values are not UInt16 although ihs.dtype is {dtype}"),
                )
            })?;
            let bits = &bits.values()[start..start + len];
            if dtype == "f16" {
                values.extend(bits.iter().map(|&b| f16::from_bits(b).to_f32()));
            } else {
                values.extend(bits.iter().map(|&b| bf16::from_bits(b).to_f32()));
            }
        }
        other => {
            return Err(StoreError::read(
                shard,
                format!("unknown ihs.dtype {other:?}"),
            ))
        }
    }
    Ok(size)
}
