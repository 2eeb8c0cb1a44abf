//! The forward pass shared by every family: embeddings, blocks one by one,
//! and the named points between them where hidden states are read (capture)
//! or replaced (grafting).
//!
//! Index conventions: for a model with L blocks there are L + 1 residual
//! stream states per token. Index 0 is the token embedding and index i the
//! residual stream after block i. No index has the final norm applied; the
//! logit lens applies it once, to whatever state it is given.

use tch::{Device, Kind, Tensor};

use crate::batch::Batch;
use crate::device::DeviceMap;
use crate::error::{ModelError, Result};

/// Per-device tensors every block of a forward pass reads.
#[derive(Debug)]
pub struct DeviceContext {
    /// `[batch, seq, head_dim]` rotary cosines in the model dtype.
    pub cos: Tensor,
    /// `[batch, seq, head_dim]` rotary sines in the model dtype.
    pub sin: Tensor,
    /// `[batch, 1, seq, seq]` boolean attention mask.
    pub mask: Tensor,
    /// The same mask limited to the sliding window, for the blocks that use
    /// one. `None` when no block does.
    pub sliding_mask: Option<Tensor>,
}

/// Builds the rotary tables and attention masks of `batch` on every device of
/// `map`. A `sliding_window` adds the windowed mask.
pub(crate) fn rotary_context(
    map: &DeviceMap,
    batch: &Batch,
    inv_freq: &Tensor,
    kind: Kind,
    sliding_window: Option<usize>,
) -> ForwardContext {
    let (cos, sin) = crate::rope::cos_sin(inv_freq, &batch.position_ids, kind);
    let contexts = map
        .devices()
        .into_iter()
        .map(|device| {
            let context = DeviceContext {
                cos: cos.to_device(device),
                sin: sin.to_device(device),
                mask: batch.attention_mask_4d(device, None),
                sliding_mask: sliding_window
                    .map(|window| batch.attention_mask_4d(device, Some(window))),
            };
            (device, context)
        })
        .collect();
    ForwardContext::new(contexts)
}

/// The [`DeviceContext`] of each device a forward pass touches.
#[derive(Debug)]
pub struct ForwardContext {
    contexts: Vec<(Device, DeviceContext)>,
}

impl ForwardContext {
    #[must_use]
    pub fn new(contexts: Vec<(Device, DeviceContext)>) -> Self {
        Self { contexts }
    }

    /// Returns the context of `device`.
    ///
    /// # Panics
    /// When the device is not in the model's device map, which `prepare` rules out.
    #[must_use]
    pub fn on(&self, device: Device) -> &DeviceContext {
        self.contexts
            .iter()
            .find(|(d, _)| *d == device)
            .map(|(_, c)| c)
            .expect("forward context prepared for every device of the map")
    }
}

/// The parts of a model family that [`CausalLm`](crate::CausalLm) drives.
pub trait Decoder: std::fmt::Debug + Send {
    fn num_layers(&self) -> usize;
    fn kind(&self) -> Kind;
    fn device_map(&self) -> &DeviceMap;
    /// Returns `[batch, seq, hidden]` embeddings on the first device.
    fn embed(&self, input_ids: &Tensor) -> Tensor;
    /// Builds the rotary tables and masks for a batch.
    fn prepare(&self, batch: &Batch) -> ForwardContext;
    /// Runs block `index` on `hidden`, moving it to the block's device.
    fn block(&self, index: usize, hidden: &Tensor, context: &ForwardContext) -> Tensor;
    fn final_norm(&self, hidden: &Tensor) -> Tensor;
    fn lm_head(&self, normed: &Tensor) -> Tensor;
}

/// Which token positions of each prompt are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    /// The last prompt token, as Zhou et al. (2024) probe it: `[batch, 1, hidden]`.
    Last,
    /// The mean over the prompt's real tokens: `[batch, 1, hidden]`.
    Mean,
    /// The last `n` real tokens, oldest first: `[batch, n, hidden]`.
    LastN(usize),
    /// Every padded position: `[batch, seq, hidden]`; padding rows hold
    /// values no real token depends on.
    All,
}

