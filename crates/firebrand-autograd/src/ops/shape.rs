//! Shape ops written from the view primitives: `expand`, `repeat`,
//! `split`, `view`, `pad`, and indexing with ranges and negative indices
//! ([`Tensor::i`]). Their gradients come from the views, `cat` and
//! `index_select` they are made of.

use super::panicking;
use crate::tensor::Tensor;
use firebrand_tensor::{Error, Result, Shape, normalize_dim};

/// One entry of an index expression for [`Tensor::i`]: a position (negative
/// counts from the end; removes the dim), or a range with a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorIndex {
    /// One position (negative: from the end); the dim is removed.
    At(isize),
    /// `start..end` by `step` (negative bounds from the end; `None` = to the end).
    Range {
        /// First position.
        start: isize,
        /// One past the last, or the end.
        end: Option<isize>,
        /// Distance between taken positions (at least 1).
        step: usize,
    },
}

impl TensorIndex {
    /// `start..end` taking every `step`-th position (Python's `start:end:step`).
    pub fn step(start: isize, end: Option<isize>, step: usize) -> Self {
        TensorIndex::Range { start, end, step }
    }
}

impl From<isize> for TensorIndex {
    fn from(i: isize) -> Self {
        TensorIndex::At(i)
    }
}
impl From<i32> for TensorIndex {
    fn from(i: i32) -> Self {
        TensorIndex::At(i as isize)
    }
}
impl From<std::ops::RangeFull> for TensorIndex {
    fn from(_: std::ops::RangeFull) -> Self {
        TensorIndex::Range { start: 0, end: None, step: 1 }
    }
}
impl From<std::ops::Range<isize>> for TensorIndex {
    fn from(r: std::ops::Range<isize>) -> Self {
        TensorIndex::Range { start: r.start, end: Some(r.end), step: 1 }
    }
}
impl From<std::ops::Range<i32>> for TensorIndex {
    fn from(r: std::ops::Range<i32>) -> Self {
        TensorIndex::Range { start: r.start as isize, end: Some(r.end as isize), step: 1 }
    }
}
impl From<std::ops::RangeFrom<isize>> for TensorIndex {
    fn from(r: std::ops::RangeFrom<isize>) -> Self {
        TensorIndex::Range { start: r.start, end: None, step: 1 }
    }
}
impl From<std::ops::RangeFrom<i32>> for TensorIndex {
    fn from(r: std::ops::RangeFrom<i32>) -> Self {
        TensorIndex::Range { start: r.start as isize, end: None, step: 1 }
    }
}
impl From<std::ops::RangeTo<isize>> for TensorIndex {
    fn from(r: std::ops::RangeTo<isize>) -> Self {
        TensorIndex::Range { start: 0, end: Some(r.end), step: 1 }
    }
}
impl From<std::ops::RangeTo<i32>> for TensorIndex {
    fn from(r: std::ops::RangeTo<i32>) -> Self {
        TensorIndex::Range { start: 0, end: Some(r.end as isize), step: 1 }
    }
}

/// An index expression: one [`TensorIndex`] or a tuple of them (one per
/// leading dim; the dims after them are kept whole).
pub trait IndexExpr {
    /// The entries, first dim first.
    fn entries(self) -> Vec<TensorIndex>;
}

impl<T: Into<TensorIndex>> IndexExpr for T {
    fn entries(self) -> Vec<TensorIndex> {
        vec![self.into()]
    }
}

macro_rules! tuple_index {
    ($($t:ident),*) => {
        #[allow(non_snake_case)]
        impl<$($t: Into<TensorIndex>),*> IndexExpr for ($($t,)*) {
            fn entries(self) -> Vec<TensorIndex> {
                let ($($t,)*) = self;
                vec![$($t.into()),*]
            }
        }
    };
}
tuple_index!(A);
tuple_index!(A, B);
tuple_index!(A, B, C);
tuple_index!(A, B, C, D);
tuple_index!(A, B, C, D, E);

