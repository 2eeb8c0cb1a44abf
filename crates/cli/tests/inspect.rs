//! `ihs inspect` driven through the real binary on the parity fixtures.

use std::path::PathBuf;
use std::process::Command;

fn fixture(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/parity")
        .join(family)
}

fn ihs(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ihs"))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("the ihs binary starts")
}

#[test]
fn inspect_reports_architecture_and_prompt() {
    let output = ihs(&["inspect", fixture("llama3").to_str().unwrap(), "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["family"], "llama");
    assert_eq!(summary["layers"], 3);
    assert_eq!(summary["hidden_states_per_token"], 4);
    assert_eq!(summary["heads"], 4);
    assert_eq!(summary["kv_heads"], 1);
    assert_eq!(summary["template"], "model");
    let prompt = summary["sample_prompt"].as_str().unwrap();
    assert!(
        prompt.starts_with("<|begin_of_text|><|start_header_id|>user"),
        "{prompt}"
    );
    assert!(summary["sample_tokens"].as_u64().unwrap() > 10);
}

#[test]
fn inspect_with_builtin_template_and_system() {
    let output = ihs(&[
        "inspect",
        fixture("vicuna").to_str().unwrap(),
        "--template",
        "vicuna_v1.1",
        "--system",
        "Be brief.",
        "--message",
        "Hi",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("Be brief. USER: Hi ASSISTANT:"), "{text}");
}

#[test]
fn inspect_missing_model_fails_with_hint() {
    let output = ihs(&["inspect", "/no/such/model"]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("/no/such/model"), "{message}");
    assert!(message.contains("config.json"), "{message}");
}

#[test]
fn inspect_unknown_template_lists_builtins() {
    let output = ihs(&[
        "inspect",
        fixture("llama2").to_str().unwrap(),
        "--template",
        "alpaca",
    ]);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("\"alpaca\""), "{message}");
    assert!(message.contains("llama-2"), "{message}");
}
