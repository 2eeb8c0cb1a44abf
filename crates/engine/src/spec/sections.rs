//! The per-stage sections of a spec. Each section's `Default` impl is the one
//! place its defaults are set; `docs/pipeline-spec.md` lists them.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Deserializes an optional section or classifier so that a key written with
/// no value (`lens:`) enables it with its defaults, like `lens: {}`.
pub(crate) fn present_means_enabled<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(deserializer).map(|value| Some(value.unwrap_or_default()))
}

/// `tokenize`: how prompts become token ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenizeSection {
    /// Maximum prompt length in tokens, chat template included.
    pub max_tokens: usize,
    /// What happens to a prompt longer than `max_tokens`.
    pub truncation: Truncation,
}

impl Default for TokenizeSection {
    fn default() -> Self {
        Self {
            max_tokens: 4096,
            truncation: Truncation::Reject,
        }
    }
}

/// Handling of prompts longer than `tokenize.max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// Drop tokens from the start so that the end of the prompt is kept.
    Left,
    /// Fail the node, naming the prompt.
    Reject,
}

/// `extract`: which hidden states are stored, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractSection {
    pub layers: LayerSelection,
    pub positions: Positions,
    /// Prompts per forward pass.
    pub batch_size: Option<usize>,
    /// Tokens per forward pass (prompts times padded length).
    pub batch_tokens: Option<usize>,
    /// Prompts per shard: the unit of resumption.
    pub shard_size: usize,
    pub store_dtype: StoreDtype,
    pub lens: ExtractLens,
}

impl ExtractSection {
    /// Prompts per batch when neither `batch_size` nor `batch_tokens` is set.
    pub const DEFAULT_BATCH_SIZE: usize = 8;

    /// Returns the prompt limit per batch: `batch_size`, or
    /// [`Self::DEFAULT_BATCH_SIZE`] when no limit at all is set.
    #[must_use]
    pub fn effective_batch_size(&self) -> Option<usize> {
        match (self.batch_size, self.batch_tokens) {
            (None, None) => Some(Self::DEFAULT_BATCH_SIZE),
            (size, _) => size,
        }
    }
}

impl Default for ExtractSection {
    fn default() -> Self {
        Self {
            layers: LayerSelection::All,
            positions: Positions::Last,
            batch_size: None,
            batch_tokens: None,
            shard_size: 256,
            store_dtype: StoreDtype::F32,
            lens: ExtractLens::default(),
        }
    }
}

/// `extract.lens`: logit-lens top-k tokens recorded during extraction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractLens {
    pub enabled: bool,
    pub top_k: usize,
}

impl Default for ExtractLens {
    fn default() -> Self {
        Self {
            enabled: false,
            top_k: 10,
        }
    }
}

/// `all`, or a list of residual-stream indices (0 = embeddings, i = after
/// block i).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSelection {
    All,
    List(Vec<usize>),
}

impl Serialize for LayerSelection {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::All => serializer.serialize_str("all"),
            Self::List(layers) => layers.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for LayerSelection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LayersVisitor;

        impl<'de> Visitor<'de> for LayersVisitor {
            type Value = LayerSelection;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`all` or a list of layer indices")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                if value == "all" {
                    Ok(LayerSelection::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(value), &self))
                }
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut layers = Vec::new();
                while let Some(layer) = seq.next_element::<usize>()? {
                    layers.push(layer);
                }
                Ok(LayerSelection::List(layers))
            }
        }

        deserializer.deserialize_any(LayersVisitor)
    }
}

/// Token positions whose states are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Positions {
    /// The last prompt token.
    Last,
    /// The mean over the prompt's tokens.
    Mean,
    /// The last `n` prompt tokens, written `{last_n: n}`.
    LastN(usize),
}

impl Serialize for Positions {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Self::Last => serializer.serialize_str("last"),
            Self::Mean => serializer.serialize_str("mean"),
            Self::LastN(n) => {
                let mut map = serializer.serialize_map(Some(1))?;
                map.serialize_entry("last_n", n)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Positions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PositionsVisitor;

        impl<'de> Visitor<'de> for PositionsVisitor {
            type Value = Positions;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`last`, `mean` or `{last_n: N}`")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
                match value {
                    "last" => Ok(Positions::Last),
                    "mean" => Ok(Positions::Mean),
                    "last_n" => Err(E::custom(
                        "`last_n` needs a token count: write `positions: {last_n: 4}`",
                    )),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::invalid_length(0, &self));
                };
                if key != "last_n" {
                    return Err(de::Error::unknown_variant(&key, &["last_n"]));
                }
                let n = map.next_value::<usize>()?;
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "unexpected key `{extra}`; write `positions: {{last_n: N}}` alone"
                    )));
                }
                Ok(Positions::LastN(n))
            }
        }

        deserializer.deserialize_any(PositionsVisitor)
    }
}

/// Element type of stored hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreDtype {
    F32,
    F16,
    Bf16,
}

/// `probe`: per-layer classifiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeSection {
    pub tasks: Vec<ProbeTask>,
    pub classifiers: Classifiers,
    /// Share of each class held out for testing, in (0, 1).
    pub test_fraction: f64,
    pub seed: u64,
    /// k for k-fold cross-validation on top of the held-out split.
    pub folds: Option<usize>,
}

