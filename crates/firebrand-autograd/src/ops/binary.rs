//! Elementwise binary ops with NumPy broadcasting, comparisons, `where`, and
//! the arithmetic operators (`&a + &b`, `&a * 2.0`, ...).

use super::{panicking, record};
use crate::tensor::{Tensor, same_backend};
use firebrand_ops::binary::BinaryOp;
use firebrand_ops::unary::UnaryOp;
use firebrand_tensor::{Result, Shape};

impl Tensor {
    /// Applies `op` after broadcasting both operands to a common shape (no autograd record).
    pub(crate) fn binary_forward(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
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

    /// `self + rhs`, broadcasting.
    ///
    /// # Errors
    /// When the shapes do not broadcast, the dtypes are not `f32`, or the devices differ.
    pub fn try_add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Add)
    }
    /// `self - rhs`, broadcasting.
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Sub)
    }
    /// `self * rhs` elementwise, broadcasting.
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Mul)
    }
    /// `self / rhs` elementwise, broadcasting.
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Div)
    }
    /// `self ^ rhs` elementwise, broadcasting.
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_pow(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Pow)
    }
    /// Elementwise maximum, broadcasting (ties share the gradient).
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Maximum)
    }
    /// Elementwise minimum, broadcasting (ties share the gradient).
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Minimum)
    }

    panicking!(
        /// `self + rhs`, broadcasting.
        add => try_add(rhs: &Tensor) -> Tensor
    );
    panicking!(
        /// `self - rhs`, broadcasting.
        sub => try_sub(rhs: &Tensor) -> Tensor
    );
    panicking!(
        /// `self * rhs` elementwise, broadcasting.
        mul => try_mul(rhs: &Tensor) -> Tensor
    );
    panicking!(
        /// `self / rhs` elementwise, broadcasting.
        div => try_div(rhs: &Tensor) -> Tensor
    );
    panicking!(
        /// `self ^ rhs` elementwise, broadcasting.
        pow => try_pow(rhs: &Tensor) -> Tensor
    );
    panicking!(
        /// Elementwise maximum, broadcasting.
        maximum => try_maximum(rhs: &Tensor) -> Tensor
    );
    panicking!(
        /// Elementwise minimum, broadcasting.
        minimum => try_minimum(rhs: &Tensor) -> Tensor
    );

    // ---- comparisons (not differentiable; 1.0 = true, 0.0 = false) ----------

    /// `self == rhs` as a 0/1 `f32` mask, broadcasting.
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_eq(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_forward(rhs, BinaryOp::Eq)
    }
    /// `self != rhs` as a 0/1 mask.
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_ne(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_forward(rhs, BinaryOp::Ne)
    }
    /// `self < rhs` as a 0/1 mask.
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_lt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_forward(rhs, BinaryOp::Lt)
    }
    /// `self <= rhs` as a 0/1 mask.
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_le(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_forward(rhs, BinaryOp::Le)
    }
    /// `self > rhs` as a 0/1 mask.
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_gt(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_forward(rhs, BinaryOp::Gt)
    }
    /// `self >= rhs` as a 0/1 mask.
    ///
    /// # Errors
    /// As [`Tensor::try_add`].
    pub fn try_ge(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_forward(rhs, BinaryOp::Ge)
    }

    panicking!(
        /// `self == rhs` as a 0/1 `f32` mask (comparisons have no gradient).
        eq => try_eq(rhs: &Tensor) -> Tensor
    );
    panicking!(
        /// `self != rhs` as a 0/1 mask.
        ne => try_ne(rhs: &Tensor) -> Tensor
    );
    panicking!(
        /// `self < rhs` as a 0/1 mask.
        lt => try_lt(rhs: &Tensor) -> Tensor
    );
    panicking!(
        /// `self <= rhs` as a 0/1 mask.
        le => try_le(rhs: &Tensor) -> Tensor
    );
    panicking!(
        /// `self > rhs` as a 0/1 mask.
        gt => try_gt(rhs: &Tensor) -> Tensor
    );
    panicking!(
        /// `self >= rhs` as a 0/1 mask.
        ge => try_ge(rhs: &Tensor) -> Tensor
    );

    /// `if self != 0 { a } else { b }` elementwise, all three broadcast together
    /// (`torch.where(cond, a, b)` with `self` as the condition). Differentiable in `a` and `b`.
    ///
    /// # Errors
    /// When the shapes do not broadcast or a dtype is not `f32`.
    pub fn try_where_cond(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
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
