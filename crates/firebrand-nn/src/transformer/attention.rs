//! Multi-head attention with PyTorch's parameter layout, over the fused
//! scaled-dot-product op, and its key/value cache for incremental decoding.

use crate::{Init, Linear, Module};
use firebrand_autograd::{AttentionOptions, Tensor, with_no_grad};
use firebrand_ops::gemm::int8::QuantizedWeight;
use std::sync::Arc;

/// Cached keys and values of a [`MultiHeadAttention`] for incremental
/// decoding, `(B, S, E)` each (heads side by side); empty at first.
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
        self.k.as_ref().map_or(0, |k| k.dims()[1])
    }

    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key-padding and additive masks of one call.
type Masks<'a> = (Option<&'a Tensor>, Option<&'a Tensor>);

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
    fused: bool,
    training: bool,
    /// The dynamic int8 form of `in_proj_weight` ([`crate::quantize::quantize_dynamic`]).
    int8: std::sync::RwLock<Option<InProjInt8>>,
}

/// `in_proj_weight` in int8 (one scale per row): whole, and the query and
/// key/value rows on their own (cross-attention).
#[derive(Clone)]
struct InProjInt8 {
    full: Arc<QuantizedWeight>,
    q: Arc<QuantizedWeight>,
    kv: Arc<QuantizedWeight>,
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
            fused: true,
            int8: Default::default(),
            training: true,
        }
    }

    /// Masks attention to later positions (decoder self-attention).
    pub fn causal(mut self, on: bool) -> Self {
        self.causal = on;
        self
    }

    /// Dropout on the attention weights, in training (inside the fused
    /// kernel: the mask is regenerated in the backward pass, never stored).
    pub fn dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }

    /// `false` computes attention from primitive ops (scores and mask
    /// materialized) instead of the fused kernel: slower, the reference the
    /// fused path is tested against.
    pub fn fused(mut self, on: bool) -> Self {
        self.fused = on;
        self
    }

    /// Attention of `query` `(B, T, E)` over `key`/`value` `(B, S, E)`;
    /// `key_padding_mask` `(B, S)` holds 1 where a key is padding (ignored).
    /// Returns `(B, T, E)`.
    ///
    /// # Panics
    /// On shapes that do not fit, naming them.
    pub fn attend(&self, query: &Tensor, key: &Tensor, value: &Tensor, key_padding_mask: Option<&Tensor>) -> Tensor {
        self.attend_impl(query, key, value, key_padding_mask, None, None)
    }

    /// [`MultiHeadAttention::attend`] with an additive `attn_mask` `(T, S)`
    /// (`f32`, `−∞` blocks a query/key pair; PyTorch's float `attn_mask`),
    /// shared by the batch and the heads, on top of the causal and padding masks.
    ///
    /// ```
    /// use firebrand_nn::MultiHeadAttention;
    /// use firebrand_autograd::Tensor;
    /// let mha = MultiHeadAttention::new(8, 2);
    /// let x = Tensor::randn([1, 3, 8], 0.0, 1.0);
    /// // Prefix-LM: positions 0 and 1 see each other, position 2 sees all.
    /// let inf = f32::NEG_INFINITY;
    /// let mask = Tensor::from_vec(vec![0.0, 0.0, inf, 0.0, 0.0, inf, 0.0, 0.0, 0.0], [3, 3]);
    /// assert_eq!(mha.attend_masked(&x, &x, &x, None, &mask).dims(), &[1, 3, 8]);
    /// ```
    pub fn attend_masked(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        key_padding_mask: Option<&Tensor>,
        attn_mask: &Tensor,
    ) -> Tensor {
        self.attend_impl(query, key, value, key_padding_mask, Some(attn_mask), None)
    }

    /// Self-attention for incremental decoding: `x` `(B, T_new, E)` holds the
    /// next positions; their keys and values are appended to `cache`, and the
    /// queries attend to every cached position (causally, when the layer is
    /// causal, counting from the cache's length). Feeding a sequence one step
    /// at a time gives the same outputs as one causal pass over all of it.
    ///
    /// ```
    /// use firebrand_nn::{KvCache, MultiHeadAttention, Module};
    /// use firebrand_autograd::{AttentionOptions, Tensor, with_no_grad};
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
        self.attend_impl(x, x, x, None, None, Some(cache))
    }

    fn attend_impl(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        key_padding_mask: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let e = self.in_proj_weight.dims()[1];
        let (b, t) = match *query.dims() {
            [b, t, ee] if ee == e => (b, t),
            _ => crate::module::input_error(self, &format!("query (B, T, {e})"), query.dims()),
        };
        let s = if key.rank() == 3 { key.dims()[1] } else { 0 };
        if key.dims() != [b, s, e] {
            crate::module::input_error(self, &format!("key ({b}, S, {e})"), key.dims());
        }
        if value.dims() != [b, s, e] {
            crate::module::input_error(self, &format!("value ({b}, {s}, {e})"), value.dims());
        }
        let (w, bias) = (&self.in_proj_weight, &self.in_proj_bias);
        let int8 = self
            .int8
            .read()
            .expect("not poisoned")
            .clone()
            .filter(|_| [query, key, value].iter().all(|x| crate::quantize::may_compute_quantized(x, &[w, bias])));
        let proj = |x: &Tensor, part: usize, n: usize| {
            let b = bias.narrow(0, part * e, n * e);
            // Rows part·E .. (part + n)·E of the weight, in int8 when its form serves.
            let q = int8.as_ref().map(|q| match (part, n) {
                (0, 3) => q.full.clone(),
                (0, 1) => q.q.clone(),
                (1, 2) => q.kv.clone(),
                _ => Arc::new(rows_of(&q.full, part * e, n * e)),
            });
            match q {
                Some(q) => crate::quantize::linear_int8(x, &q, Some(&b), None),
                None => x.matmul(&w.narrow(0, part * e, n * e).t()).add(&b),
            }
        };
        // (B, L, E) each; self-attention projects all three in one gemm.
        let (q, mut k, mut v) = if query.id() == key.id() && key.id() == value.id() {
            let qkv = proj(query, 0, 3); // (B, T, 3E)
            (qkv.narrow(2, 0, e), qkv.narrow(2, e, e), qkv.narrow(2, 2 * e, e))
        } else if key.id() == value.id() {
            let kv = proj(key, 1, 2); // (B, S, 2E)
            (proj(query, 0, 1), kv.narrow(2, 0, e), kv.narrow(2, e, e))
        } else {
            (proj(query, 0, 1), proj(key, 1, 1), proj(value, 2, 1))
        };
        // With a cache, the new keys and values follow the cached ones; queries
        // sit at positions `offset..offset + T`.
        let mut offset = 0;
        if let Some(c) = cache {
            if let (Some(pk), Some(pv)) = (&c.k, &c.v) {
                assert_eq!(pk.dims()[0], b, "KvCache: cached batch {:?} differs from {b}", pk.dims());
                offset = pk.dims()[1];
                k = Tensor::cat(&[pk, &k], 1);
                v = Tensor::cat(&[pv, &v], 1);
            } else {
                (k, v) = (k.contiguous(), v.contiguous());
            }
            c.k = Some(k.clone());
            c.v = Some(v.clone());
        }
        let ctx = if !self.fused {
            self.composite(&q, &k, &v, (key_padding_mask, attn_mask), offset)
        } else {
            let (nh, d) = (self.heads, e / self.heads);
            let heads = |x: &Tensor| x.reshape([b, x.dims()[1], nh, d]).permute(&[0, 2, 1, 3]); // (B, nh, L, d)
            let opts = AttentionOptions {
                causal: self.causal.then_some(offset),
                key_padding_mask,
                attn_mask,
                dropout: if self.training { self.dropout } else { 0.0 },
                ..Default::default()
            };
            heads(&q).scaled_dot_product_attention(&heads(&k), &heads(&v), &opts).permute(&[0, 2, 1, 3])
        };
        self.out_proj.forward(&ctx.reshape([b, t, e])) // (B, T, E)
    }

    /// Attention from primitive ops: scores materialized, the mask an added
    /// `−∞` tensor, dropout on the weights (a stored mask). The reference the
    /// fused path is tested against (`fused(false)`).
    /// `q` `(B, T, E)`, `k`/`v` `(B, S, E)`; returns `(B, T, heads, d)`.
    fn composite(&self, q: &Tensor, k: &Tensor, v: &Tensor, masks: Masks, offset: usize) -> Tensor {
        let (pad, attn_mask) = masks;
        let (b, t, e) = (q.dims()[0], q.dims()[1], q.dims()[2]);
        let s = k.dims()[1];
        let (nh, d) = (self.heads, e / self.heads);
        let heads = |x: &Tensor| x.reshape([b, x.dims()[1], nh, d]).permute(&[0, 2, 1, 3]); // (B, nh, L, d)
        let mut scores = heads(q).matmul(&heads(k).transpose(-1, -2)).affine(1.0 / (d as f32).sqrt(), 0.0); // (B, nh, T, S)
        if self.causal || pad.is_some() {
            let mask = with_no_grad(|| {
                let mut m = vec![0.0f32; b * t * s];
                let pad = pad.map(|p| p.to_dtype(firebrand_autograd::DType::F32).to_vec::<f32>());
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
                Tensor::from_vec(m, [b, 1, t, s]).to_device(scores.device()).expect("the scores' device")
            });
            scores = scores.add(&mask);
        }
        if let Some(m) = attn_mask {
            scores = scores.add(m); // (T, S), broadcast
        }
        let mut attn = scores.softmax(-1);
        if self.training && self.dropout > 0.0 {
            attn = crate::dropout::dropout(&attn, self.dropout);
        }
        attn.matmul(&heads(v)).permute(&[0, 2, 1, 3]) // (B, T, nh, d)
    }
}

