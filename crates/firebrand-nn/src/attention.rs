//! Transformer building blocks: `LayerNorm`, `RMSNorm`, multi-head attention
//! and positional encodings, written from primitive ops (their gradients
//! come from autograd).

use crate::{Init, Linear, Module};
use firebrand_autograd::{Tensor, with_no_grad};

/// Normalizes over the last dim: `(x - mean) / sqrt(var + eps) · weight + bias`
/// (PyTorch's `nn.LayerNorm(dim)`, biased variance, eps 1e-5).
///
/// ```
/// use firebrand_nn::{LayerNorm, Module};
/// use firebrand_autograd::Tensor;
/// let ln = LayerNorm::new(8);
/// let y = ln.forward(&Tensor::randn([2, 3, 8], 1.0, 2.0)); // (B, T, C)
/// assert!(y.mean(&[-1], false).to_vec::<f32>().iter().all(|m| m.abs() < 1e-5));
/// ```
pub struct LayerNorm {
    /// Scale, `(C,)`, if affine.
    pub weight: Option<Tensor>,
    /// Shift, `(C,)`, if affine.
    pub bias: Option<Tensor>,
    eps: f32,
}

impl LayerNorm {
    /// Over a last dim of `dim`, with learnable scale and shift.
    pub fn new(dim: usize) -> Self {
        LayerNorm {
            weight: Some(Tensor::ones([dim]).requires_grad_(true)),
            bias: Some(Tensor::zeros([dim]).requires_grad_(true)),
            eps: 1e-5,
        }
    }

    /// Sets ε.
    pub fn eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Without scale and shift (`elementwise_affine=False`).
    pub fn without_affine(mut self) -> Self {
        self.weight = None;
        self.bias = None;
        self
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        // x: (…, C)
        let mean = x.mean(&[-1], true);
        let var = x.var(&[-1], 0, true);
        let mut y = x.sub(&mean).mul(&var.affine(1.0, self.eps).rsqrt());
        if let Some(w) = &self.weight {
            y = y.mul(w);
        }
        if let Some(b) = &self.bias {
            y = y.add(b);
        }
        y
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        if let Some(w) = &self.weight {
            f(&format!("{prefix}weight"), w);
        }
        if let Some(b) = &self.bias {
            f(&format!("{prefix}bias"), b);
        }
    }

    fn describe(&self) -> String {
        format!("LayerNorm({})", self.weight.as_ref().map_or(0, |w| w.dims()[0]))
    }
}

/// Root-mean-square normalization over the last dim:
/// `x / sqrt(mean(x²) + eps) · weight` (PyTorch's `nn.RMSNorm(dim)`; its
/// default eps is the `f32` machine epsilon).
pub struct RMSNorm {
    /// Scale, `(C,)`.
    pub weight: Tensor,
    eps: f32,
}

impl RMSNorm {
    /// Over a last dim of `dim`.
    pub fn new(dim: usize) -> Self {
        RMSNorm { weight: Tensor::ones([dim]).requires_grad_(true), eps: f32::EPSILON }
    }

    /// Sets ε.
    pub fn eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }
}

impl Module for RMSNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let ms = x.square().mean(&[-1], true);
        x.mul(&ms.affine(1.0, self.eps).rsqrt()).mul(&self.weight)
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}weight"), &self.weight);
    }

    fn describe(&self) -> String {
        format!("RMSNorm({})", self.weight.dims()[0])
    }
}

