//! Elementwise binary ops with NumPy broadcasting, comparisons, `where`, and
//! the arithmetic operators (`&a + &b`, `&a * 2.0`, ...).

use super::{panicking, record};
use crate::tensor::{Tensor, same_backend};
use firebrand_ops::binary::BinaryOp;
use firebrand_ops::unary::UnaryOp;
use firebrand_tensor::{DType, Result, Shape};

/// The dtype a binary op between `a` and `b` computes in: PyTorch's
/// `torch.result_type`. Two tensors of the same rank class promote by
/// [`DType::promote`]; a 0-dimensional tensor against a dimensioned one
/// counts only when it is of a higher category (a 0-d `f64` makes an `i32`
/// tensor `f64`, but leaves an `f16` tensor `f16`).
///
/// ```
/// use firebrand_autograd::{DType, Tensor, result_type};
/// let i = Tensor::from_vec(vec![1i32, 2], [2]);
/// let h = Tensor::from_vec(vec![1.0f32, 2.0], [2]).to_dtype(DType::F16);
/// assert_eq!(result_type(&i, &h), DType::F16);
/// assert_eq!(result_type(&h, &Tensor::scalar(1.0)), DType::F16);
/// assert_eq!((&i + &h).dtype(), DType::F16);
/// ```
pub fn result_type(a: &Tensor, b: &Tensor) -> DType {
    let (za, zb) = (a.rank() == 0, b.rank() == 0);
    let (da, db) = (a.dtype(), b.dtype());
    if za == zb {
        return DType::promote(da, db);
    }
    let (dim, zero) = if za { (db, da) } else { (da, db) };
    if zero.category() > dim.category() { zero } else { dim }
}

/// `a` and `b` on one device when they differ only by a 0-dimensional CPU
/// operand, which moves to the other's device (PyTorch lets a CPU scalar
/// tensor meet a GPU tensor the same way); `None` when nothing moves.
pub(crate) fn co_located(a: &Tensor, b: &Tensor) -> Result<Option<(Tensor, Tensor)>> {
    use firebrand_tensor::Device;
    let (da, db) = (a.device(), b.device());
    Ok(match (da, db) {
        _ if da == db => None,
        (Device::Cpu, _) if a.rank() == 0 => Some((a.to_device(db)?, b.clone())),
        (_, Device::Cpu) if b.rank() == 0 => Some((a.clone(), b.to_device(da)?)),
        _ => None,
    })
}

impl Tensor {
    /// True when `op` cannot run on the operands' dtypes as they are.
    fn needs_promotion(&self, rhs: &Tensor, op: BinaryOp) -> bool {
        self.dtype() != rhs.dtype() || (op == BinaryOp::Div && !self.dtype().is_float())
    }

    /// Both operands converted to the dtype `op` computes in (true division
    /// of integers computes in `f32`, as PyTorch's `/`).
    fn promoted(&self, rhs: &Tensor, op: BinaryOp) -> Result<(Tensor, Tensor)> {
        let mut dt = result_type(self, rhs);
        if op == BinaryOp::Div && !dt.is_float() {
            dt = DType::F32;
        }
        Ok((self.try_to_dtype(dt)?, rhs.try_to_dtype(dt)?))
    }

    /// Applies `op` after promoting both operands to one dtype and
    /// broadcasting them to a common shape (no autograd record).
    pub(crate) fn binary_forward(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        if let Some((a, b)) = co_located(self, rhs)? {
            return a.binary_forward(&b, op);
        }
        if self.needs_promotion(rhs, op) {
            let (a, b) = self.promoted(rhs, op)?;
            return a.binary_forward(&b, op);
        }
        let backend = same_backend(op.name(), &[self, rhs])?;
        if self.shape() == rhs.shape() {
            // Both permuted the same way (e.g. two transposed matrices): compute
            // in memory order and give the output that order too.
            if let Some(perm) = self.layout().dense_permutation()
                && rhs.layout().dense_permutation().as_ref() == Some(&perm)
            {
                let (a, b) = (self.layout().permute(&perm)?, rhs.layout().permute(&perm)?);
                let out = backend.binary(op, &**self.storage(), &a, &**rhs.storage(), &b)?;
                return Ok(Tensor::from_backend(out, a.shape().clone()).unpermuted(&perm));
            }
            // No broadcasting: the layouts go as they are.
            let out = backend.binary(op, &**self.storage(), self.layout(), &**rhs.storage(), rhs.layout())?;
            return Ok(Tensor::from_backend(out, self.shape().clone()));
        }
        let shape = self.shape().broadcast_with(rhs.shape(), op.name())?;
        let ll = self.layout().broadcast_as(&shape)?;
        let rl = rhs.layout().broadcast_as(&shape)?;
        let out = backend.binary(op, &**self.storage(), &ll, &**rhs.storage(), &rl)?;
        Ok(Tensor::from_backend(out, shape))
    }

