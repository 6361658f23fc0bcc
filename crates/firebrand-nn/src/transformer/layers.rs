//! Transformer encoder and decoder layers (pre- and post-norm) and their stacks,
//! with PyTorch's `nn.Transformer*` parameter names.

use super::{KvCache, LayerNorm, MultiHeadAttention};
use crate::{Linear, Module};
use firebrand_autograd::Tensor;

/// One Transformer encoder layer (PyTorch's `nn.TransformerEncoderLayer`
/// with `batch_first=True`, same parameter names): self-attention and a
/// feed-forward block (`linear1` → activation → `linear2`), each with a
/// residual connection and `LayerNorm`, post-norm by default or pre-norm
/// (`norm_first`, GPT style). `causal(true)` makes it a decoder-only block.
///
/// ```
/// use firebrand_nn::{TransformerEncoderLayer, Module};
/// use firebrand_autograd::Tensor;
/// let layer = TransformerEncoderLayer::new(16, 4, 64).norm_first(true);
/// assert_eq!(layer.forward(&Tensor::randn([2, 7, 16], 0.0, 1.0)).dims(), &[2, 7, 16]);
/// ```
#[derive(Module)]
#[module(forward = forward_full, describe = description)]
pub struct TransformerEncoderLayer {
    /// Self-attention.
    pub self_attn: MultiHeadAttention,
    /// First feed-forward projection, `E → F`.
    pub linear1: Linear,
    /// Second feed-forward projection, `F → E`.
    pub linear2: Linear,
    /// Norm around the attention block.
    pub norm1: LayerNorm,
    /// Norm around the feed-forward block.
    pub norm2: LayerNorm,
    norm_first: bool,
    gelu: bool,
    dropout: crate::Dropout,
}

impl TransformerEncoderLayer {
    /// `d_model`, `heads`, feed-forward width; ReLU, post-norm, no dropout.
    pub fn new(d_model: usize, heads: usize, dim_feedforward: usize) -> Self {
        TransformerEncoderLayer {
            self_attn: MultiHeadAttention::new(d_model, heads),
            linear1: Linear::new(d_model, dim_feedforward),
            linear2: Linear::new(dim_feedforward, d_model),
            norm1: LayerNorm::new(d_model),
            norm2: LayerNorm::new(d_model),
            norm_first: false,
            gelu: false,
            dropout: crate::Dropout::new(0.0),
        }
    }

    /// Pre-norm (`x + f(norm(x))`) instead of post-norm (`norm(x + f(x))`).
    pub fn norm_first(mut self, on: bool) -> Self {
        self.norm_first = on;
        self
    }

    /// GELU instead of ReLU in the feed-forward block.
    pub fn gelu(mut self, on: bool) -> Self {
        self.gelu = on;
        self
    }

    /// Masks later positions in the self-attention.
    pub fn causal(mut self, on: bool) -> Self {
        self.self_attn = self.self_attn.causal(on);
        self
    }

    /// Dropout on the attention weights, after attention, in the
    /// feed-forward block and after it (PyTorch's `dropout`).
    pub fn dropout(mut self, p: f32) -> Self {
        self.dropout = crate::Dropout::new(p);
        self.self_attn = self.self_attn.dropout(p);
        self
    }

    fn feed_forward(&self, x: &Tensor) -> Tensor {
        feed_forward(&self.linear1, &self.linear2, self.gelu, x, Some(&self.dropout))
    }

    /// The layer around a given self-attention `attend` (full or cached).
    fn run(&self, x: &Tensor, mut attend: impl FnMut(&Tensor) -> Tensor) -> Tensor {
        // x: (B, T, E)
        let mut attention = |h: &Tensor| self.dropout.forward(&attend(h));
        if self.norm_first {
            let x = x.add(&attention(&self.norm1.forward(x)));
            x.add(&self.feed_forward(&self.norm2.forward(&x)))
        } else {
            let x = self.norm1.forward(&x.add(&attention(x)));
            self.norm2.forward(&x.add(&self.feed_forward(&x)))
        }
    }

    /// Incremental decoding: `x` `(B, T_new, E)` holds the next positions;
    /// the self-attention appends their keys and values to `cache` and
    /// attends to all cached positions (see
    /// [`MultiHeadAttention::attend_cached`]). For a causal layer, feeding a
    /// sequence in pieces gives the same outputs as one pass over all of it.
    pub fn forward_cached(&self, x: &Tensor, cache: &mut KvCache) -> Tensor {
        self.run(x, |h| self.self_attn.attend_cached(h, cache))
    }
}

impl TransformerEncoderLayer {
    fn forward_full(&self, x: &Tensor) -> Tensor {
        self.run(x, |h| self.self_attn.forward(h))
    }

