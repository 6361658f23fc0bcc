//! Indexing ops: index_select, index_add, gather, scatter_add, cat, stack and
//! one_hot. Indices are `i64` tensors on the data's device; out-of-range
//! indices are errors.

use super::{panicking, record};
use crate::tensor::{Tensor, same_backend};
use firebrand_ops::binary::BinaryOp;
use firebrand_tensor::{DType, Error, Result, normalize_dim};

/// `(outer, size of dim, inner)` of a shape split at `d`.
fn split3(dims: &[usize], d: usize) -> (usize, usize, usize) {
    (dims[..d].iter().product(), dims[d], dims[d + 1..].iter().product())
}

fn check_i64(op: &'static str, t: &Tensor) -> Result<()> {
    if t.dtype() != DType::I64 {
        return Err(Error::DType { op, got: t.dtype(), expected: "i64 indices" });
    }
    Ok(())
}

impl Tensor {
    /// Rows `idx` (a 1-D `i64` tensor) of dim `dim`: PyTorch's `index_select`
    /// (also the embedding lookup). Works for `f32` and `i64` tensors;
    /// differentiable for `f32`.
    ///
    /// # Errors
    /// When `idx` is not a 1-D `i64` tensor, `dim` is out of range, or an index is.
    pub fn try_index_select(&self, dim: isize, idx: &Tensor) -> Result<Tensor> {
        let d = normalize_dim(dim, self.rank(), "index_select", self.shape())?;
        if idx.rank() != 1 {
            return Err(Error::InvalidShape {
                op: "index_select",
                shape: idx.shape().clone(),
                msg: "indices must be 1-D".into(),
            });
        }
        check_i64("index_select", idx)?;
        let backend = same_backend("index_select", &[self, idx])?;
        let n = self.dims()[d];
        let mut out_dims = self.dims().to_vec();
        out_dims[d] = idx.elem_count();
        let idx = idx.dense("index_select")?;
        let out = backend.index_select(&**self.storage(), self.layout(), d, &**idx.storage())?;
        let out = Tensor::from_backend(out, out_dims);
        if !self.dtype().is_float() {
            return Ok(out);
        }
        Ok(record(out, "index_select", &[self], move |_, g| vec![Some(g.index_add_zeros(d, &idx, n))]))
    }

    panicking!(
        /// Rows `idx` of dim `dim`; see [`Tensor::try_index_select`].
        index_select => try_index_select(dim: isize, idx: &Tensor) -> Tensor
    );

    /// Zeros with dim `d` of size `size`, plus `self` added at rows `idx` (index_select's adjoint).
    pub(crate) fn index_add_zeros(&self, d: usize, idx: &Tensor, size: usize) -> Tensor {
        let mut dims = self.dims().to_vec();
        dims[d] = size;
        Tensor::full_dtype(0.0, dims, self.dtype())
            .to_device(self.device())
            .expect("own device")
            .index_add(d as isize, idx, self)
    }

    /// `self` with `src`'s rows added at rows `idx` of dim `dim` (PyTorch's
    /// `index_add`, out of place). Repeated indices accumulate.
    ///
    /// # Errors
    /// When the shapes disagree (src must match self except along `dim`, where
    /// it has `idx.len()` rows) or an index is out of range.
    pub fn try_index_add(&self, dim: isize, idx: &Tensor, src: &Tensor) -> Result<Tensor> {
        let d = normalize_dim(dim, self.rank(), "index_add", self.shape())?;
        check_i64("index_add", idx)?;
        let backend = same_backend("index_add", &[self, idx, src])?;
        let mut want = self.dims().to_vec();
        want[d] = idx.elem_count();
        if src.dims() != want.as_slice() || idx.rank() != 1 {
            return Err(Error::ShapeMismatch { op: "index_add", lhs: self.shape().clone(), rhs: src.shape().clone() });
        }
        let (o, n, i) = split3(self.dims(), d);
        let idx = idx.dense("index_add")?;
        let added = backend.index_add(&**src.dense("index_add")?.storage(), o, n, i, &**idx.storage())?;
        let out = self.binary_forward(&Tensor::from_backend(added, self.shape().clone()), BinaryOp::Add)?;
        Ok(record(out, "index_add", &[self, src], move |_, g| {
            vec![Some(g.clone()), Some(g.index_select(d as isize, &idx))]
        }))
    }

