//! The Llama family: Llama-2, Llama-3, Vicuna and `SmolLM2`, and the families
//! that share its block, Mistral and Qwen2.
//!
//! Follows `LlamaForCausalLM` of HF transformers (`modeling_llama.py`):
//! pre-norm blocks with `RMSNorm`, rotary embeddings, grouped-query attention
//! through libtorch's fused scaled-dot-product attention, and a `SwiGLU` MLP.
//! Weight names follow the HF checkpoint (`model.layers.{i}.self_attn.q_proj`).
//! Mistral adds a sliding attention window (`modeling_mistral.py`), Qwen2
//! biases on the query, key and value projections and, when enabled, a
//! window on some blocks (`modeling_qwen2.py`). [`ModelConfig`] carries both settings.

use tch::{Device, Kind, Tensor};

use crate::batch::Batch;
use crate::config::ModelConfig;
use crate::decoder::{self, Decoder, DeviceContext, ForwardContext};
use crate::device::DeviceMap;
use crate::error::Result;
use crate::rope;
use crate::weights::Weights;

/// A linear layer `y = x W^T + b`.
#[derive(Debug)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub(crate) fn load(
        weights: &Weights,
        prefix: &str,
        (out_dim, in_dim): (usize, usize),
        bias: bool,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let weight = weights.load(
            &format!("{prefix}.weight"),
            &[out_dim as i64, in_dim as i64],
            kind,
            device,
        )?;
        let bias = if bias {
            Some(weights.load(&format!("{prefix}.bias"), &[out_dim as i64], kind, device)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// Root-mean-square norm, computed in f32 and cast back as HF does.
#[derive(Debug)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn load(
        weights: &Weights,
        name: &str,
        size: usize,
        eps: f64,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        Ok(Self {
            weight: weights.load(name, &[size as i64], kind, device)?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x = x.to_kind(Kind::Float);
        let variance = x.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x * (variance + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
    /// Whether this block attends through the sliding window mask.
    sliding: bool,
}

impl Attention {
    fn forward(&self, x: &Tensor, context: &DeviceContext) -> Tensor {
        let (batch, seq, _) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let heads = |t: Tensor, n: i64| t.view([batch, seq, n, self.head_dim]).transpose(1, 2);

        let q = heads(self.q_proj.forward(x), self.num_heads);
        let k = heads(self.k_proj.forward(x), self.num_kv_heads);
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let q = rope::apply(&q, &context.cos, &context.sin);
        let k = rope::apply(&k, &context.cos, &context.sin);
        let mask = if self.sliding {
            context
                .sliding_mask
                .as_ref()
                .expect("the context of a model with windowed blocks has a sliding mask")
        } else {
            &context.mask
        };

        let attended = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(mask),
            0.0,
            false,
            None,
            self.num_kv_heads != self.num_heads,
        );
        let merged = attended.transpose(1, 2).contiguous().view([
            batch,
            seq,
            self.num_heads * self.head_dim,
        ]);
        self.o_proj.forward(&merged)
    }
}

#[derive(Debug)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        let gate = self.gate_proj.forward(x).silu();
        self.down_proj.forward(&(gate * self.up_proj.forward(x)))
    }
}

#[derive(Debug)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn load(
        weights: &Weights,
        config: &ModelConfig,
        index: usize,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let prefix = format!("model.layers.{index}");
        let h = config.hidden_size;
        let q = config.num_heads * config.head_dim;
        let kv = config.num_kv_heads * config.head_dim;
        let inter = config.intermediate_size;
        let attn_bias = config.attention_bias;
        let output_bias = config.attention_output_bias;
        let mlp_bias = config.mlp_bias;
        let linear = |name: &str, dims, bias| {
            Linear::load(
                weights,
                &format!("{prefix}.{name}"),
                dims,
                bias,
                kind,
                device,
            )
        };
        let norm = |name: &str| {
            RmsNorm::load(
                weights,
                &format!("{prefix}.{name}.weight"),
                h,
                config.norm_eps,
                kind,
                device,
            )
        };

        Ok(Self {
            input_layernorm: norm("input_layernorm")?,
            self_attn: Attention {
                q_proj: linear("self_attn.q_proj", (q, h), attn_bias)?,
                k_proj: linear("self_attn.k_proj", (kv, h), attn_bias)?,
                v_proj: linear("self_attn.v_proj", (kv, h), attn_bias)?,
                o_proj: linear("self_attn.o_proj", (h, q), output_bias)?,
                num_heads: config.num_heads as i64,
                num_kv_heads: config.num_kv_heads as i64,
                head_dim: config.head_dim as i64,
                sliding: config.block_window(index).is_some(),
            },
            post_attention_layernorm: norm("post_attention_layernorm")?,
            mlp: Mlp {
                gate_proj: linear("mlp.gate_proj", (inter, h), mlp_bias)?,
                up_proj: linear("mlp.up_proj", (inter, h), mlp_bias)?,
                down_proj: linear("mlp.down_proj", (h, inter), mlp_bias)?,
            },
        })
    }

    fn forward(&self, x: &Tensor, context: &DeviceContext) -> Tensor {
        let attended = self
            .self_attn
            .forward(&self.input_layernorm.forward(x), context);
        let x = x + attended;
        let mlp = self.mlp.forward(&self.post_attention_layernorm.forward(&x));
        x + mlp
    }
}

