//! Softmax and log-softmax along any dim, with fused CPU kernels (the
//! composite `exp(x - max) / sum` is kept as the reference in tests).

use super::{panicking, record};
use crate::tensor::Tensor;
use firebrand_tensor::{Result, normalize_dim};

impl Tensor {
    fn softmax_impl(&self, dim: isize, log: bool) -> Result<Tensor> {
        let op = if log { "log_softmax" } else { "softmax" };
        let d = normalize_dim(dim, self.rank().max(1), op, self.shape())?;
        let last = self.rank().saturating_sub(1);
        if self.rank() > 0 && d != last {
            // Move `dim` last, compute, move it back (autograd sees the transposes).
            return Ok(self.try_transpose(d as isize, -1)?.softmax_impl(-1, log)?.transpose(d as isize, -1));
        }
        if self.dtype() == firebrand_tensor::DType::F64 {
            return Ok(self.softmax_composite(log));
        }
        let cols = self.dims().last().copied().unwrap_or(1);
        let backend = self.backend(op)?;
        let out = backend.softmax(&**self.storage(), self.layout(), log)?;
        let out = Tensor::from_backend(out, self.shape().clone());
        Ok(record(out, op, &[self], move |y, g| {
            let gd = g.dense(op).expect("softmax backward");
            let dx =
                backend.softmax_backward(&**y.storage(), &**gd.storage(), cols, log).expect("softmax backward: f32");
            vec![Some(Tensor::from_backend(dx, y.shape().clone()))]
        }))
    }

    /// `exp(x − max) / Σ exp(x − max)` over the last dim from primitive ops
    /// (log: `x − max − log Σ exp(x − max)`): the `f64` path, and the form
    /// the fused kernel is tested against. The max is detached (the result
    /// does not depend on it).
    pub(crate) fn softmax_composite(&self, log: bool) -> Tensor {
        let z = self - &self.detach().max(&[-1], true);
        if log { &z - &z.exp().sum(&[-1], true).log() } else { z.exp().div(&z.exp().sum(&[-1], true)) }
    }

    /// Softmax along `dim`, numerically stable. `f32`, `f16` and `bf16` run
    /// the fused kernel; `f64` runs the composite form in `f64`.
    ///
    /// # Errors
    /// When `dim` is out of range or the tensor is not a float.
    pub fn try_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, false)
    }

    /// Log-softmax along `dim`, numerically stable.
    ///
    /// # Errors
    /// As [`Tensor::try_softmax`].
    pub fn try_log_softmax(&self, dim: isize) -> Result<Tensor> {
        self.softmax_impl(dim, true)
    }

    panicking!(
        /// Softmax along `dim`, numerically stable.
        softmax => try_softmax(dim: isize) -> Tensor
    );
    panicking!(
        /// Log-softmax along `dim`, numerically stable.
        log_softmax => try_log_softmax(dim: isize) -> Tensor
    );
}
