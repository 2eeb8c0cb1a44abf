//! Spec errors: each kind names the key, its line and column, and what to do.

mod common;

use common::Fixture;
use ihs_engine::spec::{
    ExtractSection, LayerSelection, Positions, ProbeSection, Template, TokenizeSection, Truncation,
};
use ihs_engine::{Position, Spec, SpecError, SpecIssue};

/// The datasets and model lines shared by most specs below (lines 1-7).
const HEAD: &str = "\
name: toy
models:
  - path: model
datasets:
  normal: {path: data/normal.csv, column: prompt}
  malicious: {path: data/malicious.jsonl, column: text}
  jailbreak: {path: data/jailbreak.csv, column: prompt}
";

fn load_error(spec: &str) -> (Fixture, SpecError) {
    let fixture = Fixture::with_spec(spec);
    let error = Spec::load(&fixture.spec_path(), &fixture.options())
        .err()
        .unwrap_or_else(|| panic!("spec should be rejected:\n{spec}"));
    (fixture, error)
}

fn single_issue(error: &SpecError) -> &SpecIssue {
    let issues = error.issues();
    assert_eq!(issues.len(), 1, "expected one issue, got: {error}");
    &issues[0]
}

fn at(line: usize, column: usize) -> Position {
    Position { line, column }
}

#[test]
fn unknown_nested_key_located() {
    let spec = format!("{HEAD}extract:\n  shard_size: 4\n  shardsize: 8\n");
    let (_fixture, error) = load_error(&spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "extract.shardsize");
    assert_eq!(issue.position, at(10, 3));
    assert!(
        issue.message.contains("unknown field `shardsize`"),
        "{}",
        issue.message
    );
    assert!(issue.message.contains("`shard_size`"), "{}", issue.message);
}

#[test]
fn unknown_top_level_key_located() {
    let spec = format!("{HEAD}outptu: elsewhere\n");
    let (_fixture, error) = load_error(&spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "outptu");
    assert_eq!(issue.position, at(8, 1));
}

#[test]
fn unknown_model_key_located() {
    let spec = "\
name: toy
models:
  - path: model
    dtyp: f16
datasets:
  normal: {path: data/normal.csv, column: prompt}
";
    let (_fixture, error) = load_error(spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "models[0].dtyp");
    assert_eq!(issue.position, at(4, 5));
    assert!(
        issue.message.contains("unknown field `dtyp`"),
        "{}",
        issue.message
    );
}

#[test]
fn wrong_type_located() {
    let spec = format!("{HEAD}extract:\n  shard_size: many\n");
    let (_fixture, error) = load_error(&spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "extract.shard_size");
    assert_eq!(issue.position, at(9, 15));
    assert!(
        issue.message.contains("invalid type: string \"many\""),
        "{}",
        issue.message
    );
}

#[test]
fn wrong_enum_value_lists_choices() {
    let spec = format!("{HEAD}tokenize:\n  truncation: right\n");
    let (_fixture, error) = load_error(&spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "tokenize.truncation");
    assert_eq!(issue.position.line, 9);
    assert!(issue.message.contains("`left`"), "{}", issue.message);
    assert!(issue.message.contains("`reject`"), "{}", issue.message);
}

#[test]
fn invalid_device_explained() {
    let spec = "\
name: toy
models:
  - path: model
    devices: [gpu1]
datasets:
  normal: {path: data/normal.csv, column: prompt}
";
    let (_fixture, error) = load_error(spec);
    let issue = single_issue(&error);
    assert!(issue.key.starts_with("models[0].devices"), "{}", issue.key);
    assert_eq!(issue.position.line, 4);
    assert!(
        issue.message.contains("expected `cpu`, `cuda` or `cuda:N`"),
        "{}",
        issue.message
    );
}

#[test]
fn missing_dataset_file_located() {
    let spec = "\
name: toy
models:
  - path: model
datasets:
  normal: {path: data/absent.csv, column: prompt}
";
    let (fixture, error) = load_error(spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "datasets.normal.path");
    assert_eq!(issue.position, at(5, 18));
    let expected = fixture.path("data/absent.csv");
    assert_eq!(
        issue.message,
        format!("file not found: {}", expected.display())
    );
}

