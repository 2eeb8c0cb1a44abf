//! The Falcon family: falcon-7b and falcon-7b-instruct, and the
//! `new_decoder_architecture` of falcon-40b and falcon-180B.
//!
//! Follows `FalconForCausalLM` of HF transformers 5.25 (`modeling_falcon.py`):
//! `LayerNorm` with a bias, one fused `query_key_value` projection, rotary
//! embeddings, a GELU MLP, and attention computed in parallel with the MLP
//! from the same block input (or sequentially with `parallel_attn: false`).
//! Weight names follow the HF checkpoint (`transformer.h.{i}.self_attention.dense`).
//! `ALiBi` models are rejected when the config is parsed.

use tch::{Device, Kind, Tensor};

use crate::batch::Batch;
use crate::config::{BlockLayout, ModelConfig};
use crate::decoder::{self, Decoder, DeviceContext, ForwardContext};
use crate::device::DeviceMap;
use crate::error::Result;
use crate::rope;
use crate::weights::Weights;

/// Falcon's linear layer: `x W^T`, then `+ b` as a separate step. HF keeps
/// the two apart because Falcon was trained without fusing them (a comment in
/// `modeling_falcon.py`), so in bf16 the product is rounded before the bias is added.
#[derive(Debug)]
struct FalconLinear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl FalconLinear {
    fn load(
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

    fn forward(&self, x: &Tensor) -> Tensor {
        let product = x.matmul(&self.weight.tr());
        match &self.bias {
            Some(bias) => product + bias,
            None => product,
        }
    }
}

/// `torch.nn.LayerNorm` over the last dimension, in the model dtype.
#[derive(Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(
        weights: &Weights,
        prefix: &str,
        size: usize,
        eps: f64,
        kind: Kind,
        device: Device,
    ) -> Result<Self> {
        let shape = [size as i64];
        Ok(Self {
            weight: weights.load(&format!("{prefix}.weight"), &shape, kind, device)?,
            bias: weights.load(&format!("{prefix}.bias"), &shape, kind, device)?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let width = self.weight.size()[0];
        x.layer_norm(
            [width],
            Some(&self.weight),
            Some(&self.bias),
            self.eps,
            true,
        )
    }
}

#[derive(Debug)]
struct Attention {
    query_key_value: FalconLinear,
    dense: FalconLinear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn forward(&self, x: &Tensor, context: &DeviceContext) -> Tensor {
        let (batch, seq, _) = x.size3().expect("hidden states are [batch, seq, hidden]");
        let heads_per_group = self.num_heads / self.num_kv_heads;

        // The fused rows form one group per key/value head: the group's
        // queries, then its key, then its value. Multi-query attention is one
        // group, and Falcon's multi-head layout a group of one query per head.
        let grouped = self.query_key_value.forward(x).view([
            batch,
            seq,
            self.num_kv_heads,
            heads_per_group + 2,
            self.head_dim,
        ]);
        let q = grouped
            .narrow(3, 0, heads_per_group)
            .reshape([batch, seq, self.num_heads, self.head_dim])
            .transpose(1, 2);
        let k = grouped.select(3, heads_per_group).transpose(1, 2);
        let v = grouped.select(3, heads_per_group + 1).transpose(1, 2);
        let q = rope::apply(&q, &context.cos, &context.sin);
        let k = rope::apply(&k, &context.cos, &context.sin);

        let attended = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(&context.mask),
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
        self.dense.forward(&merged)
    }
}

#[derive(Debug)]
struct Mlp {
    dense_h_to_4h: FalconLinear,
    dense_4h_to_h: FalconLinear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        let inner = self.dense_h_to_4h.forward(x).gelu("none");
        self.dense_4h_to_h.forward(&inner)
    }
}

/// The norms of one block, named as the checkpoint names them.
#[derive(Debug)]
enum Norms {
    /// `input_layernorm` before attention, `post_attention_layernorm` before the MLP.
    Sequential {
        input_layernorm: LayerNorm,
        post_attention_layernorm: LayerNorm,
    },
    /// `input_layernorm`, read by attention and MLP alike.
    Shared { input_layernorm: LayerNorm },
    /// `ln_attn` before attention and `ln_mlp` before the MLP, both on the block input.
    Separate {
        ln_attn: LayerNorm,
        ln_mlp: LayerNorm,
    },
}

#[derive(Debug)]
struct Block {
    norms: Norms,
    self_attention: Attention,
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
        let prefix = format!("transformer.h.{index}");
        let h = config.hidden_size;
        let fused = (config.num_heads + 2 * config.num_kv_heads) * config.head_dim;
        let inter = config.intermediate_size;
        let linear = |name: &str, dims, bias| {
            FalconLinear::load(
                weights,
                &format!("{prefix}.{name}"),
                dims,
                bias,
                kind,
                device,
            )
        };
        let norm = |name: &str| {
            LayerNorm::load(
                weights,
                &format!("{prefix}.{name}"),
                h,
                config.norm_eps,
                kind,
                device,
            )
        };

