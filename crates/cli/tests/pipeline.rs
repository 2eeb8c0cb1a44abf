//! The pipeline runs through the real `ihs` binary on the embedded default
//! model. The tests cover resume after SIGKILL, batching, cache reports and
//! extraction memory over many shards. Python's pyarrow, polars, pandas and
//! DuckDB read the Parquet files back, and the notebook redraws the charts
//! of `pipelines/test.yaml` run with every stage. `ihs validate` checks every
//! spec in `pipelines/`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const MODEL_NAME: &str = "smollm2";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn model_file() -> PathBuf {
    let path = repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `just setup`",
        path.display()
    );
    path
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ihs-pipeline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a spec with 12 prompts per class, shards of 6 prompts and lens records.
fn write_spec(dir: &Path, batch_size: usize, extra: &str) -> PathBuf {
    let data = repo().join("data");
    let spec = format!(
        "name: pipeline-test\n\
         output: {output}\n\
         models:\n  - path: {model}\n    name: {MODEL_NAME}\n    dtype: f32\n    devices: [cpu]\n    template: model\n\
         datasets:\n\
         \x20 normal: {{path: {data}/normal.csv, column: prompt, limit: 12, seed: 3}}\n\
         \x20 malicious: {{path: {data}/malicious.csv, column: prompt, limit: 12, seed: 3}}\n\
         \x20 jailbreak: {{path: {data}/jailbreak.csv, column: prompt, limit: 12, seed: 3}}\n\
         extract:\n  batch_size: {batch_size}\n  shard_size: 6\n  lens: {{enabled: true, top_k: 5}}\n{extra}",
        output = dir.join("out").display(),
        model = model_file().display(),
        data = data.display(),
    );
    let path = dir.join("spec.yaml");
    std::fs::write(&path, spec).unwrap();
    path
}

fn ihs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ihs"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the ihs binary starts")
}

/// Returns the Python that has the packages of `scripts/requirements-test.txt`:
/// `IHS_PYTHON`, else the project's `.venv`.
fn python() -> PathBuf {
    std::env::var("IHS_PYTHON").map_or_else(|_| repo().join(".venv/bin/python"), PathBuf::from)
}

fn run_ok(spec: &Path) -> String {
    let output = ihs(&["run", spec.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "ihs run failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Returns every file under `dir` with its bytes, by relative path.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().is_some_and(|n| n != "manifest.json") {
                let relative = path.strip_prefix(dir).unwrap().display().to_string();
                found.push((relative, std::fs::read(&path).unwrap()));
            }
        }
    }
    found.sort();
    found
}

/// Counts the shard records that are in place. A record is first written
/// under a hidden temporary name and then renamed, so hidden files are not
/// committed shards.
fn committed_shards(out: &Path) -> usize {
    let records = out.join(format!(".ihs/partial/{MODEL_NAME}/extract/shards"));
    std::fs::read_dir(records).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .filter(|entry| {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                !name.starts_with('.') && name.ends_with(".json")
            })
            .count()
    })
}

