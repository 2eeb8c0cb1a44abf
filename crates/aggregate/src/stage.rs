//! [`AggregateStage`]: [`crate::aggregate`] as the engine's cross-model
//! `aggregate` node.

use ihs_engine::{NodeContext, Registry, Stage, StageError, StageSummary};

use crate::error::AggregateError;
use crate::{aggregate, ProbeOutput};

/// The stage of the upstream outputs this stage reads.
const PROBE_STAGE: &str = "probe";

/// The `aggregate` stage. It reads every model's `probe` output; the `lens`
/// and `graft` outputs that the engine also passes are not read yet.
#[derive(Debug, Clone, Copy, Default)]
pub struct AggregateStage;

/// Adds [`AggregateStage`] to `registry`.
pub fn register(registry: &mut Registry) -> Result<(), ihs_engine::EngineError> {
    registry.register(AggregateStage)?;
    Ok(())
}

fn stage_error(error: AggregateError) -> StageError {
    StageError::with_source("aggregate stage failed", error)
}

impl Stage for AggregateStage {
    fn name(&self) -> &'static str {
        "aggregate"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        let threshold = ctx
            .spec()
            .aggregate
            .clone()
            .unwrap_or_default()
            .accuracy_threshold;
        let outputs =
            ctx.upstream()
                .iter()
                .filter(|upstream| upstream.id.stage() == PROBE_STAGE)
                .map(|upstream| {
                    let model = upstream.id.model().ok_or_else(|| {
                        AggregateError::UpstreamWithoutModel {
                            dir: upstream.dir.clone(),
                        }
                    })?;
                    Ok(ProbeOutput {
                        model: model.to_owned(),
                        dir: upstream.dir.clone(),
                    })
                })
                .collect::<Result<Vec<_>, AggregateError>>()
                .map_err(stage_error)?;

        let report = aggregate(&outputs, threshold, ctx.output_dir()).map_err(stage_error)?;
        tracing::info!(
            node = %ctx.node(),
            models = report.models,
            accuracy_rows = report.accuracy_rows,
            files = report.files.len(),
            "aggregate written"
        );
        Ok(StageSummary::new()
            .with_rows("models", report.models as u64)
            .with_rows("accuracy_rows", report.accuracy_rows as u64)
            .with_rows("first_layer_rows", report.first_layer_rows as u64))
    }
}
