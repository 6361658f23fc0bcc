//! Reductions over any set of dims: sum, mean, max, min (values), argmax and
//! argmin (indices), variance and standard deviation; and `sum_to`, which
//! reduces a broadcast gradient back to an input's shape.

use super::{normalize_dims, panicking, record};
use crate::tensor::Tensor;
use firebrand_ops::reduce::ReduceOp;
use firebrand_tensor::{DType, Error, Result, Shape};

impl Tensor {
    /// Output shape of reducing `axes`, with or without the reduced dims kept as 1.
    fn reduced_shape(&self, axes: &[bool], keepdim: bool) -> Shape {
        let dims = self.dims();
        let v: Vec<usize> =
            (0..dims.len()).filter_map(|d| if axes[d] { keepdim.then_some(1) } else { Some(dims[d]) }).collect();
        v.into()
    }

    /// One flag per dim: those in `dims`, or every dim when `dims` is empty
    /// (PyTorch's `sum(dim=[])` reduces everything).
    fn axes_of(&self, op: &'static str, dims: &[isize]) -> Result<Vec<bool>> {
        if dims.is_empty() {
            return Ok(vec![true; self.rank()]);
        }
        let ds = normalize_dims(op, dims, self.shape())?;
        let mut axes = vec![false; self.rank()];
        ds.iter().for_each(|&d| axes[d] = true);
        Ok(axes)
    }

    /// `op` over `dims` without an autograd record (`any`/`all` on bool).
    pub(crate) fn extreme_values(&self, op: ReduceOp, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let axes = self.axes_of(op.name(), dims)?;
        self.reduce_forward(op, &axes, keepdim)
    }

    fn reduce_forward(&self, op: ReduceOp, axes: &[bool], keepdim: bool) -> Result<Tensor> {
        let shape = self.reduced_shape(axes, keepdim);
        let out = self.backend(op.name())?.reduce(op, &**self.storage(), self.layout(), axes)?;
        Ok(Tensor::from_backend(out, shape))
    }

    /// Sum over `dims` (negative dims count from the end; an empty list
    /// sums everything). Integer and bool tensors sum into `i64`, as in PyTorch.
    ///
    /// ```
    /// use firebrand_autograd::{DType, Tensor};
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    /// assert_eq!(x.sum(&[0], false).to_vec::<f32>(), vec![4.0, 6.0]);
    /// assert_eq!(x.sum(&[-1], true).dims(), &[2, 1]);
    /// assert_eq!(x.sum(&[], false).item(), 10.0);
    /// let mask = x.gt(&Tensor::scalar(1.5)); // bool
    /// assert_eq!(mask.sum(&[], false).dtype(), DType::I64);
    /// ```
    ///
    /// # Errors
    /// When a dim is out of range or repeated.
    pub fn try_sum(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        if !self.dtype().is_float() && self.dtype() != DType::I64 {
            return self.try_to_dtype(DType::I64)?.try_sum(dims, keepdim);
        }
        let axes = self.axes_of("sum", dims)?;
        let out = self.reduce_forward(ReduceOp::Sum, &axes, keepdim)?;
        let in_shape = self.shape().clone();
        let kept = self.reduced_shape(&axes, true);
        Ok(record(out, "sum", &[self], move |_, g| {
            vec![Some(g.reshape(kept.clone()).broadcast_to(in_shape.clone()).contiguous())]
        }))
    }

    panicking!(
        /// Sum over `dims`; `keepdim` keeps them as size 1.
        sum => try_sum(dims: &[isize], keepdim: bool) -> Tensor
    );

    /// Sum of all elements (a 0-d tensor).
    pub fn sum_all(&self) -> Tensor {
        let all: Vec<isize> = (0..self.rank() as isize).collect();
        self.sum(&all, false)
    }