        let norms = match config.block_layout {
            BlockLayout::Sequential => Norms::Sequential {
                input_layernorm: norm("input_layernorm")?,
                post_attention_layernorm: norm("post_attention_layernorm")?,
            },
            BlockLayout::ParallelSharedNorm => Norms::Shared {
                input_layernorm: norm("input_layernorm")?,
            },
            BlockLayout::ParallelSeparateNorms => Norms::Separate {
                ln_attn: norm("ln_attn")?,
                ln_mlp: norm("ln_mlp")?,
            },
        };
        Ok(Self {
            norms,
            self_attention: Attention {
                query_key_value: linear(
                    "self_attention.query_key_value",
                    (fused, h),
                    config.attention_bias,
                )?,
                dense: linear(
                    "self_attention.dense",
                    (h, config.num_heads * config.head_dim),
                    config.attention_output_bias,
                )?,
                num_heads: config.num_heads as i64,
                num_kv_heads: config.num_kv_heads as i64,
                head_dim: config.head_dim as i64,
            },
            mlp: Mlp {
                dense_h_to_4h: linear("mlp.dense_h_to_4h", (inter, h), config.mlp_bias)?,
                dense_4h_to_h: linear("mlp.dense_4h_to_h", (h, inter), config.mlp_bias)?,
            },
        })
    }

    /// Runs the block. The parallel layouts add `mlp + attention` first and
    /// the residual last, in HF's order, which matters for rounding in bf16.
    fn forward(&self, x: &Tensor, context: &DeviceContext) -> Tensor {
        match &self.norms {
            Norms::Sequential {
                input_layernorm,
                post_attention_layernorm,
            } => {
                let attended = self
                    .self_attention
                    .forward(&input_layernorm.forward(x), context);
                let x = x + attended;
                let mlp = self.mlp.forward(&post_attention_layernorm.forward(&x));
                x + mlp
            }
            Norms::Shared { input_layernorm } => {
                let normed = input_layernorm.forward(x);
                let attended = self.self_attention.forward(&normed, context);
                let mlp = self.mlp.forward(&normed);
                x + (mlp + attended)
            }
            Norms::Separate { ln_attn, ln_mlp } => {
                let attended = self.self_attention.forward(&ln_attn.forward(x), context);
                let mlp = self.mlp.forward(&ln_mlp.forward(x));
                x + (mlp + attended)
            }
        }
    }
}

/// A Falcon decoder with its weights placed by a [`DeviceMap`].
#[derive(Debug)]
pub struct Falcon {
    word_embeddings: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// `None` when the LM head is tied to the embeddings.
    lm_head: Option<Tensor>,
    inv_freq: Tensor,
    kind: Kind,
    map: DeviceMap,
}

impl Falcon {
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

        let word_embeddings = weights.load(
            "transformer.word_embeddings.weight",
            &[vocab, h],
            kind,
            first,
        )?;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for index in 0..config.num_layers {
            tracing::trace!(block = index, "loading block");
            blocks.push(Block::load(weights, config, index, kind, map.block(index))?);
        }
        let ln_f = LayerNorm::load(
            weights,
            "transformer.ln_f",
            config.hidden_size,
            config.norm_eps,
            kind,
            last,
        )?;
        // The config decides, even when a tied checkpoint also stores lm_head.weight.
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(weights.load("lm_head.weight", &[vocab, h], kind, last)?)
        };

        Ok(Self {
            word_embeddings,
            blocks,
            ln_f,
            lm_head,
            inv_freq: rope::inverse_frequencies(&config.rope, config.head_dim, Device::Cpu),
            kind,
            map,
        })
    }
}

impl Decoder for Falcon {
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
            &self.word_embeddings,
            &input_ids.to_device(self.map.first()),
            -1,
            false,
            false,
        )
    }

    fn prepare(&self, batch: &Batch) -> ForwardContext {
        decoder::rotary_context(&self.map, batch, &self.inv_freq, self.kind, None)
    }

    fn block(&self, index: usize, hidden: &Tensor, context: &ForwardContext) -> Tensor {
        let device = self.map.block(index);
        self.blocks[index].forward(&hidden.to_device(device), context.on(device))
    }

    fn final_norm(&self, hidden: &Tensor) -> Tensor {
        self.ln_f.forward(&hidden.to_device(self.map.last()))
    }

    fn lm_head(&self, normed: &Tensor) -> Tensor {
        let weight = self.lm_head.as_ref().unwrap_or(&self.word_embeddings);
        normed
            .to_device(weight.device())
            .linear::<Tensor>(weight, None)
    }
}
