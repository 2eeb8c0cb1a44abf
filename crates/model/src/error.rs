//! The error type of the model crate: configuration, weight files, tokenizers,
//! chat templates and forward-pass requests.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("failed to read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid model config {path}: {message}")]
    Config { path: PathBuf, message: String },

    #[error("unsupported model_type {found:?} in {path}; supported model types: {supported}")]
    UnsupportedModelType {
        path: PathBuf,
        found: String,
        supported: String,
    },

    #[error(
        "unsupported rope scaling {found:?} in {path}; supported: none, \"linear\", \"llama3\""
    )]
    UnsupportedRopeScaling { path: PathBuf, found: String },

    #[error("unsupported {model_type} model in {path}: it uses {feature}. {hint}")]
    UnsupportedFeature {
        path: PathBuf,
        model_type: String,
        feature: String,
        hint: String,
    },

    #[error(
        "no weights found in {dir}: expected model.safetensors or model.safetensors.index.json"
    )]
    WeightsNotFound { dir: PathBuf },

    #[error(
        "refusing to load pickled checkpoint {path}: unpickling can execute code. \
         Convert it to safetensors first, for example in Python: \
         `AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)`"
    )]
    PickledCheckpoint { path: PathBuf },

    #[error("invalid safetensors file {path}: {message}")]
    Safetensors { path: PathBuf, message: String },

    #[error("invalid GGUF file {path}: {message}")]
    Gguf { path: PathBuf, message: String },

    #[error("tensor {name:?} not found in {path}")]
    MissingTensor { name: String, path: PathBuf },

    #[error("tensor {name:?} in {path} has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        path: PathBuf,
        expected: Vec<i64>,
        found: Vec<i64>,
    },

    #[error("tensor {name:?} in {path} has dtype {dtype}, which ihs cannot load; supported: F32, F16, BF16")]
    TensorDtype {
        name: String,
        path: PathBuf,
        dtype: String,
    },

    #[error("invalid dtype {0:?}; expected one of f32, f16, bf16")]
    InvalidDtype(String),

    #[error("invalid device {0:?}; expected cpu, cuda or cuda:N")]
    InvalidDevice(String),

    #[error("device {device} requested but {reason}")]
    DeviceUnavailable { device: String, reason: String },

    #[error("tokenizer error in {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("invalid tokenizer metadata {key} in {path}: {message}")]
    GgufTokenizer {
        path: PathBuf,
        key: String,
        message: String,
    },

    #[error("chat template error: {0}")]
    ChatTemplate(String),

    #[error("unknown built-in chat template {found:?}; built-in templates: {supported}")]
    UnknownTemplate { found: String, supported: String },

    #[error("invalid forward request: {0}")]
    Request(String),

    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            message: message.into(),
        }
    }
}