/// How [`Tensor::pad_mode`] fills the border (PyTorch's `F.pad` modes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PadMode {
    /// A constant value.
    Constant(f32),
    /// The mirror image, not repeating the edge.
    Reflect,
    /// The edge value repeated.
    Replicate,
}

/// A position `i` (negative from the end) clamped into `0..=n` (Python's slice rule).
fn clamp_bound(i: isize, n: usize) -> usize {
    let i = if i < 0 { i + n as isize } else { i };
    i.clamp(0, n as isize) as usize
}

impl Tensor {
    /// Indexing with positions, ranges and negative indices, as in PyTorch's
    /// `x[1, :, -2:]`. Ranges give views, stepped ones too (no copy);
    /// positions remove their dim. Differentiable.
    ///
    /// ```
    /// use firebrand_autograd::{Tensor, TensorIndex};
    /// let x = Tensor::arange(0.0, 12.0, 1.0).reshape([3, 4]);
    /// assert_eq!(x.i((1, ..)).to_vec::<f32>(), vec![4.0, 5.0, 6.0, 7.0]);      // x[1, :]
    /// assert_eq!(x.i((.., -1)).to_vec::<f32>(), vec![3.0, 7.0, 11.0]);          // x[:, -1]
    /// assert_eq!(x.i((1..3, 2..)).to_vec::<f32>(), vec![6.0, 7.0, 10.0, 11.0]); // x[1:3, 2:]
    /// assert_eq!(x.i((-1, TensorIndex::step(0, None, 2))).to_vec::<f32>(), vec![8.0, 10.0]); // x[-1, ::2]
    /// ```
    ///
    /// # Errors
    /// When there are more entries than dims, a position is out of range, or a step is 0.
    pub fn try_i(&self, index: impl IndexExpr) -> Result<Tensor> {
        let entries = index.entries();
        if entries.len() > self.rank() {
            return Err(Error::msg(
                "index",
                format!("{} indices for a tensor of shape {:?}", entries.len(), self.dims()),
            ));
        }
        let mut out = self.clone();
        let mut d = 0usize; // the dim of `out` the next entry applies to
        for e in entries {
            let n = out.dims()[d];
            match e {
                TensorIndex::At(i) => {
                    let j = if i < 0 { i + n as isize } else { i };
                    if j < 0 || j as usize >= n {
                        return Err(Error::IndexOutOfRange { op: "index", index: i as i64, size: n });
                    }
                    out = out.try_select(d as isize, j as usize)?;
                }
                TensorIndex::Range { start, end, step } => {
                    if step == 0 {
                        return Err(Error::msg("index", "slice step must be at least 1"));
                    }
                    let (s, e) = (clamp_bound(start, n), end.map_or(n, |e| clamp_bound(e, n)));
                    let len = e.saturating_sub(s);
                    out = out.try_narrow(d as isize, s, len)?;
                    if step > 1 {
                        out = out.step_view(d, step)?;
                    }
                    d += 1;
                }
            }
        }
        Ok(out)
    }

