//! [`ProbeStage`]: the `probe` stage of the pipeline engine.

use std::time::Instant;

use ihs_engine::{EngineError, NodeContext, Registry, Stage, StageError, StageSummary};

use crate::error::ProbeError;
use crate::output::write_results;
use crate::sweep::{list_layers, run_sweep};

/// Trains the spec's probe tasks and classifiers on every layer the
/// `extract` node stored and writes `metrics.parquet`,
/// `predictions.parquet` and `splits.parquet`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProbeStage;

impl Stage for ProbeStage {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        let section = ctx.spec().probe.clone().unwrap_or_default();
        let activations = ctx.input_dir("extract")?.join("activations");
        let layers = list_layers(&activations)?;
        tracing::info!(
            node = %ctx.node(),
            layers = layers.len(),
            tasks = section.tasks.len(),
            "probe sweep started"
        );

        let bar = ctx.progress_bar(layers.len() as u64, "layers");
        let started = Instant::now();
        let results = run_sweep(
            &activations,
            &section,
            |layer| {
                ctx.check_stop()?;
                bar.set_message(format!("layer {layer}"));
                Ok::<(), StageError>(())
            },
            |_| bar.inc(1),
        )?;
        let seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();

        write_results(ctx.output_dir(), &results)?;
        tracing::info!(
            node = %ctx.node(),
            fits = results.fits,
            seconds,
            "probe sweep finished"
        );
        Ok(StageSummary::new()
            .with_rows("layers", results.layers.len() as u64)
            .with_rows("fits", results.fits as u64)
            .with_rows("metrics", results.metrics.len() as u64)
            .with_rows("predictions", results.predictions.len() as u64)
            .with_rows("splits", results.splits.len() as u64)
            .with_metric("sweep_seconds", seconds)
            .with_metric("fits_per_s", results.fits as f64 / seconds.max(1e-9)))
    }
}

impl From<ProbeError> for StageError {
    fn from(error: ProbeError) -> Self {
        StageError::with_source(error.to_string(), error)
    }
}

/// Registers [`ProbeStage`] under `probe`.
pub fn register(registry: &mut Registry) -> Result<(), EngineError> {
    registry.register(ProbeStage)?;
    Ok(())
}