    /// Mean over `dims` (an empty list: over everything).
    ///
    /// # Errors
    /// As [`Tensor::try_sum`], and for an integer or bool tensor.
    pub fn try_mean(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        if !self.dtype().is_float() {
            return Err(Error::DType {
                op: "mean",
                got: self.dtype(),
                expected: "a floating-point dtype (convert with to_dtype; PyTorch refuses too)",
            });
        }
        let axes = self.axes_of("mean", dims)?;
        let n: usize = self.dims().iter().zip(&axes).filter(|(_, a)| **a).map(|(d, _)| d).product();
        Ok(self.try_sum(dims, keepdim)?.affine(1.0 / n as f32, 0.0))
    }

    panicking!(
        /// Mean over `dims`.
        mean => try_mean(dims: &[isize], keepdim: bool) -> Tensor
    );

    /// Mean of all elements (a 0-d tensor).
    pub fn mean_all(&self) -> Tensor {
        let all: Vec<isize> = (0..self.rank() as isize).collect();
        self.mean(&all, false)
    }

    fn extreme(&self, op: ReduceOp, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let axes = self.axes_of(op.name(), dims)?;
        let out = self.reduce_forward(op, &axes, keepdim)?;
        let x = self.detach();
        let kept = self.reduced_shape(&axes, true);
        let dims = dims.to_vec();
        Ok(record(out, op.name(), &[self], move |out, g| {
            // Gradient shared evenly among the elements equal to the extreme (PyTorch's amax/amin).
            let mask = x.eq(&out.reshape(kept.clone()));
            let count = mask.sum(&dims, true);
            vec![Some(mask.mul(&g.reshape(kept.clone())).div(&count))]
        }))
    }

    /// Largest value over `dims` (PyTorch's `amax`; ties share the gradient).
    ///
    /// # Errors
    /// As [`Tensor::try_sum`].
    pub fn try_max(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extreme(ReduceOp::Max, dims, keepdim)
    }

    /// Smallest value over `dims` (PyTorch's `amin`).
    ///
    /// # Errors
    /// As [`Tensor::try_sum`].
    pub fn try_min(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        self.extreme(ReduceOp::Min, dims, keepdim)
    }

    panicking!(
        /// Largest value over `dims`.
        max => try_max(dims: &[isize], keepdim: bool) -> Tensor
    );
    panicking!(
        /// Smallest value over `dims`.
        min => try_min(dims: &[isize], keepdim: bool) -> Tensor
    );

    /// Index of the largest value along `dim` (`i64`; the first one on ties).
    ///
    /// # Errors
    /// When `dim` is out of range or the tensor is not `f32`.
    pub fn try_argmax(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let axes = self.axes_of("argmax", &[dim])?;
        self.reduce_forward(ReduceOp::ArgMax, &axes, keepdim)
    }

    /// Index of the smallest value along `dim` (`i64`).
    ///
    /// # Errors
    /// As [`Tensor::try_argmax`].
    pub fn try_argmin(&self, dim: isize, keepdim: bool) -> Result<Tensor> {
        let axes = self.axes_of("argmin", &[dim])?;
        self.reduce_forward(ReduceOp::ArgMin, &axes, keepdim)
    }

    panicking!(
        /// Index of the largest value along `dim` (`i64`).
        argmax => try_argmax(dim: isize, keepdim: bool) -> Tensor
    );
    panicking!(
        /// Index of the smallest value along `dim` (`i64`).
        argmin => try_argmin(dim: isize, keepdim: bool) -> Tensor
    );

    /// Variance over `dims` with `correction` (1 = unbiased, PyTorch's default;
    /// 0 = population). Composite: gradients come from its parts.
    ///
    /// # Errors
    /// As [`Tensor::try_sum`].
    pub fn try_var(&self, dims: &[isize], correction: usize, keepdim: bool) -> Result<Tensor> {
        let axes = self.axes_of("var", dims)?;
        let n: usize = self.dims().iter().zip(&axes).filter(|(_, a)| **a).map(|(d, _)| d).product();
        let centered = self.try_sub(&self.try_mean(dims, true)?)?;
        let denom = n.saturating_sub(correction) as f32;
        Ok(centered.square().try_sum(dims, keepdim)?.affine(1.0 / denom, 0.0))
    }