    fn description(&self) -> String {
        let e = self.linear1.in_features();
        format!(
            "TransformerEncoderLayer({e}, ff {}, {}{})",
            self.linear1.out_features(),
            if self.norm_first { "pre-norm" } else { "post-norm" },
            if self.gelu { ", gelu" } else { "" }
        )
    }
}

/// One Transformer decoder layer (PyTorch's `nn.TransformerDecoderLayer`,
/// `batch_first=True`, same parameter names): causal-capable self-attention,
/// cross-attention over an encoder's output (`multihead_attn`) and a
/// feed-forward block, each with a residual connection and `LayerNorm`
/// (post-norm by default, pre-norm with `norm_first`).
///
/// ```
/// use firebrand_nn::TransformerDecoderLayer;
/// use firebrand_autograd::Tensor;
/// let layer = TransformerDecoderLayer::new(16, 4, 64).causal(true);
/// let (tgt, memory) = (Tensor::randn([2, 5, 16], 0.0, 1.0), Tensor::randn([2, 7, 16], 0.0, 1.0));
/// assert_eq!(layer.decode(&tgt, &memory, None).dims(), &[2, 5, 16]);
/// ```
#[derive(Module)]
#[module(forward = forward_self, describe = description)]
pub struct TransformerDecoderLayer {
    /// Self-attention over the target.
    pub self_attn: MultiHeadAttention,
    /// Cross-attention from the target to the memory.
    pub multihead_attn: MultiHeadAttention,
    /// First feed-forward projection.
    pub linear1: Linear,
    /// Second feed-forward projection.
    pub linear2: Linear,
    /// Norm around the self-attention.
    pub norm1: LayerNorm,
    /// Norm around the cross-attention.
    pub norm2: LayerNorm,
    /// Norm around the feed-forward block.
    pub norm3: LayerNorm,
    norm_first: bool,
    gelu: bool,
}

impl TransformerDecoderLayer {
    /// `d_model`, `heads`, feed-forward width; ReLU, post-norm.
    pub fn new(d_model: usize, heads: usize, dim_feedforward: usize) -> Self {
        TransformerDecoderLayer {
            self_attn: MultiHeadAttention::new(d_model, heads),
            multihead_attn: MultiHeadAttention::new(d_model, heads),
            linear1: Linear::new(d_model, dim_feedforward),
            linear2: Linear::new(dim_feedforward, d_model),
            norm1: LayerNorm::new(d_model),
            norm2: LayerNorm::new(d_model),
            norm3: LayerNorm::new(d_model),
            norm_first: false,
            gelu: false,
        }
    }

    /// Pre-norm instead of post-norm.
    pub fn norm_first(mut self, on: bool) -> Self {
        self.norm_first = on;
        self
    }

    /// GELU instead of ReLU.
    pub fn gelu(mut self, on: bool) -> Self {
        self.gelu = on;
        self
    }

    /// Masks later target positions in the self-attention.
    pub fn causal(mut self, on: bool) -> Self {
        self.self_attn = self.self_attn.causal(on);
        self
    }

    fn feed_forward(&self, x: &Tensor) -> Tensor {
        feed_forward(&self.linear1, &self.linear2, self.gelu, x, None)
    }

    /// Runs the layer on `tgt` `(B, T, E)` attending to `memory` `(B, S, E)`;
    /// `memory_key_padding_mask` `(B, S)` marks padded memory positions with 1.
    pub fn decode(&self, tgt: &Tensor, memory: &Tensor, memory_key_padding_mask: Option<&Tensor>) -> Tensor {
        let cross = |x: &Tensor| self.multihead_attn.attend(x, memory, memory, memory_key_padding_mask);
        if self.norm_first {
            let x = tgt.add(&self.self_attn.forward(&self.norm1.forward(tgt)));
            let x = x.add(&cross(&self.norm2.forward(&x)));
            x.add(&self.feed_forward(&self.norm3.forward(&x)))
        } else {
            let x = self.norm1.forward(&tgt.add(&self.self_attn.forward(tgt)));
            let x = self.norm2.forward(&x.add(&cross(&x)));
            self.norm3.forward(&x.add(&self.feed_forward(&x)))
        }
    }
}

impl TransformerDecoderLayer {
    /// `Module::forward`: the layer with `x` as its own memory; use
    /// [`TransformerDecoderLayer::decode`] to attend to an encoder's output.
    fn forward_self(&self, x: &Tensor) -> Tensor {
        self.decode(x, x, None)
    }

    fn description(&self) -> String {
        format!(
            "TransformerDecoderLayer({}, ff {}, {})",
            self.linear1.in_features(),
            self.linear1.out_features(),
            if self.norm_first { "pre-norm" } else { "post-norm" }
        )
    }
}

