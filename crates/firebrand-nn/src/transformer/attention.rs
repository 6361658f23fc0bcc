//! Multi-head attention with PyTorch's parameter layout, over the fused
//! scaled-dot-product op, and its key/value cache for incremental decoding.

use crate::{Init, Linear, Module};
use firebrand_autograd::{Tensor, with_no_grad};

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

