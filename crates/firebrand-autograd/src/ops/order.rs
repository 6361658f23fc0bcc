//! Ordering along a dim: `sort`, `argsort`, `topk`, `cumsum`, `flip` and
//! `roll`. Sort orders and cumulative sums are computed on the host; the
//! values then come through `gather`/`index_select`, so their gradients are
//! those ops' rules.

use super::{panicking, record};
use crate::tensor::Tensor;
use firebrand_tensor::{DType, Error, Result, normalize_dim};
use std::cmp::Ordering;

/// PyTorch's order: NaN after every number (ascending), numbers by value.
fn total(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).expect("not NaN"),
    }
}

impl Tensor {
    /// This tensor with `dim` moved last, contiguous, and its row length.
    fn rows_along(&self, op: &'static str, dim: isize) -> Result<(Tensor, usize, usize)> {
        let d = normalize_dim(dim, self.rank().max(1), op, self.shape())?;
        let last = self.rank().saturating_sub(1);
        let moved = if self.rank() == 0 { self.reshape([1]) } else { self.try_transpose(d as isize, last as isize)? };
        let n = moved.dims().last().copied().unwrap_or(1);
        Ok((moved.contiguous(), n, d))
    }

    /// Sorted values and their original indices (`i64`) along `dim`
    /// (PyTorch's `sort`, stable; NaN sorts as the largest value).
    /// Differentiable in the values.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![3.0f32, 1.0, 2.0], [3]);
    /// let (v, i) = x.sort(0, false);
    /// assert_eq!(v.to_vec::<f32>(), vec![1.0, 2.0, 3.0]);
    /// assert_eq!(i.to_vec::<i64>(), vec![1, 2, 0]);
    /// ```
    ///
    /// # Errors
    /// When `dim` is out of range.
    pub fn try_sort(&self, dim: isize, descending: bool) -> Result<(Tensor, Tensor)> {
        let (moved, n, d) = self.rows_along("sort", dim)?;
        let mut idx: Vec<i64> = Vec::with_capacity(moved.elem_count());
        let mut push_rows = |keys: &dyn Fn(usize) -> f64| {
            for r in 0..moved.elem_count() / n.max(1) {
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &b| {
                    let o = total(keys(r * n + a), keys(r * n + b));
                    if descending { o.reverse() } else { o }
                });
                idx.extend(order.iter().map(|&i| i as i64));
            }
        };
        if self.dtype().is_float() {
            let v = moved.to_vec::<f64>();
            push_rows(&|i| v[i]);
        } else {
            let v = moved.to_vec::<i64>();
            push_rows(&|i| v[i] as f64);
        }
        let mut index = Tensor::from_vec(idx, moved.shape().clone());
        if self.rank() == 0 {
            index = index.reshape(());
        } else {
            let last = self.rank() as isize - 1;
            index = index.try_transpose(d as isize, last)?.contiguous();
        }
        let index = index.to_device(self.device())?;
        if self.rank() == 0 {
            return Ok((self.clone(), index));
        }
        Ok((self.try_gather(d as isize, &index)?, index))
    }

    /// Sorted values and indices along `dim`; see [`Tensor::try_sort`].
    ///
    /// # Panics
    /// When `dim` is out of range.
    #[track_caller]
    pub fn sort(&self, dim: isize, descending: bool) -> (Tensor, Tensor) {
        self.try_sort(dim, descending).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The indices that sort this tensor along `dim` (`i64`).
    ///
    /// # Panics
    /// When `dim` is out of range.
    #[track_caller]
    pub fn argsort(&self, dim: isize, descending: bool) -> Tensor {
        self.sort(dim, descending).1
    }

    /// The `k` largest (or smallest) values along `dim` and their indices,
    /// in order (PyTorch's `topk` with `sorted=True`). Differentiable in the values.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 5.0, 3.0, 4.0], [4]);
    /// let (v, i) = x.topk(2, -1, true);
    /// assert_eq!(v.to_vec::<f32>(), vec![5.0, 4.0]);
    /// assert_eq!(i.to_vec::<i64>(), vec![1, 3]);
    /// ```
    ///
    /// # Errors
    /// When `dim` is out of range or `k` exceeds its size.
    pub fn try_topk(&self, k: usize, dim: isize, largest: bool) -> Result<(Tensor, Tensor)> {
        let n = if self.rank() == 0 { 1 } else { self.shape().dim(dim)? };
        if k > n {
            return Err(Error::msg(
                "topk",
                format!("k = {k} is larger than dim {dim} of size {n} ({:?})", self.dims()),
            ));
        }
        let (v, i) = self.try_sort(dim, largest)?;
        if self.rank() == 0 {
            return Ok((v, i));
        }
        Ok((v.try_narrow(dim, 0, k)?, i.try_narrow(dim, 0, k)?.contiguous()))
    }

    /// The `k` largest or smallest values and indices; see [`Tensor::try_topk`].
    ///
    /// # Panics
    /// On the errors of [`Tensor::try_topk`].
    #[track_caller]
    pub fn topk(&self, k: usize, dim: isize, largest: bool) -> (Tensor, Tensor) {
        self.try_topk(k, dim, largest).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Cumulative sum along `dim` (PyTorch's `cumsum`; integers and bool
    /// sum into `i64`). Its gradient is the reversed cumulative sum of the
    /// output's gradient.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    /// assert_eq!(x.cumsum(1).to_vec::<f32>(), vec![1.0, 3.0, 3.0, 7.0]);
    /// ```
    ///
    /// # Errors
    /// When `dim` is out of range.
    pub fn try_cumsum(&self, dim: isize) -> Result<Tensor> {
        if !self.dtype().is_float() && self.dtype() != DType::I64 {
            return self.try_to_dtype(DType::I64)?.try_cumsum(dim);
        }
        let (moved, n, d) = self.rows_along("cumsum", dim)?;
        let scan = |v: &mut [f64]| {
            for row in v.chunks_mut(n.max(1)) {
                for i in 1..row.len() {
                    row[i] += row[i - 1];
                }
            }
        };
        let out = if self.dtype() == DType::I64 {
            let mut v = moved.to_vec::<i64>();
            for row in v.chunks_mut(n.max(1)) {
                for i in 1..row.len() {
                    row[i] = row[i].wrapping_add(row[i - 1]);
                }
            }
            Tensor::from_vec(v, moved.shape().clone())
        } else {
            let mut v = moved.to_vec::<f64>();
            scan(&mut v);
            Tensor::from_vec(v, moved.shape().clone()).to_dtype(self.dtype())
        };
        let out = if self.rank() == 0 {
            out.reshape(())
        } else {
            out.try_transpose(d as isize, self.rank() as isize - 1)?.contiguous()
        };
        let out = out.to_device(self.device())?;
        Ok(record(out, "cumsum", &[self], move |_, g| vec![Some(g.flip(&[dim]).cumsum(dim).flip(&[dim]))]))
    }

    panicking!(
        /// Cumulative sum along `dim`; see [`Tensor::try_cumsum`].
        cumsum => try_cumsum(dim: isize) -> Tensor
    );

    /// This tensor with the order of `dims` reversed (PyTorch's `flip`).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]);
    /// assert_eq!(x.flip(&[1]).to_vec::<f32>(), vec![2.0, 1.0, 4.0, 3.0]);
    /// ```
    ///
    /// # Errors
    /// When a dim is out of range or repeated.
    pub fn try_flip(&self, dims: &[isize]) -> Result<Tensor> {
        let mut out = self.clone();
        for d in super::normalize_dims("flip", dims, self.shape())? {
            let n = self.dims()[d] as i64;
            let idx = Tensor::from_vec((0..n).rev().collect::<Vec<i64>>(), [n as usize]).to_device(self.device())?;
            out = out.try_index_select(d as isize, &idx)?;
        }
        Ok(out)
    }

    panicking!(
        /// This tensor with `dims` reversed; see [`Tensor::try_flip`].
        flip => try_flip(dims: &[isize]) -> Tensor
    );

    /// The elements shifted by `shift` places along `dim`, wrapping around
    /// (PyTorch's `roll`; a negative shift moves towards the start).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [4]);
    /// assert_eq!(x.roll(1, 0).to_vec::<f32>(), vec![4.0, 1.0, 2.0, 3.0]);
    /// assert_eq!(x.roll(-1, 0).to_vec::<f32>(), vec![2.0, 3.0, 4.0, 1.0]);
    /// ```
    ///
    /// # Errors
    /// When `dim` is out of range.
    pub fn try_roll(&self, shift: i64, dim: isize) -> Result<Tensor> {
        let d = normalize_dim(dim, self.rank(), "roll", self.shape())?;
        let n = self.dims()[d] as i64;
        if n == 0 {
            return Ok(self.clone());
        }
        let idx: Vec<i64> = (0..n).map(|i| (i - shift).rem_euclid(n)).collect();
        let idx = Tensor::from_vec(idx, [n as usize]).to_device(self.device())?;
        self.try_index_select(d as isize, &idx)
    }

    panicking!(
        /// The elements shifted along `dim`; see [`Tensor::try_roll`].
        roll => try_roll(shift: i64, dim: isize) -> Tensor
    );
}
