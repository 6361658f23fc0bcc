//! Finite-difference gradient checking, used by every differentiable op's tests.

use crate::grad_mode::with_no_grad;
use crate::tensor::Tensor;

/// Tolerances and step for [`gradcheck`].
#[derive(Debug, Clone, Copy)]
pub struct GradcheckOptions {
    /// Step of the finite differences.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions { eps: 1e-2, atol: 2e-3, rtol: 1e-2 }
    }
}

/// A gradient that disagrees with its finite-difference estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct GradcheckError {
    /// Which input.
    pub input: usize,
    /// Which element of that input (row-major).
    pub element: usize,
    /// The gradient from `backward`.
    pub analytic: f64,
    /// The finite-difference estimate.
    pub numeric: f64,
}

impl std::fmt::Display for GradcheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "gradcheck: input {} element {}: backward gives {:.6}, finite differences give {:.6}",
            self.input, self.element, self.analytic, self.numeric
        )
    }
}

impl std::error::Error for GradcheckError {}

/// Checks the gradients of `f` with respect to every input that requires grad.
///
/// The output is contracted with fixed pseudo-random weights `w` into the
/// scalar `L = Σ w ⊙ f(inputs)` (so every element of the Jacobian counts),
/// `L.backward()` gives the analytic gradients, and a fourth-order central
/// difference `(L(x-2h) - 8L(x-h) + 8L(x+h) - L(x+2h)) / 12h`, accumulated in
/// `f64`, estimates each one. Inputs must be contiguous `f32` leaves.
///
/// # Errors
/// The first element whose gradients disagree beyond `atol + rtol·|numeric|`.
///
/// ```
/// use firebrand_autograd::{Tensor, gradcheck, GradcheckOptions};
/// let x = Tensor::from_vec(vec![0.3f32, -1.2, 0.8], [3]).requires_grad_(true);
/// gradcheck(|t| t[0].tanh().mul(&t[0]), &[x], GradcheckOptions::default()).unwrap();
/// ```
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    opts: GradcheckOptions,
) -> Result<(), GradcheckError> {
    for t in inputs {
        t.zero_grad();
    }
    let out = f(inputs);
    let n = out.elem_count();
    let weights: Vec<f32> = (0..n).map(|i| 0.5 + ((i * 7919 + 13) % 97) as f32 / 97.0).collect();
    let w = Tensor::from_vec(weights.clone(), out.shape().clone());
    out.mul(&w).sum_all().backward();
    let loss = |xs: &[Tensor]| -> f64 {
        let y = with_no_grad(|| f(xs)).to_vec::<f32>();
        y.iter().zip(&weights).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    for (ii, x) in inputs.iter().enumerate() {
        if !x.requires_grad() {
            continue;
        }
        let analytic = x.grad().map(|g| g.to_vec::<f32>()).unwrap_or_else(|| vec![0.0; x.elem_count()]);
        let base = x.to_vec::<f32>();
        for e in 0..base.len() {
            let at = |delta: f64| -> f64 {
                let mut v = base.clone();
                v[e] = (base[e] as f64 + delta) as f32;
                let mut xs: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
                xs[ii] = Tensor::from_vec(v, x.shape().clone());
                loss(&xs)
            };
            let h = opts.eps;
            let numeric = (at(-2.0 * h) - 8.0 * at(-h) + 8.0 * at(h) - at(2.0 * h)) / (12.0 * h);
            let a = analytic[e] as f64;
            if (a - numeric).abs() > opts.atol + opts.rtol * numeric.abs() {
                return Err(GradcheckError { input: ii, element: e, analytic: a, numeric });
            }
        }
    }
    Ok(())
}
