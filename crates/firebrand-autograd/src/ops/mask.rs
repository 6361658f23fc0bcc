//! Masks and tests: `masked_fill`, `masked_select`, `isnan`/`isinf`/
//! `isfinite`, `any`/`all`, `nonzero`, `tril`/`triu`, `allclose` and the
//! logical ops. Composites of the primitives (`where`, comparisons,
//! `index_select`), so their gradients come from those.

use super::panicking;
use crate::tensor::Tensor;
use firebrand_ops::reduce::ReduceOp;
use firebrand_tensor::{DType, Error, Result};

impl Tensor {
    /// `value` where `mask` is true, this tensor elsewhere (PyTorch's
    /// `masked_fill`); `mask` (`bool`, or non-zero) broadcasts to this shape.
    /// Differentiable in `self` (zero gradient where filled).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3]);
    /// let m = x.gt(&Tensor::scalar(1.5));
    /// assert_eq!(x.masked_fill(&m, -1.0).to_vec::<f32>(), vec![1.0, -1.0, -1.0]);
    /// ```
    ///
    /// # Errors
    /// When `mask` does not broadcast to this tensor's shape.
    pub fn try_masked_fill(&self, mask: &Tensor, value: f32) -> Result<Tensor> {
        let shape = mask.shape().broadcast_with(self.shape(), "masked_fill")?;
        if &shape != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "masked_fill",
                lhs: self.shape().clone(),
                rhs: mask.shape().clone(),
            });
        }
        let fill = Tensor::full_dtype(value as f64, (), self.dtype()).to_device(self.device())?;
        mask.try_where_cond(&fill, self)
    }

    panicking!(
        /// `value` where `mask` is true; see [`Tensor::try_masked_fill`].
        masked_fill => try_masked_fill(mask: &Tensor, value: f32) -> Tensor
    );

    /// The elements where `mask` is true, as a 1-D tensor in row-major order
    /// (PyTorch's `masked_select`); the two broadcast together.
    /// Differentiable in `self`.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0, -4.0], [2, 2]);
    /// let picked = x.masked_select(&x.lt(&Tensor::scalar(0.0)));
    /// assert_eq!(picked.to_vec::<f32>(), vec![-2.0, -4.0]);
    /// ```
    ///
    /// # Errors
    /// When the shapes do not broadcast.
    pub fn try_masked_select(&self, mask: &Tensor) -> Result<Tensor> {
        let shape = mask.shape().broadcast_with(self.shape(), "masked_select")?;
        let m = mask.try_broadcast_to(shape.clone())?.try_to_dtype(DType::Bool)?.try_to_vec::<bool>()?;
        let idx: Vec<i64> = m.iter().enumerate().filter(|(_, b)| **b).map(|(i, _)| i as i64).collect();
        let n = idx.len();
        let idx = Tensor::from_vec(idx, [n]).to_device(self.device())?;
        self.try_broadcast_to(shape.clone())?.try_reshape([shape.elem_count()])?.try_index_select(0, &idx)
    }

    panicking!(
        /// The elements where `mask` is true; see [`Tensor::try_masked_select`].
        masked_select => try_masked_select(mask: &Tensor) -> Tensor
    );

    /// True where the element is NaN (`bool`).
    pub fn isnan(&self) -> Tensor {
        self.ne(self)
    }

    /// True where the element is `+inf` or `-inf` (`bool`).
    pub fn isinf(&self) -> Tensor {
        if !self.dtype().is_float() {
            return Tensor::full_dtype(0.0, self.shape().clone(), DType::Bool);
        }
        self.abs().eq(&Tensor::full_dtype(f64::INFINITY, (), self.dtype()))
    }

    /// True where the element is neither NaN nor infinite (`bool`).
    pub fn isfinite(&self) -> Tensor {
        // x - x is 0 for a finite x and NaN otherwise.
        self.detach().sub(&self.detach()).eq(&Tensor::full_dtype(0.0, (), self.dtype()))
    }

    fn bool_reduce(&self, op: ReduceOp, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let b = self.try_to_dtype(DType::Bool)?;
        b.extreme_values(op, dims, keepdim)
    }

    /// True when any element over `dims` is non-zero (an empty `dims`:
    /// over everything), as `bool`.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![0.0f32, 0.0, 1.0, 0.0], [2, 2]);
    /// assert_eq!(x.any(&[1], false).to_vec::<bool>(), vec![false, true]);
    /// assert!(x.any(&[], false).to_vec::<bool>()[0]);
    /// assert!(!x.all(&[], false).to_vec::<bool>()[0]);
    /// ```
    ///
    /// # Errors
    /// When a dim is out of range or repeated.
    pub fn try_any(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.bool_reduce(ReduceOp::Max, dims, keepdim)
    }

    /// True when every element over `dims` is non-zero (an empty `dims`:
    /// over everything), as `bool`.
    ///
    /// # Errors
    /// When a dim is out of range or repeated.
    pub fn try_all(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.bool_reduce(ReduceOp::Min, dims, keepdim)
    }

    panicking!(
        /// True when any element over `dims` is non-zero; see [`Tensor::try_any`].
        any => try_any(dims: &[isize], keepdim: bool) -> Tensor
    );
    panicking!(
        /// True when every element over `dims` is non-zero; see [`Tensor::try_all`].
        all => try_all(dims: &[isize], keepdim: bool) -> Tensor
    );

    /// The indices of the non-zero elements, `(n, rank)` `i64`, in row-major
    /// order (PyTorch's `nonzero`).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![0.0f32, 3.0, 4.0, 0.0], [2, 2]);
    /// assert_eq!(x.nonzero().to_vec::<i64>(), vec![0, 1, 1, 0]);
    /// ```
    pub fn nonzero(&self) -> Tensor {
        let m = self.to_dtype(DType::Bool).to_vec::<bool>();
        let strides = self.shape().contiguous_strides();
        let mut out = Vec::new();
        for (flat, _) in m.iter().enumerate().filter(|(_, b)| **b) {
            let mut rem = flat;
            for &s in &strides {
                out.push((rem / s.max(1)) as i64);
                rem %= s.max(1);
            }
        }
        let n = m.iter().filter(|b| **b).count();
        Tensor::from_vec(out, [n, self.rank()])
    }

    /// A `bool` mask `(rows, cols)`: true where `col - row` passes `keep`.
    fn triangle(&self, op: &'static str, keep: impl Fn(i64) -> bool) -> Result<Tensor> {
        if self.rank() < 2 {
            return Err(Error::InvalidShape { op, shape: self.shape().clone(), msg: "needs at least 2 dims".into() });
        }
        let (r, c) = (self.size(-2), self.size(-1));
        let m: Vec<bool> = (0..r * c).map(|i| keep((i % c) as i64 - (i / c) as i64)).collect();
        Tensor::from_vec(m, [r, c]).to_device(self.device())
    }

    /// The lower triangle of the last two dims: elements with
    /// `col - row <= diagonal` kept, the rest zero (PyTorch's `tril`).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::ones([2, 3]);
    /// assert_eq!(x.tril(0).to_vec::<f32>(), vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0]);
    /// assert_eq!(x.triu(1).to_vec::<f32>(), vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
    /// ```
    ///
    /// # Errors
    /// For a tensor of fewer than 2 dims.
    pub fn try_tril(&self, diagonal: i64) -> Result<Tensor> {
        let m = self.triangle("tril", |d| d <= diagonal)?;
        m.try_where_cond(self, &self.zeros_like())
    }

    /// The upper triangle of the last two dims: elements with
    /// `col - row >= diagonal` kept (PyTorch's `triu`).
    ///
    /// # Errors
    /// For a tensor of fewer than 2 dims.
    pub fn try_triu(&self, diagonal: i64) -> Result<Tensor> {
        let m = self.triangle("triu", |d| d >= diagonal)?;
        m.try_where_cond(self, &self.zeros_like())
    }

    panicking!(
        /// The lower triangle; see [`Tensor::try_tril`].
        tril => try_tril(diagonal: i64) -> Tensor
    );
    panicking!(
        /// The upper triangle; see [`Tensor::try_triu`].
        triu => try_triu(diagonal: i64) -> Tensor
    );

    /// True when the shapes broadcast and every pair satisfies
    /// `|a - b| <= atol + rtol·|b|` (PyTorch's `allclose`; NaNs are unequal,
    /// infinities equal only to themselves).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let a = Tensor::from_vec(vec![1.0f32, 2.0], [2]);
    /// assert!(a.allclose(&(&a + 1e-7), 1e-5, 1e-8));
    /// assert!(!a.allclose(&(&a + 1e-3), 1e-5, 1e-8));
    /// ```
    pub fn allclose(&self, other: &Tensor, rtol: f64, atol: f64) -> bool {
        if self.shape().broadcast_with(other.shape(), "allclose").is_err() {
            return false;
        }
        let (a, b) = (self.detach().to_dtype(DType::F64), other.detach().to_dtype(DType::F64));
        let tol = b.abs().affine(rtol as f32, atol as f32);
        let close = a.sub(&b).abs().le(&tol).logical_or(&a.eq(&b));
        close.all(&[], false).to_vec::<bool>()[0]
    }

    /// Elementwise *not* of the truth values (`bool`).
    pub fn logical_not(&self) -> Tensor {
        self.eq(&Tensor::full_dtype(0.0, (), self.dtype()))
    }

    /// Elementwise *and* of the truth values, broadcasting (`bool`).
    #[track_caller]
    pub fn logical_and(&self, other: &Tensor) -> Tensor {
        self.to_dtype(DType::Bool).mul(&other.to_dtype(DType::Bool))
    }

    /// Elementwise *or* of the truth values, broadcasting (`bool`).
    #[track_caller]
    pub fn logical_or(&self, other: &Tensor) -> Tensor {
        self.to_dtype(DType::Bool).add(&other.to_dtype(DType::Bool))
    }

    /// Elementwise *exclusive or* of the truth values, broadcasting (`bool`).
    #[track_caller]
    pub fn logical_xor(&self, other: &Tensor) -> Tensor {
        self.to_dtype(DType::Bool).ne(&other.to_dtype(DType::Bool))
    }
}