/// Cached keys and values of a [`MultiHeadAttention`] for incremental
/// decoding, `(B, heads, S, d)` each; empty at first.
#[derive(Default, Clone)]
pub struct KvCache {
    /// Keys so far.
    pub k: Option<Tensor>,
    /// Values so far.
    pub v: Option<Tensor>,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.k.as_ref().map_or(0, |k| k.dims()[2])
    }

    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Multi-head scaled dot-product attention (PyTorch's
/// `nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)`:
/// `in_proj_weight` `(3E, E)`, `in_proj_bias`, `out_proj.weight`,
/// `out_proj.bias`, so weights load from PyTorch).
///
/// ```
/// use firebrand_nn::{MultiHeadAttention, Module};
/// use firebrand_autograd::Tensor;
/// let mha = MultiHeadAttention::new(16, 4).causal(true);
/// let x = Tensor::randn([2, 5, 16], 0.0, 1.0); // (B, T, E)
/// assert_eq!(mha.forward(&x).dims(), &[2, 5, 16]);
/// ```
pub struct MultiHeadAttention {
    /// Query, key and value projections stacked, `(3E, E)`.
    pub in_proj_weight: Tensor,
    /// Their biases, `(3E,)`.
    pub in_proj_bias: Tensor,
    /// The output projection.
    pub out_proj: Linear,
    heads: usize,
    causal: bool,
    dropout: f32,
    training: bool,
}

impl MultiHeadAttention {
    /// `heads` heads over an embedding of `embed_dim` (PyTorch's
    /// initialization: Xavier-uniform projections, zero biases).
    ///
    /// # Panics
    /// When `heads` does not divide `embed_dim`.
    pub fn new(embed_dim: usize, heads: usize) -> Self {
        assert!(
            heads > 0 && embed_dim.is_multiple_of(heads),
            "MultiHeadAttention: {heads} heads do not divide {embed_dim}"
        );
        let e = embed_dim;
        let in_proj_weight = Init::XavierUniform.tensor([3 * e, e], e, 3 * e).requires_grad_(true);
        let in_proj_bias = Tensor::zeros([3 * e]).requires_grad_(true);
        let out_proj = Linear::with_init(e, e, Init::TorchDefault, Some(Init::Zeros));
        MultiHeadAttention {
            in_proj_weight,
            in_proj_bias,
            out_proj,
            heads,
            causal: false,
            dropout: 0.0,
            training: true,
        }
    }

    /// Masks attention to later positions (decoder self-attention).
    pub fn causal(mut self, on: bool) -> Self {
        self.causal = on;
        self
    }

    /// Dropout on the attention weights, in training.
    pub fn dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }

    /// Attention of `query` `(B, T, E)` over `key`/`value` `(B, S, E)`;
    /// `key_padding_mask` `(B, S)` holds 1 where a key is padding (ignored).
    /// Returns `(B, T, E)`.
    ///
    /// # Panics
    /// On shapes that do not fit, naming them.
    pub fn attend(&self, query: &Tensor, key: &Tensor, value: &Tensor, key_padding_mask: Option<&Tensor>) -> Tensor {
        self.attend_impl(query, key, value, key_padding_mask, None)
    }

    /// Self-attention for incremental decoding: `x` `(B, T_new, E)` holds the
    /// next positions; their keys and values are appended to `cache`, and the
    /// queries attend to every cached position (causally, when the layer is
    /// causal, counting from the cache's length). Feeding a sequence one step
    /// at a time gives the same outputs as one causal pass over all of it.
    ///
    /// ```
    /// use firebrand_nn::{KvCache, MultiHeadAttention, Module};
    /// use firebrand_autograd::{Tensor, with_no_grad};
    /// let mha = MultiHeadAttention::new(8, 2).causal(true);
    /// let x = Tensor::randn([1, 3, 8], 0.0, 1.0);
    /// let full = with_no_grad(|| mha.forward(&x));
    /// let mut cache = KvCache::default();
    /// let last = with_no_grad(|| {
    ///     mha.attend_cached(&x.narrow(1, 0, 2), &mut cache);
    ///     mha.attend_cached(&x.narrow(1, 2, 1), &mut cache)
    /// });
    /// let want = full.narrow(1, 2, 1).to_vec::<f32>();
    /// assert!(last.to_vec::<f32>().iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5));
    /// ```
    pub fn attend_cached(&self, x: &Tensor, cache: &mut KvCache) -> Tensor {
        self.attend_impl(x, x, x, None, Some(cache))
    }

    fn attend_impl(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        key_padding_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let e = self.in_proj_weight.dims()[1];
        let (b, t) = match *query.dims() {
            [b, t, ee] if ee == e => (b, t),
            _ => panic!("MultiHeadAttention: query must be (B, T, {e}), got {:?}", query.dims()),
        };
        let s = key.dims()[1];
        assert!(
            key.dims() == [b, s, e] && value.dims() == [b, s, e],
            "MultiHeadAttention: key/value must be (B, S, {e}), got {:?} and {:?}",
            key.dims(),
            value.dims()
        );
        let (nh, d) = (self.heads, e / self.heads);
        let proj = |x: &Tensor, part: usize, len: usize| {
            let w = self.in_proj_weight.narrow(0, part * e, e);
            let bias = self.in_proj_bias.narrow(0, part * e, e);
            x.matmul(&w.t()).add(&bias).reshape([b, len, nh, d]).permute(&[0, 2, 1, 3]) // (B, nh, L, d)
        };
        let (q, mut k, mut v) = (proj(query, 0, t), proj(key, 1, s), proj(value, 2, s));
        // With a cache, the new keys and values follow the cached ones; queries
        // sit at positions `offset..offset + T`.
        let mut offset = 0;
        let mut s = s;
        if let Some(c) = cache {
            if let (Some(pk), Some(pv)) = (&c.k, &c.v) {
                assert_eq!(
                    pk.dims()[..2],
                    [b, nh],
                    "KvCache: cached batch/heads {:?} differ from ({b}, {nh})",
                    pk.dims()
                );
                offset = pk.dims()[2];
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            s = k.dims()[2];
            c.k = Some(k.clone());
            c.v = Some(v.clone());
        }
        let mut scores = q.matmul(&k.transpose(-1, -2)).affine(1.0 / (d as f32).sqrt(), 0.0); // (B, nh, T, S)
        if self.causal || key_padding_mask.is_some() {
            let mask = with_no_grad(|| {
                let mut m = vec![0.0f32; b * t * s];
                let pad = key_padding_mask.map(|p| p.to_dtype(firebrand_autograd::DType::F32).to_vec::<f32>());
                for bi in 0..b {
                    for ti in 0..t {
                        for si in 0..s {
                            let masked = (self.causal && si > ti + offset)
                                || pad.as_ref().is_some_and(|p| p[bi * s + si] != 0.0);
                            if masked {
                                m[(bi * t + ti) * s + si] = f32::NEG_INFINITY;
                            }
                        }
                    }
                }
                Tensor::from_vec(m, [b, 1, t, s])
            });
            scores = scores.add(&mask);
        }
        let mut attn = scores.softmax(-1);
        if self.training && self.dropout > 0.0 {
            attn = crate::dropout::dropout(&attn, self.dropout);
        }
        let ctx = attn.matmul(&v).permute(&[0, 2, 1, 3]).reshape([b, t, e]); // (B, T, E)
        self.out_proj.forward(&ctx)
    }
}

impl Module for MultiHeadAttention {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.attend(x, x, x, None)
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}in_proj_weight"), &self.in_proj_weight);
        f(&format!("{prefix}in_proj_bias"), &self.in_proj_bias);
        self.out_proj.visit_parameters(&format!("{prefix}out_proj."), f);
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn describe(&self) -> String {
        let e = self.in_proj_weight.dims()[1];
        format!("MultiHeadAttention({e}, {} heads{})", self.heads, if self.causal { ", causal" } else { "" })
    }
}

