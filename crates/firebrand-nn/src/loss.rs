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

/// The class index the losses skip by default, as PyTorch's `ignore_index=-100`.
pub const IGNORE_INDEX: i64 = -100;

/// Cross-entropy from logits with all of PyTorch's `nn.CrossEntropyLoss`
/// options that apply here: label smoothing, an ignored class index, and the
/// reduction. [`cross_entropy`] is this with the defaults.
///
/// Targets equal to `ignore_index` add nothing to the loss or the gradient;
/// [`Reduction::Mean`] averages over the others (NaN when every target is
/// ignored, as in PyTorch), [`Reduction::None`] gives them a loss of 0.
///
/// ```
/// use firebrand_nn::loss::{CrossEntropyLoss, Reduction, Target};
/// use firebrand_autograd::Tensor;
/// let logits = Tensor::from_vec(vec![2.0f32, 0.0, 0.0, 0.0, 2.0, 0.0], [2, 3]);
/// let labels = Tensor::from_vec(vec![0i64, -100], [2]); // the second is padding
/// let loss = CrossEntropyLoss::default().compute(&logits, Target::Indices(&labels)).unwrap();
/// assert!((loss.item() - 0.2395).abs() < 1e-4); // the first example's loss alone
/// let bad = Tensor::from_vec(vec![0i64, 12], [2]);
/// let err = CrossEntropyLoss::default().compute(&logits, Target::Indices(&bad)).unwrap_err();
/// assert!(err.to_string().contains("target 12 at sample [1] is out of bounds for 3 classes"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CrossEntropyLoss {
    /// Label smoothing ε: the target becomes `(1-ε)·target + ε/C`.
    pub label_smoothing: f32,
    /// Targets with this value are skipped (class-index targets only).
    pub ignore_index: Option<i64>,
    /// How per-example losses are combined.
    pub reduction: Reduction,
}

impl Default for CrossEntropyLoss {
    fn default() -> Self {
        CrossEntropyLoss { label_smoothing: 0.0, ignore_index: Some(IGNORE_INDEX), reduction: Reduction::Mean }
    }
}

impl CrossEntropyLoss {
    /// The loss of `logits` `(…, C)` against `target`.
    ///
    /// # Errors
    /// [`Error::TargetOutOfRange`] naming the value and its position for a
    /// class index outside `0..C`; an error saying so for `f32` targets shaped
    /// like class indices; a shape or dtype error when the target does not fit.
    pub fn compute(&self, logits: &Tensor, target: Target<'_>) -> Result<Tensor> {
        let logp = logits.try_log_softmax(-1)?;
        let eps = self.label_smoothing;
        match target {
            Target::Indices(t) => {
                let (mut loss, mask) = nll_per_example("cross_entropy", &logp, t, self.ignore_index)?;
                if eps > 0.0 {
                    let uniform = logp.try_mean(&[-1], false)?.neg();
                    loss = loss * (1.0 - eps) + uniform * eps;
                }
                Ok(reduce_masked(loss, mask.as_ref(), self.reduction))
            }
            Target::Probs(p) => {
                if p.shape() != logits.shape() {
                    return Err(probs_shape_error(logits, p));
                }
                let classes = logits.size(-1) as f32;
                let p = if eps > 0.0 { p * (1.0 - eps) + eps / classes } else { p.clone() };
                Ok(reduce(p.try_mul(&logp)?.try_sum(&[-1], false)?.neg(), self.reduction))
            }
        }
    }
}

/// Cross-entropy from logits (PyTorch's `F.cross_entropy`, class dim last),
/// with optional label smoothing `ε`: the target becomes `(1-ε)·target + ε/C`.
/// Class indices equal to [`IGNORE_INDEX`] (-100) are skipped, as in PyTorch;
/// [`CrossEntropyLoss`] sets another or none.
///
/// # Errors
/// When the target's shape or dtype does not fit the logits, or a class index
/// is outside `0..C` (the error names the value and its position).
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
    CrossEntropyLoss { label_smoothing, reduction, ..Default::default() }.compute(logits, target)
}

fn probs_shape_error(logits: &Tensor, p: &Tensor) -> Error {
    let r = logits.rank();
    if r > 0 && p.dims() == &logits.dims()[..r - 1] {
        Error::msg(
            "cross_entropy",
            format!(
                "the target has shape {:?}, one value per example, but dtype {:?}: class indices must be i64 \
                 (convert with .to_dtype(DType::I64)); an f32 target must hold probabilities of the logits' shape {:?}",
                p.dims(),
                p.dtype(),
                logits.dims()
            ),
        )
    } else {
        Error::ShapeMismatch { op: "cross_entropy", lhs: logits.shape().clone(), rhs: p.shape().clone() }
    }
}

/// Class-index targets with the ignored ones replaced by 0, and the mask
/// (1 where a target counts) in the loss's dtype and device.
struct IgnoreMask {
    safe: Tensor, // (…) i64
    mask: Tensor, // (…) 1.0 where the target counts
    count: usize,
}

