//! The fully connected layer (PyTorch's `nn.Linear`, Keras' `Dense`).

use crate::{Activation, Init, Module};
use firebrand_autograd::Tensor;

/// `y = act(x Wᵀ + b)` with `W` of shape `(out, in)` (PyTorch's layout, so
/// weights load from PyTorch state dicts) and `b` of shape `(out,)`.
///
/// ```
/// use firebrand_nn::{Linear, Module, Activation};
/// use firebrand_autograd::Tensor;
/// let layer = Linear::new(4, 3).with_activation(Activation::Relu);
/// let y = layer.forward(&Tensor::ones([2, 4])); // (B, 4) -> (B, 3)
/// assert_eq!(y.dims(), &[2, 3]);
/// assert!(y.to_vec::<f32>().iter().all(|&v| v >= 0.0));
/// ```
pub struct Linear {
    /// Weight, `(out, in)`.
    pub weight: Tensor,
    /// Bias, `(out,)`, if any.
    pub bias: Option<Tensor>,
    activation: Option<Activation>,
}

impl Linear {
    /// A layer with PyTorch's default initialization
    /// (`U(-1/sqrt(in), 1/sqrt(in))` for weight and bias).
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Linear::with_init(in_features, out_features, Init::TorchDefault, Some(Init::TorchDefault))
    }

    /// A layer with chosen initializers (`bias: None` for no bias).
    pub fn with_init(in_features: usize, out_features: usize, weight: Init, bias: Option<Init>) -> Self {
        let w = weight.tensor([out_features, in_features], in_features, out_features).requires_grad_(true);
        let b = bias.map(|i| i.tensor([out_features], in_features, out_features).requires_grad_(true));
        Linear { weight: w, bias: b, activation: None }
    }

    /// Adds a fused activation (Keras' `Dense(units, activation=...)`).
    pub fn with_activation(mut self, act: Activation) -> Self {
        self.activation = Some(act);
        self
    }

    /// A layer from given tensors: `weight` `(out, in)`, `bias` `(out,)`, no activation.
    ///
    /// # Panics
    /// When the weight is not 2-D or the bias does not match it.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        assert_eq!(weight.rank(), 2, "Linear::from_parts: weight must be (out, in), got {:?}", weight.dims());
        if let Some(b) = &bias {
            assert_eq!(
                b.dims(),
                &weight.dims()[..1],
                "Linear::from_parts: bias {:?} for weight {:?}",
                b.dims(),
                weight.dims()
            );
        }
        Linear { weight, bias, activation: None }
    }

    /// The fused activation, if any.
    pub fn activation(&self) -> Option<Activation> {
        self.activation
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            // (…, in) → (…, out): the bias, and an elementwise activation when
            // no gradient is recorded, in the product's store.
            match self.activation.map(|a| (a, a.as_unary())) {
                Some((_, Some(op))) => x.linear(&self.weight, self.bias.as_ref(), Some(op)),
                Some((a, None)) => a.apply(&x.linear(&self.weight, self.bias.as_ref(), None)),
                None => x.linear(&self.weight, self.bias.as_ref(), None),
            }
        })
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&format!("{prefix}bias"), b);
        }
    }

    fn describe(&self) -> String {
        match self.activation {
            Some(a) => format!("Linear({} -> {}, {})", self.in_features(), self.out_features(), a.name()),
            None => format!("Linear({} -> {})", self.in_features(), self.out_features()),
        }
    }
}