/// The residual stream indices (0..=L) to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layers {
    All,
    Indices(Vec<usize>),
    None,
}

/// The positions a graft writes its states to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraftTarget {
    /// Each row's last real token.
    Last,
    /// One token per row, counted among that row's real tokens from 0.
    Tokens(Vec<usize>),
}

/// Replaces the residual stream at one position per row after block `layer`
/// (index 0 replaces the embedding) and lets the forward pass continue.
#[derive(Debug)]
pub struct Graft {
    pub layer: usize,
    pub target: GraftTarget,
    /// `[batch, hidden]` replacement states, any dtype and device.
    pub states: Tensor,
}

/// The request of one forward pass: what to capture, graft and compute.
#[derive(Debug)]
pub struct ForwardRequest {
    pub layers: Layers,
    pub position: Position,
    pub graft: Option<Graft>,
    /// Whether to compute next-token logits at each row's last real token.
    pub logits: bool,
}

impl Default for ForwardRequest {
    fn default() -> Self {
        Self {
            layers: Layers::All,
            position: Position::Last,
            graft: None,
            logits: false,
        }
    }
}

/// The captured states and logits of one forward pass.
#[derive(Debug)]
pub struct ForwardOutput {
    /// The residual stream indices captured, ascending.
    pub layers: Vec<usize>,
    /// One f32 tensor per captured index on the first device, shaped as
    /// documented on [`Position`].
    pub states: Vec<Tensor>,
    /// `[batch, vocab]` f32 logits at each row's last real token.
    pub logits: Option<Tensor>,
}

impl ForwardOutput {
    /// Returns the captured state of residual stream index `layer`.
    #[must_use]
    pub fn state(&self, layer: usize) -> Option<&Tensor> {
        self.layers
            .iter()
            .position(|&l| l == layer)
            .map(|i| &self.states[i])
    }
}

/// Runs one forward pass of `decoder` over `batch` for `request`.
pub(crate) fn run(
    decoder: &dyn Decoder,
    batch: &Batch,
    request: &ForwardRequest,
) -> Result<ForwardOutput> {
    let num_layers = decoder.num_layers();
    let layers = capture_indices(&request.layers, num_layers)?;
    let gather = Gather::new(batch, request.position, decoder.device_map().first())?;
    let graft = request
        .graft
        .as_ref()
        .map(|graft| PreparedGraft::new(graft, batch, num_layers))
        .transpose()?;

    // Without logits the pass can stop at the deepest index anyone reads.
    let deepest = if request.logits {
        num_layers
    } else {
        let captured = layers.last().copied().unwrap_or(0);
        let grafted = graft.as_ref().map_or(0, |g| g.layer);
        captured.max(grafted)
    };

    let _no_grad = tch::no_grad_guard();
    let context = decoder.prepare(batch);
    let mut states = Vec::with_capacity(layers.len());
    let mut hidden = decoder.embed(&batch.input_ids);
    for index in 0..=deepest {
        if index > 0 {
            hidden = decoder.block(index - 1, &hidden, &context);
        }
        if let Some(graft) = graft.as_ref().filter(|g| g.layer == index) {
            hidden = graft.apply(&hidden);
        }
        if layers.binary_search(&index).is_ok() {
            states.push(gather.apply(&hidden));
        }
    }

    let logits = if request.logits {
        Some(next_token_logits(decoder, batch, &hidden)?)
    } else {
        None
    };

    Ok(ForwardOutput {
        layers,
        states,
        logits,
    })
}

/// Returns `[batch, vocab]` f32 logits on the first device at each row's
/// last real token of the final residual stream `hidden`.
fn next_token_logits(decoder: &dyn Decoder, batch: &Batch, hidden: &Tensor) -> Result<Tensor> {
    let last = Gather::new(batch, Position::Last, hidden.device())?;
    let normed = decoder.final_norm(&last.select(hidden).squeeze_dim(1));
    Ok(decoder
        .lm_head(&normed)
        .to_kind(Kind::Float)
        .to_device(decoder.device_map().first()))
}

