//! Cache keys, plans and verification, run in-process with the toy stages.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{outcomes, quiet, snapshot, tiny, Fixture, SHARDS};
use ihs_engine::{
    exit_code, Engine, Force, NodeOutcome, NodeState, RunEvent, RunObserver, RunOptions, RunReason,
    SkipReason, StaleReason, Verify,
};

fn states(engine: &Engine) -> BTreeMap<String, NodeState> {
    engine
        .plan(Verify::Full)
        .nodes
        .into_iter()
        .map(|node| (node.id.to_string(), node.state))
        .collect()
}

fn kinds(engine: &Engine) -> BTreeMap<String, &'static str> {
    states(engine)
        .into_iter()
        .map(|(id, state)| {
            let kind = match state {
                NodeState::Cached => "cached",
                NodeState::Missing => "missing",
                NodeState::Stale { .. } => "stale",
                NodeState::Corrupt { .. } => "corrupt",
                NodeState::Unavailable { .. } => "unavailable",
            };
            (id, kind)
        })
        .collect()
}

fn expect(pairs: &[(&str, &'static str)]) -> BTreeMap<String, &'static str> {
    pairs
        .iter()
        .map(|(id, kind)| ((*id).to_owned(), *kind))
        .collect()
}

fn stale_reasons(engine: &Engine, id: &str) -> Vec<String> {
    match states(engine).remove(id) {
        Some(NodeState::Stale { reasons }) => reasons.iter().map(ToString::to_string).collect(),
        other => panic!("{id} should be stale, found {other:?}"),
    }
}

const ALL_NODES: [&str; 6] = [
    "tiny/tokenize",
    "tiny/extract",
    "tiny/probe",
    "tiny/lens",
    "tiny/graft",
    "aggregate",
];

fn all(kind: &'static str) -> BTreeMap<String, &'static str> {
    ALL_NODES
        .iter()
        .map(|id| ((*id).to_owned(), kind))
        .collect()
}

#[test]
fn first_run_computes_then_caches() {
    let fixture = Fixture::new();
    assert_eq!(kinds(&fixture.engine()), all("missing"));

    let first = fixture.run();
    assert_eq!(outcomes(&first), all("ran"));
    assert_eq!(first.exit_code(), exit_code::OK);

    let second = fixture.run();
    assert_eq!(outcomes(&second), all("cached"));
    assert_eq!(kinds(&fixture.engine()), all("cached"));
}

#[test]
fn parameter_change_reruns_dependents_only() {
    let fixture = Fixture::new();
    fixture.run();
    let spec = common::SPEC.replace("svm: {c: 1.0}", "svm: {c: 2.0}");
    fixture.write("spec.yaml", &spec);

    let engine = fixture.engine();
    assert_eq!(
        kinds(&engine),
        expect(&[
            ("tiny/tokenize", "cached"),
            ("tiny/extract", "cached"),
            ("tiny/probe", "stale"),
            ("tiny/lens", "cached"),
            ("tiny/graft", "cached"),
            ("aggregate", "stale"),
        ])
    );
    assert_eq!(
        stale_reasons(&engine, "tiny/probe"),
        ["parameter `classifiers.svm.c` changed from 1.0 to 2.0"]
    );
    assert_eq!(
        stale_reasons(&engine, "aggregate"),
        ["input `tiny/probe` changed"]
    );

    let report = engine.run(&quiet()).unwrap();
    assert_eq!(
        outcomes(&report),
        expect(&[
            ("tiny/tokenize", "cached"),
            ("tiny/extract", "cached"),
            ("tiny/probe", "ran"),
            ("tiny/lens", "cached"),
            ("tiny/graft", "cached"),
            ("aggregate", "ran"),
        ])
    );
    let Some(NodeOutcome::Ran { reason, .. }) = report.outcome(&tiny("probe")) else {
        panic!("probe should have run");
    };
    assert!(
        matches!(reason, RunReason::Stale { reasons } if matches!(&reasons[0], StaleReason::Parameter { key, .. } if key == "classifiers.svm.c")),
        "{reason:?}"
    );
}

#[test]
fn dataset_content_change_reruns_all() {
    let fixture = Fixture::new();
    fixture.run();
    let path = fixture.path("data/malicious.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{\"text\": \"One more harmful request\"}\n");
    std::fs::write(&path, text).unwrap();

    let engine = fixture.engine();
    assert_eq!(kinds(&engine), all("stale"));
    let reasons = stale_reasons(&engine, "tiny/tokenize");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with("file `dataset/malicious` changed (size "),
        "{reasons:?}"
    );
    assert_eq!(
        stale_reasons(&engine, "tiny/extract"),
        ["input `tiny/tokenize` changed"]
    );

    let report = engine.run(&quiet()).unwrap();
    assert_eq!(outcomes(&report), all("ran"));
}

#[test]
fn dataset_touched_without_change_stays_cached() {
    let fixture = Fixture::new();
    fixture.run();
    let path = fixture.path("data/normal.csv");
    let text = std::fs::read(&path).unwrap();
    std::fs::write(&path, text).unwrap();
    assert_eq!(outcomes(&fixture.run()), all("cached"));
}

#[test]
fn model_config_change_reruns_extract() {
    let fixture = Fixture::new();
    fixture.run();
    fixture.write(
        "model/config.json",
        r#"{"num_hidden_layers": 3, "hidden_size": 4}"#,
    );

    let engine = fixture.engine();
    assert_eq!(
        kinds(&engine),
        expect(&[
            ("tiny/tokenize", "cached"),
            ("tiny/extract", "stale"),
            ("tiny/probe", "stale"),
            ("tiny/lens", "stale"),
            ("tiny/graft", "stale"),
            ("aggregate", "stale"),
        ])
    );
    assert_eq!(
        stale_reasons(&engine, "tiny/extract"),
        ["file `model/config.json` changed"]
    );
}

#[test]
fn weight_header_change_reruns_extract() {
    let fixture = Fixture::new();
    fixture.run();
    // Same size, another tensor layout: the header differs.
    let bytes = common::safetensors(&[0; 16]);
    std::fs::write(fixture.path("model/model.safetensors"), bytes).unwrap();

    let engine = fixture.engine();
    let reasons = stale_reasons(&engine, "tiny/extract");
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with("file `model/model.safetensors` changed"),
        "{reasons:?}"
    );
}

#[test]
fn weight_data_change_not_hashed() {
    let fixture = Fixture::new();
    fixture.run();
    // Same header and size, other tensor bytes: only headers are hashed.
    let bytes = common::safetensors(&[7; 8]);
    std::fs::write(fixture.path("model/model.safetensors"), bytes).unwrap();
    assert_eq!(kinds(&fixture.engine()), all("cached"));
}

#[test]
fn new_weight_file_reruns_extract() {
    let fixture = Fixture::new();
    fixture.run();
    std::fs::write(
        fixture.path("model/extra.safetensors"),
        common::safetensors(&[0; 4]),
    )
    .unwrap();
    assert_eq!(
        stale_reasons(&fixture.engine(), "tiny/extract"),
        ["file `model/extra.safetensors` added"]
    );
}

#[test]
fn code_version_change_reruns_stage() {
    let fixture = Fixture::new();
    fixture.run();
    let engine = Engine::new(fixture.spec(), common::stages::registry_with(2)).unwrap();
    assert_eq!(
        stale_reasons(&engine, "tiny/extract"),
        ["stage code version changed from 1 to 2"]
    );
    assert_eq!(
        kinds(&engine)["tiny/tokenize"],
        "cached",
        "other stages keep their outputs"
    );
    let report = engine.run(&quiet()).unwrap();
    assert_eq!(outcomes(&report)["tiny/extract"], "ran");
}

#[test]
fn plan_lists_cached_stale_missing() {
    let fixture = Fixture::new();
    fixture.run();
    std::fs::remove_dir_all(fixture.path("out/tiny/graft")).unwrap();
    let spec = common::SPEC.replace(
        "  word_lists: data/words.yaml",
        "  word_lists: data/words.yaml\n  top_k: 5",
    );
    fixture.write("spec.yaml", &spec);

    let plan = fixture.engine().plan(Verify::Full);
    let lines: Vec<String> = plan.nodes.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "tiny/tokenize: cached".to_owned(),
            format!("tiny/extract: cached ({SHARDS}/{SHARDS} shards)"),
            "tiny/probe: cached".to_owned(),
            "tiny/lens: stale: parameter `top_k` changed from 10 to 5".to_owned(),
            "tiny/graft: missing".to_owned(),
            "aggregate: stale: input `tiny/lens` changed".to_owned(),
        ]
    );
}