    panicking!(
        /// Variance over `dims`; see [`Tensor::try_var`].
        var => try_var(dims: &[isize], correction: usize, keepdim: bool) -> Tensor
    );

    /// Standard deviation over `dims` (square root of [`Tensor::var`]).
    #[track_caller]
    pub fn std(&self, dims: &[isize], correction: usize, keepdim: bool) -> Tensor {
        self.var(dims, correction, keepdim).sqrt()
    }

    /// Product over `dims` (an empty list: over everything; integers and
    /// bool multiply into `i64`). The gradient of each element is the
    /// product of the others, exact when some are zero.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    /// assert_eq!(x.prod(&[1], false).to_vec::<f32>(), vec![2.0, 12.0]);
    /// ```
    ///
    /// # Errors
    /// When a dim is out of range or repeated.
    pub fn try_prod(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        if !self.dtype().is_float() && self.dtype() != DType::I64 {
            return self.try_to_dtype(DType::I64)?.try_prod(dims, keepdim);
        }
        let axes = self.axes_of("prod", dims)?;
        let out = self.reduce_forward(ReduceOp::Prod, &axes, keepdim)?;
        let x = self.detach();
        let kept = self.reduced_shape(&axes, true);
        Ok(record(out, "prod", &[self], move |_, g| {
            vec![Some(others_product(&x, &axes).mul(&g.reshape(kept.clone())))]
        }))
    }

    panicking!(
        /// Product over `dims`; see [`Tensor::try_prod`].
        prod => try_prod(dims: &[isize], keepdim: bool) -> Tensor
    );

    /// The largest element (a 0-d tensor; NaN if any is NaN). PyTorch's `max()`.
    #[track_caller]
    pub fn max_all(&self) -> Tensor {
        self.max(&[], false)
    }

    /// The smallest element (a 0-d tensor; NaN if any is NaN). PyTorch's `min()`.
    #[track_caller]
    pub fn min_all(&self) -> Tensor {
        self.min(&[], false)
    }

    /// `log(sum(exp(x)))` over `dims`, computed stably (the maximum is taken
    /// out first; rows of `-inf` give `-inf`, a `+inf` gives `+inf`).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1000.0f32, 1000.0], [2]);
    /// assert!((x.logsumexp(&[0], false).item() - (1000.0 + 2f32.ln())).abs() < 1e-3);
    /// ```
    ///
    /// # Errors
    /// When a dim is out of range or repeated, or the tensor is not a float.
    pub fn try_logsumexp(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let x = if self.dtype().is_float() { self.clone() } else { self.try_to_dtype(DType::F32)? };
        let m = x.detach().try_max(dims, true)?;
        let m = m.isinf().where_cond(&m.zeros_like(), &m); // no inf - inf
        let out = x.try_sub(&m)?.exp().try_sum(dims, true)?.log().try_add(&m)?;
        if keepdim {
            return Ok(out);
        }
        let axes = self.axes_of("logsumexp", dims)?;
        out.try_reshape(self.reduced_shape(&axes, false))
    }

    panicking!(
        /// `log(sum(exp(x)))` over `dims`; see [`Tensor::try_logsumexp`].
        logsumexp => try_logsumexp(dims: &[isize], keepdim: bool) -> Tensor
    );

