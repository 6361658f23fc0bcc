//! Shape ops. Views (transpose, permute, narrow, broadcast, squeeze,
//! unsqueeze, and reshape where the strides allow) share storage; each has a
//! backward rule that maps the gradient back to the input's shape.

use super::{normalize_dims, panicking, record};
use crate::tensor::Tensor;
use firebrand_tensor::{Error, Layout, Result, Shape, normalize_dim};

impl Tensor {
    /// A tensor with the same elements in row-major order and another shape of
    /// equal element count; a view when the strides allow, a copy otherwise.
    ///
    /// # Errors
    /// When the element counts differ.
    pub fn try_reshape(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if shape.elem_count() != self.elem_count() {
            return Err(Error::ShapeMismatch { op: "reshape", lhs: self.shape().clone(), rhs: shape });
        }
        if &shape == self.shape() {
            return Ok(self.clone());
        }
        let out = match self.layout().reshape(&shape) {
            Some(l) => self.view_with(l),
            None => {
                let c = self.contiguous();
                return c.try_reshape(shape);
            }
        };
        let in_shape = self.shape().clone();
        Ok(record(out, "reshape", &[self], move |_, g| vec![Some(g.reshape(in_shape.clone()))]))
    }

    /// See [`Tensor::try_reshape`].
    ///
    /// # Panics
    /// When the element counts differ.
    #[track_caller]
    pub fn reshape(&self, shape: impl Into<Shape>) -> Tensor {
        self.try_reshape(shape).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Merges dims `start..=end` into one.
    ///
    /// # Errors
    /// When a dim is out of range or `start > end`.
    pub fn try_flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        if self.rank() == 0 {
            return self.try_reshape([1]);
        }
        let s = normalize_dim(start, self.rank(), "flatten", self.shape())?;
        let e = normalize_dim(end, self.rank(), "flatten", self.shape())?;
        if s > e {
            return Err(Error::msg("flatten", format!("start dim {start} after end dim {end}")));
        }
        let d = self.dims();
        let mut nd: Vec<usize> = d[..s].to_vec();
        nd.push(d[s..=e].iter().product());
        nd.extend_from_slice(&d[e + 1..]);
        self.try_reshape(nd)
    }

    panicking!(
        /// Merges dims `start..=end` into one (`torch.flatten`).
        flatten => try_flatten(start: isize, end: isize) -> Tensor
    );

