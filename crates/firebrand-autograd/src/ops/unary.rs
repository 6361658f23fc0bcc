//! Elementwise unary ops. Every method is one row of
//! [`firebrand_ops::unary::UnaryOp`]'s table, which gives the value and the
//! derivative, so one generic backward rule serves them all.

use super::record;
use crate::tensor::Tensor;
use firebrand_ops::unary::UnaryOp;
use firebrand_tensor::{DType, Result};

impl Tensor {
    /// Applies a unary op from the table (see [`UnaryOp`]). On an integer
    /// or bool tensor, the ops that map integers to integers
    /// ([`UnaryOp::keeps_integers`]: `neg`, `abs`, `square`, `relu`, and
    /// `clamp`/`affine` with integral constants) keep its dtype (`i64` for
    /// bool); the others compute in `f32`, as PyTorch's do.
    ///
    /// # Errors
    /// When the device has no kernel for the dtype.
    pub fn try_unary(&self, op: UnaryOp) -> Result<Tensor> {
        let dt = self.dtype();
        if !dt.is_float() {
            let to = match (op.keeps_integers(), dt) {
                (true, DType::Bool) => DType::I64,
                (true, _) => dt,
                (false, _) => DType::F32,
            };
            if to != dt {
                return self.try_to_dtype(to)?.try_unary(op);
            }
        }
        let backend = self.backend(op.name())?;
        let out = match self.layout().dense_permutation() {
            // A permuted dense input maps in memory order; the output keeps its dim order.
            Some(perm) => {
                let l = self.layout().permute(&perm)?;
                Tensor::from_backend(backend.unary(op, &**self.storage(), &l)?, l.shape().clone()).unpermuted(&perm)
            }
            None => Tensor::from_backend(backend.unary(op, &**self.storage(), self.layout())?, self.shape().clone()),
        };
        let x = self.detach();
        Ok(record(out, op.name(), &[self], move |y, g| {
            let dense = |t: &Tensor| t.dense(op.name()).expect("unary backward");
            let (xd, yd, gd) = (dense(&x), dense(y), dense(g));
            let dx = backend
                .unary_backward(op, &**xd.storage(), &**yd.storage(), &**gd.storage())
                .expect("unary backward: f32 tensors on one device");
            vec![Some(Tensor::from_backend(dx, x.shape().clone()))]
        }))
    }

    /// Applies a unary op from the table; see [`Tensor::try_unary`].
    ///
    /// # Panics
    /// When the device has no kernel for the dtype.
    #[track_caller]
    pub fn unary(&self, op: UnaryOp) -> Tensor {
        self.try_unary(op).unwrap_or_else(|e| panic!("{e}"))
    }
}

macro_rules! unary_methods {
    ($($(#[$m:meta])* $name:ident => $op:expr;)*) => {
        impl Tensor {
            $(
                $(#[$m])*
                #[track_caller]
                pub fn $name(&self) -> Tensor {
                    self.unary($op)
                }
            )*
        }
    };
}

unary_methods! {
    /// `-x`
    neg => UnaryOp::Neg;
    /// `|x|`
    abs => UnaryOp::Abs;
    /// `e^x`
    exp => UnaryOp::Exp;
    /// Natural logarithm.
    log => UnaryOp::Log;
    /// Square root.
    sqrt => UnaryOp::Sqrt;
    /// `1 / sqrt(x)`
    rsqrt => UnaryOp::Rsqrt;
    /// `1 / x`
    recip => UnaryOp::Recip;
    /// `x * x`
    square => UnaryOp::Square;
    /// Hyperbolic tangent.
    tanh => UnaryOp::Tanh;
    /// Logistic sigmoid.
    sigmoid => UnaryOp::Sigmoid;
    /// `max(x, 0)`
    relu => UnaryOp::Relu;
    /// GELU, exact (erf) form: PyTorch's `gelu(x)`.
    gelu => UnaryOp::Gelu;
    /// GELU, tanh approximation: PyTorch's `gelu(x, approximate="tanh")`.
    gelu_tanh => UnaryOp::GeluTanh;
    /// `x * sigmoid(x)`
    silu => UnaryOp::Silu;
    /// `ln(1 + e^x)`
    softplus => UnaryOp::Softplus;
    /// Sine.
    sin => UnaryOp::Sin;
    /// Cosine.
    cos => UnaryOp::Cos;
    /// `min(max(x, 0), 6)`: PyTorch's `relu6`, i.e. `hardtanh(x, 0, 6)`.
    relu6 => UnaryOp::Hardtanh(0.0, 6.0);
    /// `x · relu6(x + 3) / 6` (PyTorch's `hardswish`).
    hardswish => UnaryOp::Hardswish;
    /// `relu6(x + 3) / 6` (PyTorch's `hardsigmoid`).
    hardsigmoid => UnaryOp::Hardsigmoid;
}

impl Tensor {
    /// `x^p` for a constant exponent.
    #[track_caller]
    pub fn powf(&self, p: f32) -> Tensor {
        self.unary(UnaryOp::Powf(p))
    }

    /// `x` where positive, `slope * x` elsewhere.
    #[track_caller]
    pub fn leaky_relu(&self, slope: f32) -> Tensor {
        self.unary(UnaryOp::LeakyRelu(slope))
    }

    /// Clamps into `[lo, hi]`.
    #[track_caller]
    pub fn clamp(&self, lo: f32, hi: f32) -> Tensor {
        self.unary(UnaryOp::Clamp(lo, hi))
    }

    /// Clamps into `[lo, hi]` with PyTorch's `hardtanh` gradient (zero at the
    /// bounds, where `clamp`'s is one).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![-2.0f32, 0.5, 1.0, 7.0], [4]).requires_grad_(true);
    /// let y = x.hardtanh(-1.0, 1.0);
    /// assert_eq!(y.to_vec::<f32>(), vec![-1.0, 0.5, 1.0, 1.0]);
    /// y.sum_all().backward();
    /// assert_eq!(x.grad().unwrap().to_vec::<f32>(), vec![0.0, 1.0, 0.0, 0.0]);
    /// assert_eq!(Tensor::from_vec(vec![-1.0f32, 3.0, 9.0], [3]).relu6().to_vec::<f32>(), vec![0.0, 3.0, 6.0]);
    /// ```
    #[track_caller]
    pub fn hardtanh(&self, lo: f32, hi: f32) -> Tensor {
        self.unary(UnaryOp::Hardtanh(lo, hi))
    }

    /// `mul * x + add` in one pass.
    #[track_caller]
    pub fn affine(&self, mul: f32, add: f32) -> Tensor {
        self.unary(UnaryOp::Affine(mul, add))
    }
}