#[test]
fn missing_model_folder_located() {
    let spec = "\
name: toy
models:
  - path: models/absent
datasets:
  normal: {path: data/normal.csv, column: prompt}
";
    let (_fixture, error) = load_error(spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "models[0].path");
    assert_eq!(issue.position, at(3, 11));
    assert!(
        issue.message.starts_with("model folder not found:"),
        "{}",
        issue.message
    );
}

#[test]
fn model_folder_without_config_rejected() {
    let spec = "\
name: toy
models:
  - path: data
datasets:
  normal: {path: data/normal.csv, column: prompt}
";
    let (_fixture, error) = load_error(spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "models[0].path");
    assert!(
        issue.message.contains("has no config.json"),
        "{}",
        issue.message
    );
}

#[test]
fn duplicate_class_located() {
    let spec = "\
name: toy
models:
  - path: model
datasets:
  normal: {path: data/normal.csv, column: prompt}
  normal: {path: data/jailbreak.csv, column: prompt}
";
    let (_fixture, error) = load_error(spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "datasets.normal");
    assert_eq!(issue.position, at(6, 3));
    assert!(
        issue.message.contains("duplicate key `normal`"),
        "{}",
        issue.message
    );
    assert!(
        issue.message.contains("line 5, column 3"),
        "{}",
        issue.message
    );
}

#[test]
fn undefined_probe_class_located() {
    let spec = format!(
        "{HEAD}probe:\n  tasks:\n    - name: harmful\n      kind: binary\n      classes: [malicious, jailbrake]\n"
    );
    let (_fixture, error) = load_error(&spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "probe.tasks[0].classes[1]");
    assert_eq!(issue.position, at(12, 28));
    assert_eq!(
        issue.message,
        "class `jailbrake` is not defined in `datasets` (defined: jailbreak, malicious, normal)"
    );
}

#[test]
fn undefined_graft_class_located() {
    let spec = format!("{HEAD}graft:\n  source_class: benign\n");
    let (_fixture, error) = load_error(&spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "graft.source_class");
    assert_eq!(issue.position, at(9, 17));
    assert!(
        issue.message.starts_with("class `benign` is not defined"),
        "{}",
        issue.message
    );
}

#[test]
fn transfer_label_outside_training_classes() {
    let spec = format!(
        "{HEAD}probe:
  tasks:
    - name: transfer
      kind: transfer
      train_classes: [normal, malicious]
      eval_class: jailbreak
      eval_label: jailbreak
"
    );
    let (_fixture, error) = load_error(&spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "probe.tasks[0].eval_label");
    assert_eq!(issue.position, at(14, 19));
    assert!(
        issue
            .message
            .contains("must be one of `train_classes` (normal, malicious)"),
        "{}",
        issue.message
    );
}

#[test]
fn binary_task_needs_two_classes() {
    let spec =
        format!("{HEAD}probe:\n  tasks:\n    - {{name: a, kind: binary, classes: [normal]}}\n");
    let (_fixture, error) = load_error(&spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "probe.tasks[0].classes");
    assert!(
        issue.message.contains("needs exactly 2 classes; found 1"),
        "{}",
        issue.message
    );
}

#[test]
fn several_issues_reported_together() {
    let spec = "\
name: toy
models:
  - path: model
  - path: model
datasets:
  normal: {path: data/normal.csv, column: prompt, limit: 0}
extract:
  shard_size: 0
";
    let (_fixture, error) = load_error(spec);
    let keys: Vec<&str> = error
        .issues()
        .iter()
        .map(|issue| issue.key.as_str())
        .collect();
    assert_eq!(
        keys,
        ["datasets.normal.limit", "models[1]", "extract.shard_size"],
        "{error}"
    );
    let duplicate = &error.issues()[1];
    assert!(
        duplicate
            .message
            .contains("model name `model` is already used by models[0]"),
        "{}",
        duplicate.message
    );
}

#[test]
fn error_display_names_file_line_column() {
    let spec = format!("{HEAD}extract:\n  shard_size: many\n");
    let (fixture, error) = load_error(&spec);
    let text = error.to_string();
    let expected_start = format!(
        "{}:9:15: extract.shard_size: ",
        fixture.spec_path().display()
    );
    assert!(text.starts_with(&expected_start), "{text}");
}

#[test]
fn yaml_syntax_error_located() {
    let spec = "name: toy\nmodels: [\n  {path: model\ndatasets: {}\n";
    let (_fixture, error) = load_error(spec);
    let issue = single_issue(&error);
    assert!(issue.position.line >= 3, "{error}");
    assert!(!issue.message.is_empty());
}

