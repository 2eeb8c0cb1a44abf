//! The `extract` engine stage: batched forward passes over the tokenized
//! prompts, writing the residual stream of the chosen layers and positions as
//! Hive-partitioned Parquet, and optionally each state's logit-lens top
//! tokens.
//!
//! ```text
//! activations/layer=LLL/part-SSSSS.parquet   prompt_id, class, position, hidden
//! lens/part-SSSSS.parquet                    prompt_id, class, layer, rank, token_id, token, text, logit, prob
//! ```
//!
//! Prompts are split into shards of `shard_size` in `tokens.parquet` order;
//! each shard is committed on its own, so an interrupted run resumes at the
//! first missing shard. Within a shard the prompts are sorted by length and
//! cut into batches, which keeps padding small.

mod batching;
mod lens;
mod stage;

pub use batching::{plan_batches, BatchLimits};
pub use lens::{lens_records, LensRecords};
pub use stage::{ExtractStage, ACTIVATIONS_DIR, LENS_DIR};