    /// Indexing with positions and ranges; see [`Tensor::try_i`].
    ///
    /// # Panics
    /// On the errors of [`Tensor::try_i`].
    #[track_caller]
    pub fn i(&self, index: impl IndexExpr) -> Tensor {
        self.try_i(index).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every `step`-th element of dim `d` as a strided view (no copy); the
    /// gradient goes back to those positions (`index_add` into zeros).
    fn step_view(&self, d: usize, step: usize) -> Result<Tensor> {
        let n = self.dims()[d];
        let out = self.view_with(self.layout().step(d as isize, step)?);
        Ok(crate::ops::record(out, "index", &[self], move |_, g| {
            let picks: Vec<i64> = (0..n).step_by(step).map(|k| k as i64).collect();
            let k = picks.len();
            let idx = Tensor::from_vec(picks, [k]).to_device(g.device()).expect("own device");
            vec![Some(g.index_add_zeros(d, &idx, n))]
        }))
    }

    /// Sizes with one `-1` inferred from the element count (for `view`/`expand`).
    fn infer_dims(&self, op: &'static str, dims: &[isize]) -> Result<Vec<usize>> {
        let known: usize = dims.iter().filter(|&&d| d >= 0).map(|&d| d as usize).product();
        let holes = dims.iter().filter(|&&d| d == -1).count();
        let bad = || Error::msg(op, format!("cannot view shape {:?} as {dims:?}", self.dims()));
        if holes > 1 || dims.iter().any(|&d| d < -1) {
            return Err(bad());
        }
        dims.iter()
            .map(|&d| {
                if d >= 0 {
                    Ok(d as usize)
                } else if known > 0 && self.elem_count().is_multiple_of(known) {
                    Ok(self.elem_count() / known)
                } else {
                    Err(bad())
                }
            })
            .collect()
    }

    /// The same elements with another shape, without a copy (PyTorch's
    /// `view`; one size may be `-1`). Unlike [`Tensor::reshape`] it refuses
    /// a layout that cannot be reinterpreted, e.g. a transposed tensor.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::zeros([2, 6]);
    /// assert_eq!(x.view(&[3, -1]).dims(), &[3, 4]);
    /// assert!(x.t().try_view(&[12]).is_err());
    /// ```
    ///
    /// # Errors
    /// When the element counts differ or the layout is not contiguous.
    pub fn try_view(&self, dims: &[isize]) -> Result<Tensor> {
        let dims = self.infer_dims("view", dims)?;
        if !self.is_contiguous() {
            return Err(Error::msg(
                "view",
                format!("a non-contiguous tensor of shape {:?} cannot be viewed; use reshape (it copies)", self.dims()),
            ));
        }
        self.try_reshape(dims)
    }

    panicking!(
        /// Another shape without a copy; see [`Tensor::try_view`].
        view => try_view(dims: &[isize]) -> Tensor
    );

    /// This tensor broadcast to `dims` without a copy (PyTorch's `expand`;
    /// `-1` keeps a size; new dims go in front).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0], [2, 1]);
    /// assert_eq!(x.expand(&[-1, 3]).to_vec::<f32>(), vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    /// ```
    ///
    /// # Errors
    /// When a size of more than 1 would have to change.
    pub fn try_expand(&self, dims: &[isize]) -> Result<Tensor> {
        let lead = dims.len().checked_sub(self.rank()).ok_or_else(|| {
            Error::msg("expand", format!("{} sizes for a tensor of shape {:?}", dims.len(), self.dims()))
        })?;
        let sizes: Vec<usize> = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| if d == -1 && i >= lead { self.dims()[i - lead] } else { d.max(0) as usize })
            .collect();
        self.try_broadcast_to(sizes)
    }

    panicking!(
        /// This tensor broadcast to `dims`; see [`Tensor::try_expand`].
        expand => try_expand(dims: &[isize]) -> Tensor
    );

    /// This tensor tiled `reps[i]` times along each dim (PyTorch's
    /// `repeat`; extra leading reps add dims).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0], [2]);
    /// assert_eq!(x.repeat(&[2]).to_vec::<f32>(), vec![1.0, 2.0, 1.0, 2.0]);
    /// assert_eq!(x.repeat(&[2, 1]).dims(), &[2, 2]);
    /// ```
    ///
    /// # Errors
    /// When there are fewer reps than dims.
    pub fn try_repeat(&self, reps: &[usize]) -> Result<Tensor> {
        let lead = reps.len().checked_sub(self.rank()).ok_or_else(|| {
            Error::msg("repeat", format!("{} repeats for a tensor of shape {:?}", reps.len(), self.dims()))
        })?;
        let dims: Vec<usize> = std::iter::repeat_n(1, lead).chain(self.dims().iter().copied()).collect();
        // (d0, d1, ...) -> (1, d0, 1, d1, ...) broadcast to (r0, d0, r1, d1, ...).
        let inter: Vec<usize> = dims.iter().flat_map(|&d| [1, d]).collect();
        let big: Vec<usize> = dims.iter().zip(reps).flat_map(|(&d, &r)| [r, d]).collect();
        let out: Vec<usize> = dims.iter().zip(reps).map(|(&d, &r)| d * r).collect();
        self.try_reshape(inter)?.try_broadcast_to(big)?.contiguous().try_reshape(out)
    }

