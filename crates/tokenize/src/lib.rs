//! The tokenize stage: reads each class's prompt dataset, renders every
//! request through the model's chat template, and writes `tokens.parquet`.

pub mod datasets;
pub mod stage;

pub use stage::{TokenizeStage, TOKENS_FILE};
