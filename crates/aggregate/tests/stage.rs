//! The aggregate stage run by the engine on a two-model spec. Stub
//! tokenize, extract and probe stages run first, and the probe stub writes
//! made-up metrics in the probe stage's schema.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use ihs_aggregate::AggregateStage;
use ihs_engine::{
    Engine, LoadOptions, NodeContext, NodeId, NodeOutcome, ProgressMode, Registry, RunOptions,
    Spec, Stage, StageError, StageSummary,
};

const SPEC: &str = "\
name: sweep
output: out
models:
  - {path: models/small, name: small}
  - {path: models/large, name: large}
datasets:
  normal: {path: data/normal.csv, column: prompt}
  malicious: {path: data/malicious.csv, column: prompt}
  jailbreak: {path: data/jailbreak.csv, column: prompt}
probe:
  tasks:
    - {name: harmful, kind: binary, classes: [normal, malicious]}
    - {name: jailbreak-transfer, kind: transfer, train_classes: [normal, malicious],
       eval_class: jailbreak, eval_label: malicious}
aggregate:
  accuracy_threshold: 0.9
";

/// A per-model stage that writes one marker file.
struct Marker(&'static str);

impl Stage for Marker {
    fn name(&self) -> &'static str {
        self.0
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        let path = ctx.output_dir().join("done.txt");
        std::fs::write(&path, self.0).map_err(|source| StageError::io("write", &path, source))?;
        Ok(StageSummary::new())
    }
}

/// A probe stage that writes each model's made-up metrics.
struct ProbeStub;

impl Stage for ProbeStub {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn code_version(&self) -> u32 {
        1
    }

    fn run(&self, ctx: &mut NodeContext<'_>) -> Result<StageSummary, StageError> {
        let curves = match ctx.model().map(|model| model.name.as_str()) {
            Some("small") => common::small_model(),
            Some("large") => common::large_model(),
            other => {
                return Err(StageError::failed(format!(
                    "no made-up metrics for model {other:?}"
                )))
            }
        };
        common::write_metrics(ctx.output_dir(), &curves);
        Ok(StageSummary::new())
    }
}

fn write(root: &Path, relative: &str, text: &str) {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn engine(root: &Path) -> Engine {
    for model in ["small", "large"] {
        write(
            root,
            &format!("models/{model}/config.json"),
            r#"{"num_hidden_layers": 4, "hidden_size": 8}"#,
        );
        write(
            root,
            &format!("models/{model}/tokenizer.json"),
            r#"{"model": "stub"}"#,
        );
    }
    for class in ["normal", "malicious", "jailbreak"] {
        write(
            root,
            &format!("data/{class}.csv"),
            &format!("prompt\na {class} prompt\n"),
        );
    }
    write(root, "spec.yaml", SPEC);

    let options = LoadOptions {
        current_dir: Some(root.to_owned()),
        env: Some(BTreeMap::from([(
            "HOME".to_owned(),
            root.display().to_string(),
        )])),
    };
    let spec = Spec::load(&root.join("spec.yaml"), &options)
        .unwrap_or_else(|error| panic!("spec should load: {error}"))
        .spec;

    let mut registry = Registry::new();
    registry.register(Marker("tokenize")).unwrap();
    registry.register(Marker("extract")).unwrap();
    registry.register(ProbeStub).unwrap();
    ihs_aggregate::register(&mut registry).unwrap();
    Engine::new(spec, registry).unwrap_or_else(|error| panic!("engine should build: {error}"))
}

fn options() -> RunOptions {
    RunOptions {
        jobs: 2,
        progress: ProgressMode::Hidden,
        ..RunOptions::default()
    }
}

#[test]
fn stage_runs_in_engine() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let report = engine.run(&options()).unwrap();

    let aggregate = report
        .nodes
        .iter()
        .find(|node| node.id == NodeId::new("aggregate", None))
        .expect("the plan has an aggregate node");
    let NodeOutcome::Ran { summary, .. } = &aggregate.outcome else {
        panic!("aggregate did not run: {:?}", aggregate.outcome);
    };
    assert_eq!(summary.rows["models"], 2);
    assert_eq!(summary.rows["accuracy_rows"], 5 * 5 + 4 * 9);
    assert_eq!(summary.rows["first_layer_rows"], 6);

    let out = dir.path().join("out/aggregate");
    assert!(out.join("manifest.json").is_file());
    for file in [
        "accuracy.parquet",
        "accuracy.csv",
        "first_layer.parquet",
        "first_layer.csv",
        "summary.md",
    ] {
        assert!(out.join(file).is_file(), "{file} is missing");
    }
    assert!(out.join("plots/accuracy-depth-harmful-svm.png").is_file());

    // The spec's threshold of 0.9 is used: small harmful/logistic reaches
    // 0.90 at layer 1, which a threshold of 0.95 would not count.
    let table = common::read_parquet(&out.join("first_layer.parquet"));
    let row = common::find_row(&table, "small", "harmful", "logistic");
    assert_eq!(common::optional_ints(&table, "first_layer")[row], Some(1));
    assert_eq!(common::floats(&table, "threshold")[row], 0.9);

    // Models come in spec order.
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.find("## small").unwrap() < summary.find("## large").unwrap());
}

#[test]
fn stage_cached_on_second_run() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    engine.run(&options()).unwrap();
    let first = std::fs::read(dir.path().join("out/aggregate/accuracy.parquet")).unwrap();

    let report = engine.run(&options()).unwrap();
    let aggregate = report
        .nodes
        .iter()
        .find(|node| node.id == NodeId::new("aggregate", None))
        .unwrap();
    assert!(
        matches!(aggregate.outcome, NodeOutcome::Cached),
        "{:?}",
        aggregate.outcome
    );
    let second = std::fs::read(dir.path().join("out/aggregate/accuracy.parquet")).unwrap();
    assert_eq!(first, second);
}

#[test]
fn stage_name_and_version() {
    assert_eq!(AggregateStage.name(), "aggregate");
    assert!(AggregateStage.code_version() >= 1);
    assert!(!AggregateStage.is_heavy());
}