    panicking!(
        /// This tensor tiled along each dim; see [`Tensor::try_repeat`].
        repeat => try_repeat(reps: &[usize]) -> Tensor
    );

    /// Pieces of `size` along `dim` (the last may be smaller), as views
    /// (PyTorch's `split` with an int).
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let parts = Tensor::arange(0.0, 5.0, 1.0).split(2, 0);
    /// assert_eq!(parts.iter().map(|p| p.dims()[0]).collect::<Vec<_>>(), vec![2, 2, 1]);
    /// ```
    ///
    /// # Errors
    /// When `dim` is out of range or `size` is 0.
    pub fn try_split(&self, size: usize, dim: isize) -> Result<Vec<Tensor>> {
        let d = normalize_dim(dim, self.rank(), "split", self.shape())?;
        if size == 0 {
            return Err(Error::msg("split", "split size must be at least 1"));
        }
        let n = self.dims()[d];
        let sizes: Vec<usize> = (0..n).step_by(size).map(|s| size.min(n - s)).collect();
        self.try_split_with_sizes(&sizes, dim)
    }

    panicking!(
        /// Pieces of `size` along `dim`; see [`Tensor::try_split`].
        split => try_split(size: usize, dim: isize) -> Vec<Tensor>
    );

    /// Pieces of the given sizes along `dim`, as views.
    ///
    /// # Errors
    /// When the sizes do not add up to the dim's size.
    pub fn try_split_with_sizes(&self, sizes: &[usize], dim: isize) -> Result<Vec<Tensor>> {
        let d = normalize_dim(dim, self.rank(), "split", self.shape())?;
        if sizes.iter().sum::<usize>() != self.dims()[d] {
            return Err(Error::msg(
                "split",
                format!("sizes {sizes:?} do not add up to dim {dim} of {:?}", self.dims()),
            ));
        }
        let mut start = 0;
        sizes
            .iter()
            .map(|&s| {
                let part = self.try_narrow(d as isize, start, s);
                start += s;
                part
            })
            .collect()
    }

    panicking!(
        /// Pieces of the given sizes along `dim`; see [`Tensor::try_split_with_sizes`].
        split_with_sizes => try_split_with_sizes(sizes: &[usize], dim: isize) -> Vec<Tensor>
    );

    /// `pad` as `F.pad` takes it: `(before, after)` pairs, at most one per dim.
    fn check_pad(&self, pad: &[usize]) -> Result<()> {
        if !pad.len().is_multiple_of(2) || pad.len() / 2 > self.rank() {
            return Err(Error::msg("pad", format!("padding {pad:?} for a tensor of shape {:?}", self.dims())));
        }
        Ok(())
    }

