//! Kill and resume: a toy pipeline process is killed with SIGKILL (or
//! interrupted with SIGINT) at chosen points, run again, and must end with
//! the same files as an uninterrupted run.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::{committed_shards, snapshot, wait_for_line, wait_until, Fixture, SHARDS};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

/// Returns the output files of an uninterrupted run.
fn reference() -> BTreeMap<String, Vec<u8>> {
    let fixture = Fixture::new();
    let output = fixture.toy(&["run", "spec.yaml"], &[]);
    assert!(output.status.success(), "reference run failed: {output:?}");
    snapshot(&fixture.out())
}

/// Parses the JSON report printed by `ihs-toy-pipeline run`.
fn report(stdout: &[u8]) -> Value {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no report in output: {text}"));
    serde_json::from_str(line).unwrap()
}

fn outcome<'a>(report: &'a Value, node: &str) -> &'a Value {
    report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["id"] == node)
        .map_or_else(
            || panic!("no node {node} in {report}"),
            |entry| &entry["outcome"],
        )
}

/// Runs the toy binary with `env` (a pause hook), waits for the line it
/// prints when it pauses, kills it with SIGKILL, and returns the fixture.
fn kill_at(env: &[(&str, &str)], expected_line: &str) -> Fixture {
    let fixture = Fixture::new();
    let mut child = fixture.spawn(&["run", "spec.yaml"], env);
    wait_for_line(&mut child, expected_line, TIMEOUT);
    // `Child::kill` sends SIGKILL on Unix.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the killed run must not exit cleanly");
    fixture
}

