//! Matrix products with PyTorch's `matmul` semantics: 1-D operands are
//! promoted, batch dims broadcast, and transposed operands multiply in place
//! (the gemm reads any strides).

use super::{panicking, record};
use crate::tensor::{Tensor, same_backend};
use firebrand_tensor::{Error, Result, Shape};

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
