//! In-place ops (`add_`, `sub_`, `mul_`, `div_`, `fill_`, `zero_`,
//! `clamp_`, `masked_fill_`, and `+=`, `-=`, `*=`, `/=`), with PyTorch's
//! rules: the result must fit this tensor's dtype, a tensor that requires
//! grad is refused while gradients are recorded, and every write bumps the
//! storage's version so a backward pass over data changed since its forward
//! pass is an error, not a wrong gradient.

use crate::grad_mode::is_grad_enabled;
use crate::tensor::Tensor;
use firebrand_tensor::{Error, Result};

impl Tensor {
    /// Writes `value` (computed out of place) into this tensor.
    fn write_(&self, op: &'static str, value: Tensor) -> Result<()> {
        if self.requires_grad() && is_grad_enabled() {
            let what = if self.is_leaf() { "a leaf tensor that requires grad" } else { "a tensor that requires grad" };
            return Err(Error::msg(
                op,
                format!(
                    "{what} (shape {:?}) cannot be modified in place; use the out-of-place op, or no_grad",
                    self.dims()
                ),
            ));
        }
        let (from, to) = (value.dtype(), self.dtype());
        if from.category() > to.category() {
            return Err(Error::msg(op, format!("result type {from} can't be cast to the desired output type {to}")));
        }
        if value.shape() != self.shape() {
            return Err(Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: value.shape().clone() });
        }
        self.copy_(&value.detach())
    }

    /// `self += other` in place (broadcasting `other`; PyTorch's `add_`).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let mut x = Tensor::zeros([2]);
    /// x.add_(&Tensor::ones([2])).unwrap();
    /// x += &Tensor::ones([2]);
    /// assert_eq!(x.to_vec::<f32>(), vec![2.0, 2.0]);
    /// let w = Tensor::zeros([2]).requires_grad_(true);
    /// assert!(w.add_(&Tensor::ones([2])).is_err()); // a leaf that requires grad
    /// ```
    ///
    /// # Errors
    /// When the shapes do not broadcast to this one, the result's dtype does
    /// not fit (a float into an integer tensor), or this tensor requires grad.
    pub fn add_(&self, other: &Tensor) -> Result<()> {
        self.write_("add_", self.detach().try_add(other)?)
    }

    /// `self -= other` in place.
    ///
    /// # Errors
    /// As [`Tensor::add_`].
    pub fn sub_(&self, other: &Tensor) -> Result<()> {
        self.write_("sub_", self.detach().try_sub(other)?)
    }

    /// `self *= other` in place.
    ///
    /// # Errors
    /// As [`Tensor::add_`].
    pub fn mul_(&self, other: &Tensor) -> Result<()> {
        self.write_("mul_", self.detach().try_mul(other)?)
    }

    /// `self /= other` in place (true division: refused on integer tensors).
    ///
    /// # Errors
    /// As [`Tensor::add_`].
    pub fn div_(&self, other: &Tensor) -> Result<()> {
        self.write_("div_", self.detach().try_div(other)?)
    }

    /// Every element set to `value`.
    ///
    /// # Errors
    /// When this tensor requires grad.
    pub fn fill_(&self, value: f64) -> Result<()> {
        self.write_("fill_", Tensor::full_dtype(value, self.shape().clone(), self.dtype()).to_device(self.device())?)
    }

    /// Every element set to zero.
    ///
    /// # Errors
    /// When this tensor requires grad.
    pub fn zero_(&self) -> Result<()> {
        self.fill_(0.0)
    }

    /// Clamped into `[lo, hi]` in place.
    ///
    /// # Errors
    /// When this tensor requires grad.
    pub fn clamp_(&self, lo: f32, hi: f32) -> Result<()> {
        self.write_("clamp_", self.detach().clamp(lo, hi).to_dtype(self.dtype()))
    }

    /// `value` written where `mask` is true.
    ///
    /// # Errors
    /// When `mask` does not broadcast to this shape, or this tensor requires grad.
    pub fn masked_fill_(&self, mask: &Tensor, value: f32) -> Result<()> {
        self.write_("masked_fill_", self.detach().try_masked_fill(mask, value)?)
    }
}

/// `x op= rhs` through the in-place method, except on a non-leaf tensor that
/// is part of a recorded graph (`loss += term`): there the variable is
/// rebound to the out-of-place result, so the graph stays whole and backward
/// sees both terms. Other handles and views of the old value keep it (PyTorch
/// would write through them). A leaf that requires grad is refused, as in PyTorch.
macro_rules! assign_op {
    ($trait:ident, $fn:ident, $method:ident, $out_of_place:ident) => {
        impl std::ops::$trait<&Tensor> for Tensor {
            #[track_caller]
            fn $fn(&mut self, rhs: &Tensor) {
                if self.requires_grad() && !self.is_leaf() && is_grad_enabled() {
                    *self = self.$out_of_place(rhs).unwrap_or_else(|e| panic!("{e}"));
                    return;
                }
                self.$method(rhs).unwrap_or_else(|e| panic!("{e}"))
            }
        }
        impl std::ops::$trait<Tensor> for Tensor {
            #[track_caller]
            fn $fn(&mut self, rhs: Tensor) {
                std::ops::$trait::$fn(self, &rhs)
            }
        }
        impl std::ops::$trait<f32> for Tensor {
            #[track_caller]
            fn $fn(&mut self, rhs: f32) {
                // A scalar takes the tensor's dtype unless it is a non-integral
                // value on an integer tensor (which the dtype check refuses).
                let dt = if rhs.fract() == 0.0 { self.dtype() } else { self.dtype().promote_scalar(false) };
                std::ops::$trait::$fn(self, &Tensor::full_dtype(rhs as f64, (), dt))
            }
        }
    };
}

assign_op!(AddAssign, add_assign, add_, try_add);
assign_op!(SubAssign, sub_assign, sub_, try_sub);
assign_op!(MulAssign, mul_assign, mul_, try_mul);
assign_op!(DivAssign, div_assign, div_, try_div);