#[test]
fn last_n_without_count_explained() {
    let spec = format!("{HEAD}extract:\n  positions: last_n\n");
    let (_fixture, error) = load_error(&spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "extract.positions");
    assert!(
        issue.message.contains("write `positions: {last_n: 4}`"),
        "{}",
        issue.message
    );
}

#[test]
fn unset_variable_named() {
    let spec = "\
name: toy
models:
  - path: ${MODELS}/tiny
datasets:
  normal: {path: data/normal.csv, column: prompt}
";
    let (_fixture, error) = load_error(spec);
    let issue = single_issue(&error);
    assert_eq!(issue.key, "models[0].path");
    assert!(
        issue
            .message
            .contains("environment variable `MODELS` is not set"),
        "{}",
        issue.message
    );
}

#[test]
fn variables_and_home_expanded() {
    let spec = "\
name: toy
output: ~/results
models:
  - path: ${MODELS}/model
datasets:
  normal: {path: data/normal.csv, column: prompt}
";
    let fixture = Fixture::with_spec(spec);
    let mut options = fixture.options();
    let env = options.env.as_mut().unwrap();
    env.insert("MODELS".to_owned(), fixture.root.display().to_string());
    env.insert("HOME".to_owned(), "/home/researcher".to_owned());
    let loaded = Spec::load(&fixture.spec_path(), &options).unwrap();
    assert_eq!(
        loaded.spec.models[0].local_path(),
        Some(fixture.path("model").as_path())
    );
    assert_eq!(
        loaded.spec.output_dir(),
        std::path::Path::new("/home/researcher/results")
    );
}

#[test]
fn defaults_filled_in() {
    let spec = format!("{HEAD}tokenize:\nextract: {{}}\nprobe:\n  tasks: [{{name: t, kind: binary, classes: [normal, malicious]}}]\n");
    let fixture = Fixture::with_spec(&spec);
    let spec = fixture.spec();

    assert_eq!(spec.tokenize, Some(TokenizeSection::default()));
    let tokenize = spec.tokenize.clone().unwrap();
    assert_eq!(tokenize.max_tokens, 4096);
    assert_eq!(tokenize.truncation, Truncation::Reject);

    let extract = spec.extract.clone().unwrap();
    assert_eq!(extract, ExtractSection::default());
    assert_eq!(extract.layers, LayerSelection::All);
    assert_eq!(extract.positions, Positions::Last);
    assert_eq!(extract.shard_size, 256);
    assert_eq!(extract.effective_batch_size(), Some(8));

    let probe = spec.probe.clone().unwrap();
    let defaults = ProbeSection::default();
    assert_eq!(probe.classifiers, defaults.classifiers);
    assert_eq!(probe.test_fraction, 0.3);
    assert_eq!(probe.seed, 42);
    assert_eq!(probe.classifiers.mlp.as_ref().unwrap().hidden, 100);

    let model = &spec.models[0];
    assert_eq!(model.name, "model");
    assert_eq!(model.template, Template::Model);
    assert_eq!(spec.output_dir(), fixture.path("outputs/toy"));
    assert_eq!(
        spec.datasets["malicious"].format,
        Some(ihs_engine::spec::DatasetFormat::Jsonl)
    );
}

#[test]
fn listed_classifier_enables_only_it() {
    let spec = format!(
        "{HEAD}probe:\n  tasks: [{{name: t, kind: binary, classes: [normal, malicious]}}]\n  classifiers:\n    svm: {{C: 2.0}}\n    logistic:\n"
    );
    let fixture = Fixture::with_spec(&spec);
    let classifiers = fixture.spec().probe.unwrap().classifiers;
    assert_eq!(classifiers.svm.unwrap().c, 2.0);
    assert!(classifiers.mlp.is_none());
    assert_eq!(classifiers.logistic.unwrap().max_iter, 1000);
}

#[test]
fn positions_and_layers_parsed() {
    let spec = format!("{HEAD}extract:\n  layers: [0, 4, 8]\n  positions: {{last_n: 4}}\n");
    let fixture = Fixture::with_spec(&spec);
    let extract = fixture.spec().extract.unwrap();
    assert_eq!(extract.layers, LayerSelection::List(vec![0, 4, 8]));
    assert_eq!(extract.positions, Positions::LastN(4));
}
