//! Matrix products with PyTorch's `matmul` semantics: 1-D operands are
//! promoted, batch dims broadcast, and transposed operands multiply in place
//! (the gemm reads any strides).

use super::{panicking, record, records_graph};
use crate::tensor::{Tensor, same_backend};
use firebrand_ops::unary::UnaryOp;
use firebrand_tensor::backend::Fused;
use firebrand_tensor::{DType, Error, Result, Shape};

impl Tensor {
    /// Matrix product (`torch.matmul`): `(…, m, k) @ (…, k, n) -> (…, m, n)` with
    /// broadcast batch dims; a 1-D left operand is a row vector, a 1-D right
    /// operand a column vector (the added dim is removed from the result).
    ///
    /// # Errors
    /// When the inner dims differ, the batch dims do not broadcast, an operand
    /// is 0-D, or a dtype is not `f32`.
    pub fn try_matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        same_backend("matmul", &[self, rhs])?;
        if self.dtype() != rhs.dtype() {
            let dt = super::result_type(self, rhs);
            return self.try_to_dtype(dt)?.try_matmul(&rhs.try_to_dtype(dt)?);
        }
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::ShapeMismatch { op: "matmul", lhs: self.shape().clone(), rhs: rhs.shape().clone() });
        }
        match (self.rank(), rhs.rank()) {
            (1, 1) => self.try_unsqueeze(0)?.try_matmul_nd(&rhs.try_unsqueeze(1)?)?.try_reshape(()),
            (1, _) => self.try_unsqueeze(0)?.try_matmul_nd(rhs)?.try_squeeze(-2),
            (_, 1) => self.try_matmul_nd(&rhs.try_unsqueeze(1)?)?.try_squeeze(-1),
            _ => self.try_matmul_nd(rhs),
        }
        .map_err(|e| match e {
            Error::ShapeMismatch { .. } => {
                Error::ShapeMismatch { op: "matmul", lhs: self.shape().clone(), rhs: rhs.shape().clone() }
            }
            e => e,
        })
    }

    panicking!(
        /// Matrix product (`torch.matmul`); see [`Tensor::try_matmul`].
        matmul => try_matmul(rhs: &Tensor) -> Tensor
    );

    /// A linear layer (`torch.nn.functional.linear`, plus an optional
    /// activation): `act(x·wᵀ + bias)` for `x` `(…, k)`, `weight` `(n, k)` and
    /// `bias` `(n)`, giving `(…, n)`.
    ///
    /// On a device with the fused kernel ([`Fused::Linear`]) the bias is
    /// added, and when no gradient is recorded the activation applied, as
    /// the gemm stores the product: no further pass over the output. With a
    /// gradient recorded and an activation, the activation runs as its own
    /// op (its backward needs the pre-activation). Elsewhere it is the
    /// composite `matmul`, `add`, activation, which is also the reference
    /// the fused form is tested against.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    /// let w = Tensor::from_vec(vec![1.0f32, 0.0, 1.0, 1.0, -1.0, 0.0], [3, 2]);
    /// let b = Tensor::from_vec(vec![0.5f32, 0.0, 0.0], [3]);
    /// let y = x.linear(&w, Some(&b), Some(firebrand_autograd::UnaryOp::Relu));
    /// assert_eq!(y.to_vec::<f32>(), vec![1.5, 3.0, 0.0, 3.5, 7.0, 0.0]);
    /// ```
    ///
    /// # Errors
    /// When `weight` is not 2-D, `x`'s last dim is not `weight`'s second,
    /// `bias` is not `(n)`, or the operands are on different devices.
    pub fn try_linear(&self, weight: &Tensor, bias: Option<&Tensor>, act: Option<UnaryOp>) -> Result<Tensor> {
        let op = "linear";
        let k = self.dims().last().copied();
        if weight.rank() != 2 || self.rank() == 0 || k != Some(weight.dims()[1]) {
            return Err(Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: weight.shape().clone() });
        }
        let (n, k) = (weight.dims()[0], weight.dims()[1]);
        if let Some(b) = bias.filter(|b| b.dims() != [n]) {
            return Err(Error::msg(op, format!("bias {} for weight {}: expected [{n}]", b.shape(), weight.shape())));
        }
        let mut inputs = vec![self, weight];
        inputs.extend(bias);
        let backend = same_backend(op, &inputs)?;
        let records = records_graph(&inputs);
        let fused = backend.has_fused(Fused::Linear) && inputs.iter().all(|t| t.dtype() == DType::F32);
        if !fused {
            let y = self.try_matmul(&weight.t())?;
            let y = match bias {
                Some(b) => y.try_add(b)?,
                None => y,
            };
            return match act {
                Some(a) => y.try_unary(a),
                None => Ok(y),
            };
        }
        if let (true, Some(a)) = (records, act) {
            // The activation's backward needs the pre-activation: its own op.
            return self.try_linear(weight, bias, None)?.try_unary(a);
        }
        let rows = self.dims()[..self.rank() - 1].iter().product::<usize>();
        let (x, w) = (self.dense(op)?, weight.dense(op)?);
        let bd = bias.map(|b| b.dense(op)).transpose()?;
        let bs = bd.as_ref().map(|b| b.storage());
        let out = backend.linear(&**x.storage(), &**w.storage(), bs.as_deref().map(|b| &**b), [rows, k, n], act)?;
        let mut out_dims = self.dims().to_vec();
        *out_dims.last_mut().expect("rank ≥ 1") = n;
        let out = Tensor::from_backend(out, out_dims);
        let (x, w) = (self.detach(), weight.detach());
        let (need_x, need_w, need_b) =
            (self.requires_grad(), weight.requires_grad(), bias.is_some_and(|b| b.requires_grad()));
        let has_bias = bias.is_some();
        Ok(record(out, op, &inputs, move |_, g| {
            let g2 = g.reshape([rows, n]);
            let x2 = x.reshape([rows, k]);
            let gx = need_x.then(|| g2.matmul(&w).reshape(x.shape().clone()));
            // The weight's gradient gᵀ·x, made as (xᵀ·g)ᵀ in the weight's own order.
            let gw = need_w.then(|| weight_grad(&x2, &g2, &w.t()).t());
            let mut grads = vec![gx, gw];
            if has_bias {
                grads.push(need_b.then(|| g2.sum(&[0], false)));
            }
            grads
        }))
    }

    panicking!(
        /// A linear layer, `act(x·wᵀ + bias)`; see [`Tensor::try_linear`].
        linear => try_linear(weight: &Tensor, bias: Option<&Tensor>, act: Option<UnaryOp>) -> Tensor
    );

    /// Both operands at least 2-D.
    fn try_matmul_nd(&self, rhs: &Tensor) -> Result<Tensor> {
        let (ad, bd) = (self.dims(), rhs.dims());
        // (…, m, k) @ (k, n) with a contiguous left side is one (…·m, k) @ (k, n)
        // gemm: one large product instead of a batch of small ones, and a 2-D
        // weight gradient with no batch reduction.
        if bd.len() == 2 && ad.len() > 2 && self.is_contiguous() && ad[ad.len() - 1] == bd[0] {
            let rows: usize = ad[..ad.len() - 1].iter().product();
            let mut out_dims = ad[..ad.len() - 1].to_vec();
            out_dims.push(bd[1]);
            return self.try_reshape([rows, bd[0]])?.try_matmul_nd(rhs)?.try_reshape(out_dims);
        }
        let (m, k) = (ad[ad.len() - 2], ad[ad.len() - 1]);
        let (k2, n) = (bd[bd.len() - 2], bd[bd.len() - 1]);
        let mismatch = || Error::ShapeMismatch { op: "matmul", lhs: self.shape().clone(), rhs: rhs.shape().clone() };
        if k != k2 {
            return Err(mismatch());
        }
        let abatch = Shape::from(&ad[..ad.len() - 2]);
        let bbatch = Shape::from(&bd[..bd.len() - 2]);
        let batch = abatch.broadcast_with(&bbatch, "matmul").map_err(|_| mismatch())?;
        let mut out_dims = batch.dims().to_vec();
        out_dims.extend([m, n]);
        let mut adims = batch.dims().to_vec();
        adims.extend([m, k]);
        let mut bdims = batch.dims().to_vec();
        bdims.extend([k, n]);
        let al = self.layout().broadcast_as(&Shape::from(adims))?;
        let bl = rhs.layout().broadcast_as(&Shape::from(bdims))?;
        let backend = same_backend("matmul", &[self, rhs])?;
        let out = backend.matmul(&**self.storage(), &al, &**rhs.storage(), &bl)?;
        let out = Tensor::from_backend(out, out_dims);
        let (a, b) = (self.detach(), rhs.detach());
        // Which gradients are wanted is known now: skipping the other saves a
        // whole gemm (the input of a first layer never needs one).
        let (need_a, need_b) = (self.requires_grad(), rhs.requires_grad());
        Ok(record(out, "matmul", &[self, rhs], move |_, g| {
            let ga = need_a
                .then(|| grad_in_layout_of(&a, || g.matmul(&b.transpose(-1, -2)), || b.matmul(&g.transpose(-1, -2))));
            let gb = need_b.then(|| {
                if a.rank() == 2 && b.rank() == 2 {
                    weight_grad(&a, g, &b)
                } else {
                    grad_in_layout_of(&b, || a.transpose(-1, -2).matmul(g), || g.transpose(-1, -2).matmul(&a))
                }
            });
            vec![ga, gb]
        }))
    }
}

