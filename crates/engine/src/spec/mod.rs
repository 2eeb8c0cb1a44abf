//! The experiment spec: one YAML file naming the models, the prompt datasets
//! and the parameters of each stage. `docs/pipeline-spec.md` documents every
//! key.
//!
//! [`Spec::load`] parses the file with `serde_yaml` (unknown keys and wrong
//! types are errors with a line and column), then checks what serde cannot:
//! missing files, duplicate names, undefined classes and value ranges. Those
//! checks find positions in a second pass over the document with yaml-rust2.

mod check;
mod locate;
mod paths;
mod sections;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use locate::Position;
pub use sections::{
    AggregateSection, Classifiers, ExtractLens, ExtractSection, GraftSection, GraftSource,
    LayerSelection, LensSection, LogisticParams, MlpParams, Positions, ProbeSection, ProbeTask,
    StoreDtype, SvmParams, TaskKind, TokenizeSection, Truncation,
};

use sections::present_means_enabled;

/// A parsed and checked experiment spec. Its input paths are absolute after
/// loading, and `output` stays as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Experiment name; the default output folder is `outputs/<name>`.
    pub name: String,
    /// Output folder as written (see [`Spec::output_dir`] for the resolved one).
    #[serde(default)]
    pub output: Option<PathBuf>,
    pub models: Vec<ModelEntry>,
    /// Prompt datasets by class name.
    pub datasets: BTreeMap<String, DatasetEntry>,
    #[serde(default, deserialize_with = "present_means_enabled")]
    pub tokenize: Option<TokenizeSection>,
    #[serde(default, deserialize_with = "present_means_enabled")]
    pub extract: Option<ExtractSection>,
    #[serde(default, deserialize_with = "present_means_enabled")]
    pub probe: Option<ProbeSection>,
    #[serde(default, deserialize_with = "present_means_enabled")]
    pub lens: Option<LensSection>,
    #[serde(default, deserialize_with = "present_means_enabled")]
    pub graft: Option<GraftSection>,
    #[serde(default, deserialize_with = "present_means_enabled")]
    pub aggregate: Option<AggregateSection>,
    #[serde(skip)]
    files: SpecFiles,
}

#[derive(Debug, Clone, Default)]
struct SpecFiles {
    spec_path: PathBuf,
    spec_dir: PathBuf,
    output_dir: PathBuf,
}

/// How [`Spec::load`] finds relative paths and environment variables.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Folder the output folder and default input paths are relative to;
    /// the process's current directory when `None`.
    pub current_dir: Option<PathBuf>,
    /// Variables for `${VAR}`, `~` and the HF cache location; the process
    /// environment when `None`.
    pub env: Option<BTreeMap<String, String>>,
}

impl LoadOptions {
    pub(crate) fn lookup(&self, name: &str) -> Option<String> {
        match &self.env {
            Some(env) => env.get(name).cloned(),
            None => std::env::var(name).ok(),
        }
    }
}

/// A spec together with the problems that do not make it invalid.
#[derive(Debug, Clone)]
pub struct LoadedSpec {
    pub spec: Spec,
    pub warnings: Vec<SpecWarning>,
}

/// A problem that leaves the spec valid but stops some nodes from running,
/// such as a model that is not downloaded yet.
#[derive(Debug, Clone)]
pub struct SpecWarning {
    pub key: String,
    pub position: Position,
    pub message: String,
}

impl fmt::Display for SpecWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.position.line, self.position.column, self.key, self.message
        )
    }
}

/// One problem in a spec, at a key and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecIssue {
    /// Key path such as `models[0].path` or `datasets.normal.column`; empty
    /// for the document itself.
    pub key: String,
    pub position: Position,
    pub message: String,
}

/// An invalid or unreadable spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read spec {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot find the current directory: {0}")]
    CurrentDir(#[source] std::io::Error),

    #[error("{}", format_issues(path, issues))]
    Invalid {
        path: PathBuf,
        issues: Vec<SpecIssue>,
    },
}

