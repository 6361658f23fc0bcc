//! Normalization over the feature dim: `LayerNorm` and `RMSNorm`, written
//! from primitive ops (their gradients come from autograd).

use crate::Module;
use firebrand_autograd::Tensor;

/// Normalizes over the last dim: `(x - mean) / sqrt(var + eps) · weight + bias`
/// (PyTorch's `nn.LayerNorm(dim)`, biased variance, eps 1e-5).
///
/// ```
/// use firebrand_nn::{LayerNorm, Module};
/// use firebrand_autograd::Tensor;
/// let ln = LayerNorm::new(8);
/// let y = ln.forward(&Tensor::randn([2, 3, 8], 1.0, 2.0)); // (B, T, C)
/// assert!(y.mean(&[-1], false).to_vec::<f32>().iter().all(|m| m.abs() < 1e-5));
/// ```
pub struct LayerNorm {
    /// Scale, `(C,)`, if affine.
    pub weight: Option<Tensor>,
    /// Shift, `(C,)`, if affine.
    pub bias: Option<Tensor>,
    eps: f32,
}

impl LayerNorm {
    /// Over a last dim of `dim`, with learnable scale and shift.
    pub fn new(dim: usize) -> Self {
        LayerNorm {
            weight: Some(Tensor::ones([dim]).requires_grad_(true)),
            bias: Some(Tensor::zeros([dim]).requires_grad_(true)),
            eps: 1e-5,
        }
    }

    /// Sets ε.
    pub fn eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }

    /// Without scale and shift (`elementwise_affine=False`).
    pub fn without_affine(mut self) -> Self {
        self.weight = None;
        self.bias = None;
        self
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            // x: (…, C); one fused op (Tensor::layer_norm).
            if let Some(c) = self.weight.as_ref().map(|w| w.dims()[0])
                && (x.rank() == 0 || x.size(-1) != c)
            {
                crate::module::input_error(self, &format!("(…, {c})"), x.dims());
            }
            x.try_layer_norm(self.weight.as_ref(), self.bias.as_ref(), self.eps)
                .unwrap_or_else(|e| panic!("LayerNorm: {e}"))
        })
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        if let Some(w) = &self.weight {
            f(&format!("{prefix}weight"), w);
        }
        if let Some(b) = &self.bias {
            f(&format!("{prefix}bias"), b);
        }
    }

    fn describe(&self) -> String {
        format!("LayerNorm({})", self.weight.as_ref().map_or(0, |w| w.dims()[0]))
    }
}

/// Root-mean-square normalization over the last dim:
/// `x / sqrt(mean(x²) + eps) · weight` (PyTorch's `nn.RMSNorm(dim)`; its
/// default eps is the `f32` machine epsilon).
pub struct RMSNorm {
    /// Scale, `(C,)`.
    pub weight: Tensor,
    eps: f32,
}

impl RMSNorm {
    /// Over a last dim of `dim`.
    pub fn new(dim: usize) -> Self {
        RMSNorm { weight: Tensor::ones([dim]).requires_grad_(true), eps: f32::EPSILON }
    }

    /// Sets ε.
    pub fn eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }
}

impl Module for RMSNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            let c = self.weight.dims()[0];
            if x.rank() == 0 || x.size(-1) != c {
                crate::module::input_error(self, &format!("(…, {c})"), x.dims());
            }
            x.try_rms_norm(&self.weight, self.eps).unwrap_or_else(|e| panic!("{e}"))
        })
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}weight"), &self.weight);
    }

    fn describe(&self) -> String {
        format!("RMSNorm({})", self.weight.dims()[0])
    }
}
