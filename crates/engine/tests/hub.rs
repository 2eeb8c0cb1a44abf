//! Models given by HF hub id, resolved offline in a fake HF cache.

mod common;

use std::path::{Path, PathBuf};

use common::Fixture;
use ihs_engine::hub::{self, HubError};
use ihs_engine::{validate, Spec};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER_COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// Lays out `models--org--tiny` in `cache` the way `huggingface_hub` does:
/// `refs/main` -> `COMMIT`, `refs/v2` -> `OTHER_COMMIT`, one snapshot each.
fn fake_cache(cache: &Path) -> PathBuf {
    let repo = cache.join("models--org--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    std::fs::write(repo.join("refs/v2"), format!("{OTHER_COMMIT}\n")).unwrap();
    for commit in [COMMIT, OTHER_COMMIT] {
        Fixture::write_model(&repo.join("snapshots").join(commit));
    }
    repo
}

fn env<'a>(pairs: &'a [(&'a str, String)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |name: &str| {
        pairs
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    }
}

#[test]
fn main_ref_resolves_snapshot() {
    let fixture = Fixture::new();
    let cache = fixture.path("hf-cache");
    let repo = fake_cache(&cache);
    let lookup = [("HF_HUB_CACHE", cache.display().to_string())];
    let path = hub::resolve("org/tiny", None, &env(&lookup)).unwrap();
    assert_eq!(path, repo.join("snapshots").join(COMMIT));
}

#[test]
fn tag_and_commit_revisions_resolve() {
    let fixture = Fixture::new();
    let cache = fixture.path("hf-cache");
    let repo = fake_cache(&cache);
    let by_tag = hub::resolve_in(&cache, "org/tiny", Some("v2")).unwrap();
    assert_eq!(by_tag, repo.join("snapshots").join(OTHER_COMMIT));
    let by_commit = hub::resolve_in(&cache, "org/tiny", Some(COMMIT)).unwrap();
    assert_eq!(by_commit, repo.join("snapshots").join(COMMIT));
}

#[test]
fn hf_home_used_without_hub_cache() {
    let fixture = Fixture::new();
    let home = fixture.path("hf-home");
    fake_cache(&home.join("hub"));
    let lookup = [
        ("HF_HOME", home.display().to_string()),
        ("HOME", "/nonexistent".to_owned()),
    ];
    let path = hub::resolve("org/tiny", None, &env(&lookup)).unwrap();
    assert!(path.starts_with(home.join("hub")), "{}", path.display());
}

#[test]
fn missing_model_says_how_to_download() {
    let fixture = Fixture::new();
    let cache = fixture.path("hf-cache");
    let error = hub::resolve_in(&cache, "meta-llama/Llama-2-7b-chat-hf", None).unwrap_err();
    assert!(matches!(error, HubError::NotCached { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("is not cached"), "{message}");
    assert!(
        message.contains("`huggingface-cli download meta-llama/Llama-2-7b-chat-hf`"),
        "{message}"
    );
    assert!(
        message.contains("`hf download meta-llama/Llama-2-7b-chat-hf`"),
        "{message}"
    );

    let error = hub::resolve_in(&cache, "org/tiny", Some("v3")).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("`huggingface-cli download org/tiny --revision v3`"),
        "{error}"
    );
}

#[test]
fn snapshot_without_config_not_cached() {
    let fixture = Fixture::new();
    let cache = fixture.path("hf-cache");
    let repo = fake_cache(&cache);
    std::fs::remove_file(repo.join("snapshots").join(COMMIT).join("config.json")).unwrap();
    let error = hub::resolve_in(&cache, "org/tiny", None).unwrap_err();
    assert!(error.to_string().contains("has no config.json"), "{error}");
}

#[test]
fn spec_id_resolves_through_cache() {
    let spec = common::SPEC.replace("  - path: model\n", "  - id: org/tiny\n");
    let fixture = Fixture::with_spec(&spec);
    let cache = fixture.path("hf-cache");
    let repo = fake_cache(&cache);
    let loaded = Spec::load(&fixture.spec_path(), &fixture.options()).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        loaded.spec.models[0].local_path(),
        Some(repo.join("snapshots").join(COMMIT).as_path())
    );
    let report = fixture.run();
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[test]
fn validate_warns_model_not_cached() {
    let spec = common::SPEC.replace("  - path: model\n", "  - id: org/absent\n");
    let fixture = Fixture::with_spec(&spec);
    let validation = validate(
        &fixture.spec_path(),
        &fixture.options(),
        &common::stages::registry_with(1),
    )
    .expect("a model that is not downloaded leaves the spec valid");
    assert_eq!(validation.warnings.len(), 1);
    let warning = &validation.warnings[0];
    assert_eq!(warning.key, "models[0].id");
    assert_eq!(warning.position.line, 4);
    assert!(
        warning
            .message
            .contains("model `org/absent` (revision main) is not cached"),
        "{}",
        warning.message
    );
    assert!(
        warning
            .message
            .contains("huggingface-cli download org/absent"),
        "{}",
        warning.message
    );
    assert_eq!(validation.nodes.len(), 6);
}

#[test]
fn invalid_id_is_spec_error() {
    let spec = common::SPEC.replace("  - path: model\n", "  - id: a/b/c\n");
    let fixture = Fixture::with_spec(&spec);
    let error = Spec::load(&fixture.spec_path(), &fixture.options()).unwrap_err();
    let issue = &error.issues()[0];
    assert_eq!(issue.key, "models[0].id");
    assert!(
        issue.message.contains("invalid HF model id `a/b/c`"),
        "{}",
        issue.message
    );
}