/// `linear2(dropout(act(linear1(x))))`, then dropout: the position-wise
/// feed-forward block of both Transformer layers.
fn feed_forward(l1: &Linear, l2: &Linear, gelu: bool, x: &Tensor, dropout: Option<&crate::Dropout>) -> Tensor {
    let h = l1.forward(x);
    let h = if gelu { h.gelu() } else { h.relu() };
    match dropout {
        Some(d) => d.forward(&l2.forward(&d.forward(&h))),
        None => l2.forward(&h),
    }
}

/// A stack of [`TransformerEncoderLayer`]s with an optional final
/// `LayerNorm` (PyTorch's `nn.TransformerEncoder`: parameters named
/// `layers.{i}.…` and `norm.…`).
///
/// ```
/// use firebrand_nn::{TransformerEncoder, TransformerEncoderLayer, Module};
/// use firebrand_autograd::Tensor;
/// let enc = TransformerEncoder::new((0..2).map(|_| TransformerEncoderLayer::new(16, 4, 32).norm_first(true)).collect())
///     .final_norm(16);
/// assert_eq!(enc.forward(&Tensor::randn([2, 5, 16], 0.0, 1.0)).dims(), &[2, 5, 16]);
/// ```
#[derive(Module)]
#[module(forward = forward_stack, describe = description)]
pub struct TransformerEncoder {
    /// The layers, applied in order.
    pub layers: Vec<TransformerEncoderLayer>,
    /// Final normalization (pre-norm stacks need one).
    pub norm: Option<LayerNorm>,
}

impl TransformerEncoder {
    /// A stack of `layers`.
    pub fn new(layers: Vec<TransformerEncoderLayer>) -> Self {
        TransformerEncoder { layers, norm: None }
    }

    /// Adds a final `LayerNorm(dim)`.
    pub fn final_norm(mut self, dim: usize) -> Self {
        self.norm = Some(LayerNorm::new(dim));
        self
    }
}

impl TransformerEncoder {
    fn forward_stack(&self, x: &Tensor) -> Tensor {
        let y = self.layers.iter().enumerate().fold(x.clone(), |h, (i, l)| {
            let _scope = crate::module::enter_scope(self, "layers", Some(i));
            l.forward(&h)
        }); // (B, T, E)
        match &self.norm {
            Some(n) => n.forward(&y),
            None => y,
        }
    }

    fn description(&self) -> String {
        format!("TransformerEncoder({} layers)", self.layers.len())
    }
}

/// A stack of [`TransformerDecoderLayer`]s with an optional final
/// `LayerNorm` (PyTorch's `nn.TransformerDecoder`: `layers.{i}.…`, `norm.…`).
///
/// ```
/// use firebrand_nn::{TransformerDecoder, TransformerDecoderLayer};
/// use firebrand_autograd::Tensor;
/// let dec = TransformerDecoder::new((0..2).map(|_| TransformerDecoderLayer::new(16, 4, 32).causal(true)).collect());
/// let (tgt, memory) = (Tensor::randn([2, 5, 16], 0.0, 1.0), Tensor::randn([2, 7, 16], 0.0, 1.0));
/// assert_eq!(dec.decode(&tgt, &memory, None).dims(), &[2, 5, 16]);
/// ```
#[derive(Module)]
#[module(forward = forward_self, describe = description)]
pub struct TransformerDecoder {
    /// The layers, applied in order.
    pub layers: Vec<TransformerDecoderLayer>,
    /// Final normalization (pre-norm stacks need one).
    pub norm: Option<LayerNorm>,
}

impl TransformerDecoder {
    /// A stack of `layers`.
    pub fn new(layers: Vec<TransformerDecoderLayer>) -> Self {
        TransformerDecoder { layers, norm: None }
    }

    /// Adds a final `LayerNorm(dim)`.
    pub fn final_norm(mut self, dim: usize) -> Self {
        self.norm = Some(LayerNorm::new(dim));
        self
    }

    /// Runs every layer on `tgt` `(B, T, E)` attending to `memory` `(B, S, E)`
    /// (`memory_key_padding_mask` `(B, S)`: 1 marks padding).
    pub fn decode(&self, tgt: &Tensor, memory: &Tensor, memory_key_padding_mask: Option<&Tensor>) -> Tensor {
        let y = self.layers.iter().enumerate().fold(tgt.clone(), |h, (i, l)| {
            let _scope = crate::module::enter_scope(self, "layers", Some(i));
            l.decode(&h, memory, memory_key_padding_mask)
        });
        match &self.norm {
            Some(n) => n.forward(&y),
            None => y,
        }
    }
}

impl TransformerDecoder {
    /// `Module::forward`: the stack with `x` as its own memory; use
    /// [`TransformerDecoder::decode`] to attend to an encoder's output.
    fn forward_self(&self, x: &Tensor) -> Tensor {
        self.decode(x, x, None)
    }

    fn description(&self) -> String {
        format!("TransformerDecoder({} layers)", self.layers.len())
    }
}