    panicking!(
        /// `self` with `src`'s rows added at rows `idx` of dim `dim`.
        index_add => try_index_add(dim: isize, idx: &Tensor, src: &Tensor) -> Tensor
    );

    fn gather_shape_check(&self, op: &'static str, d: usize, index: &Tensor) -> Result<()> {
        check_i64(op, index)?;
        let ok = index.rank() == self.rank() && (0..self.rank()).all(|j| j == d || index.dims()[j] == self.dims()[j]);
        if !ok {
            return Err(Error::ShapeMismatch { op, lhs: self.shape().clone(), rhs: index.shape().clone() });
        }
        Ok(())
    }

    /// `out[…, j, …] = self[…, index[…, j, …], …]` along `dim` (PyTorch's
    /// `gather`; here `index` must match `self` in every other dim).
    ///
    /// # Errors
    /// When the shapes disagree, `index` is not `i64`, or an index is out of range.
    pub fn try_gather(&self, dim: isize, index: &Tensor) -> Result<Tensor> {
        let d = normalize_dim(dim, self.rank(), "gather", self.shape())?;
        self.gather_shape_check("gather", d, index)?;
        let backend = same_backend("gather", &[self, index])?;
        let (o, n, i) = split3(self.dims(), d);
        let index = index.dense("gather")?;
        let out = backend.gather(&**self.dense("gather")?.storage(), o, n, i, &**index.storage())?;
        let out = Tensor::from_backend(out, index.shape().clone());
        let in_shape = self.shape().clone();
        Ok(record(out, "gather", &[self], move |_, g| {
            let zeros = Tensor::full_dtype(0.0, in_shape.clone(), g.dtype()).to_device(g.device()).expect("own device");
            vec![Some(zeros.scatter_add(d as isize, &index, g))]
        }))
    }

    panicking!(
        /// Gathers along `dim`; see [`Tensor::try_gather`].
        gather => try_gather(dim: isize, index: &Tensor) -> Tensor
    );

    /// `self` plus `src` scattered along `dim`: `out[…, index[…, j, …], …] += src[…, j, …]`
    /// (PyTorch's `scatter_add`, out of place; `index` has `src`'s shape).
    ///
    /// # Errors
    /// When the shapes disagree or an index is out of range.
    pub fn try_scatter_add(&self, dim: isize, index: &Tensor, src: &Tensor) -> Result<Tensor> {
        let d = normalize_dim(dim, self.rank(), "scatter_add", self.shape())?;
        self.gather_shape_check("scatter_add", d, index)?;
        if index.shape() != src.shape() {
            return Err(Error::ShapeMismatch {
                op: "scatter_add",
                lhs: index.shape().clone(),
                rhs: src.shape().clone(),
            });
        }
        let backend = same_backend("scatter_add", &[self, index, src])?;
        let (o, n, i) = split3(self.dims(), d);
        let index = index.dense("scatter_add")?;
        let added = backend.scatter_add(&**src.dense("scatter_add")?.storage(), o, n, i, &**index.storage())?;
        let out = self.binary_forward(&Tensor::from_backend(added, self.shape().clone()), BinaryOp::Add)?;
        Ok(record(out, "scatter_add", &[self, src], move |_, g| {
            vec![Some(g.clone()), Some(g.gather(d as isize, &index))]
        }))
    }

    panicking!(
        /// Scatter-adds `src` along `dim`; see [`Tensor::try_scatter_add`].
        scatter_add => try_scatter_add(dim: isize, index: &Tensor, src: &Tensor) -> Tensor
    );

