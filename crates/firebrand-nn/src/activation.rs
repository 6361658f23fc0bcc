//! Activations, as functions (`Activation`) and as modules (`ReLU`, `GELU`, ...).

use crate::Module;
use firebrand_autograd::{Tensor, UnaryOp};

/// An activation function, usable as a `Linear` layer's fused activation
/// (Keras' `Dense(activation=...)`) or as a module on its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `max(x, 0)`
    Relu,
    /// `x` if positive, else `slope · x`
    LeakyRelu(f32),
    /// GELU, exact (erf) form
    Gelu,
    /// GELU, tanh approximation
    GeluTanh,
    /// `x · sigmoid(x)`
    Silu,
    /// hyperbolic tangent
    Tanh,
    /// logistic sigmoid
    Sigmoid,
    /// softmax over the last dim
    Softmax,
    /// `min(max(x, 0), 6)`
    Relu6,
    /// `x` clamped into `[lo, hi]`
    Hardtanh(f32, f32),
    /// `x · relu6(x + 3) / 6`
    Hardswish,
    /// `relu6(x + 3) / 6`
    Hardsigmoid,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Relu => x.relu(),
            Activation::LeakyRelu(s) => x.leaky_relu(s),
            Activation::Gelu => x.gelu(),
            Activation::GeluTanh => x.gelu_tanh(),
            Activation::Silu => x.silu(),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Softmax => x.softmax(-1),
            Activation::Relu6 => x.relu6(),
            Activation::Hardtanh(lo, hi) => x.hardtanh(lo, hi),
            Activation::Hardswish => x.hardswish(),
            Activation::Hardsigmoid => x.hardsigmoid(),
        }
    }

    /// The elementwise op this activation is, for kernels that fuse it (all
    /// but softmax, which is not elementwise).
    pub fn as_unary(self) -> Option<UnaryOp> {
        Some(match self {
            Activation::Relu => UnaryOp::Relu,
            Activation::LeakyRelu(s) => UnaryOp::LeakyRelu(s),
            Activation::Gelu => UnaryOp::Gelu,
            Activation::GeluTanh => UnaryOp::GeluTanh,
            Activation::Silu => UnaryOp::Silu,
            Activation::Tanh => UnaryOp::Tanh,
            Activation::Sigmoid => UnaryOp::Sigmoid,
            Activation::Softmax => return None,
            Activation::Relu6 => UnaryOp::Hardtanh(0.0, 6.0),
            Activation::Hardtanh(lo, hi) => UnaryOp::Hardtanh(lo, hi),
            Activation::Hardswish => UnaryOp::Hardswish,
            Activation::Hardsigmoid => UnaryOp::Hardsigmoid,
        })
    }

    /// Lower-case name (`"relu"`, `"leaky_relu(0.01)"`, ...).
    pub fn name(self) -> String {
        match self {
            Activation::Relu => "relu".into(),
            Activation::LeakyRelu(s) => format!("leaky_relu({s})"),
            Activation::Gelu => "gelu".into(),
            Activation::GeluTanh => "gelu_tanh".into(),
            Activation::Silu => "silu".into(),
            Activation::Tanh => "tanh".into(),
            Activation::Sigmoid => "sigmoid".into(),
            Activation::Softmax => "softmax".into(),
            Activation::Relu6 => "relu6".into(),
            Activation::Hardtanh(lo, hi) => format!("hardtanh({lo}, {hi})"),
            Activation::Hardswish => "hardswish".into(),
            Activation::Hardsigmoid => "hardsigmoid".into(),
        }
    }
}

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || self.apply(x))
    }
    fn elementwise_op(&self) -> Option<UnaryOp> {
        self.as_unary()
    }
    fn describe(&self) -> String {
        self.name()
    }
}

macro_rules! activation_modules {
    ($($(#[$m:meta])* $name:ident => $act:expr;)*) => {
        $(
            $(#[$m])*
            #[derive(Debug, Clone, Copy, Default)]
            pub struct $name;

            impl Module for $name {
                fn forward(&self, x: &Tensor) -> Tensor {
                    crate::module::traced(self, || {
                        $act.apply(x)

                    })
                }
                fn describe(&self) -> String {
                    stringify!($name).to_string()
                }
                fn elementwise_op(&self) -> Option<UnaryOp> {
                    $act.as_unary()
                }
            }
        )*
    };
}

activation_modules! {
    /// `max(x, 0)` as a module (PyTorch's `nn.ReLU`).
    ReLU => Activation::Relu;
    /// Exact GELU as a module (`nn.GELU`).
    GELU => Activation::Gelu;
    /// `x · sigmoid(x)` as a module (`nn.SiLU`).
    SiLU => Activation::Silu;
    /// `tanh` as a module (`nn.Tanh`).
    Tanh => Activation::Tanh;
    /// Logistic sigmoid as a module (`nn.Sigmoid`).
    Sigmoid => Activation::Sigmoid;
    /// Softmax over the last dim as a module (`nn.Softmax(dim=-1)`).
    Softmax => Activation::Softmax;
    /// `min(max(x, 0), 6)` as a module (`nn.ReLU6`, MobileNetV2's activation).
    ReLU6 => Activation::Relu6;
    /// `x · relu6(x + 3) / 6` as a module (`nn.Hardswish`, MobileNetV3's).
    Hardswish => Activation::Hardswish;
    /// `relu6(x + 3) / 6` as a module (`nn.Hardsigmoid`).
    Hardsigmoid => Activation::Hardsigmoid;
}

/// `x` clamped into `[min_val, max_val]` (`nn.Hardtanh`, default `[-1, 1]`),
/// with PyTorch's gradient: zero at and beyond the bounds.
///
/// ```
/// use firebrand_nn::{Hardtanh, Module};
/// use firebrand_autograd::{Tensor, UnaryOp};
/// let y = Hardtanh::new(-2.0, 2.0).forward(&Tensor::from_vec(vec![-5.0f32, 1.5, 3.0], [3]));
/// assert_eq!(y.to_vec::<f32>(), vec![-2.0, 1.5, 2.0]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Hardtanh {
    /// Lower bound.
    pub min_val: f32,
    /// Upper bound.
    pub max_val: f32,
}

impl Hardtanh {
    /// Clamps into `[min_val, max_val]`.
    ///
    /// # Panics
    /// When `min_val > max_val`.
    pub fn new(min_val: f32, max_val: f32) -> Self {
        assert!(min_val <= max_val, "Hardtanh: min_val {min_val} > max_val {max_val}");
        Hardtanh { min_val, max_val }
    }
}

impl Default for Hardtanh {
    fn default() -> Self {
        Hardtanh::new(-1.0, 1.0)
    }
}

impl Module for Hardtanh {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || x.hardtanh(self.min_val, self.max_val))
    }
    fn elementwise_op(&self) -> Option<UnaryOp> {
        Some(UnaryOp::Hardtanh(self.min_val, self.max_val))
    }
    fn describe(&self) -> String {
        format!("Hardtanh({}, {})", self.min_val, self.max_val)
    }
}

/// Leaky ReLU with a negative slope (`nn.LeakyReLU`, default slope 0.01).
#[derive(Debug, Clone, Copy)]
pub struct LeakyReLU(pub f32);

impl Default for LeakyReLU {
    fn default() -> Self {
        LeakyReLU(0.01)
    }
}

impl Module for LeakyReLU {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || x.leaky_relu(self.0))
    }
    fn elementwise_op(&self) -> Option<UnaryOp> {
        Some(UnaryOp::LeakyRelu(self.0))
    }
    fn describe(&self) -> String {
        format!("LeakyReLU({})", self.0)
    }
}