fn format_issues(path: &Path, issues: &[SpecIssue]) -> String {
    let lines: Vec<String> = issues
        .iter()
        .map(|issue| {
            let key = if issue.key.is_empty() {
                String::new()
            } else {
                format!("{}: ", issue.key)
            };
            format!(
                "{}:{}:{}: {key}{}",
                path.display(),
                issue.position.line,
                issue.position.column,
                issue.message
            )
        })
        .collect();
    lines.join("\n")
}

impl SpecError {
    /// Returns the issues of an invalid spec (empty for a read error).
    #[must_use]
    pub fn issues(&self) -> &[SpecIssue] {
        match self {
            Self::Invalid { issues, .. } => issues,
            _ => &[],
        }
    }
}

impl Spec {
    /// Reads, parses and checks a spec file.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<LoadedSpec, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|source| SpecError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml(&text, path, options)
    }

    /// Parses and checks spec text that was read from `path` (used for
    /// messages and to resolve relative input paths).
    pub fn from_yaml(
        text: &str,
        path: &Path,
        options: &LoadOptions,
    ) -> Result<LoadedSpec, SpecError> {
        let current_dir = match &options.current_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_dir().map_err(SpecError::CurrentDir)?,
        };
        let spec_path = if path.is_absolute() {
            path.to_owned()
        } else {
            current_dir.join(path)
        };
        check::load(text, &spec_path, &current_dir, options)
    }

    /// Returns the spec file's path.
    #[must_use]
    pub fn spec_path(&self) -> &Path {
        &self.files.spec_path
    }

    /// Returns the folder relative input paths were resolved against.
    #[must_use]
    pub fn spec_dir(&self) -> &Path {
        &self.files.spec_dir
    }

    /// Returns the absolute output folder.
    #[must_use]
    pub fn output_dir(&self) -> &Path {
        &self.files.output_dir
    }

    /// Returns the model named `name`.
    #[must_use]
    pub fn model(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|model| model.name == name)
    }

    /// Returns whether the spec has a section for `stage`.
    #[must_use]
    pub fn has_section(&self, stage: &str) -> bool {
        match stage {
            "tokenize" => self.tokenize.is_some(),
            "extract" => self.extract.is_some(),
            "probe" => self.probe.is_some(),
            "lens" => self.lens.is_some(),
            "graft" => self.graft.is_some(),
            "aggregate" => self.aggregate.is_some(),
            _ => false,
        }
    }

    /// Returns a stage's section as JSON, with defaults filled in even when
    /// the section is absent (a stage run only because a later one needs it).
    /// `None` for a name that has no section.
    #[must_use]
    pub fn section_value(&self, stage: &str) -> Option<serde_json::Value> {
        fn value<T: Serialize + Default + Clone>(section: Option<&T>) -> serde_json::Value {
            let section = section.cloned().unwrap_or_default();
            serde_json::to_value(section).unwrap_or(serde_json::Value::Null)
        }
        Some(match stage {
            "tokenize" => value(self.tokenize.as_ref()),
            "extract" => value(self.extract.as_ref()),
            "probe" => value(self.probe.as_ref()),
            "lens" => value(self.lens.as_ref()),
            "graft" => value(self.graft.as_ref()),
            "aggregate" => value(self.aggregate.as_ref()),
            _ => return None,
        })
    }
}

/// One model of the experiment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelEntry {
    /// Folder with `config.json`, or a `.gguf` file (absolute after loading).
    pub path: Option<PathBuf>,
    /// HF hub id (`org/name`), resolved offline in the HF cache.
    pub id: Option<String>,
    /// Hub revision: a branch, tag or commit; `main` when unset.
    pub revision: Option<String>,
    /// Slug used in output paths; derived from `path` or `id` when unset.
    pub name: String,
    pub dtype: Dtype,
    /// One device, or several to split the blocks over.
    pub devices: Vec<Device>,
    pub template: Template,
    pub system_prompt: Option<String>,
    #[serde(skip)]
    local_path: Option<PathBuf>,
    /// Why `local_path` is unset (a hub model that is not cached).
    #[serde(skip)]
    resolve_error: Option<String>,
}