    /// Constant padding, PyTorch's `F.pad(x, pad, value=value)`: `pad`
    /// holds `(before, after)` pairs from the last dim backwards, e.g.
    /// `[left, right, top, bottom]` for images. Asymmetric padding (TF's
    /// "SAME" at stride 2) is `[0, 1, 0, 1]`.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::ones([1, 2]);
    /// let y = x.pad(&[1, 2], 0.0);
    /// assert_eq!(y.to_vec::<f32>(), vec![0.0, 1.0, 1.0, 0.0, 0.0]);
    /// assert_eq!(Tensor::ones([2, 2]).pad(&[0, 1, 0, 1], 0.0).dims(), &[3, 3]);
    /// ```
    ///
    /// # Errors
    /// When `pad` has an odd length or more pairs than the tensor has dims.
    pub fn try_pad(&self, pad: &[usize], value: f32) -> Result<Tensor> {
        self.check_pad(pad)?;
        let mut out = self.clone();
        for (k, pair) in pad.chunks(2).enumerate() {
            let d = self.rank() - 1 - k;
            let block = |n: usize, like: &Tensor| -> Result<Tensor> {
                let mut dims = like.dims().to_vec();
                dims[d] = n;
                Tensor::full_dtype(value as f64, Shape::from(dims), like.dtype()).to_device(like.device())
            };
            let parts = [
                (pair[0] > 0).then(|| block(pair[0], &out)).transpose()?,
                Some(out.clone()),
                (pair[1] > 0).then(|| block(pair[1], &out)).transpose()?,
            ];
            let parts: Vec<&Tensor> = parts.iter().flatten().collect();
            if parts.len() > 1 {
                out = Tensor::try_cat(&parts, d as isize)?;
            }
        }
        Ok(out)
    }

    panicking!(
        /// Constant padding; see [`Tensor::try_pad`].
        pad => try_pad(pad: &[usize], value: f32) -> Tensor
    );

    /// Padding in any [`PadMode`], PyTorch's `F.pad(x, pad, mode)`: `pad`
    /// holds `(before, after)` pairs from the last dim backwards. Reflect
    /// mirrors without repeating the edge (`[1, 2, 3]` padded by 2 on the left
    /// gives `[3, 2, 1, 2, 3]`); replicate repeats the edge. Differentiable:
    /// the padding's gradient flows back to the elements it copied.
    ///
    /// ```
    /// use firebrand_autograd::{PadMode, Tensor};
    /// let x = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [1, 3]);
    /// assert_eq!(x.pad_mode(&[2, 1], PadMode::Reflect).to_vec::<f32>(), vec![3.0, 2.0, 1.0, 2.0, 3.0, 2.0]);
    /// assert_eq!(x.pad_mode(&[2, 1], PadMode::Replicate).to_vec::<f32>(), vec![1.0, 1.0, 1.0, 2.0, 3.0, 3.0]);
    /// ```
    ///
    /// # Errors
    /// When `pad` has an odd length or more pairs than the tensor has dims,
    /// or a reflect padding is not smaller than its dim.
    pub fn try_pad_mode(&self, pad: &[usize], mode: PadMode) -> Result<Tensor> {
        if let PadMode::Constant(v) = mode {
            return self.try_pad(pad, v);
        }
        self.check_pad(pad)?;
        let mut out = self.clone();
        for (k, pair) in pad.chunks(2).enumerate() {
            let d = self.rank() - 1 - k;
            let n = self.dims()[d];
            let (before, after) = (pair[0], pair[1]);
            if before == 0 && after == 0 {
                continue;
            }
            if mode == PadMode::Reflect && (before >= n || after >= n) {
                return Err(Error::msg(
                    "pad",
                    format!("reflect padding ({before}, {after}) must be smaller than dim {d} of size {n}"),
                ));
            }
            if n == 0 {
                return Err(Error::msg("pad", format!("cannot {mode:?}-pad an empty dim {d}")));
            }
            // Source position of every output position along `d`.
            let src = |i: isize| -> i64 {
                let last = n as isize - 1;
                let j = match mode {
                    PadMode::Reflect if i < 0 => -i,
                    PadMode::Reflect if i > last => 2 * last - i,
                    _ => i.clamp(0, last),
                };
                j as i64
            };
            let idx: Vec<i64> = (-(before as isize)..(n + after) as isize).map(src).collect();
            let len = idx.len();
            out = out.try_index_select(d as isize, &Tensor::from_vec(idx, [len]).to_device(self.device())?)?;
        }
        Ok(out)
    }

    panicking!(
        /// Padding in any mode; see [`Tensor::try_pad_mode`].
        pad_mode => try_pad_mode(pad: &[usize], mode: PadMode) -> Tensor
    );
}
