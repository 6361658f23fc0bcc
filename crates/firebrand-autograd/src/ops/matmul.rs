//! Matrix products with PyTorch's `matmul` semantics: 1-D operands are
//! promoted, batch dims broadcast, and transposed operands multiply in place
//! (the gemm reads any strides).

use super::{panicking, record};
use crate::tensor::{Tensor, same_device};
use firebrand_ops::gemm::{MatRef, gemm, gemm_serial};
use firebrand_tensor::{Error, Layout, Result, Shape};
use rayon::prelude::*;

/// Batches smaller than this many multiply-adds per matrix run in parallel over
/// the batch (each gemm on one thread) instead of threading each gemm.
const BATCH_PAR_MAX_MACS: usize = 1 << 18;

impl Tensor {
    /// Matrix product (`torch.matmul`): `(…, m, k) @ (…, k, n) -> (…, m, n)` with
    /// broadcast batch dims; a 1-D left operand is a row vector, a 1-D right
    /// operand a column vector (the added dim is removed from the result).
    ///
    /// # Errors
    /// When the inner dims differ, the batch dims do not broadcast, an operand
    /// is 0-D, or a dtype is not `f32`.
    pub fn try_matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        same_device("matmul", &[self, rhs])?;
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
            });
        }
        match (self.rank(), rhs.rank()) {
            (1, 1) => self
                .try_unsqueeze(0)?
                .try_matmul_nd(&rhs.try_unsqueeze(1)?)?
                .try_reshape(()),
            (1, _) => self.try_unsqueeze(0)?.try_matmul_nd(rhs)?.try_squeeze(-2),
            (_, 1) => self.try_matmul_nd(&rhs.try_unsqueeze(1)?)?.try_squeeze(-1),
            _ => self.try_matmul_nd(rhs),
        }
        .map_err(|e| match e {
            Error::ShapeMismatch { .. } => Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
            },
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
        let (m, k) = (ad[ad.len() - 2], ad[ad.len() - 1]);
        let (k2, n) = (bd[bd.len() - 2], bd[bd.len() - 1]);
        let mismatch = || Error::ShapeMismatch {
            op: "matmul",
            lhs: self.shape().clone(),
            rhs: rhs.shape().clone(),
        };
        if k != k2 {
            return Err(mismatch());
        }
        let abatch = Shape::from(&ad[..ad.len() - 2]);
        let bbatch = Shape::from(&bd[..bd.len() - 2]);
        let batch = abatch
            .broadcast_with(&bbatch, "matmul")
            .map_err(|_| mismatch())?;
        let mut out_dims = batch.dims().to_vec();
        out_dims.extend([m, n]);
        let mut adims = batch.dims().to_vec();
        adims.extend([m, k]);
        let mut bdims = batch.dims().to_vec();
        bdims.extend([k, n]);
        let al = self.layout().broadcast_as(&Shape::from(adims))?;
        let bl = rhs.layout().broadcast_as(&Shape::from(bdims))?;
        let out = self.with_f32("matmul", |a, _| {
            rhs.with_f32("matmul", |b, _| batched_gemm(a, &al, b, &bl, m, k, n))
        })??;
        let out = Tensor::from_vec(out, out_dims);
        let (a, b) = (self.detach(), rhs.detach());
        Ok(record(out, "matmul", &[self, rhs], move |_, g| {
            let ga = g.matmul(&b.transpose(-1, -2)).sum_to(a.shape());
            let gb = a.transpose(-1, -2).matmul(g).sum_to(b.shape());
            vec![Some(ga), Some(gb)]
        }))
    }
}

/// Multiplies every batch entry of broadcast layouts `(…, m, k)` and `(…, k, n)`.
fn batched_gemm(
    a: &[f32],
    al: &Layout,
    b: &[f32],
    bl: &Layout,
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f32> {
    let r = al.dims().len();
    let batch_dims = &al.dims()[..r - 2];
    let nb: usize = batch_dims.iter().product();
    let mut out = firebrand_tensor::pool::take_f32(nb * m * n);
    if m * n == 0 {
        return out;
    }
    // Every output element is written by the gemm below (k == 0 writes zeros).
    let offsets = |layout: &Layout, bi: usize| -> usize {
        let mut rem = bi;
        let mut off = layout.offset();
        for d in (0..r - 2).rev() {
            off += (rem % batch_dims[d]) * layout.strides()[d];
            rem /= batch_dims[d];
        }
        off
    };
    let (ars, acs) = (al.strides()[r - 2], al.strides()[r - 1]);
    let (brs, bcs) = (bl.strides()[r - 2], bl.strides()[r - 1]);
    let one = |bi: usize, c: &mut [f32], serial: bool| {
        let am = MatRef {
            data: a,
            offset: offsets(al, bi),
            rs: ars,
            cs: acs,
        };
        let bm = MatRef {
            data: b,
            offset: offsets(bl, bi),
            rs: brs,
            cs: bcs,
        };
        if serial {
            gemm_serial(m, k, n, am, bm, c, n, false)
        } else {
            gemm(m, k, n, am, bm, c, n, false)
        }
    };
    if nb > 1 && m * n * k <= BATCH_PAR_MAX_MACS && rayon::current_num_threads() > 1 {
        out.par_chunks_mut(m * n)
            .enumerate()
            .for_each(|(bi, c)| one(bi, c, true));
    } else {
        out.chunks_mut(m * n)
            .enumerate()
            .for_each(|(bi, c)| one(bi, c, false));
    }
    out
}