/// Checks `target`'s dtype, shape and values against log-probabilities
/// `(…, C)`; `Some` when some targets are ignored.
fn check_class_indices(
    op: &'static str,
    logp: &Tensor,
    target: &Tensor,
    ignore_index: Option<i64>,
) -> Result<Option<IgnoreMask>> {
    if target.dtype() != DType::I64 {
        return Err(Error::DType {
            op,
            got: target.dtype(),
            expected: "i64 class indices (convert labels with .to_dtype(DType::I64))",
        });
    }
    if target.rank() + 1 != logp.rank() || target.dims() != &logp.dims()[..logp.rank() - 1] {
        return Err(Error::ShapeMismatch { op, lhs: logp.shape().clone(), rhs: target.shape().clone() });
    }
    let classes = logp.size(-1);
    let values = target.to_vec::<i64>();
    let mut ignored = 0;
    for (i, &v) in values.iter().enumerate() {
        if Some(v) == ignore_index {
            ignored += 1;
        } else if v < 0 || v as usize >= classes {
            let mut position = vec![0; target.rank()];
            let mut rest = i;
            for (p, &d) in position.iter_mut().zip(target.dims()).rev() {
                *p = rest % d;
                rest /= d;
            }
            return Err(Error::TargetOutOfRange { op, value: v, position, classes, ignore_index });
        }
    }
    if ignored == 0 {
        return Ok(None);
    }
    let keep = |v: &i64| Some(*v) != ignore_index;
    let safe: Vec<i64> = values.iter().map(|v| if keep(v) { *v } else { 0 }).collect();
    let mask: Vec<f32> = values.iter().map(|v| if keep(v) { 1.0 } else { 0.0 }).collect();
    let device = logp.device();
    Ok(Some(IgnoreMask {
        safe: Tensor::from_vec(safe, target.shape().clone()).to_device(device)?,
        mask: Tensor::from_vec(mask, target.shape().clone()).to_dtype(logp.dtype()).to_device(device)?,
        count: values.len() - ignored,
    }))
}

/// `-logp[…, target]` per example, after [`check_class_indices`]; ignored
/// targets gather class 0, which their mask then zeroes.
fn nll_per_example(
    op: &'static str,
    logp: &Tensor,
    target: &Tensor,
    ignore_index: Option<i64>,
) -> Result<(Tensor, Option<IgnoreMask>)> {
    let mask = check_class_indices(op, logp, target, ignore_index)?;
    let t = mask.as_ref().map_or(target, |m| &m.safe);
    let loss = logp.try_gather(-1, &t.try_unsqueeze(-1)?)?.try_squeeze(-1)?.neg();
    Ok((loss, mask))
}

fn reduce_masked(loss: Tensor, mask: Option<&IgnoreMask>, reduction: Reduction) -> Tensor {
    let Some(m) = mask else { return reduce(loss, reduction) };
    let loss = loss * &m.mask;
    match reduction {
        // 0/0 = NaN when everything is ignored, as in PyTorch.
        Reduction::Mean => loss.sum_all().affine(1.0 / m.count as f32, 0.0),
        Reduction::Sum => loss.sum_all(),
        Reduction::None => loss,
    }
}

/// Negative log-likelihood of log-probabilities `(…, C)` at `i64` targets `(…)`
/// (PyTorch's `F.nll_loss`, class dim last). Targets equal to
/// [`IGNORE_INDEX`] are skipped.
///
/// # Errors
/// When the target's shape or dtype does not fit, or a class index is outside
/// `0..C` (the error names the value and its position).
pub fn nll_loss(log_probs: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    let (loss, mask) = nll_per_example("nll_loss", log_probs, target, Some(IGNORE_INDEX))?;
    Ok(reduce_masked(loss, mask.as_ref(), reduction))
}

/// Refuses an input and a target of different shapes, which elementwise losses
/// would otherwise broadcast into nonsense: `(N, 1)` against `(N,)` becomes `(N, N)`.
fn same_shape(op: &'static str, input: &Tensor, target: &Tensor) -> Result<()> {
    if input.shape() == target.shape() {
        return Ok(());
    }
    Err(Error::msg(
        op,
        format!(
            "input {:?} and target {:?} have different shapes; they would broadcast into a wrong loss, \
             so reshape one to the other's shape (PyTorch warns here)",
            input.dims(),
            target.dims()
        ),
    ))
}

/// Mean squared error (`F.mse_loss`). `pred` and `target` must have the same
/// shape: where PyTorch warns and broadcasts, this refuses.
///
/// # Errors
/// When the shapes differ (naming both).
///
/// ```
/// use firebrand_nn::loss::{mse_loss, Reduction};
/// use firebrand_autograd::Tensor;
/// let pred = Tensor::zeros([4, 1]);
/// let err = mse_loss(&pred, &Tensor::ones([4]), Reduction::Mean).unwrap_err();
/// assert!(err.to_string().contains("input [4, 1] and target [4]"));
/// ```
pub fn mse_loss(pred: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    same_shape("mse_loss", pred, target)?;
    Ok(reduce(pred.try_sub(target)?.square(), reduction))
}

/// Binary cross-entropy from logits (`F.binary_cross_entropy_with_logits`),
/// computed stably as `max(x, 0) - x·y + ln(1 + e^-|x|)`.
///
/// # Errors
/// When the shapes differ (naming both).
pub fn binary_cross_entropy_with_logits(logits: &Tensor, target: &Tensor, reduction: Reduction) -> Result<Tensor> {
    same_shape("binary_cross_entropy_with_logits", logits, target)?;
    let loss = logits.relu().try_sub(&logits.try_mul(target)?)?.try_add(&logits.abs().neg().softplus())?;
    Ok(reduce(loss, reduction))
}