impl Default for ModelEntry {
    fn default() -> Self {
        Self {
            path: None,
            id: None,
            revision: None,
            name: String::new(),
            dtype: Dtype::F32,
            devices: vec![Device::Cpu],
            template: Template::Model,
            system_prompt: None,
            local_path: None,
            resolve_error: None,
        }
    }
}

impl ModelEntry {
    /// Returns the model's folder or `.gguf` file on this machine; `None` for
    /// a hub model that is not in the HF cache.
    #[must_use]
    pub fn local_path(&self) -> Option<&Path> {
        self.local_path.as_deref()
    }

    /// Returns why [`Self::local_path`] is `None`, with the command that
    /// downloads the model.
    #[must_use]
    pub fn resolve_error(&self) -> Option<&str> {
        self.resolve_error.as_deref()
    }

    /// Returns whether the model is a single GGUF file.
    #[must_use]
    pub fn is_gguf(&self) -> bool {
        self.local_path
            .as_deref()
            .or(self.path.as_deref())
            .is_some_and(is_gguf_path)
    }

    /// Returns `path` or `id`, for messages.
    #[must_use]
    pub fn source(&self) -> String {
        match (&self.path, &self.id) {
            (Some(path), _) => path.display().to_string(),
            (None, Some(id)) => id.clone(),
            (None, None) => String::new(),
        }
    }
}

pub(crate) fn is_gguf_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("gguf"))
}

/// Floating-point type the model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[serde(alias = "float32")]
    F32,
    #[serde(alias = "float16")]
    F16,
    #[serde(alias = "bfloat16")]
    Bf16,
}

/// A device name: `cpu` or `cuda:N` (`cuda` means `cuda:0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl FromStr for Device {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("invalid device `{text}`; expected `cpu`, `cuda` or `cuda:N`");
        match text.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(invalid),
        }
    }
}

impl Serialize for Device {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How prompts are wrapped before tokenization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Template {
    /// The chat template of the model's tokenizer config.
    #[serde(rename = "model")]
    Model,
    /// The prompt text as it is.
    #[serde(rename = "raw")]
    Raw,
    #[serde(rename = "llama-2")]
    Llama2,
    #[serde(rename = "llama-3")]
    Llama3,
    #[serde(rename = "vicuna_v1.1")]
    VicunaV11,
    #[serde(rename = "mistral")]
    Mistral,
    #[serde(rename = "falcon")]
    Falcon,
}

impl Template {
    /// Returns the name used in specs (`model`, `raw`, `llama-2`, ...).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Raw => "raw",
            Self::Llama2 => "llama-2",
            Self::Llama3 => "llama-3",
            Self::VicunaV11 => "vicuna_v1.1",
            Self::Mistral => "mistral",
            Self::Falcon => "falcon",
        }
    }
}

/// One class of prompts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetEntry {
    /// The file (absolute after loading).
    pub path: PathBuf,
    /// Set from the extension when not written.
    #[serde(default)]
    pub format: Option<DatasetFormat>,
    /// Column (CSV, Parquet) or key (JSON, JSONL) holding the prompt text.
    pub column: String,
    /// Keep at most this many prompts.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Seed for choosing `limit` prompts at random; without it the first
    /// `limit` are kept.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Append "." to prompts that end in neither "." nor "?".
    #[serde(default)]
    pub punctuation: bool,
    /// Drop a prompt whose trimmed text equals an earlier one of the same file.
    #[serde(default = "default_true")]
    pub drop_duplicates: bool,
}

fn default_true() -> bool {
    true
}

/// Dataset file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    Csv,
    Jsonl,
    Json,
    Parquet,
}

impl DatasetFormat {
    /// Infers the format from a file extension (`.csv`, `.jsonl` or
    /// `.ndjson`, `.json`, `.parquet` or `.pq`).
    #[must_use]
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Self::Csv),
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            "json" => Some(Self::Json),
            "parquet" | "pq" => Some(Self::Parquet),
            _ => None,
        }
    }
}
