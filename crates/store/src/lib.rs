//! The Parquet layout of ihs outputs, written with the arrow and parquet
//! crates so that polars, pyarrow, pandas and `DuckDB` read the files as they are.
//!
//! ```text
//! tokens.parquet                          one row per prompt
//! activations/layer=LLL/part-SSSSS.parquet one row per prompt and position
//! ```
//!
//! Activation rows hold the residual stream as a fixed-size list column
//! `hidden`. f32 states are stored as `Float32`; f16 and bf16 states are
//! stored as their raw 16-bit patterns in a `UInt16` list, because neither
//! half type is read by every one of those libraries. The Parquet key-value
//! metadata `ihs.dtype` records which (`f32`, `f16` or `bf16`).

mod activations;
mod error;
mod tokens;

pub use activations::{
    layer_dir, read_layer, shard_file_name, write_activation_shard, ActivationRows, LayerMatrix,
    StoreDtype, MEAN_POSITION,
};
pub use error::{Result, StoreError};
pub use tokens::{read_tokens, write_tokens, TokenRow};