    /// Reorders dims: output dim `i` is input dim `perm[i]` (a view).
    ///
    /// # Errors
    /// When `perm` is not a permutation of the dims.
    pub fn try_permute(&self, perm: &[usize]) -> Result<Tensor> {
        let out = self.view_with(self.layout().permute(perm)?);
        let mut inv = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p] = i;
        }
        Ok(record(out, "permute", &[self], move |_, g| vec![Some(g.permute(&inv))]))
    }

    panicking!(
        /// Reorders dims (a view); see [`Tensor::try_permute`].
        permute => try_permute(perm: &[usize]) -> Tensor
    );

    /// Swaps two dims (a view).
    ///
    /// # Errors
    /// When a dim is out of range.
    pub fn try_transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        let out = self.view_with(self.layout().transpose(d0, d1)?);
        Ok(record(out, "transpose", &[self], move |_, g| vec![Some(g.transpose(d0, d1))]))
    }

    panicking!(
        /// Swaps two dims (a view).
        transpose => try_transpose(d0: isize, d1: isize) -> Tensor
    );

    /// The transpose of a 2-D tensor.
    ///
    /// # Panics
    /// When the tensor is not 2-D.
    #[track_caller]
    pub fn t(&self) -> Tensor {
        assert_eq!(self.rank(), 2, "t: expects a 2-D tensor, got shape {:?}", self.shape());
        self.transpose(0, 1)
    }

    /// `len` elements of dim `dim` from `start` (a view).
    ///
    /// # Errors
    /// When the range does not fit.
    pub fn try_narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        let d = normalize_dim(dim, self.rank(), "narrow", self.shape())?;
        let out = self.view_with(self.layout().narrow(dim, start, len)?);
        let in_dims = self.dims().to_vec();
        Ok(record(out, "narrow", &[self], move |_, g| {
            // The gradient between zeros along `d`: one concatenation (block
            // copies), not a scatter of every element.
            let zeros = |n: usize| {
                let mut dims = in_dims.clone();
                dims[d] = n;
                Tensor::full_dtype(0.0, dims, g.dtype()).to_device(g.device()).expect("own device")
            };
            let after = in_dims[d] - start - len;
            let parts: Vec<Tensor> =
                [(start > 0).then(|| zeros(start)), Some(g.clone()), (after > 0).then(|| zeros(after))]
                    .into_iter()
                    .flatten()
                    .collect();
            vec![Some(Tensor::cat(&parts.iter().collect::<Vec<_>>(), d as isize))]
        }))
    }

    panicking!(
        /// `len` elements of dim `dim` from `start` (a view).
        narrow => try_narrow(dim: isize, start: usize, len: usize) -> Tensor
    );

    /// Index `index` of dim `dim`, removing that dim (a view).
    ///
    /// # Errors
    /// When the index or dim is out of range.
    pub fn try_select(&self, dim: isize, index: usize) -> Result<Tensor> {
        let d = normalize_dim(dim, self.rank(), "select", self.shape())?;
        self.try_narrow(dim, index, 1)?.try_squeeze(d as isize)
    }

    panicking!(
        /// Index `index` of dim `dim`, removing that dim (a view).
        select => try_select(dim: isize, index: usize) -> Tensor
    );

    /// Splits into `n` nearly equal views along `dim` (`torch.chunk`).
    ///
    /// # Errors
    /// When `dim` is out of range or `n` is zero.
    pub fn try_chunk(&self, n: usize, dim: isize) -> Result<Vec<Tensor>> {
        if n == 0 {
            return Err(Error::msg("chunk", "number of chunks must be positive"));
        }
        let size = self.shape().dim(dim)?;
        let step = size.div_ceil(n).max(1);
        (0..size).step_by(step).map(|s| self.try_narrow(dim, s, step.min(size - s))).collect()
    }

    panicking!(
        /// Splits into `n` nearly equal views along `dim`.
        chunk => try_chunk(n: usize, dim: isize) -> Vec<Tensor>
    );

    /// A view broadcast to `shape` (size-1 or missing leading dims repeat).
    ///
    /// # Errors
    /// When the shapes do not broadcast.
    pub fn try_broadcast_to(&self, shape: impl Into<Shape>) -> Result<Tensor> {
        let shape = shape.into();
        if &shape == self.shape() {
            return Ok(self.clone());
        }
        let out = self.view_with(self.layout().broadcast_as(&shape)?);
        let in_shape = self.shape().clone();
        Ok(record(out, "broadcast_to", &[self], move |_, g| vec![Some(g.sum_to(&in_shape))]))
    }

    /// See [`Tensor::try_broadcast_to`] (PyTorch's `expand`).
    ///
    /// # Panics
    /// When the shapes do not broadcast.
    #[track_caller]
    pub fn broadcast_to(&self, shape: impl Into<Shape>) -> Tensor {
        self.try_broadcast_to(shape).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Removes dim `dim`, which must have size 1 (a view).
    ///
    /// # Errors
    /// When the dim is out of range or its size is not 1.
    pub fn try_squeeze(&self, dim: isize) -> Result<Tensor> {
        let d = normalize_dims("squeeze", &[dim], self.shape())?[0];
        if self.dims()[d] != 1 {
            return Err(Error::InvalidShape {
                op: "squeeze",
                shape: self.shape().clone(),
                msg: format!("dim {dim} has size {}", self.dims()[d]),
            });
        }
        let mut dims = self.dims().to_vec();
        let mut strides = self.layout().strides().to_vec();
        dims.remove(d);
        strides.remove(d);
        let out = self.view_with(Layout::new(dims.into(), strides, self.layout().offset())?);
        Ok(record(out, "squeeze", &[self], move |_, g| vec![Some(g.unsqueeze(d as isize))]))
    }

    panicking!(
        /// Removes dim `dim`, which must have size 1 (a view).
        squeeze => try_squeeze(dim: isize) -> Tensor
    );

    /// Inserts a dim of size 1 at `dim` (`-1` appends; a view).
    ///
    /// # Errors
    /// When `dim` is outside `-(rank+1)..=rank`.
    pub fn try_unsqueeze(&self, dim: isize) -> Result<Tensor> {
        let d = normalize_dim(dim, self.rank() + 1, "unsqueeze", self.shape())?;
        let mut dims = self.dims().to_vec();
        let mut strides = self.layout().strides().to_vec();
        let stride = if d < dims.len() { strides[d] * dims[d] } else { 1 };
        dims.insert(d, 1);
        strides.insert(d, stride);
        let out = self.view_with(Layout::new(dims.into(), strides, self.layout().offset())?);
        Ok(record(out, "unsqueeze", &[self], move |_, g| vec![Some(g.squeeze(d as isize))]))
    }

    panicking!(
        /// Inserts a dim of size 1 at `dim` (a view).
        unsqueeze => try_unsqueeze(dim: isize) -> Tensor
    );

    /// The same elements in a row-major buffer (this tensor itself when it is
    /// already contiguous).
    pub fn contiguous(&self) -> Tensor {
        if self.is_contiguous() {
            return self.clone();
        }
        let out = self
            .backend("contiguous")
            .and_then(|b| b.contiguous(&**self.storage(), self.layout()))
            .unwrap_or_else(|e| panic!("{e}"));
        let out = Tensor::from_backend(out, self.shape().clone());
        record(out, "contiguous", &[self], |_, g| vec![Some(g.clone())])
    }
}
