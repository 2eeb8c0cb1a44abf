//! `ihs`: explain LLM safety through intermediate hidden states.
//!
//! The binary is a thin layer over the library crates: it parses arguments,
//! sets up logging, and reports errors with context.

mod inspect;
mod pipeline;
mod roofline;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "ihs",
    version,
    about = "Explain LLM safety through intermediate hidden states"
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). `RUST_LOG` overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Only warnings and errors in the log.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,

    /// Log line format: human-readable text or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Exit codes: 0 success, 1 failure, 2 invalid spec, 3 outputs locked by
/// another run, 130 interrupted (Ctrl-C); committed shards are kept.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline: every node whose output is missing or stale.
    Run(pipeline::RunArgs),
    /// Show every node of a pipeline: cached, stale (and why) or missing.
    Plan(pipeline::SpecArgs),
    /// Show the lock holder and each node's progress in shards.
    Status(pipeline::SpecArgs),
    /// Remove a pipeline's outputs, or one stage's.
    Clean(pipeline::CleanArgs),
    /// Check a pipeline spec; models that are not downloaded are warnings.
    Validate(pipeline::SpecArgs),
    /// Show a model's architecture, sizes and a prompt rendered through its chat template.
    Inspect(inspect::InspectArgs),
    /// Measure the matmul throughput libtorch reaches on a device (GFLOP/s).
    Roofline(roofline::RooflineArgs),
}

fn init_logging(cli: &Cli) {
    let default = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn run(cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::Run(args) => pipeline::run(args),
        Command::Plan(args) => pipeline::plan(args),
        Command::Status(args) => pipeline::status(args),
        Command::Clean(args) => pipeline::clean(args),
        Command::Validate(args) => pipeline::validate(args),
        Command::Inspect(args) => inspect::run(args).map(|()| 0),
        Command::Roofline(args) => roofline::run(args).map(|()| 0),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let code = match run(&cli) {
        Ok(code) => code,
        Err(error) => {
            let code = error
                .downcast_ref::<pipeline::Exit>()
                .map_or(1, |exit| exit.0);
            // The first context is the exit code itself; print the rest.
            let message = if error.downcast_ref::<pipeline::Exit>().is_some() {
                error
                    .chain()
                    .skip(1)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(": ")
            } else {
                format!("{error:#}")
            };
            eprintln!("error: {message}");
            code
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