/// Adds the fixed sinusoidal position encoding of "Attention Is All You
/// Need" to `(B, T, E)`: `PE[t, 2i] = sin(t / 10000^(2i/E))`,
/// `PE[t, 2i+1] = cos(…)`.
#[derive(Debug, Clone, Copy)]
pub struct SinusoidalPositionalEncoding;

impl SinusoidalPositionalEncoding {
    /// The table `(T, E)`.
    pub fn table(t: usize, e: usize) -> Tensor {
        let mut v = vec![0.0f32; t * e];
        for p in 0..t {
            for i in 0..e {
                let freq = 1.0 / 10000f64.powf((2 * (i / 2)) as f64 / e as f64);
                let a = p as f64 * freq;
                v[p * e + i] = if i % 2 == 0 { a.sin() } else { a.cos() } as f32;
            }
        }
        Tensor::from_vec(v, [t, e])
    }
}

impl Module for SinusoidalPositionalEncoding {
    fn forward(&self, x: &Tensor) -> Tensor {
        let (t, e) = (x.dims()[x.rank() - 2], x.dims()[x.rank() - 1]);
        x.add(&SinusoidalPositionalEncoding::table(t, e))
    }

    fn describe(&self) -> String {
        "SinusoidalPositionalEncoding".into()
    }
}

