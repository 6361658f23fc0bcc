//! Loss functions, written from differentiable tensor ops (their gradients
//! come from autograd). Class scores are in the **last** dim, so the same call
//! serves `(N, C)` batches and `(N, T, C)` sequences.

use firebrand_autograd::{DType, Error, Result, Tensor};

/// How per-example losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The mean (PyTorch's default).
    #[default]
    Mean,
    /// The sum.
    Sum,
    /// No reduction: one loss per example.
    None,
}

fn reduce(loss: Tensor, reduction: Reduction) -> Tensor {
    match reduction {
        Reduction::Mean => loss.mean_all(),
        Reduction::Sum => loss.sum_all(),
        Reduction::None => loss,
    }
}

/// Targets for [`cross_entropy`]: class indices or class probabilities.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// `i64` class indices of shape `(…)` for logits `(…, C)`.
    Indices(&'a Tensor),
    /// `f32` probabilities (or one-hot rows) of the logits' shape `(…, C)`.
    Probs(&'a Tensor),
}

/// Cross-entropy from logits (PyTorch's `F.cross_entropy`, class dim last),
/// with optional label smoothing `ε`: the target becomes `(1-ε)·target + ε/C`.
///
/// # Errors
/// When the target's shape or dtype does not fit the logits.
///
/// ```
/// use firebrand_nn::loss::{cross_entropy, Reduction, Target};
/// use firebrand_autograd::Tensor;
/// let logits = Tensor::from_vec(vec![2.0f32, 0.0, 0.0, 0.0, 2.0, 0.0], [2, 3]);
/// let labels = Tensor::from_vec(vec![0i64, 1], [2]);
/// let loss = cross_entropy(&logits, Target::Indices(&labels), 0.0, Reduction::Mean).unwrap();
/// assert!((loss.item() - 0.2395).abs() < 1e-4);
/// ```
pub fn cross_entropy(
    logits: &Tensor,
    target: Target<'_>,
    label_smoothing: f32,
    reduction: Reduction,
) -> Result<Tensor> {
    let logp = logits.try_log_softmax(-1)?;
    let loss = match target {
        Target::Indices(t) => {
            let nll = nll_per_example(&logp, t)?;
            if label_smoothing > 0.0 {
                let uniform = logp.try_mean(&[-1], false)?.neg();
                nll * (1.0 - label_smoothing) + uniform * label_smoothing
            } else {
                nll
            }
        }
        Target::Probs(p) => {
            if p.shape() != logits.shape() {
                return Err(Error::ShapeMismatch {
                    op: "cross_entropy",
                    lhs: logits.shape().clone(),
                    rhs: p.shape().clone(),
                });
            }
            let classes = logits.size(-1) as f32;
            let p =
                if label_smoothing > 0.0 { p * (1.0 - label_smoothing) + label_smoothing / classes } else { p.clone() };
            p.try_mul(&logp)?.try_sum(&[-1], false)?.neg()
        }
    };
    Ok(reduce(loss, reduction))
}

fn nll_per_example(logp: &Tensor, target: &Tensor) -> Result<Tensor> {
    if target.dtype() != DType::I64 {
        return Err(Error::DType { op: "nll_loss", got: target.dtype(), expected: "i64 class indices" });
    }
    if target.rank() + 1 != logp.rank() || target.dims() != &logp.dims()[..logp.rank() - 1] {
        return Err(Error::ShapeMismatch { op: "nll_loss", lhs: logp.shape().clone(), rhs: target.shape().clone() });
    }
    Ok(logp.try_gather(-1, &target.try_unsqueeze(-1)?)?.try_squeeze(-1)?.neg())
}

/// Negative log-likelihood of log-probabilities `(…, C)` at `i64` targets `(…)`
/// (PyTorch's `F.nll_loss`, class dim last).
///
/// # Errors
/// When the target's shape or dtype does not fit.
pub fn nll_loss(log_probs: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    Ok(reduce(nll_per_example(log_probs, target)?, reduction))
}

/// Mean squared error (`F.mse_loss`), broadcasting `target` against `pred`.
///
/// # Errors
/// When the shapes do not broadcast.
pub fn mse_loss(pred: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    Ok(reduce(pred.try_sub(target)?.square(), reduction))
}

/// Binary cross-entropy from logits (`F.binary_cross_entropy_with_logits`),
/// computed stably as `max(x, 0) - x·y + ln(1 + e^-|x|)`.
///
/// # Errors
/// When the shapes do not broadcast.
pub fn binary_cross_entropy_with_logits(logits: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    let loss = logits.relu().try_sub(&logits.try_mul(target)?)?.try_add(&logits.abs().neg().softplus())?;
    Ok(reduce(loss, reduction))
}
