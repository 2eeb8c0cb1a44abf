//! Offline lookup of HF hub models in the local HF cache.
//!
//! The cache layout is the one `huggingface_hub` writes:
//! `<cache>/models--{org}--{name}/refs/<branch or tag>` contains a commit
//! hash, and `<cache>/models--{org}--{name}/snapshots/<commit>/` is the model
//! folder. Nothing is downloaded here.

use std::path::{Path, PathBuf};

/// A hub model that cannot be found in the cache.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error("invalid HF model id `{id}`; expected `org/name` or `name`")]
    InvalidId { id: String },

    #[error("invalid revision `{revision}` for `{id}`; use a branch, tag or commit without `/..` or `\\`")]
    InvalidRevision { id: String, revision: String },

    #[error(
        "cannot find the HF cache: none of HF_HUB_CACHE, HF_HOME and HOME is set; set HF_HUB_CACHE"
    )]
    NoCacheDir,

    #[error("model `{id}` (revision {revision}) is not cached: {reason}; download it with `{}` (or `{}`), or set HF_HUB_CACHE or HF_HOME to the cache that has it", download_command("huggingface-cli", id, revision), download_command("hf", id, revision))]
    NotCached {
        id: String,
        revision: String,
        reason: String,
    },
}

fn download_command(tool: &str, id: &str, revision: &str) -> String {
    if revision == DEFAULT_REVISION {
        format!("{tool} download {id}")
    } else {
        format!("{tool} download {id} --revision {revision}")
    }
}

const DEFAULT_REVISION: &str = "main";

/// Returns the hub cache folder: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub`. `lookup` reads an environment variable.
pub fn cache_dir(lookup: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf, HubError> {
    let set = |name: &str| lookup(name).filter(|value| !value.is_empty());
    if let Some(cache) = set("HF_HUB_CACHE") {
        return Ok(PathBuf::from(cache));
    }
    if let Some(home) = set("HF_HOME") {
        return Ok(PathBuf::from(home).join("hub"));
    }
    if let Some(home) = set("HOME") {
        return Ok(PathBuf::from(home).join(".cache/huggingface/hub"));
    }
    Err(HubError::NoCacheDir)
}

/// Returns the snapshot folder of `id` at `revision` (default `main`) in the
/// cache chosen by [`cache_dir`].
pub fn resolve(
    id: &str,
    revision: Option<&str>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, HubError> {
    resolve_in(&cache_dir(lookup)?, id, revision)
}

/// Returns the snapshot folder of `id` at `revision` in `cache`. A revision
/// of 40 hex digits is a commit and used as is; any other is read from
/// `refs/<revision>`. The snapshot must contain `config.json`.
pub fn resolve_in(cache: &Path, id: &str, revision: Option<&str>) -> Result<PathBuf, HubError> {
    let repo = repo_folder_name(id)?;
    let revision = revision.unwrap_or(DEFAULT_REVISION);
    if revision.is_empty()
        || revision.contains("..")
        || revision.contains('\\')
        || revision.starts_with('/')
    {
        return Err(HubError::InvalidRevision {
            id: id.to_owned(),
            revision: revision.to_owned(),
        });
    }
    let not_cached = |reason: String| HubError::NotCached {
        id: id.to_owned(),
        revision: revision.to_owned(),
        reason,
    };

    let repo_dir = cache.join(repo);
    if !repo_dir.is_dir() {
        return Err(not_cached(format!("{} does not exist", repo_dir.display())));
    }

    let commit = if is_commit_hash(revision) {
        revision.to_owned()
    } else {
        let reference = repo_dir.join("refs").join(revision);
        let text = std::fs::read_to_string(&reference)
            .map_err(|error| not_cached(format!("cannot read {}: {error}", reference.display())))?;
        let commit = text.trim().to_owned();
        if !is_commit_hash(&commit) {
            return Err(not_cached(format!(
                "{} does not contain a commit hash",
                reference.display()
            )));
        }
        commit
    };

    let snapshot = repo_dir.join("snapshots").join(&commit);
    if !snapshot.is_dir() {
        return Err(not_cached(format!("{} does not exist", snapshot.display())));
    }
    if !snapshot.join("config.json").is_file() {
        return Err(not_cached(format!(
            "{} has no config.json (an interrupted download?)",
            snapshot.display()
        )));
    }
    Ok(snapshot)
}

/// Returns `models--{org}--{name}` for `org/name`, or `models--{name}`.
fn repo_folder_name(id: &str) -> Result<String, HubError> {
    let parts: Vec<&str> = id.split('/').collect();
    let valid_part = |part: &&str| {
        !part.is_empty()
            && *part != "."
            && *part != ".."
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if parts.len() > 2 || !parts.iter().all(valid_part) {
        return Err(HubError::InvalidId { id: id.to_owned() });
    }
    Ok(format!("models--{}", parts.join("--")))
}

fn is_commit_hash(text: &str) -> bool {
    text.len() == 40 && text.chars().all(|c| c.is_ascii_hexdigit())
}

/// Returns the last part of a hub id, for deriving a model's name.
pub(crate) fn id_basename(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            }
        };
        let all = env(&[("HF_HUB_CACHE", "/c"), ("HF_HOME", "/h"), ("HOME", "/u")]);
        assert_eq!(cache_dir(&all).unwrap(), PathBuf::from("/c"));
        let home = env(&[("HF_HOME", "/h"), ("HOME", "/u")]);
        assert_eq!(cache_dir(&home).unwrap(), PathBuf::from("/h/hub"));
        let user = env(&[("HOME", "/u")]);
        assert_eq!(
            cache_dir(&user).unwrap(),
            PathBuf::from("/u/.cache/huggingface/hub")
        );
        let none = env(&[]);
        assert!(matches!(cache_dir(&none), Err(HubError::NoCacheDir)));
    }

    #[test]
    fn repo_folder_names() {
        assert_eq!(
            repo_folder_name("meta-llama/Llama-2-7b-chat-hf").unwrap(),
            "models--meta-llama--Llama-2-7b-chat-hf"
        );
        assert_eq!(repo_folder_name("gpt2").unwrap(), "models--gpt2");
        assert!(repo_folder_name("a/b/c").is_err());
        assert!(repo_folder_name("../x").is_err());
        assert!(repo_folder_name("a/").is_err());
    }
}