    /// Concatenates along `dim` (`torch.cat`); all tensors share dtype, device
    /// and every other dim.
    ///
    /// # Errors
    /// On an empty list or any mismatch.
    pub fn try_cat(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::msg("cat", "needs at least one tensor"))?;
        let d = normalize_dim(dim, first.rank(), "cat", first.shape())?;
        let backend = same_backend("cat", tensors)?;
        let dtype = first.dtype();
        for t in tensors {
            let same = t.rank() == first.rank() && (0..t.rank()).all(|j| j == d || t.dims()[j] == first.dims()[j]);
            if !same {
                return Err(Error::ShapeMismatch { op: "cat", lhs: first.shape().clone(), rhs: t.shape().clone() });
            }
            if t.dtype() != dtype {
                // Mixed dtypes promote (as PyTorch's cat); the conversions are recorded.
                let to = tensors.iter().fold(dtype, |a, t| DType::promote(a, t.dtype()));
                let conv: Vec<Tensor> = tensors.iter().map(|t| t.try_to_dtype(to)).collect::<Result<_>>()?;
                return Tensor::try_cat(&conv.iter().collect::<Vec<_>>(), dim);
            }
        }
        let sizes: Vec<usize> = tensors.iter().map(|t| t.dims()[d]).collect();
        let (o, _, i) = split3(first.dims(), d);
        let mut out_dims = first.dims().to_vec();
        out_dims[d] = sizes.iter().sum();
        // Parts are read through their layouts: a view is copied once, into the output.
        let guards: Vec<_> = tensors.iter().map(|t| t.storage()).collect();
        let parts: Vec<(&dyn firebrand_tensor::backend::BackendStorage, &firebrand_tensor::Layout)> =
            guards.iter().zip(tensors).map(|(g, t)| (&***g, t.layout())).collect();
        let out = Tensor::from_backend(backend.concat(&parts, o, &sizes, i)?, out_dims);
        drop(guards);
        if !dtype.is_float() {
            return Ok(out);
        }
        Ok(record(out, "cat", tensors, move |_, g| {
            g.split_with_sizes(&sizes, d as isize).into_iter().map(Some).collect()
        }))
    }

    /// Concatenates along `dim`; see [`Tensor::try_cat`].
    ///
    /// # Panics
    /// On an empty list or any mismatch.
    #[track_caller]
    pub fn cat(tensors: &[&Tensor], dim: isize) -> Tensor {
        Tensor::try_cat(tensors, dim).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Stacks equal-shaped tensors along a new dim `dim` (`torch.stack`).
    ///
    /// # Errors
    /// On an empty list or any shape mismatch.
    pub fn try_stack(tensors: &[&Tensor], dim: isize) -> Result<Tensor> {
        let first = tensors.first().ok_or_else(|| Error::msg("stack", "needs at least one tensor"))?;
        for t in tensors {
            if t.shape() != first.shape() {
                return Err(Error::ShapeMismatch { op: "stack", lhs: first.shape().clone(), rhs: t.shape().clone() });
            }
        }
        let expanded: Vec<Tensor> = tensors.iter().map(|t| t.try_unsqueeze(dim)).collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = expanded.iter().collect();
        Tensor::try_cat(&refs, dim)
    }

    /// Stacks along a new dim; see [`Tensor::try_stack`].
    ///
    /// # Panics
    /// On an empty list or any shape mismatch.
    #[track_caller]
    pub fn stack(tensors: &[&Tensor], dim: isize) -> Tensor {
        Tensor::try_stack(tensors, dim).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One-hot encoding of an `i64` tensor: shape `(…, classes)`, `f32`, on
    /// the same device (built on the host: labels are small).
    ///
    /// # Errors
    /// When the tensor is not `i64` or an index is outside `0..classes`.
    pub fn try_one_hot(&self, classes: usize) -> Result<Tensor> {
        check_i64("one_hot", self)?;
        let mut dims = self.dims().to_vec();
        dims.push(classes);
        let hot = firebrand_ops::index::one_hot(&self.to_vec::<i64>(), classes)?;
        Tensor::from_vec(hot, dims).to_device(self.device())
    }

    panicking!(
        /// One-hot encoding of an `i64` tensor; see [`Tensor::try_one_hot`].
        one_hot => try_one_hot(classes: usize) -> Tensor
    );
}