/// A learned position embedding added to `(B, T, E)` (GPT-2 style): a
/// parameter `(max_len, E)` drawn from `N(0, 0.02)`.
pub struct LearnedPositionalEncoding {
    /// The table, `(max_len, E)`.
    pub weight: Tensor,
}

impl LearnedPositionalEncoding {
    /// Up to `max_len` positions of `dim` values.
    pub fn new(max_len: usize, dim: usize) -> Self {
        LearnedPositionalEncoding {
            weight: Init::Normal(0.0, 0.02).tensor([max_len, dim], dim, dim).requires_grad_(true),
        }
    }
}

impl Module for LearnedPositionalEncoding {
    fn forward(&self, x: &Tensor) -> Tensor {
        let t = x.dims()[x.rank() - 2];
        let max = self.weight.dims()[0];
        assert!(t <= max, "LearnedPositionalEncoding: sequence of {t} longer than the table's {max}");
        x.add(&self.weight.narrow(0, 0, t))
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}weight"), &self.weight);
    }

    fn describe(&self) -> String {
        format!("LearnedPositionalEncoding({}, {})", self.weight.dims()[0], self.weight.dims()[1])
    }
}

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

    /// Dropout after attention, in the feed-forward block and after it (PyTorch's `dropout`).
    pub fn dropout(mut self, p: f32) -> Self {
        self.dropout = crate::Dropout::new(p);
        self
    }

    fn feed_forward(&self, x: &Tensor) -> Tensor {
        feed_forward(&self.linear1, &self.linear2, self.gelu, x, Some(&self.dropout))
    }

    fn attention(&self, x: &Tensor) -> Tensor {
        self.dropout.forward(&self.self_attn.forward(x))
    }
}

impl Module for TransformerEncoderLayer {
    fn forward(&self, x: &Tensor) -> Tensor {
        // x: (B, T, E)
        if self.norm_first {
            let x = x.add(&self.attention(&self.norm1.forward(x)));
            x.add(&self.feed_forward(&self.norm2.forward(&x)))
        } else {
            let x = self.norm1.forward(&x.add(&self.attention(x)));
            self.norm2.forward(&x.add(&self.feed_forward(&x)))
        }
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        visit_children(
            prefix,
            f,
            &[
                ("self_attn", &self.self_attn),
                ("linear1", &self.linear1),
                ("linear2", &self.linear2),
                ("norm1", &self.norm1),
                ("norm2", &self.norm2),
            ],
        );
    }

    fn set_training(&mut self, training: bool) {
        self.self_attn.set_training(training);
        self.dropout.set_training(training);
    }

