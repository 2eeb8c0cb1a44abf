//! Causal language models in tch (libtorch) with named points where hidden
//! states are read and replaced, for probing LLM safety through intermediate
//! hidden states.
//!
//! - [`CausalLm`] runs a padded [`Batch`] and returns the residual stream at
//!   the requested layers and positions ([`ForwardRequest`]), optionally with
//!   a [`Graft`] that replaces one position's state after a block.
//! - [`TextTokenizer`] and [`PromptFormat`] turn a request into token ids
//!   through the model's own chat template or a built-in `FastChat` format.
//!
//! Weights come from HF safetensors checkpoints; the numerics follow HF
//! transformers so that every layer's state matches its hidden states.

pub mod batch;
pub mod chat;
pub mod config;
pub mod decoder;
pub mod device;
pub mod error;
pub mod falcon;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod llama;
pub mod rope;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

use tch::{Device, Kind, Tensor};

pub use batch::{Batch, PaddingSide};
pub use chat::{Builtin, Message, SpecialTokens};
pub use config::{BlockLayout, Family, MlpKind, ModelConfig, NormKind, RopeScaling};
pub use decoder::{
    ForwardOutput, ForwardRequest, Graft, GraftTarget, GraftedLogits, Layers, Position,
};
pub use device::{parse_device, DeviceMap, Dtype};
pub use error::{ModelError, Result};
pub use gguf_tokenizer::tokenizer_from_gguf;
pub use tokenizer::{EncodedPrompt, PromptFormat, TemplateChoice, TextTokenizer};
pub use weights::Weights;

use decoder::Decoder;

/// Opens a checkpoint without loading its tensors: an HF model folder
/// (`config.json` plus safetensors) or a llama.cpp `.gguf` file.
pub fn open_checkpoint(path: &Path) -> Result<(ModelConfig, Weights)> {
    if is_gguf(path) {
        let file = std::sync::Arc::new(gguf::open(path)?);
        let config = gguf::config(&file, path)?;
        let weights = Weights::from_gguf(gguf::GgufWeights::new(file, path, &config));
        return Ok((config, weights));
    }
    let config = ModelConfig::from_file(&path.join("config.json"))?;
    Ok((config, Weights::open_dir(path)?))
}

/// Loads the tokenizer of a checkpoint: `tokenizer.json` and
/// `tokenizer_config.json` of an HF folder, or the tokenizer a GGUF file's
/// metadata describes.
pub fn load_tokenizer(path: &Path) -> Result<TextTokenizer> {
    if is_gguf(path) {
        let file = gguf::open(path)?;
        return tokenizer_from_gguf(&file, path);
    }
    TextTokenizer::from_dir(path)
}

/// Returns whether `path` names a GGUF file (by its extension).
#[must_use]
pub fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// Model placement: its dtype and the devices its blocks are split over.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub dtype: Dtype,
    /// One device for the whole model, or several to split the blocks over.
    pub devices: Vec<Device>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: Dtype::F32,
            devices: vec![Device::Cpu],
        }
    }
}

/// A loaded decoder-only language model.
#[derive(Debug)]
pub struct CausalLm {
    config: ModelConfig,
    dtype: Dtype,
    decoder: Box<dyn Decoder>,
}

impl CausalLm {
    /// Loads an HF model folder or a `.gguf` file (see [`open_checkpoint`]).
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        let (config, weights) = open_checkpoint(path)?;
        Self::from_weights(config, &weights, options)
    }

    /// Loads `config.json` and the safetensors weights of an HF model folder.
    pub fn load_dir(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join("config.json"))?;
        let weights = Weights::open_dir(dir)?;
        Self::from_weights(config, &weights, options)
    }

    /// Builds the model from a parsed config and opened weights.
    pub fn from_weights(
        config: ModelConfig,
        weights: &Weights,
        options: &LoadOptions,
    ) -> Result<Self> {
        let map = DeviceMap::split(&options.devices, config.num_layers)?;
        device::ensure_available(&map)?;
        let kind = options.dtype.kind();
        let decoder: Box<dyn Decoder> = match config.family {
            Family::Llama | Family::Mistral | Family::Qwen2 => {
                Box::new(llama::Llama::load(weights, &config, kind, map)?)
            }
            Family::Falcon => Box::new(falcon::Falcon::load(weights, &config, kind, map)?),
        };
        Ok(Self {
            config,
            dtype: options.dtype,
            decoder,
        })
    }

    #[must_use]
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    #[must_use]
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    #[must_use]
    pub fn device_map(&self) -> &DeviceMap {
        self.decoder.device_map()
    }

    /// Returns the number of decoder blocks; states run over indices 0..=L.
    #[must_use]
    pub fn num_layers(&self) -> usize {
        self.decoder.num_layers()
    }

    /// Runs one forward pass without autograd.
    pub fn forward(&self, batch: &Batch, request: &ForwardRequest) -> Result<ForwardOutput> {
        decoder::run(self.decoder.as_ref(), batch, request)
    }

    /// Computes the next-token logits of `batch` without a graft and with
    /// each of `grafts`. The logits equal those of one [`forward`] per graft,
    /// but a pass with a graft after block `l` reuses the blocks up to `l`
    /// of the pass without one. Memory: the residual stream of the whole
    /// batch after each distinct graft layer is held until the end.
    ///
    /// [`forward`]: Self::forward
    pub fn forward_grafts(&self, batch: &Batch, grafts: &[Graft]) -> Result<GraftedLogits> {
        decoder::run_grafts(self.decoder.as_ref(), batch, grafts)
    }

    /// Reads states through the logit lens: `lm_head(final_norm(h))` in the
    /// model dtype. Takes `[..., hidden]` states of any dtype and device and
    /// returns `[..., vocab]` f32 logits on the first device.
    pub fn logit_lens(&self, states: &Tensor) -> Result<Tensor> {
        let width = states.size().last().copied().unwrap_or(0);
        if width != self.config.hidden_size as i64 {
            return Err(ModelError::Request(format!(
                "logit lens states have width {width}; the model's hidden size is {}",
                self.config.hidden_size
            )));
        }
        let _no_grad = tch::no_grad_guard();
        let normed = self
            .decoder
            .final_norm(&states.to_kind(self.decoder.kind()));
        Ok(self
            .decoder
            .lm_head(&normed)
            .to_kind(Kind::Float)
            .to_device(self.device_map().first()))
    }
}