/// Checks what a killed run left visible: no node is corrupt, and the
/// extract node is missing but resumable from `resumable` shards.
fn check_after_kill(fixture: &Fixture, extract_visible: bool, resumable: Option<usize>) {
    let output = fixture.toy(&["plan", "spec.yaml"], &[]);
    assert!(output.status.success(), "{output:?}");
    let plan: Value = serde_json::from_slice(&output.stdout).unwrap();
    for node in plan["nodes"].as_array().unwrap() {
        assert_ne!(
            node["state"]["state"], "corrupt",
            "a killed run left a corrupt output: {node}"
        );
    }
    assert_eq!(fixture.path("out/tiny/extract").exists(), extract_visible);
    let extract = plan["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["id"] == "tiny/extract")
        .unwrap();
    if let Some(done) = resumable {
        assert_eq!(extract["resumable"], true, "{extract}");
        assert_eq!(extract["shards"]["done"], done, "{extract}");
        // The stage announces its shard count when it starts working.
        if done > 0 {
            assert_eq!(extract["shards"]["total"], SHARDS, "{extract}");
        }
    }
}

/// Runs the killed fixture again to completion and compares its files with
/// the reference. Returns the report.
fn resume_and_compare(fixture: &Fixture, reference: &BTreeMap<String, Vec<u8>>) -> Value {
    let output = fixture.toy(&["run", "spec.yaml"], &[]);
    assert!(
        output.status.success(),
        "resumed run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let resumed = snapshot(&fixture.out());
    assert_eq!(
        resumed.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>(),
        "file lists differ"
    );
    for (path, bytes) in reference {
        assert!(resumed[path] == *bytes, "{path} differs after resuming");
    }
    report(&output.stdout)
}

#[test]
fn killed_after_first_shard() {
    let reference = reference();
    let fixture = kill_at(&[("TOY_PAUSE_AT", "shard:tiny/extract:0")], "PAUSED shard");
    check_after_kill(&fixture, false, Some(1));
    let report = resume_and_compare(&fixture, &reference);
    assert_eq!(outcome(&report, "tiny/tokenize")["outcome"], "cached");
    assert_eq!(outcome(&report, "tiny/extract")["outcome"], "ran");
    assert_eq!(outcome(&report, "tiny/extract")["resumed_shards"], 1);
}

#[test]
fn killed_after_four_shards() {
    let reference = reference();
    let fixture = kill_at(&[("TOY_PAUSE_AT", "shard:tiny/extract:3")], "PAUSED shard");
    check_after_kill(&fixture, false, Some(4));
    let report = resume_and_compare(&fixture, &reference);
    assert_eq!(outcome(&report, "tiny/extract")["resumed_shards"], 4);
}

#[test]
fn damaged_committed_shard_recomputed() {
    let reference = reference();
    let fixture = kill_at(&[("TOY_PAUSE_AT", "shard:tiny/extract:3")], "PAUSED shard");
    let shard = fixture.path("out/.ihs/partial/tiny/extract/data/shard-00001/states.bin");
    let size = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(size / 2)
        .unwrap();
    let report = resume_and_compare(&fixture, &reference);
    assert_eq!(outcome(&report, "tiny/extract")["resumed_shards"], 3);
}

#[test]
fn killed_while_writing_shard() {
    let reference = reference();
    let fixture = kill_at(&[("TOY_PAUSE_IN_SHARD", "2")], "PAUSED in-shard 2");
    // The half-written shard sits in staging, outside the output.
    let staging = fixture.path("out/.ihs/partial/tiny/extract/staging/shard-00002/states.bin");
    assert!(staging.exists(), "the test should stop inside shard 2");
    check_after_kill(&fixture, false, Some(2));
    let report = resume_and_compare(&fixture, &reference);
    assert_eq!(outcome(&report, "tiny/extract")["resumed_shards"], 2);
}

#[test]
fn killed_after_last_shard() {
    let reference = reference();
    let fixture = kill_at(&[("TOY_PAUSE_AT", "shard:tiny/extract:5")], "PAUSED shard");
    check_after_kill(&fixture, false, Some(SHARDS));
    let report = resume_and_compare(&fixture, &reference);
    assert_eq!(outcome(&report, "tiny/extract")["resumed_shards"], SHARDS);
}

#[test]
fn killed_before_first_shard() {
    let reference = reference();
    let fixture = kill_at(
        &[("TOY_PAUSE_AT", "started:tiny/extract")],
        "PAUSED started",
    );
    check_after_kill(&fixture, false, Some(0));
    let report = resume_and_compare(&fixture, &reference);
    assert_eq!(outcome(&report, "tiny/extract")["resumed_shards"], 0);
}

#[test]
fn killed_between_manifest_and_rename() {
    let reference = reference();
    let fixture = kill_at(
        &[("TOY_PAUSE_AT", "manifest:tiny/extract")],
        "PAUSED manifest",
    );
    check_after_kill(&fixture, false, None);
    let report = resume_and_compare(&fixture, &reference);
    let extract = outcome(&report, "tiny/extract");
    assert_eq!(extract["outcome"], "ran");
    assert_eq!(extract["resumed_shards"], SHARDS);
}

#[test]
fn killed_after_a_node_finished() {
    let reference = reference();
    let fixture = kill_at(
        &[("TOY_PAUSE_AT", "published:tiny/tokenize")],
        "PAUSED published",
    );
    assert!(fixture.path("out/tiny/tokenize/manifest.json").exists());
    check_after_kill(&fixture, false, None);
    let report = resume_and_compare(&fixture, &reference);
    assert_eq!(outcome(&report, "tiny/tokenize")["outcome"], "cached");
    assert_eq!(outcome(&report, "tiny/extract")["resumed_shards"], 0);
}

#[test]
fn killed_repeatedly_at_arbitrary_times() {
    let reference = reference();
    let fixture = Fixture::new();
    let env = [("TOY_SHARD_DELAY_MS", "40")];
    for delay_ms in [20, 60, 110, 170, 240, 320] {
        let mut child = fixture.spawn(&["run", "spec.yaml"], &env);
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        check_after_kill(&fixture, fixture.path("out/tiny/extract").exists(), None);
    }
    let report = resume_and_compare(&fixture, &reference);
    for node in report["nodes"].as_array().unwrap() {
        let kind = &node["outcome"]["outcome"];
        assert!(kind == "ran" || kind == "cached", "{node}");
    }
}

#[test]
fn interrupt_stops_at_shard_boundary() {
    let reference = reference();
    let fixture = Fixture::new();
    let child = fixture.spawn(&["run", "spec.yaml"], &[("TOY_SHARD_DELAY_MS", "300")]);
    let out = fixture.out();
    wait_until(TIMEOUT, "a committed shard", || {
        committed_shards(&out, "tiny", "extract") >= 1
    });
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("the `kill` command (procps) sends SIGINT");
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{output:?}");

    let interrupted = report(&output.stdout);
    assert_eq!(interrupted["interrupted"], true);
    let extract = outcome(&interrupted, "tiny/extract");
    assert_eq!(extract["outcome"], "interrupted", "{extract}");
    let committed = extract["committed_shards"].as_u64().unwrap();
    assert!(
        (1..SHARDS as u64).contains(&committed),
        "{committed} shards committed"
    );
    assert_eq!(outcome(&interrupted, "tiny/probe")["outcome"], "skipped");
    check_after_kill(&fixture, false, Some(committed as usize));

    let resumed = resume_and_compare(&fixture, &reference);
    assert_eq!(
        outcome(&resumed, "tiny/extract")["resumed_shards"],
        committed
    );
}

#[test]
fn failed_node_leaves_others_running() {
    let fixture = Fixture::new();
    let output = fixture.toy(&["run", "spec.yaml"], &[("TOY_FAIL_STAGE", "probe")]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report = report(&output.stdout);
    let probe = outcome(&report, "tiny/probe");
    assert_eq!(probe["outcome"], "failed");
    assert_eq!(probe["error"], "probe failed because TOY_FAIL_STAGE is set");
    assert_eq!(outcome(&report, "tiny/lens")["outcome"], "ran");
    assert_eq!(outcome(&report, "tiny/graft")["outcome"], "ran");
    assert_eq!(outcome(&report, "aggregate")["outcome"], "skipped");
    assert!(!fixture.path("out/tiny/probe").exists());
}