/// The gradient of a matmul operand `t`, computed so that it comes out in
/// `t`'s own memory order: for a 2-D operand that is a transposed contiguous
/// matrix (a `Linear` weight used as `w.t()`), `transposed()` computes the
/// gradient's transpose contiguously and a view turns it back, so the
/// transpose rule above it hands the weight a contiguous gradient with no copy.
/// A contiguous 2-D operand with fewer than 32 columns (a convolution weight
/// `(Cout, C·3·3)` with one input channel) also takes `transposed()`: the gemm
/// works in 32-column panels, so 9 columns would waste most of each
/// (measured: 32x25088x9 at 58 GFLOP/s, its transpose 9x25088x32 at 157).
/// Batched or broadcast operands use `direct()` and are reduced with `sum_to`.
fn grad_in_layout_of(t: &Tensor, direct: impl FnOnce() -> Tensor, transposed: impl FnOnce() -> Tensor) -> Tensor {
    let transposed_2d = t.rank() == 2
        && ((!t.is_contiguous() && t.layout().transpose(0, 1).is_ok_and(|l| l.is_contiguous()))
            || (t.is_contiguous() && t.dims()[1] < 32 && t.dims()[0] >= 32));
    if transposed_2d {
        // With a batched partner the product comes out batched: sum it down.
        let g = transposed().transpose(-1, -2).sum_to(t.shape());
        return if t.is_contiguous() { g.contiguous() } else { g };
    }
    direct().sum_to(t.shape())
}