#[test]
fn output_without_manifest_is_missing() {
    let fixture = Fixture::new();
    fixture.run();
    std::fs::remove_file(fixture.path("out/tiny/probe/manifest.json")).unwrap();
    assert_eq!(kinds(&fixture.engine())["tiny/probe"], "missing");
    let report = fixture.run();
    assert_eq!(outcomes(&report)["tiny/probe"], "ran");
    // The rebuilt probe output has the same files, so aggregate stays valid.
    assert_eq!(outcomes(&report)["aggregate"], "cached");
}

#[test]
fn truncated_output_detected_and_recomputed() {
    let fixture = Fixture::new();
    fixture.run();
    let before = snapshot(&fixture.out());
    let shard = fixture.path("out/tiny/extract/shard-00001/states.bin");
    let size = std::fs::metadata(&shard).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    file.set_len(size - 5).unwrap();
    drop(file);

    let engine = fixture.engine();
    let state = states(&engine).remove("tiny/extract").unwrap();
    assert_eq!(
        state,
        NodeState::Corrupt {
            problem: format!(
                "shard-00001/states.bin has {} bytes; the manifest records {size}",
                size - 5
            )
        }
    );

    let report = engine.run(&quiet()).unwrap();
    let Some(NodeOutcome::Ran { reason, .. }) = report.outcome(&tiny("extract")) else {
        panic!("extract should have run: {report}");
    };
    assert!(matches!(reason, RunReason::Corrupt { .. }), "{reason:?}");
    // Downstream nodes read identical files again and stay cached.
    assert_eq!(outcomes(&report)["tiny/probe"], "cached");
    assert_eq!(snapshot(&fixture.out()), before);
}