#[test]
fn extract_resumes_after_sigkill_with_identical_files() {
    let reference_dir = temp_dir("reference");
    let reference_spec = write_spec(&reference_dir, 4, "");
    run_ok(&reference_spec);
    let reference = files(&reference_dir.join(format!("out/{MODEL_NAME}/extract")));
    assert!(reference
        .iter()
        .any(|(path, _)| path.starts_with("activations/layer=030/")));
    assert!(reference.iter().any(|(path, _)| path.starts_with("lens/")));

    for kill_after in [1, 3, 5] {
        let dir = temp_dir(&format!("killed-{kill_after}"));
        let spec = write_spec(&dir, 4, "");
        let out = dir.join("out");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ihs"))
            .args(["run", spec.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(300);
        while committed_shards(&out) < kill_after {
            assert!(
                Instant::now() < deadline,
                "no shard was committed within 5 minutes"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before it was killed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            !out.join(format!("{MODEL_NAME}/extract/manifest.json"))
                .exists(),
            "a killed extract must not publish its output"
        );

        let report = run_ok(&spec);
        assert!(report.contains("resumed after"), "{report}");
        let resumed = files(&out.join(format!("{MODEL_NAME}/extract")));
        assert_eq!(
            resumed.len(),
            reference.len(),
            "killed after {kill_after} shards"
        );
        for ((path, bytes), (reference_path, reference_bytes)) in resumed.iter().zip(&reference) {
            assert_eq!(path, reference_path);
            assert!(
                bytes == reference_bytes,
                "killed after {kill_after} shards: {path} differs"
            );
        }
    }
}

#[test]
fn batched_states_equal_single_prompt_states() {
    let single_dir = temp_dir("single");
    run_ok(&write_spec(&single_dir, 1, ""));
    let batched_dir = temp_dir("batched");
    run_ok(&write_spec(&batched_dir, 12, ""));

    for layer in [0, 1, 15, 30] {
        let activations = |dir: &Path| dir.join(format!("out/{MODEL_NAME}/extract/activations"));
        let single = ihs_store::read_layer(&activations(&single_dir), layer).unwrap();
        let batched = ihs_store::read_layer(&activations(&batched_dir), layer).unwrap();
        assert_eq!(single.prompt_ids, batched.prompt_ids);
        assert_eq!(single.positions, batched.positions);
        let scale = single.states.iter().fold(1.0_f32, |m, v| m.max(v.abs()));
        let diff = (&single.states - &batched.states)
            .iter()
            .fold(0.0_f32, |m, v| m.max(v.abs()));
        // Padding changes the shapes of the matmuls, so sums round differently.
        assert!(
            diff / scale < 1e-4,
            "layer {layer}: relative difference {}",
            diff / scale
        );
    }
}

#[test]
fn plan_reports_cached_then_stale_after_an_edit() {
    let dir = temp_dir("plan");
    let spec = write_spec(&dir, 4, "");
    let before = ihs(&["plan", spec.to_str().unwrap()]);
    let before = String::from_utf8(before.stdout).unwrap();
    assert!(
        before.contains(&format!("{MODEL_NAME}/extract: missing")),
        "{before}"
    );

    run_ok(&spec);
    let after = String::from_utf8(ihs(&["plan", spec.to_str().unwrap()]).stdout).unwrap();
    assert!(
        after.contains(&format!("{MODEL_NAME}/tokenize: cached")),
        "{after}"
    );
    assert!(
        after.contains(&format!("{MODEL_NAME}/extract: cached")),
        "{after}"
    );

    let edited = write_spec(&dir, 4, "").to_str().unwrap().to_owned();
    let text = std::fs::read_to_string(&edited)
        .unwrap()
        .replace("top_k: 5", "top_k: 3");
    std::fs::write(&edited, text).unwrap();
    let stale = String::from_utf8(ihs(&["plan", &edited]).stdout).unwrap();
    assert!(
        stale.contains(&format!("{MODEL_NAME}/tokenize: cached")),
        "{stale}"
    );
    assert!(
        stale.contains(&format!("{MODEL_NAME}/extract: stale")),
        "{stale}"
    );
    assert!(
        stale.contains("section.lens.top_k"),
        "the reason names the parameter: {stale}"
    );
}

#[test]
fn python_libraries_read_the_outputs() {
    let python = python();
    let output = Command::new(&python)
        .arg(repo().join("scripts/check_readers.py"))
        .arg(probed_outputs().join(MODEL_NAME))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} does not start ({e}); run `just setup`",
                python.display()
            )
        });
    assert!(
        output.status.success(),
        "the Python readers failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report = String::from_utf8_lossy(&output.stdout);
    for library in ["pyarrow", "polars", "pandas", "duckdb"] {
        assert!(report.contains(&format!("{library}: ok")), "{report}");
    }
}

#[test]
fn invalid_spec_exits_with_code_2_and_position() {
    let dir = temp_dir("invalid");
    let spec = write_spec(&dir, 4, "  shardsize: 3\n");
    let output = ihs(&["validate", spec.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("shardsize"), "{message}");
    assert!(
        message.contains(":17:"),
        "the message names the line: {message}"
    );
}

/// The probe tasks of `pipelines/test.yaml` without its multiclass task,
/// and the aggregate stage, appended to the spec of [`write_spec`].
const PROBE_AND_AGGREGATE: &str = "probe:\n  tasks:\n\
    \x20   - {name: harmful, kind: binary, classes: [normal, malicious]}\n\
    \x20   - {name: jailbreak-transfer, kind: transfer, train_classes: [normal, malicious], \
    eval_class: jailbreak, eval_label: malicious}\n\
    aggregate:\n";

/// Runs [`write_spec`] with the probe and aggregate stages once per test
/// process and returns its output folder. The tests that only read outputs
/// share it.
fn probed_outputs() -> &'static Path {
    static OUTPUTS: OnceLock<PathBuf> = OnceLock::new();
    OUTPUTS.get_or_init(|| {
        let dir = temp_dir("probed");
        run_ok(&write_spec(&dir, 4, PROBE_AND_AGGREGATE));
        dir.join("out").canonicalize().unwrap()
    })
}

/// Executes `notebooks/probe-accuracy.ipynb` through `scripts/run_notebook.py`
/// on `outputs`, saving the executed notebook to `executed`.
fn run_notebook(outputs: &Path, executed: &Path) -> Output {
    let python = python();
    Command::new(&python)
        .arg(repo().join("scripts/run_notebook.py"))
        .arg("--outputs")
        .arg(outputs)
        .arg("--save")
        .arg(executed)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{} does not start ({e}); run `just setup`",
                python.display()
            )
        })
}