/// The next-token logits of a batch without a graft and with each of a list
/// of grafts.
#[derive(Debug)]
pub struct GraftedLogits {
    /// `[batch, vocab]` f32 logits of the pass without a graft.
    pub baseline: Tensor,
    /// `[batch, vocab]` f32 logits of each graft, in the order given.
    pub grafted: Vec<Tensor>,
}

/// Runs `batch` once without a graft and once per graft of `grafts`, each
/// pass giving next-token logits.
///
/// A graft after block `l` leaves the residual stream before it unchanged,
/// so the passes with a graft start from the residual stream after block
/// `l` of the pass without one and run only blocks `l + 1` to `L`. The
/// kernels and shapes are those of [`run`], so the logits are the same as
/// those of one [`run`] per graft, at a fraction of the cost. The residual
/// stream after each distinct graft layer is kept for the whole batch
/// until the last graft has run.
pub(crate) fn run_grafts(
    decoder: &dyn Decoder,
    batch: &Batch,
    grafts: &[Graft],
) -> Result<GraftedLogits> {
    let num_layers = decoder.num_layers();
    let prepared = grafts
        .iter()
        .map(|graft| PreparedGraft::new(graft, batch, num_layers))
        .collect::<Result<Vec<_>>>()?;
    let mut resume_layers: Vec<usize> = prepared.iter().map(|graft| graft.layer).collect();
    resume_layers.sort_unstable();
    resume_layers.dedup();

    let _no_grad = tch::no_grad_guard();
    let context = decoder.prepare(batch);
    let mut resume_states: Vec<(usize, Tensor)> = Vec::with_capacity(resume_layers.len());
    let mut hidden = decoder.embed(&batch.input_ids);
    for index in 0..=num_layers {
        if index > 0 {
            hidden = decoder.block(index - 1, &hidden, &context);
        }
        if resume_layers.binary_search(&index).is_ok() {
            resume_states.push((index, hidden.shallow_clone()));
        }
    }
    let baseline = next_token_logits(decoder, batch, &hidden)?;

    let mut grafted = Vec::with_capacity(prepared.len());
    for graft in &prepared {
        let start = resume_states
            .iter()
            .find(|(layer, _)| *layer == graft.layer)
            .map(|(_, state)| state)
            .expect("the residual stream after every graft layer is stored");
        let mut hidden = graft.apply(start);
        for index in graft.layer + 1..=num_layers {
            hidden = decoder.block(index - 1, &hidden, &context);
        }
        grafted.push(next_token_logits(decoder, batch, &hidden)?);
    }
    Ok(GraftedLogits { baseline, grafted })
}

fn capture_indices(layers: &Layers, num_layers: usize) -> Result<Vec<usize>> {
    match layers {
        Layers::All => Ok((0..=num_layers).collect()),
        Layers::None => Ok(Vec::new()),
        Layers::Indices(indices) => {
            let mut sorted = indices.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if let Some(&bad) = sorted.iter().find(|&&i| i > num_layers) {
                return Err(ModelError::Request(format!(
                    "layer {bad} does not exist: the model has {num_layers} blocks, so indices run 0..={num_layers}"
                )));
            }
            Ok(sorted)
        }
    }
}

/// Selects the requested positions from `[batch, seq, hidden]` states.
struct Gather {
    /// `[batch, n]` padded indices for `Last` and `LastN`.
    indices: Option<Tensor>,
    /// `[batch, seq, 1]` f32 mask and `[batch, 1, 1]` lengths for `Mean`.
    mean: Option<(Tensor, Tensor)>,
    device: Device,
}