#[test]
fn altered_output_detected_by_checksum() {
    let fixture = Fixture::new();
    fixture.run();
    let before = snapshot(&fixture.out());
    let path = fixture.path("out/tiny/probe/results.json");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 1;
    std::fs::write(&path, bytes).unwrap();

    let engine = fixture.engine();
    assert_eq!(
        states(&engine).remove("tiny/probe").unwrap(),
        NodeState::Corrupt {
            problem: "results.json does not match its checksum in the manifest".to_owned()
        }
    );
    // A size-only check cannot see a same-size change.
    let sizes_only: Vec<_> = engine.status().nodes;
    assert_eq!(sizes_only[2].state, NodeState::Cached);

    let report = engine.run(&quiet()).unwrap();
    assert_eq!(outcomes(&report)["tiny/probe"], "ran");
    assert_eq!(snapshot(&fixture.out()), before);
}

#[test]
fn forced_stage_with_same_output_keeps_dependents() {
    let fixture = Fixture::new();
    fixture.run();
    let options = RunOptions {
        force: Force::Stage("extract".to_owned()),
        ..quiet()
    };
    let report = fixture.engine().run(&options).unwrap();
    let summary = outcomes(&report);
    assert_eq!(summary["tiny/extract"], "ran");
    assert_eq!(summary["tiny/tokenize"], "cached");
    assert_eq!(summary["tiny/probe"], "cached");
}

#[test]
fn only_stage_needs_ready_inputs() {
    let fixture = Fixture::new();
    let options = RunOptions {
        only: Some("probe".to_owned()),
        ..quiet()
    };
    let report = fixture.engine().run(&options).unwrap();
    let Some(NodeOutcome::Skipped { reason }) = report.outcome(&tiny("probe")) else {
        panic!("probe should be skipped: {report}");
    };
    assert_eq!(
        *reason,
        SkipReason::InputNotReady {
            input: tiny("extract")
        }
    );
    assert_eq!(report.exit_code(), exit_code::FAILURE);
    assert!(!fixture.path("out/tiny/tokenize").exists());
}

#[test]
fn only_upstream_stage_leaves_missing_downstream_unselected() {
    let fixture = Fixture::new();
    let options = RunOptions {
        only: Some("tokenize".to_owned()),
        ..quiet()
    };
    let report = fixture.engine().run(&options).unwrap();
    assert_eq!(outcomes(&report)["tiny/tokenize"], "ran");
    // probe's input (extract) is missing too, yet probe was not asked for.
    let Some(NodeOutcome::Skipped { reason }) = report.outcome(&tiny("probe")) else {
        panic!("probe should be skipped: {report}");
    };
    assert!(
        matches!(reason, SkipReason::NotSelected { .. }),
        "probe: {reason}"
    );
    assert_eq!(report.exit_code(), exit_code::OK, "{report}");
}

