//! The `lens` and `graft` pipeline stages.
//!
//! - [`LensStage`] reads the logit-lens records of the extract stage and
//!   writes, per class and layer, the most frequent top-k tokens and the
//!   share of each word group ([`WordLists`]), with a token heatmap per class.
//! - [`GraftStage`] runs the model on the target class's prompts. After a
//!   chosen block it replaces the residual stream at the last prompt position
//!   with a source class's state. It records the next-token distribution and
//!   its word-group shares, next to those of the ungrafted baseline.
//!
//! Zhou et al. (2024, arXiv:2406.05644) read the middle layers through the
//! logit lens as "emotion" tokens, negative for refusals and positive for
//! compliance; the word groups make that reading countable.

pub mod aggregate;
pub mod graft;
pub mod lens_stage;
pub mod plot;
pub mod records;
mod table;
pub mod words;

pub use aggregate::{summarize, GroupShare, LensSummary, ShareAccumulator, TopToken};
pub use graft::{GraftError, GraftStage, BASELINE_LAYER};
pub use lens_stage::{LensError, LensStage};
pub use records::{write_lens_records, LensRecord, LensTable, RecordError};
pub use table::TableError;
pub use words::{Group, WordListError, WordLists};

use ihs_engine::{EngineError, Registry};

/// Adds the `lens` and `graft` stages to `registry`.
pub fn register(registry: &mut Registry) -> Result<(), EngineError> {
    registry.register(LensStage)?.register(GraftStage)?;
    Ok(())
}
