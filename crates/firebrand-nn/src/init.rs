//! Weight initializers, seeded through the thread's generator
//! (`firebrand::manual_seed`) so a seed reproduces a model exactly.

use firebrand_autograd::{Shape, Tensor};

/// How to fill a new parameter. `fan_in`/`fan_out` come from the layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// He uniform for ReLU networks: `U(-b, b)`, `b = sqrt(6 / fan_in)`.
    KaimingUniform,
    /// He normal: `N(0, 2 / fan_in)`.
    KaimingNormal,
    /// Glorot uniform (Keras' default for `Dense`): `b = sqrt(6 / (fan_in + fan_out))`.
    XavierUniform,
    /// Glorot normal: `N(0, 2 / (fan_in + fan_out))`.
    XavierNormal,
    /// PyTorch's default for `Linear` weights and biases: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
    TorchDefault,
    /// `U(lo, hi)`.
    Uniform(f32, f32),
    /// `N(mean, std)`.
    Normal(f32, f32),
    /// A constant.
    Constant(f32),
    /// Zeros.
    Zeros,
}

impl Init {
    /// A new tensor of `shape` filled by this rule (not yet requiring grad).
    pub fn tensor(self, shape: impl Into<Shape>, fan_in: usize, fan_out: usize) -> Tensor {
        let (fi, fo) = (fan_in.max(1) as f32, fan_out.max(1) as f32);
        match self {
            Init::KaimingUniform => {
                let b = (6.0 / fi).sqrt();
                Tensor::rand(shape, -b, b)
            }
            Init::KaimingNormal => Tensor::randn(shape, 0.0, (2.0 / fi).sqrt()),
            Init::XavierUniform => {
                let b = (6.0 / (fi + fo)).sqrt();
                Tensor::rand(shape, -b, b)
            }
            Init::XavierNormal => Tensor::randn(shape, 0.0, (2.0 / (fi + fo)).sqrt()),
            Init::TorchDefault => {
                let b = 1.0 / fi.sqrt();
                Tensor::rand(shape, -b, b)
            }
            Init::Uniform(lo, hi) => Tensor::rand(shape, lo, hi),
            Init::Normal(m, s) => Tensor::randn(shape, m, s),
            Init::Constant(v) => Tensor::full(v, shape),
            Init::Zeros => Tensor::zeros(shape),
        }
    }
}
