//! Dropout and Flatten.

use crate::Module;
use firebrand_autograd::Tensor;

/// Zeroes each element with probability `p` during training and scales the
/// rest by `1 / (1 - p)`; the identity in evaluation mode (`nn.Dropout`).
/// Masks come from the thread's generator, so `manual_seed` reproduces them.
#[derive(Debug, Clone)]
pub struct Dropout {
    p: f32,
    training: bool,
}

impl Dropout {
    /// Dropout with drop probability `p`, starting in training mode.
    ///
    /// # Panics
    /// When `p` is not in `[0, 1)`.
    pub fn new(p: f32) -> Self {
        assert!((0.0..1.0).contains(&p), "Dropout: p must be in [0, 1), got {p}");
        Dropout { p, training: true }
    }

    /// The drop probability.
    pub fn p(&self) -> f32 {
        self.p
    }

    /// The drop probability in the current mode: `p` in training, 0 in
    /// evaluation (for a layer that applies dropout inside a fused op, such
    /// as attention's weights, and holds a `Dropout` for its train/eval mode).
    pub fn active_p(&self) -> f32 {
        if self.training { self.p } else { 0.0 }
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            if !self.training || self.p == 0.0 {
                return x.clone();
            }
            dropout(x, self.p)
        })
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn describe(&self) -> String {
        format!("Dropout({})", self.p)
    }
}

/// Inverted dropout: zeroes each element with probability `p` (the mask
/// drawn from the thread's generator) and scales the rest by `1 / (1 - p)`.
/// Shared by [`Dropout`] and the layers with dropout inside.
pub(crate) fn dropout(x: &Tensor, p: f32) -> Tensor {
    let keep = Tensor::rand(x.shape().clone(), 0.0, 1.0).to_device(x.device()).expect("the input's device");
    let mask = keep.ge(&Tensor::scalar(p).to_device(x.device()).expect("the input's device"));
    x.mul(&mask) * (1.0 / (1.0 - p))
}

/// Flattens every dim after the first: `(B, …) -> (B, prod(…))` (`nn.Flatten`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || if x.rank() <= 2 { x.clone() } else { x.flatten(1, -1) })
    }

    fn describe(&self) -> String {
        "Flatten".into()
    }
}
