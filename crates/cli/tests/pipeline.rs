//! The tokenize and extract stages run through the real `ihs` binary on the
//! embedded default model: resume after SIGKILL, batching, cache reports,
//! and the Parquet files read back by Python's pyarrow, polars, pandas and
//! DuckDB.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
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

fn committed_shards(out: &Path) -> usize {
    let records = out.join(format!(".ihs/partial/{MODEL_NAME}/extract/shards"));
    std::fs::read_dir(records).map_or(0, |entries| entries.count())
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
    let dir = temp_dir("python");
    run_ok(&write_spec(&dir, 4, ""));
    let python =
        std::env::var("IHS_PYTHON").map_or_else(|_| repo().join(".venv/bin/python"), PathBuf::from);
    let output = Command::new(&python)
        .arg(repo().join("scripts/check_readers.py"))
        .arg(dir.join(format!("out/{MODEL_NAME}")))
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
