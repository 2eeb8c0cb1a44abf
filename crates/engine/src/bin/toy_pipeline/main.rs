//! `ihs-toy-pipeline`: runs a spec through the engine with toy stages, for
//! the integration tests that kill, interrupt and resume real processes.
//!
//! ```text
//! ihs-toy-pipeline run SPEC [--force all|STAGE] [--only STAGE] [--dry-run] [--jobs N]
//! ihs-toy-pipeline plan SPEC
//! ihs-toy-pipeline status SPEC
//! ihs-toy-pipeline clean SPEC [STAGE]
//! ihs-toy-pipeline hold-lock FOLDER
//! ```
//!
//! Reports are printed as one JSON line on stdout, and the exit code is the
//! engine's (see `ihs_engine::exit_code`). `TOY_PAUSE_AT=EVENT:NODE[:SHARD]`
//! (EVENT: started, shard, manifest, published) makes `run` print
//! `PAUSED EVENT` on stdout at that event and wait to be killed.

#![allow(clippy::print_stdout)]

mod stages;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use ihs_engine::{
    exit_code, Engine, EngineError, Force, LoadOptions, OutputLock, ProgressMode, RunEvent,
    RunObserver, RunOptions, Spec, StopFlag, Verify,
};

/// Pauses the run at the event named by `TOY_PAUSE_AT`.
struct PauseAt {
    event: String,
    node: String,
    shard: Option<usize>,
}

impl PauseAt {
    fn from_env() -> Option<Self> {
        let text = std::env::var("TOY_PAUSE_AT").ok()?;
        let mut parts = text.split(':');
        let event = parts.next()?.to_owned();
        let node = parts.next()?.to_owned();
        let shard = parts.next().and_then(|index| index.parse().ok());
        Some(Self { event, node, shard })
    }
}

impl RunObserver for PauseAt {
    fn on_event(&self, event: &RunEvent<'_>) {
        let (name, node, shard) = match event {
            RunEvent::NodeStarted { node, .. } => ("started", node, None),
            RunEvent::ShardCommitted { node, index } => ("shard", node, Some(*index)),
            RunEvent::ManifestWritten { node } => ("manifest", node, None),
            RunEvent::NodePublished { node } => ("published", node, None),
            _ => return,
        };
        if name == self.event && node.to_string() == self.node && shard == self.shard {
            println!("PAUSED {name}");
            std::io::stdout().flush().ok();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
}

fn load(path: &str) -> Result<Engine, EngineError> {
    let loaded = Spec::load(&PathBuf::from(path), &LoadOptions::default())?;
    Engine::new(loaded.spec, stages::registry())
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string(value).unwrap_or_default());
}

fn run(args: &[String]) -> Result<i32, EngineError> {
    let usage = || {
        eprintln!("usage: ihs-toy-pipeline run|plan|status|clean|hold-lock SPEC [options]");
        Ok(exit_code::FAILURE)
    };
    let (Some(command), Some(target)) = (args.first(), args.get(1)) else {
        return usage();
    };
    match command.as_str() {
        "run" => {
            let engine = load(target)?;
            let mut options = RunOptions {
                progress: ProgressMode::Hidden,
                stop: StopFlag::new(),
                ..RunOptions::default()
            };
            let mut rest = args[2..].iter();
            while let Some(flag) = rest.next() {
                match flag.as_str() {
                    "--force" => {
                        options.force = match rest.next().map(String::as_str) {
                            Some("all") => Force::All,
                            Some(stage) => Force::Stage(stage.to_owned()),
                            None => return usage(),
                        }
                    }
                    "--only" => options.only = rest.next().cloned(),
                    "--dry-run" => options.dry_run = true,
                    "--jobs" => {
                        options.jobs = rest.next().and_then(|n| n.parse().ok()).unwrap_or(1);
                    }
                    _ => return usage(),
                }
            }
            if let Some(pause) = PauseAt::from_env() {
                options.observer = Some(Arc::new(pause));
            }
            options.stop.install_signal_handler()?;
            let report = engine.run(&options)?;
            print_json(&report);
            Ok(report.exit_code())
        }
        "plan" => {
            let engine = load(target)?;
            print_json(&engine.plan(Verify::Full));
            Ok(exit_code::OK)
        }
        "status" => {
            let engine = load(target)?;
            print_json(&engine.status());
            Ok(exit_code::OK)
        }
        "clean" => {
            let engine = load(target)?;
            print_json(&engine.clean(args.get(2).map(String::as_str))?);
            Ok(exit_code::OK)
        }
        "hold-lock" => {
            let lock = OutputLock::acquire(&PathBuf::from(target))?;
            println!("LOCKED {}", std::process::id());
            std::io::stdout().flush().ok();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let _ = &lock;
            }
        }
        _ => usage(),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match run(&args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            error.exit_code()
        }
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