impl Default for ProbeSection {
    fn default() -> Self {
        Self {
            tasks: Vec::new(),
            classifiers: Classifiers::default(),
            test_fraction: 0.3,
            seed: 42,
            folds: None,
        }
    }
}

/// One classification problem trained at every layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeTask {
    pub name: String,
    pub kind: TaskKind,
    /// Classes to separate (`binary`: two, `multiclass`: two or more).
    #[serde(default)]
    pub classes: Vec<String>,
    /// `transfer`: the two classes the probe is trained on.
    #[serde(default)]
    pub train_classes: Vec<String>,
    /// `transfer`: the class it is evaluated on.
    #[serde(default)]
    pub eval_class: Option<String>,
    /// `transfer`: the training class every `eval_class` prompt should get.
    #[serde(default)]
    pub eval_label: Option<String>,
}

/// Kind of a probe task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Binary,
    Multiclass,
    Transfer,
}

/// `probe.classifiers`: the classifiers to train. A classifier is enabled
/// when its key is present; the default enables all three.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classifiers {
    #[serde(
        default,
        deserialize_with = "present_means_enabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub svm: Option<SvmParams>,
    #[serde(
        default,
        deserialize_with = "present_means_enabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub mlp: Option<MlpParams>,
    #[serde(
        default,
        deserialize_with = "present_means_enabled",
        skip_serializing_if = "Option::is_none"
    )]
    pub logistic: Option<LogisticParams>,
}

impl Default for Classifiers {
    fn default() -> Self {
        Self {
            svm: Some(SvmParams::default()),
            mlp: Some(MlpParams::default()),
            logistic: Some(LogisticParams::default()),
        }
    }
}

/// Linear SVM hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SvmParams {
    /// Inverse regularization strength.
    #[serde(alias = "C")]
    pub c: f64,
    /// Cap on training samples per task and layer (a random subset); none
    /// uses them all.
    pub max_train_samples: Option<usize>,
}

impl Default for SvmParams {
    fn default() -> Self {
        Self {
            c: 1.0,
            max_train_samples: None,
        }
    }
}

/// One-hidden-layer MLP hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlpParams {
    /// Hidden units.
    pub hidden: usize,
    /// Learning rate.
    pub lr: f64,
    /// L2 penalty.
    pub alpha: f64,
    pub max_epochs: usize,
    /// Samples per mini-batch.
    pub batch: usize,
    /// Epochs without an improvement of at least `tol` before stopping.
    pub patience: usize,
    pub tol: f64,
}

impl Default for MlpParams {
    fn default() -> Self {
        Self {
            hidden: 100,
            lr: 0.01,
            alpha: 0.01,
            max_epochs: 300,
            batch: 200,
            patience: 10,
            tol: 1e-4,
        }
    }
}

/// Logistic regression hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogisticParams {
    /// Inverse regularization strength.
    #[serde(alias = "C")]
    pub c: f64,
    pub max_iter: usize,
}

impl Default for LogisticParams {
    fn default() -> Self {
        Self {
            c: 1.0,
            max_iter: 1000,
        }
    }
}

/// `lens`: the logit lens over stored states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LensSection {
    /// YAML file of word lists (for example refusal and affirmation words).
    pub word_lists: PathBuf,
    pub top_k: usize,
    /// First and last residual-stream index read, inclusive; all when unset.
    pub layer_range: Option<[usize; 2]>,
}

impl LensSection {
    /// The word-list file used when `word_lists` is not set, relative to the
    /// current directory.
    pub const DEFAULT_WORD_LISTS: &'static str = "data/word-lists.yaml";
}

impl Default for LensSection {
    fn default() -> Self {
        Self {
            word_lists: PathBuf::from(Self::DEFAULT_WORD_LISTS),
            top_k: 10,
            layer_range: None,
        }
    }
}

/// `graft`: replace a target prompt's state with a source state and read
/// the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraftSection {
    pub target_class: String,
    pub source: GraftSource,
    /// Class the grafted states come from; required.
    pub source_class: Option<String>,
    /// Blocks after which the state is replaced; empty means every block.
    pub layers: Vec<usize>,
    pub top_k: usize,
    /// Tokens generated greedily after the graft (0: only the next-token
    /// distribution).
    pub continuation_tokens: usize,
}

impl Default for GraftSection {
    fn default() -> Self {
        Self {
            target_class: "malicious".to_owned(),
            source: GraftSource::Mean,
            source_class: None,
            layers: Vec::new(),
            top_k: 10,
            continuation_tokens: 0,
        }
    }
}

/// Where a grafted state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GraftSource {
    /// The mean state of `source_class`.
    Mean,
    /// The state of the `source_class` prompt with the same index.
    Paired,
}

/// `aggregate`: summaries across models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AggregateSection {
    /// Probe test accuracy at which a layer counts as separating the classes.
    pub accuracy_threshold: f64,
}

impl Default for AggregateSection {
    fn default() -> Self {
        Self {
            accuracy_threshold: 0.95,
        }
    }
}