#[test]
fn notebook_redraws_aggregate_charts() {
    let outputs = probed_outputs();
    let plots = outputs.join("aggregate/plots");
    let transfer_charts = std::fs::read_dir(&plots)
        .unwrap()
        .filter(|entry| {
            let name = entry.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("transfer-") && name.ends_with(".png")
        })
        .count();
    assert!(
        transfer_charts > 0,
        "the aggregate stage drew no transfer chart in {}",
        plots.display()
    );

    let executed = temp_dir("notebook").join("probe-accuracy.ipynb");
    let output = run_notebook(outputs, &executed);
    assert!(
        output.status.success(),
        "a cell of the notebook failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let notebook: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&executed).unwrap()).unwrap();
    let cell_outputs: Vec<&serde_json::Value> = notebook["cells"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|cell| cell["outputs"].as_array())
        .flatten()
        .collect();
    let errors: Vec<&serde_json::Value> = cell_outputs
        .iter()
        .copied()
        .filter(|output| output["output_type"] == "error")
        .collect();
    assert!(errors.is_empty(), "cells raised: {errors:?}");

    let printed: String = cell_outputs
        .iter()
        .filter(|output| output["output_type"] == "stream")
        .map(|output| match &output["text"] {
            serde_json::Value::Array(lines) => lines.iter().filter_map(|l| l.as_str()).collect(),
            text => text.as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    let aggregate = outputs.join("aggregate");
    assert!(
        printed.contains(&format!("reading {}", aggregate.display())),
        "the notebook did not read {}: {printed}",
        aggregate.display()
    );
    assert!(
        printed.contains(&format!("1 model(s): {MODEL_NAME}")),
        "{printed}"
    );

    // One figure contains the test accuracy of every task and classifier.
    // Each transfer chart of the aggregate stage has a figure of its own.
    let figures = cell_outputs
        .iter()
        .filter(|output| output["data"].get("image/png").is_some())
        .count();
    assert_eq!(figures, 1 + transfer_charts);
}

#[test]
fn notebook_fails_without_aggregate_outputs() {
    let dir = temp_dir("notebook-empty");
    let output = run_notebook(&dir, &dir.join("executed.ipynb"));
    assert!(
        !output.status.success(),
        "the notebook ran on a folder without aggregate outputs"
    );
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("FileNotFoundError"), "{message}");
    assert!(message.contains("accuracy.parquet"), "{message}");
}

#[test]
fn validate_accepts_every_shipped_spec() {
    // An empty HF cache makes every model given by `id` uncached on any
    // machine. Output paths are relative to the current directory, so that
    // is a temporary folder.
    let dir = temp_dir("validate");
    let hub_cache = dir.join("hub");
    std::fs::create_dir_all(&hub_cache).unwrap();
    let mut specs: Vec<PathBuf> = std::fs::read_dir(repo().join("pipelines"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    specs.sort();
    assert!(specs.len() > 1, "no specs in pipelines/");

    for spec in &specs {
        let name = spec.file_name().unwrap().to_string_lossy();
        let output = Command::new(env!("CARGO_BIN_EXE_ihs"))
            .arg("validate")
            .arg("--json")
            .arg(spec)
            .current_dir(&dir)
            .env("RUST_LOG", "warn")
            .env("HF_HUB_CACHE", &hub_cache)
            .output()
            .expect("the ihs binary starts");
        assert_eq!(
            output.status.code(),
            Some(0),
            "ihs validate {name}:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("ihs validate --json {name} printed invalid JSON: {e}"));
        assert_eq!(report["valid"], true, "{name}: {report}");
        assert!(
            report["nodes"]
                .as_array()
                .is_some_and(|nodes| !nodes.is_empty()),
            "{name} has no nodes: {report}"
        );

        // Every spec in pipelines/ gives its models as `- id: org/name`
        // list items or by `path`.
        let hub_ids: Vec<String> = std::fs::read_to_string(spec)
            .unwrap()
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("- id:"))
            .map(|id| id.trim().to_owned())
            .collect();
        let warnings: Vec<&str> = report["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|warning| warning.as_str().unwrap())
            .collect();
        assert_eq!(
            warnings.len(),
            hub_ids.len(),
            "{name}: expected one warning per model given by id ({hub_ids:?}), found {warnings:#?}"
        );
        for id in &hub_ids {
            assert!(
                warnings.iter().any(|warning| warning
                    .contains(&format!("model `{id}` (revision main) is not cached"))
                    && warning.contains(&format!("huggingface-cli download {id}"))),
                "{name}: no not-cached warning for {id}: {warnings:#?}"
            );
        }
    }
}

/// Prompts per shard and per batch of the extraction memory test.
const MEMORY_SHARD_SIZE: usize = 8;
/// Tokens of every prompt in the extraction memory test, template included.
const MEMORY_PROMPT_TOKENS: usize = 16;

/// Writes a spec that stores every layer of the first `prompts` prompts of
/// `data/normal.csv`, in shards of [`MEMORY_SHARD_SIZE`] prompts, one batch
/// per shard. Left truncation cuts every prompt to its last
/// [`MEMORY_PROMPT_TOKENS`] tokens. Every batch then has the same shape, so a
/// longer run differs from a shorter one only in its number of shards.
fn write_sharded_spec(dir: &Path, prompts: usize) -> PathBuf {
    let spec = format!(
        "name: memory-test\n\
         output: {output}\n\
         models:\n  - path: {model}\n    name: {MODEL_NAME}\n    dtype: f32\n    devices: [cpu]\n    template: model\n\
         datasets:\n\
         \x20 normal: {{path: {data}/normal.csv, column: prompt, limit: {prompts}}}\n\
         tokenize:\n  max_tokens: {MEMORY_PROMPT_TOKENS}\n  truncation: left\n\
         extract:\n  layers: all\n  positions: last\n  batch_size: {MEMORY_SHARD_SIZE}\n  shard_size: {MEMORY_SHARD_SIZE}\n",
        output = dir.join("out").display(),
        model = model_file().display(),
        data = repo().join("data").display(),
    );
    let path = dir.join("spec.yaml");
    std::fs::write(&path, spec).unwrap();
    path
}

/// Runs the tokenize and extract stages of `prompts` prompts in a process of
/// their own and returns the extract stage's manifest.
fn extract_manifest(name: &str, prompts: usize) -> serde_json::Value {
    let dir = temp_dir(name);
    let spec = write_sharded_spec(&dir, prompts);

    // The other tests start `ihs` processes at the same time. With one
    // libtorch thread per process, OpenMP threads do not wait on each other
    // for a core. In one measurement on 2 shared cores, extraction was about
    // 5 times faster with one thread than with two.
    //
    // glibc's malloc keeps freed memory resident and hands it out again, so
    // by default a leak hides in the memory that the model load freed. With
    // allocations of 4 KiB and more mapped on their own and returned when
    // freed, and a single arena, the RSS follows the memory in use.
    let output = Command::new(env!("CARGO_BIN_EXE_ihs"))
        .arg("run")
        .arg(&spec)
        .env("RUST_LOG", "warn")
        .env("OMP_NUM_THREADS", "1")
        .env(
            "GLIBC_TUNABLES",
            "glibc.malloc.mmap_threshold=4096:glibc.malloc.arena_max=1",
        )
        .output()
        .expect("the ihs binary starts");

    assert!(
        output.status.success(),
        "ihs run {} failed:\n{}\n{}",
        spec.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest = dir.join(format!("out/{MODEL_NAME}/extract/manifest.json"));
    serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap()
}

fn metric(manifest: &serde_json::Value, name: &str) -> f64 {
    manifest["metrics"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("the extract manifest has no metric {name}: {manifest}"))
}

#[test]
fn extract_memory_does_not_grow_with_shards() {
    let few_shards = 2;
    let many_shards = 24;
    let few = extract_manifest("memory-few", few_shards * MEMORY_SHARD_SIZE);
    let many = extract_manifest("memory-many", many_shards * MEMORY_SHARD_SIZE);
    assert_eq!(few["shards"]["count"], few_shards);
    assert_eq!(many["shards"]["count"], many_shards);
    assert_eq!(
        many["rows"]["tokens_computed"],
        many_shards * MEMORY_SHARD_SIZE * MEMORY_PROMPT_TOKENS,
        "every prompt is cut to {MEMORY_PROMPT_TOKENS} tokens"
    );

    // A shard's stored states take 8 prompts x 31 layers x 576 x 4 bytes =
    // 0.54 MiB. An extraction that kept them raised the peak after the load
    // by 9.3 MiB from 2 to 24 shards, and the margin is about half of that.
    // Without such a leak, the peaks of 3 runs of each spec were within
    // 0.8 MiB of each other (glibc 2.36 on the 2-core development machine).
    let margin_mib = 5.0;

    // The whole process's peak is usually the model load's, which is the
    // same in both runs. The peak after the load is what more shards would
    // raise.
    for name in ["shards_peak_rss_mib", "peak_rss_mib"] {
        let (few_peak, many_peak) = (metric(&few, name), metric(&many, name));
        assert!(
            many_peak <= few_peak + margin_mib,
            "{name} grew from {few_peak:.1} MiB with {few_shards} shards to {many_peak:.1} MiB \
             with {many_shards} shards, more than the {margin_mib} MiB margin"
        );
    }
}
