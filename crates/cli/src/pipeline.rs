//! `ihs run`, `plan`, `status`, `clean` and `validate`: the pipeline engine
//! driven from the command line, with the stages this binary provides.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use ihs_engine::{
    exit_code, Engine, EngineError, Force, LoadOptions, ProgressMode, Registry, RunOptions, Spec,
    StopFlag, Verify,
};

/// Returns a registry with every stage this binary provides.
pub fn registry() -> Result<Registry> {
    let mut registry = Registry::new();
    registry.register(ihs_tokenize::TokenizeStage)?;
    registry.register(ihs_extract::ExtractStage)?;
    ihs_probe::register(&mut registry)?;
    ihs_lens::register(&mut registry)?;
    ihs_aggregate::register(&mut registry)?;
    Ok(registry)
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline spec (YAML).
    pub spec: PathBuf,

    /// Recompute even cached nodes: all of them, or one stage's (`--force=extract`).
    #[arg(long, num_args = 0..=1, default_missing_value = "all", value_name = "STAGE")]
    pub force: Option<String>,

    /// Run only this stage's nodes; their inputs must already be cached.
    #[arg(long, value_name = "STAGE")]
    pub only: Option<String>,

    /// Show what would run without running it.
    #[arg(long)]
    pub dry_run: bool,

    /// Nodes run at the same time (0: one per CPU). Model-heavy nodes still
    /// run one per device.
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,

    /// Check cached outputs by file size only instead of full checksums.
    #[arg(long)]
    pub quick_verify: bool,
}

#[derive(Debug, Args)]
pub struct SpecArgs {
    /// Pipeline spec (YAML).
    pub spec: PathBuf,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Pipeline spec (YAML).
    pub spec: PathBuf,

    /// Remove only this stage's outputs (and work in progress).
    #[arg(long, value_name = "STAGE")]
    pub stage: Option<String>,
}

/// An error that ends the process with a chosen exit code.
#[derive(Debug)]
pub struct Exit(pub i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit code {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// Maps an engine error to its documented exit code.
fn engine_error(error: EngineError, spec: &Path) -> anyhow::Error {
    let code = error.exit_code();
    anyhow::Error::new(error)
        .context(format!("pipeline {}", spec.display()))
        .context(Exit(code))
}

fn load(spec: &Path) -> Result<Engine> {
    let loaded =
        Spec::load(spec, &LoadOptions::default()).map_err(|e| engine_error(e.into(), spec))?;
    for warning in &loaded.warnings {
        tracing::warn!(
            "{}:{}:{}: {}: {}",
            spec.display(),
            warning.position.line,
            warning.position.column,
            warning.key,
            warning.message
        );
    }
    Engine::new(loaded.spec, registry()?).map_err(|e| engine_error(e, spec))
}

pub fn run(args: &RunArgs) -> Result<i32> {
    let engine = load(&args.spec)?;
    let stop = StopFlag::new();
    stop.install_signal_handler()
        .context("installing the Ctrl-C handler")?;
    let options = RunOptions {
        force: match args.force.as_deref() {
            None => Force::None,
            Some("all") => Force::All,
            Some(stage) => Force::Stage(stage.to_owned()),
        },
        only: args.only.clone(),
        dry_run: args.dry_run,
        jobs: args.jobs,
        verify: if args.quick_verify {
            Verify::Sizes
        } else {
            Verify::Full
        },
        stop,
        progress: ProgressMode::Auto,
        ..RunOptions::default()
    };
    let started = std::time::Instant::now();
    let report = engine
        .run(&options)
        .map_err(|e| engine_error(e, &args.spec))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{report}")?;
    writeln!(
        out,
        "outputs: {} ({:.1} s)",
        engine.spec().output_dir().display(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(report.exit_code())
}

pub fn plan(args: &SpecArgs) -> Result<i32> {
    let engine = load(&args.spec)?;
    let plan = engine.plan(Verify::Full);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&plan)?)?;
    } else {
        writeln!(out, "{plan}")?;
    }
    Ok(exit_code::OK)
}

pub fn status(args: &SpecArgs) -> Result<i32> {
    let engine = load(&args.spec)?;
    let status = engine.status();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
        return Ok(exit_code::OK);
    }
    match &status.lock {
        None => writeln!(out, "lock: free")?,
        Some(lock) => {
            let state = match lock.alive {
                Some(true) => "running",
                Some(false) => "stale (its process has exited)",
                None => "held from another host",
            };
            writeln!(out, "lock: {} ({state})", lock.holder)?;
        }
    }
    for node in &status.nodes {
        writeln!(out, "{node}")?;
    }
    Ok(exit_code::OK)
}

pub fn clean(args: &CleanArgs) -> Result<i32> {
    let engine = load(&args.spec)?;
    let report = engine
        .clean(args.stage.as_deref())
        .map_err(|e| engine_error(e, &args.spec))?;
    let mut out = std::io::stdout().lock();
    if report.removed.is_empty() {
        writeln!(out, "nothing to remove")?;
    }
    for path in &report.removed {
        writeln!(out, "removed {}", path.display())?;
    }
    Ok(exit_code::OK)
}

pub fn validate(args: &SpecArgs) -> Result<i32> {
    let validation = ihs_engine::validate(&args.spec, &LoadOptions::default(), &registry()?)
        .map_err(|e| engine_error(e, &args.spec))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let nodes: Vec<String> = validation.nodes.iter().map(ToString::to_string).collect();
        let warnings: Vec<String> = validation
            .warnings
            .iter()
            .map(|w| {
                format!(
                    "{}:{}:{}: {}: {}",
                    args.spec.display(),
                    w.position.line,
                    w.position.column,
                    w.key,
                    w.message
                )
            })
            .collect();
        let value = serde_json::json!({"valid": true, "nodes": nodes, "warnings": warnings});
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(exit_code::OK);
    }
    for warning in &validation.warnings {
        writeln!(
            out,
            "warning: {}:{}:{}: {}: {}",
            args.spec.display(),
            warning.position.line,
            warning.position.column,
            warning.key,
            warning.message
        )?;
    }
    writeln!(
        out,
        "{} is valid: {} nodes ({})",
        args.spec.display(),
        validation.nodes.len(),
        validation
            .nodes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    Ok(exit_code::OK)
}