    /// The `p`-norm over `dims` (PyTorch's `torch.linalg.vector_norm`):
    /// `p = 2` the Euclidean norm, `1` the sum of magnitudes, `f32::INFINITY`
    /// the largest magnitude, any other `p > 0` `(Σ|x|^p)^(1/p)`.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![3.0f32, -4.0], [2]);
    /// assert_eq!(x.norm(2.0, &[], false).item(), 5.0);
    /// assert_eq!(x.norm(1.0, &[], false).item(), 7.0);
    /// assert_eq!(x.norm(f32::INFINITY, &[], false).item(), 4.0);
    /// ```
    ///
    /// # Errors
    /// When a dim is out of range or repeated, or `p <= 0`.
    pub fn try_norm(&self, p: f32, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        let a = self.abs();
        if p == f32::INFINITY {
            a.try_max(dims, keepdim)
        } else if p == 1.0 {
            a.try_sum(dims, keepdim)
        } else if p == 2.0 {
            Ok(self.square().try_sum(dims, keepdim)?.sqrt())
        } else if p > 0.0 {
            Ok(a.powf(p).try_sum(dims, keepdim)?.powf(1.0 / p))
        } else {
            Err(Error::msg("norm", format!("p must be positive or infinite, got {p}")))
        }
    }

    panicking!(
        /// The `p`-norm over `dims`; see [`Tensor::try_norm`].
        norm => try_norm(p: f32, dims: &[isize], keepdim: bool) -> Tensor
    );

    /// Sums a broadcast tensor back down to `shape` (the gradient rule of
    /// broadcasting): leading extra dims and dims where `shape` has 1 are summed.
    ///
    /// # Errors
    /// When `shape` does not broadcast to this tensor's shape.
    pub fn try_sum_to(&self, shape: &Shape) -> Result<Tensor> {
        if self.shape() == shape {
            return Ok(self.clone());
        }
        let (r, sr) = (self.rank(), shape.rank());
        if sr > r {
            return Err(Error::ShapeMismatch { op: "sum_to", lhs: self.shape().clone(), rhs: shape.clone() });
        }
        let lead = r - sr;
        let mut dims: Vec<isize> = (0..lead as isize).collect();
        for (i, &s) in shape.dims().iter().enumerate() {
            let d = self.dims()[lead + i];
            if s == 1 && d != 1 {
                dims.push((lead + i) as isize);
            } else if s != d {
                return Err(Error::ShapeMismatch { op: "sum_to", lhs: self.shape().clone(), rhs: shape.clone() });
            }
        }
        self.try_sum(&dims, true)?.try_reshape(shape.clone())
    }

    panicking!(
        /// Sums a broadcast tensor back down to `shape`.
        sum_to => try_sum_to(shape: &Shape) -> Tensor
    );
}

/// For each element, the product of the other elements of its reduced set
/// (prefix times suffix products: exact with zeros), in `x`'s shape.
fn others_product(x: &Tensor, axes: &[bool]) -> Tensor {
    let dims = x.dims().to_vec();
    let kept: Vec<usize> = (0..dims.len()).filter(|&d| !axes[d]).collect();
    let red: Vec<usize> = (0..dims.len()).filter(|&d| axes[d]).collect();
    let perm: Vec<usize> = kept.iter().chain(&red).copied().collect();
    let r: usize = red.iter().map(|&d| dims[d]).product();
    let xp = x.permute(&perm).contiguous();
    let v = xp.to_vec::<f64>();
    let mut out = vec![0.0f64; v.len()];
    for (row, o) in v.chunks(r.max(1)).zip(out.chunks_mut(r.max(1))) {
        let mut acc = 1.0;
        for (i, &e) in row.iter().enumerate() {
            o[i] = acc;
            acc *= e;
        }
        let mut acc = 1.0;
        for (i, &e) in row.iter().enumerate().rev() {
            o[i] *= acc;
            acc *= e;
        }
    }
    let t = Tensor::from_vec(out, xp.shape().clone()).to_dtype(x.dtype());
    let mut inv = vec![0; perm.len()];
    perm.iter().enumerate().for_each(|(i, &p)| inv[p] = i);
    t.permute(&inv).to_device(x.device()).expect("the input's device")
}