    fn describe(&self) -> String {
        let e = self.linear1.in_features();
        format!(
            "TransformerEncoderLayer({e}, ff {}, {}{})",
            self.linear1.out_features(),
            if self.norm_first { "pre-norm" } else { "post-norm" },
            if self.gelu { ", gelu" } else { "" }
        )
    }
}

/// Rotary position embedding (RoPE, GPT-NeoX layout): rotates each pair of
/// features `(x[i], x[i + d/2])` of a `(…, T, d)` tensor at position
/// `offset + t` by the angle `(offset + t) · 10000^(−2i/d)`, so that the dot
/// product of a rotated query and key depends only on their distance.
/// Differentiable (a composite of multiplies and a concatenation).
///
/// ```
/// use firebrand_nn::rotary;
/// use firebrand_autograd::Tensor;
/// let q = Tensor::randn([1, 2, 5, 8], 0.0, 1.0); // (B, heads, T, d)
/// assert_eq!(rotary(&q, 0).dims(), &[1, 2, 5, 8]);
/// ```
///
/// # Panics
/// When the last dim is odd or the tensor has fewer than 2 dims.
pub fn rotary(x: &Tensor, offset: usize) -> Tensor {
    let r = x.rank();
    assert!(r >= 2 && x.dims()[r - 1].is_multiple_of(2), "rotary: expected (…, T, d) with even d, got {:?}", x.dims());
    let (t, d) = (x.dims()[r - 2], x.dims()[r - 1]);
    let half = d / 2;
    let (mut cos, mut sin) = (vec![0.0f32; t * d], vec![0.0f32; t * d]);
    for p in 0..t {
        for i in 0..half {
            let a = (offset + p) as f64 * 10000f64.powf(-2.0 * i as f64 / d as f64);
            for j in [i, i + half] {
                cos[p * d + j] = a.cos() as f32;
                sin[p * d + j] = a.sin() as f32;
            }
        }
    }
    let (cos, sin) = (Tensor::from_vec(cos, [t, d]), Tensor::from_vec(sin, [t, d]));
    // rotate_half(x) = [-x2, x1]
    let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
    let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
    x.mul(&cos).add(&rotated.mul(&sin))
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

impl Module for TransformerDecoderLayer {
    /// The layer with `x` as its own memory; use
    /// [`TransformerDecoderLayer::decode`] to attend to an encoder's output.
    fn forward(&self, x: &Tensor) -> Tensor {
        self.decode(x, x, None)
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        visit_children(
            prefix,
            f,
            &[
                ("self_attn", &self.self_attn),
                ("multihead_attn", &self.multihead_attn),
                ("linear1", &self.linear1),
                ("linear2", &self.linear2),
                ("norm1", &self.norm1),
                ("norm2", &self.norm2),
                ("norm3", &self.norm3),
            ],
        );
    }

    fn set_training(&mut self, training: bool) {
        self.self_attn.set_training(training);
        self.multihead_attn.set_training(training);
    }

    fn describe(&self) -> String {
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

/// Visits each named child's parameters under `prefix` + `name.`.
fn visit_children(prefix: &str, f: &mut dyn FnMut(&str, &Tensor), children: &[(&str, &dyn Module)]) {
    for (name, child) in children {
        child.visit_parameters(&format!("{prefix}{name}."), f);
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

impl Module for TransformerEncoder {
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.layers.iter().fold(x.clone(), |h, l| l.forward(&h)); // (B, T, E)
        match &self.norm {
            Some(n) => n.forward(&y),
            None => y,
        }
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        for (i, l) in self.layers.iter().enumerate() {
            l.visit_parameters(&format!("{prefix}layers.{i}."), f);
        }
        if let Some(n) = &self.norm {
            n.visit_parameters(&format!("{prefix}norm."), f);
        }
    }

    fn set_training(&mut self, training: bool) {
        self.layers.iter_mut().for_each(|l| l.set_training(training));
    }

    fn describe(&self) -> String {
        format!("TransformerEncoder({} layers)", self.layers.len())
    }
}