    fn binary_op(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        if let Some((a, b)) = co_located(self, rhs)? {
            return a.binary_op(&b, op);
        }
        if self.needs_promotion(rhs, op) {
            // The conversions are recorded, so each gradient returns in its input's dtype.
            let (a, b) = self.promoted(rhs, op)?;
            return a.binary_op(&b, op);
        }
        let out = self.binary_forward(rhs, op)?;
        let (sa, sb) = (self.shape().clone(), rhs.shape().clone());
        let (a, b) = (self.detach(), rhs.detach());
        let backward = move |out: &Tensor, g: &Tensor| -> Vec<Option<Tensor>> {
            let (ga, gb) = match op {
                BinaryOp::Add => (g.clone(), g.clone()),
                BinaryOp::Sub => (g.clone(), g.neg()),
                BinaryOp::Mul => (g.mul(&b), g.mul(&a)),
                BinaryOp::Div => (g.div(&b), g.mul(out).div(&b).neg()),
                BinaryOp::Pow => (g.mul(&b).mul(&a.pow(&b.affine(1.0, -1.0))), g.mul(out).mul(&a.log())),
                BinaryOp::Maximum | BinaryOp::Minimum => {
                    // The winner takes the gradient; ties split it (as PyTorch).
                    let wins = if op == BinaryOp::Maximum { a.gt(&b) } else { a.lt(&b) };
                    let share = wins.add(&a.eq(&b).affine(0.5, 0.0));
                    (g.mul(&share), g.mul(&share.affine(-1.0, 1.0)))
                }
                _ => unreachable!("comparisons are not recorded"),
            };
            vec![Some(ga.sum_to(&sa)), Some(gb.sum_to(&sb))]
        };
        Ok(record(out, op.name(), &[self, rhs], backward))
    }

    /// `if self != 0 { a } else { b }` elementwise, all three broadcast together
    /// (`torch.where(cond, a, b)` with `self` as the condition, usually a
    /// `bool` mask). `a` and `b` promote to one dtype. Differentiable in `a` and `b`.
    ///
    /// # Errors
    /// When the shapes do not broadcast.
    pub fn try_where_cond(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        if a.dtype() != b.dtype() {
            let dt = result_type(a, b);
            return self.try_where_cond(&a.try_to_dtype(dt)?, &b.try_to_dtype(dt)?);
        }
        // 0-dimensional CPU operands join the others' device.
        let ts = [self, a, b];
        if let Some(d) = ts.iter().map(|t| t.device()).find(|d| *d != firebrand_tensor::Device::Cpu)
            && ts.iter().any(|t| t.device() != d && t.rank() == 0)
        {
            let mv = |t: &Tensor| if t.rank() == 0 { t.to_device(d) } else { Ok(t.clone()) };
            return mv(self)?.try_where_cond(&mv(a)?, &mv(b)?);
        }
        let backend = same_backend("where", &[self, a, b])?;
        let shape = self.shape().broadcast_with(a.shape(), "where")?.broadcast_with(b.shape(), "where")?;
        let get = |t: &Tensor| -> Result<Tensor> { t.detach().try_broadcast_to(shape.clone())?.dense("where") };
        let (c, av, bv) = (get(self)?, get(a)?, get(b)?);
        let out = backend.where_select(&**c.storage(), &**av.storage(), &**bv.storage())?;
        let out = Tensor::from_backend(out, shape);
        let mask = self.detach();
        let (sa, sb): (Shape, Shape) = (a.shape().clone(), b.shape().clone());
        Ok(record(out, "where", &[a, b], move |_, g| {
            let zero = g.zeros_like();
            vec![Some(mask.where_cond(g, &zero).sum_to(&sa)), Some(mask.where_cond(&zero, g).sum_to(&sb))]
        }))
    }

    panicking!(
        /// `if self != 0 { a } else { b }` elementwise; see [`Tensor::try_where_cond`].
        where_cond => try_where_cond(a: &Tensor, b: &Tensor) -> Tensor
    );
}

