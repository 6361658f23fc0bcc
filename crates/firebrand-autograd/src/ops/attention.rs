//! Scaled-dot-product attention as one autograd op over the backend's fused
//! kernel (`Backend::attention`): the causal and key-padding masks are
//! applied inside the kernel, the attention weights are never stored (the
//! backward pass recomputes them from each row's log-sum-exp), and the output
//! lands in `(B, T, heads, d)` order so the heads merge into `(B, T, E)`
//! without a copy. The composite form (`softmax(q·kᵀ·scale + mask)·v` from
//! primitive ops) is the reference in the tests.

use super::{panicking, record};
use crate::grad_mode::with_no_grad;
use crate::tensor::{Tensor, same_backend};
use firebrand_tensor::backend::{AttentionInputs, AttentionSpec, HeadLayout};
use firebrand_tensor::{DType, Error, Result};

/// Masking and scaling for [`Tensor::try_scaled_dot_product_attention`].
#[derive(Clone, Copy, Default)]
pub struct AttentionOptions<'a> {
    /// `Some(offset)`: query `t` attends to keys `j ≤ t + offset` only
    /// (`Some(0)` is the usual causal mask; a KV cache of `n` earlier
    /// positions uses `Some(n)`).
    pub causal: Option<usize>,
    /// `(B, S)`, non-zero (or `true`) where a key is padding and is ignored.
    pub key_padding_mask: Option<&'a Tensor>,
    /// Factor on `q·kᵀ`; `1/√d` when `None`.
    pub scale: Option<f32>,
}

impl AttentionOptions<'_> {
    /// The usual causal mask.
    pub fn causal() -> Self {
        AttentionOptions { causal: Some(0), ..Default::default() }
    }
}

/// `x`'s layout as a [`HeadLayout`], copying first when the last dim is not contiguous.
fn head_view(x: &Tensor) -> Tensor {
    let l = x.layout();
    if l.dims()[3] > 1 && l.strides()[3] != 1 { x.contiguous() } else { x.clone() }
}

fn head_layout(x: &Tensor) -> HeadLayout {
    let (l, s) = (x.layout(), x.layout().strides());
    HeadLayout { offset: l.offset(), batch: s[0], head: s[1], row: s[2] }
}

/// Runs `f` on the backend view of the operands (their storages locked for reading).
fn with_inputs<R>(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    pad: Option<&Tensor>,
    f: impl FnOnce(&AttentionInputs) -> R,
) -> R {
    let (qs, ks, vs) = (q.storage(), k.storage(), v.storage());
    let ps = pad.map(|p| p.storage());
    f(&AttentionInputs {
        q: &**qs,
        q_at: head_layout(q),
        k: &**ks,
        k_at: head_layout(k),
        v: &**vs,
        v_at: head_layout(v),
        key_padding: ps.as_ref().map(|p| &***p),
    })
}

impl Tensor {
    /// Scaled-dot-product attention, `softmax(q·kᵀ·scale + mask)·v`, with
    /// `self` as the queries `(B, heads, T, d)` and keys and values
    /// `(B, heads, S, d)` (PyTorch's `F.scaled_dot_product_attention`). Any
    /// strided views are read in place (e.g. heads split from a fused
    /// projection); keys and values may be broadcast over heads. Returns
    /// `(B, heads, T, d)` as a view of a `(B, T, heads, d)` buffer, so
    /// `.permute(&[0, 2, 1, 3]).reshape([B, T, E])` is free. A query whose keys
    /// are all masked gets zeros. Differentiable in `q`, `k` and `v`.
    ///
    /// # Errors
    /// When the shapes do not fit (named), the mask is not `(B, S)`, a tensor
    /// is not `f32`, or the devices differ.
    ///
    /// ```
    /// use firebrand_autograd::{AttentionOptions, Tensor};
    /// let q = Tensor::randn([2, 4, 5, 8], 0.0, 1.0); // (B, heads, T, d)
    /// let k = Tensor::randn([2, 4, 7, 8], 0.0, 1.0); // (B, heads, S, d)
    /// let v = Tensor::randn([2, 4, 7, 8], 0.0, 1.0);
    /// let y = q.try_scaled_dot_product_attention(&k, &v, &AttentionOptions::default()).unwrap();
    /// assert_eq!(y.dims(), &[2, 4, 5, 8]);
    /// ```
    pub fn try_scaled_dot_product_attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        opts: &AttentionOptions<'_>,
    ) -> Result<Tensor> {
        let op = "scaled_dot_product_attention";
        let (b, h, t, d) = match *self.dims() {
            [b, h, t, d] => (b, h, t, d),
            _ => return Err(Error::msg(op, format!("expected q (B, heads, T, d), got {:?}", self.dims()))),
        };
        let s = k.dims().get(2).copied().unwrap_or(0);
        if k.dims() != [b, h, s, d] || v.dims() != [b, h, s, d] {
            return Err(Error::msg(
                op,
                format!("q {:?} needs k and v ({b}, {h}, S, {d}); got {:?} and {:?}", self.dims(), k.dims(), v.dims()),
            ));
        }
        for x in [self, k, v] {
            if x.dtype() != DType::F32 {
                return Err(Error::DType { op, got: x.dtype(), expected: "f32" });
            }
        }
        let backend = same_backend(op, &[self, k, v])?;
        let pad = match opts.key_padding_mask {
            Some(m) if m.dims() != [b, s] => {
                return Err(Error::msg(op, format!("key padding mask must be ({b}, {s}), got {:?}", m.dims())));
            }
            Some(m) => Some(with_no_grad(|| m.to_dtype(DType::F32).to_device(self.device()))?.dense(op)?),
            None => None,
        };
        let spec = AttentionSpec {
            batch: b,
            heads: h,
            q_len: t,
            kv_len: s,
            head_dim: d,
            scale: opts.scale.unwrap_or(1.0 / (d as f32).sqrt()),
            causal: opts.causal,
        };
        let (q, k, v) = (head_view(self), head_view(k), head_view(v));
        let (out, lse) = with_inputs(&q, &k, &v, pad.as_ref(), |x| backend.attention(x, &spec))?;
        let out = Tensor::from_backend(out, [b, t, h, d]); // (B, T, heads, d)
        let lse = Tensor::from_backend(lse, [b, h, t]);
        let y = out.permute(&[0, 2, 1, 3]); // (B, heads, T, d)
        let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
        Ok(record(y, op, &[&q, &k, &v], move |_, gy| {
            // gy: (B, heads, T, d); as (B, T, heads, d) it is usually contiguous already.
            let g = gy.permute(&[0, 2, 1, 3]).dense(op).expect("f32");
            let (dq, dk, dv) = with_inputs(&qd, &kd, &vd, pad.as_ref(), |x| {
                backend.attention_backward(x, &spec, &**out.storage(), &**lse.storage(), &**g.storage())
            })
            .expect("attention backward: f32");
            let back = |st, len| Some(Tensor::from_backend(st, [b, len, h, d]).permute(&[0, 2, 1, 3]));
            vec![back(dq, t), back(dk, s), back(dv, s)]
        }))
    }

    panicking!(
        /// Scaled-dot-product attention; see [`Tensor::try_scaled_dot_product_attention`].
        scaled_dot_product_attention => try_scaled_dot_product_attention(
            k: &Tensor, v: &Tensor, opts: &AttentionOptions<'_>
        ) -> Tensor
    );
}