impl Gather {
    fn new(batch: &Batch, position: Position, device: Device) -> Result<Self> {
        let count = match position {
            Position::Last => Some(1),
            Position::LastN(n) => Some(n),
            Position::Mean | Position::All => None,
        };
        let indices = match count {
            None => None,
            Some(0) => return Err(ModelError::Request("LastN(0) selects no position".into())),
            Some(n) => {
                let mut flat = Vec::with_capacity(batch.len() * n);
                for (row, &len) in batch.lengths().iter().enumerate() {
                    if len < n {
                        return Err(ModelError::Request(format!(
                            "prompt {row} of the batch has {len} tokens, fewer than the {n} last positions requested"
                        )));
                    }
                    flat.extend((len - n..len).map(|token| batch.index_of(row, token) as i64));
                }
                Some(Tensor::from_slice(&flat).view([batch.len() as i64, n as i64]))
            }
        };
        let mean = (position == Position::Mean).then(|| {
            let mask = batch.attention_mask.to_kind(Kind::Float).unsqueeze(-1);
            let lengths = mask.sum_dim_intlist(1, true, Kind::Float);
            (mask, lengths)
        });
        Ok(Self {
            indices,
            mean,
            device,
        })
    }

    /// Returns the selected states of `hidden` in its own dtype and device.
    fn select(&self, hidden: &Tensor) -> Tensor {
        let (batch, _, width) = hidden
            .size3()
            .expect("hidden states are [batch, seq, hidden]");
        match (&self.indices, &self.mean) {
            (Some(indices), _) => {
                let n = indices.size()[1];
                let index = indices
                    .to_device(hidden.device())
                    .unsqueeze(-1)
                    .expand([batch, n, width], false);
                hidden.gather(1, &index, false)
            }
            (None, Some((mask, lengths))) => {
                let mask = mask.to_device(hidden.device());
                let lengths = lengths.to_device(hidden.device());
                (hidden.to_kind(Kind::Float) * mask).sum_dim_intlist(1, true, Kind::Float) / lengths
            }
            (None, None) => hidden.shallow_clone(),
        }
    }

    /// Returns the selected states as f32 on the gather device.
    fn apply(&self, hidden: &Tensor) -> Tensor {
        self.select(hidden)
            .to_kind(Kind::Float)
            .to_device(self.device)
    }
}

struct PreparedGraft {
    layer: usize,
    /// `[batch, 1, hidden]` padded indices.
    index: Tensor,
    states: Tensor,
}

impl PreparedGraft {
    fn new(graft: &Graft, batch: &Batch, num_layers: usize) -> Result<Self> {
        if graft.layer > num_layers {
            return Err(ModelError::Request(format!(
                "graft layer {} does not exist: indices run 0..={num_layers}",
                graft.layer
            )));
        }
        let size = graft.states.size();
        if size.len() != 2 || size[0] != batch.len() as i64 {
            return Err(ModelError::Request(format!(
                "graft states have shape {size:?}; expected [{}, hidden]",
                batch.len()
            )));
        }
        let rows: Vec<i64> = match &graft.target {
            GraftTarget::Last => batch.last_indices(),
            GraftTarget::Tokens(tokens) => {
                if tokens.len() != batch.len() {
                    return Err(ModelError::Request(format!(
                        "graft names {} token positions for a batch of {}",
                        tokens.len(),
                        batch.len()
                    )));
                }
                let mut rows = Vec::with_capacity(tokens.len());
                for (row, (&token, &len)) in tokens.iter().zip(batch.lengths()).enumerate() {
                    if token >= len {
                        return Err(ModelError::Request(format!(
                            "graft token {token} is out of range for prompt {row} of {len} tokens"
                        )));
                    }
                    rows.push(batch.index_of(row, token) as i64);
                }
                rows
            }
        };
        Ok(Self {
            layer: graft.layer,
            index: Tensor::from_slice(&rows).view([batch.len() as i64, 1, 1]),
            states: graft.states.shallow_clone(),
        })
    }

    fn apply(&self, hidden: &Tensor) -> Tensor {
        let (batch, _, width) = hidden
            .size3()
            .expect("hidden states are [batch, seq, hidden]");
        let index = self
            .index
            .to_device(hidden.device())
            .expand([batch, 1, width], false);
        let source = self
            .states
            .to_device(hidden.device())
            .to_kind(hidden.kind())
            .view([batch, 1, width]);
        hidden.scatter(1, &index, &source)
    }
}