/// `aᵀ·g` for 2-D `a` `(rows, k)` and `g` `(rows, n)` (the gradient of a
/// right operand `(k, n)`, a product over the `rows` of the batch), in
/// `like`'s memory order (contiguous, or a transposed contiguous view).
/// The gemm streams its left operand once per block of output columns, so
/// of `aᵀ·g` and its transpose `gᵀ·a` the one with fewer output rows is the
/// fast one when the two differ by 2x or more (measured at char_lstm's input
/// projection, 84 inputs by 512 gates over 5,120 rows: 1.9 ms as `xᵀ·g`
/// against 4.0 ms as `gᵀ·x`; at its recurrent weight, 128 by 512: 2.8 against
/// 3.9 ms). A result made in the other order is copied (it is small: `k·n`).
/// Fewer than 32 columns also swap: the gemm works in 32-column panels
/// (measured: 32x25088x9 at 58 GFLOP/s, its transpose 9x25088x32 at 157).
pub(crate) fn weight_grad(a: &Tensor, g: &Tensor, like: &Tensor) -> Tensor {
    let (k, n) = (a.dims()[1], g.dims()[1]);
    let transposed = !like.is_contiguous() && like.layout().transpose(0, 1).is_ok_and(|l| l.is_contiguous());
    // Output rows of the product that comes out in `like`'s order, and of the other.
    let (natural_rows, other_rows) = if transposed { (n, k) } else { (k, n) };
    let swap = 2 * other_rows <= natural_rows || (!transposed && n < 32 && k >= 32);
    match (transposed, swap) {
        (false, false) => a.t().matmul(g),
        (true, false) => g.t().matmul(a).t(), // (n, k) contiguous, seen as (k, n)
        (false, true) => g.t().matmul(a).t().contiguous(), // copied to (k, n) order
        (true, true) => a.t().matmul(g).t().contiguous().t(), // copied to (n, k) order
    }
}