/// Generates `try_name` (returning `Result`) and `name` (panicking with the
/// same message) for each binary op; `forward` comparisons record no gradient.
macro_rules! binary_methods {
    ($($(#[$m:meta])* $name:ident, $try:ident => $call:ident($op:expr);)*) => {
        impl Tensor {
            $(
                $(#[$m])*
                ///
                /// # Errors
                /// When the shapes do not broadcast or the devices differ, and for
                /// integer division by zero.
                pub fn $try(&self, rhs: &Tensor) -> Result<Tensor> {
                    self.$call(rhs, $op)
                }

                panicking!(
                    $(#[$m])*
                    $name => $try(rhs: &Tensor) -> Tensor
                );
            )*
        }
    };
}

binary_methods! {
    /// `self + rhs`, broadcasting.
    add, try_add => binary_op(BinaryOp::Add);
    /// `self - rhs`, broadcasting.
    sub, try_sub => binary_op(BinaryOp::Sub);
    /// `self * rhs` elementwise, broadcasting.
    mul, try_mul => binary_op(BinaryOp::Mul);
    /// `self / rhs` elementwise, broadcasting.
    div, try_div => binary_op(BinaryOp::Div);
    /// `self ^ rhs` elementwise, broadcasting.
    pow, try_pow => binary_op(BinaryOp::Pow);
    /// Elementwise maximum, broadcasting (ties share the gradient).
    maximum, try_maximum => binary_op(BinaryOp::Maximum);
    /// Elementwise minimum, broadcasting (ties share the gradient).
    minimum, try_minimum => binary_op(BinaryOp::Minimum);
    /// `self == rhs` as a `bool` mask, broadcasting (comparisons have no gradient).
    eq, try_eq => binary_forward(BinaryOp::Eq);
    /// `self != rhs` as a `bool` mask, broadcasting.
    ne, try_ne => binary_forward(BinaryOp::Ne);
    /// `self < rhs` as a `bool` mask, broadcasting.
    lt, try_lt => binary_forward(BinaryOp::Lt);
    /// `self <= rhs` as a `bool` mask, broadcasting.
    le, try_le => binary_forward(BinaryOp::Le);
    /// `self > rhs` as a `bool` mask, broadcasting.
    gt, try_gt => binary_forward(BinaryOp::Gt);
    /// `self >= rhs` as a `bool` mask, broadcasting.
    ge, try_ge => binary_forward(BinaryOp::Ge);
}

// ---- operators ---------------------------------------------------------------

macro_rules! impl_op {
    ($trait:ident, $fn:ident, $method:ident, $scalar:expr) => {
        impl std::ops::$trait<&Tensor> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $fn(self, rhs: &Tensor) -> Tensor {
                Tensor::$method(&self, rhs)
            }
        }
        impl std::ops::$trait<Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $fn(self, rhs: Tensor) -> Tensor {
                Tensor::$method(&self, &rhs)
            }
        }
        impl std::ops::$trait<&Tensor> for Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $fn(self, rhs: &Tensor) -> Tensor {
                Tensor::$method(&self, rhs)
            }
        }
        impl std::ops::$trait<Tensor> for &Tensor {
            type Output = Tensor;
            #[track_caller]
            fn $fn(self, rhs: Tensor) -> Tensor {
                Tensor::$method(&self, &rhs)
            }
        }
        impl std::ops::$trait<f32> for &Tensor {
            type Output = Tensor;
            fn $fn(self, rhs: f32) -> Tensor {
                let (m, a) = $scalar(rhs);
                self.unary(UnaryOp::Affine(m, a))
            }
        }
        impl std::ops::$trait<f32> for Tensor {
            type Output = Tensor;
            fn $fn(self, rhs: f32) -> Tensor {
                std::ops::$trait::$fn(&self, rhs)
            }
        }
    };
}

impl_op!(Add, add, add, |s: f32| (1.0, s));
impl_op!(Sub, sub, sub, |s: f32| (1.0, -s));
impl_op!(Mul, mul, mul, |s: f32| (s, 0.0));
impl_op!(Div, div, div, |s: f32| (1.0 / s, 0.0));

impl std::ops::Neg for &Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        self.unary(UnaryOp::Neg)
    }
}

impl std::ops::Neg for Tensor {
    type Output = Tensor;
    fn neg(self) -> Tensor {
        self.unary(UnaryOp::Neg)
    }
}

impl std::ops::Mul<&Tensor> for f32 {
    type Output = Tensor;
    fn mul(self, rhs: &Tensor) -> Tensor {
        rhs * self
    }
}

impl std::ops::Add<&Tensor> for f32 {
    type Output = Tensor;
    fn add(self, rhs: &Tensor) -> Tensor {
        rhs + self
    }
}

impl std::ops::Sub<&Tensor> for f32 {
    type Output = Tensor;
    fn sub(self, rhs: &Tensor) -> Tensor {
        rhs.affine(-1.0, self)
    }
}