impl Module for MultiHeadAttention {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || self.attend(x, x, x, None))
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}in_proj_weight"), &self.in_proj_weight);
        f(&format!("{prefix}in_proj_bias"), &self.in_proj_bias);
        self.out_proj.visit_parameters(&format!("{prefix}out_proj."), f);
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn visit_children<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a dyn Module)) {
        f(&format!("{prefix}out_proj"), &self.out_proj);
    }

    /// Dynamic int8 of the stacked q/k/v projection (`out_proj` is a
    /// `Linear` and takes its own): inference only, as for `Linear`.
    fn set_dynamic_int8(&self, on: bool) -> bool {
        let q = on.then(|| {
            let e = self.in_proj_weight.dims()[1];
            let full = crate::quantize::quantize_per_row(&self.in_proj_weight);
            let (q, kv) = (rows_of(&full, 0, e), rows_of(&full, e, 2 * e));
            InProjInt8 { full: Arc::new(full), q: Arc::new(q), kv: Arc::new(kv) }
        });
        *self.int8.write().expect("not poisoned") = q;
        true
    }

    fn describe(&self) -> String {
        let e = self.in_proj_weight.dims()[1];
        format!("MultiHeadAttention({e}, {} heads{})", self.heads, if self.causal { ", causal" } else { "" })
    }
}

/// Rows `r0..r0 + n` of an int8 weight (exact: each row keeps its scale).
fn rows_of(w: &QuantizedWeight, r0: usize, n: usize) -> QuantizedWeight {
    let k = w.k;
    QuantizedWeight::from_i8(w.data[r0 * k..(r0 + n) * k].to_vec(), w.scale[r0..r0 + n].to_vec(), n, k)
}