/// A Llama-family decoder with its weights placed by a [`DeviceMap`].
#[derive(Debug)]
pub struct Llama {
    embed_tokens: Tensor,
    blocks: Vec<Block>,
    norm: RmsNorm,
    /// `None` when the LM head is tied to the embeddings.
    lm_head: Option<Tensor>,
    inv_freq: Tensor,
    /// The window of the blocks that use one, `None` when none does.
    sliding_window: Option<usize>,
    kind: Kind,
    map: DeviceMap,
}

impl Llama {
    /// Loads every tensor the config calls for, converting each to `kind`.
    pub fn load(
        weights: &Weights,
        config: &ModelConfig,
        kind: Kind,
        map: DeviceMap,
    ) -> Result<Self> {
        let h = config.hidden_size as i64;
        let vocab = config.vocab_size as i64;
        let first = map.first();
        let last = map.last();

        let embed_tokens = weights.load("model.embed_tokens.weight", &[vocab, h], kind, first)?;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for index in 0..config.num_layers {
            tracing::trace!(block = index, "loading block");
            blocks.push(Block::load(weights, config, index, kind, map.block(index))?);
        }
        let norm = RmsNorm::load(
            weights,
            "model.norm.weight",
            config.hidden_size,
            config.norm_eps,
            kind,
            last,
        )?;
        // Some tied checkpoints still store lm_head.weight; the config decides.
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(weights.load("lm_head.weight", &[vocab, h], kind, last)?)
        };

        Ok(Self {
            embed_tokens,
            blocks,
            norm,
            lm_head,
            inv_freq: rope::inverse_frequencies(&config.rope, config.head_dim, Device::Cpu),
            sliding_window: (0..config.num_layers).find_map(|index| config.block_window(index)),
            kind,
            map,
        })
    }
}

impl Decoder for Llama {
    fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    fn kind(&self) -> Kind {
        self.kind
    }

    fn device_map(&self) -> &DeviceMap {
        &self.map
    }

    fn embed(&self, input_ids: &Tensor) -> Tensor {
        Tensor::embedding(
            &self.embed_tokens,
            &input_ids.to_device(self.map.first()),
            -1,
            false,
            false,
        )
    }

    fn prepare(&self, batch: &Batch) -> ForwardContext {
        decoder::rotary_context(
            &self.map,
            batch,
            &self.inv_freq,
            self.kind,
            self.sliding_window,
        )
    }

    fn block(&self, index: usize, hidden: &Tensor, context: &ForwardContext) -> Tensor {
        let device = self.map.block(index);
        self.blocks[index].forward(&hidden.to_device(device), context.on(device))
    }

    fn final_norm(&self, hidden: &Tensor) -> Tensor {
        self.norm.forward(&hidden.to_device(self.map.last()))
    }

    fn lm_head(&self, normed: &Tensor) -> Tensor {
        let weight = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        normed
            .to_device(weight.device())
            .linear::<Tensor>(weight, None)
    }
}