#[test]
fn dry_run_writes_nothing() {
    let fixture = Fixture::new();
    let options = RunOptions {
        dry_run: true,
        ..quiet()
    };
    let report = fixture.engine().run(&options).unwrap();
    assert_eq!(outcomes(&report), all("would_run"));
    assert!(!fixture.out().exists());
}

#[test]
fn unknown_stage_name_rejected() {
    let fixture = Fixture::new();
    let options = RunOptions {
        only: Some("probes".to_owned()),
        ..quiet()
    };
    let error = fixture.engine().run(&options).unwrap_err();
    assert_eq!(error.exit_code(), exit_code::INVALID_SPEC);
    assert!(
        error.to_string().contains("unknown stage `probes`"),
        "{error}"
    );
}

#[test]
fn clean_removes_one_stage() {
    let fixture = Fixture::new();
    fixture.run();
    let report = fixture.engine().clean(Some("lens")).unwrap();
    assert_eq!(report.removed, [fixture.path("out/tiny/lens")]);
    assert_eq!(kinds(&fixture.engine())["tiny/lens"], "missing");
    assert_eq!(kinds(&fixture.engine())["tiny/probe"], "cached");
}

#[test]
fn uncached_model_fails_alone() {
    let spec = common::SPEC.replace(
        "    name: tiny\n",
        "    name: tiny\n  - id: org/absent-model\n    name: absent\n",
    );
    let fixture = Fixture::with_spec(&spec);
    let report = fixture.run();
    let summary = outcomes(&report);
    assert_eq!(summary["tiny/probe"], "ran");
    assert_eq!(summary["absent/tokenize"], "failed");
    assert_eq!(summary["absent/extract"], "skipped");
    assert_eq!(summary["aggregate"], "skipped");
    let Some(NodeOutcome::Failed { error }) =
        report.outcome(&common::node(Some("absent"), "tokenize"))
    else {
        panic!("absent/tokenize should fail");
    };
    assert!(error.contains("is not cached"), "{error}");
    assert!(
        error.contains("huggingface-cli download org/absent-model"),
        "{error}"
    );
    assert_eq!(report.exit_code(), exit_code::FAILURE);
}

/// Records which heavy nodes run at the same time.
#[derive(Default)]
struct Overlap {
    running: Mutex<Vec<String>>,
    max_at_once: Mutex<usize>,
}

impl RunObserver for Overlap {
    fn on_event(&self, event: &RunEvent<'_>) {
        let mut running = self.running.lock().unwrap();
        match event {
            RunEvent::NodeStarted { node, .. } if node.stage() == "extract" => {
                running.push(node.to_string());
                let mut max = self.max_at_once.lock().unwrap();
                *max = (*max).max(running.len());
            }
            RunEvent::ManifestWritten { node } if node.stage() == "extract" => {
                running.retain(|id| *id != node.to_string());
            }
            _ => {}
        }
    }
}

#[test]
fn heavy_nodes_share_no_device() {
    let spec = common::SPEC.replace(
        "    name: tiny\n",
        "    name: tiny\n  - path: model\n    name: second\n  - path: model\n    name: third\n",
    );
    let fixture = Fixture::with_spec(&spec);
    let overlap = Arc::new(Overlap::default());
    let options = RunOptions {
        jobs: 4,
        observer: Some(overlap.clone()),
        ..quiet()
    };
    let report = fixture.engine().run(&options).unwrap();
    assert_eq!(report.exit_code(), exit_code::OK, "{report}");
    assert_eq!(*overlap.max_at_once.lock().unwrap(), 1);
}

#[test]
fn heavy_nodes_report_their_devices() {
    let spec = common::SPEC.replace(
        "    name: tiny\n",
        "    name: tiny\n    devices: [cuda:0]\n  - path: model\n    name: second\n    devices: [cuda:1]\n",
    );
    let fixture = Fixture::with_spec(&spec);
    let engine = fixture.engine();
    let plan = engine.plan(Verify::Sizes);
    let devices: Vec<String> = plan
        .nodes
        .iter()
        .filter(|node| node.id.stage() == "extract")
        .map(|node| format!("{}={:?}", node.id, node.devices))
        .collect();
    assert_eq!(
        devices,
        ["tiny/extract=[Cuda(0)]", "second/extract=[Cuda(1)]"]
    );
    let report = engine.run(&RunOptions { jobs: 4, ..quiet() }).unwrap();
    assert_eq!(report.exit_code(), exit_code::OK, "{report}");
}
