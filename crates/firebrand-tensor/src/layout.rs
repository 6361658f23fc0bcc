use crate::{Error, Result, Shape, normalize_dim};

/// How a tensor's elements sit in its buffer: shape, strides (in elements) and
/// the offset of the first element.
///
/// Views (transpose, permute, narrow, broadcast, squeeze, unsqueeze) only
/// change the layout, never the buffer. A stride of 0 repeats an element
/// (broadcasting).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Layout {
    shape: Shape,
    strides: Vec<usize>,
    offset: usize,
}

impl Layout {
    /// Row-major layout starting at offset 0.
    pub fn contiguous(shape: impl Into<Shape>) -> Self {
        let shape = shape.into();
        let strides = shape.contiguous_strides();
        Layout { shape, strides, offset: 0 }
    }

    /// A layout from its parts.
    ///
    /// # Errors
    /// When `strides` has a different rank than `shape`.
    pub fn new(shape: Shape, strides: Vec<usize>, offset: usize) -> Result<Self> {
        if strides.len() != shape.rank() {
            return Err(Error::InvalidShape {
                op: "Layout::new",
                shape,
                msg: format!("strides {strides:?} have another rank"),
            });
        }
        Ok(Layout { shape, strides, offset })
    }

    /// The shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimension sizes.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// Strides in elements.
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// Offset of the first element in the buffer.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.elem_count()
    }

    /// True when the elements are laid out in row-major order without gaps
    /// (dimensions of size 1 may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut acc = 1;
        for (&d, &s) in self.shape.dims().iter().zip(&self.strides).rev() {
            if d != 1 && s != acc {
                return false;
            }
            acc *= d;
        }
        true
    }

    /// For a dense layout whose dimensions are merely reordered (a transposed
    /// or permuted contiguous tensor), the permutation `p` such that
    /// `self.permute(p)` is contiguous. `None` when the layout is already
    /// contiguous, has gaps, or broadcasts.
    ///
    /// Elementwise ops use it to compute in memory order and give their output
    /// the same dimension order, as PyTorch does.
    pub fn dense_permutation(&self) -> Option<Vec<usize>> {
        if self.is_contiguous() || self.shape.rank() < 2 {
            return None;
        }
        let mut perm: Vec<usize> = (0..self.shape.rank()).collect();
        // Larger strides first; size-1 dims go last so they cannot break the order.
        perm.sort_by_key(|&d| (self.shape.dims()[d] == 1, std::cmp::Reverse(self.strides[d])));
        let p = self.permute(&perm).ok()?;
        p.is_contiguous().then_some(perm)
    }

    /// If contiguous, the range of the buffer holding the elements.
    pub fn contiguous_range(&self) -> Option<std::ops::Range<usize>> {
        self.is_contiguous().then(|| self.offset..self.offset + self.elem_count())
    }

    /// Swap two dimensions.
    ///
    /// # Errors
    /// When a dimension is out of range.
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Self> {
        let r = self.shape.rank();
        let a = normalize_dim(d0, r, "transpose", &self.shape)?;
        let b = normalize_dim(d1, r, "transpose", &self.shape)?;
        let mut dims = self.shape.dims().to_vec();
        let mut strides = self.strides.clone();
        dims.swap(a, b);
        strides.swap(a, b);
        Ok(Layout { shape: dims.into(), strides, offset: self.offset })
    }

    /// Reorder dimensions: output dimension `i` is input dimension `perm[i]`.
    ///
    /// # Errors
    /// When `perm` is not a permutation of `0..rank`.
    pub fn permute(&self, perm: &[usize]) -> Result<Self> {
        let r = self.shape.rank();
        let mut seen = vec![false; r];
        if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
            return Err(Error::InvalidShape {
                op: "permute",
                shape: self.shape.clone(),
                msg: format!("{perm:?} is not a permutation of 0..{r}"),
            });
        }
        let dims: Vec<usize> = perm.iter().map(|&p| self.shape.dims()[p]).collect();
        let strides = perm.iter().map(|&p| self.strides[p]).collect();
        Ok(Layout { shape: dims.into(), strides, offset: self.offset })
    }

    /// Keep `len` elements of dimension `dim` starting at `start`.
    ///
    /// # Errors
    /// When the range does not fit.
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Self> {
        let d = normalize_dim(dim, self.shape.rank(), "narrow", &self.shape)?;
        let size = self.shape.dims()[d];
        if start + len > size {
            return Err(Error::InvalidShape {
                op: "narrow",
                shape: self.shape.clone(),
                msg: format!("range {start}..{} exceeds size {size} of dim {d}", start + len),
            });
        }
        let mut dims = self.shape.dims().to_vec();
        dims[d] = len;
        let offset = if len == 0 { self.offset } else { self.offset + start * self.strides[d] };
        Ok(Layout { shape: dims.into(), strides: self.strides.clone(), offset })
    }

    /// Every `step`-th element of dim `dim`, from the first: `⌈n / step⌉`
    /// elements at `step` times the stride (Python's `x[::step]`).
    ///
    /// # Errors
    /// When `dim` is out of range or `step` is 0.
    pub fn step(&self, dim: isize, step: usize) -> Result<Self> {
        let d = normalize_dim(dim, self.shape.rank(), "step", &self.shape)?;
        if step == 0 {
            return Err(Error::InvalidShape {
                op: "step",
                shape: self.shape.clone(),
                msg: "step must be at least 1".into(),
            });
        }
        let mut dims = self.shape.dims().to_vec();
        dims[d] = dims[d].div_ceil(step);
        let mut strides = self.strides.clone();
        strides[d] *= step;
        Ok(Layout { shape: dims.into(), strides, offset: self.offset })
    }

    /// A view with the given shape, broadcasting size-1 (or missing leading)
    /// dimensions with stride 0.
    ///
    /// # Errors
    /// When this shape does not broadcast to `shape`.
    pub fn broadcast_as(&self, shape: &Shape) -> Result<Self> {
        let r = shape.rank();
        let sr = self.shape.rank();
        let err = || Error::ShapeMismatch { op: "broadcast_as", lhs: self.shape.clone(), rhs: shape.clone() };
        if sr > r {
            return Err(err());
        }
        let mut strides = vec![0; r];
        for i in 0..sr {
            let (sd, od) = (self.shape.dims()[sr - 1 - i], shape.dims()[r - 1 - i]);
            strides[r - 1 - i] = if sd == od {
                self.strides[sr - 1 - i]
            } else if sd == 1 {
                0
            } else {
                return Err(err());
            };
        }
        Ok(Layout { shape: shape.clone(), strides, offset: self.offset })
    }

    /// A view of the same elements with another shape, if the strides allow it
    /// without a copy (always true when contiguous). `None` when a copy is needed.
    pub fn reshape(&self, shape: &Shape) -> Option<Self> {
        if self.is_contiguous() {
            return Some(Layout { shape: shape.clone(), strides: shape.contiguous_strides(), offset: self.offset });
        }
        // Split the old dims into groups that are contiguous among themselves and
        // map each new dim onto one group (NumPy's attempt_nocopy_reshape).
        let old: Vec<(usize, usize)> =
            self.shape.dims().iter().zip(&self.strides).filter(|(d, _)| **d != 1).map(|(&d, &s)| (d, s)).collect();
        let new = shape.dims();
        let mut new_strides = vec![0; new.len()];
        let (mut oi, mut ni) = (0, 0);
        while oi < old.len() && ni < new.len() {
            let (mut op, mut np) = (old[oi].0, new[ni]);
            let (oj0, nj0) = (oi, ni);
            while op != np {
                if np < op {
                    ni += 1;
                    np *= *new.get(ni)?;
                } else {
                    oi += 1;
                    op *= old.get(oi)?.0;
                }
            }
            for k in oj0..oi {
                if old[k].1 != old[k + 1].1 * old[k + 1].0 {
                    return None;
                }
            }
            new_strides[ni] = old[oi].1;
            for k in (nj0 + 1..=ni).rev() {
                new_strides[k - 1] = new_strides[k] * new[k];
            }
            oi += 1;
            ni += 1;
        }
        // Remaining new dims must be size 1.
        if new[ni..].iter().any(|&d| d != 1) || oi < old.len() {
            return None;
        }
        Some(Layout { shape: shape.clone(), strides: new_strides, offset: self.offset })
    }

    /// Iterator over buffer indices of the elements in row-major order.
    pub fn strided_index(&self) -> StridedIndex {
        StridedIndex::new(self)
    }
}

/// Row-major iterator over the buffer positions of a [`Layout`]'s elements.
pub struct StridedIndex {
    next: Option<usize>,
    index: Vec<usize>,
    dims: Vec<usize>,
    strides: Vec<usize>,
}

impl StridedIndex {
    fn new(l: &Layout) -> Self {
        let next = (l.elem_count() > 0).then_some(l.offset());
        StridedIndex { next, index: vec![0; l.dims().len()], dims: l.dims().to_vec(), strides: l.strides().to_vec() }
    }
}

impl Iterator for StridedIndex {
    type Item = usize;
    fn next(&mut self) -> Option<usize> {
        let cur = self.next?;
        let mut pos = cur;
        let mut d = self.dims.len();
        loop {
            if d == 0 {
                self.next = None;
                break;
            }
            d -= 1;
            self.index[d] += 1;
            if self.index[d] < self.dims[d] {
                pos += self.strides[d];
                self.next = Some(pos);
                break;
            }
            pos -= (self.dims[d] - 1) * self.strides[d];
            self.index[d] = 0;
        }
        Some(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_index_transpose() {
        let l = Layout::contiguous([2, 3]).transpose(0, 1).unwrap();
        let v: Vec<usize> = l.strided_index().collect();
        assert_eq!(v, vec![0, 3, 1, 4, 2, 5]);
        let empty = Layout::contiguous([0, 3]);
        assert_eq!(empty.strided_index().count(), 0);
        let scalar = Layout::contiguous(());
        assert_eq!(scalar.strided_index().collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn reshape_without_copy() {
        // A narrowed row block stays reshapeable along the untouched dims.
        let l = Layout::contiguous([4, 6]).narrow(0, 1, 2).unwrap();
        let r = l.reshape(&Shape::from([2, 2, 3])).unwrap();
        assert_eq!(r.strides(), &[6, 3, 1]);
        assert_eq!(r.offset(), 6);
        // A transposed matrix cannot be flattened without a copy.
        let t = Layout::contiguous([2, 3]).transpose(0, 1).unwrap();
        assert!(t.reshape(&Shape::from([6])).is_none());
        // ... but splitting one of its dims works.
        let t = Layout::contiguous([2, 4]).transpose(0, 1).unwrap(); // (4, 2) strides (1, 4)
        let r = t.reshape(&Shape::from([2, 2, 2])).unwrap();
        assert_eq!(r.strides(), &[2, 1, 4]);
        let v: Vec<usize> = r.strided_index().collect();
        let w: Vec<usize> = t.strided_index().collect();
        assert_eq!(v, w);
    }

    #[test]
    fn dense_permutations() {
        let l = Layout::contiguous([2, 3, 4]);
        assert_eq!(l.dense_permutation(), None);
        let p = l.permute(&[2, 0, 1]).unwrap();
        let perm = p.dense_permutation().unwrap();
        assert!(p.permute(&perm).unwrap().is_contiguous());
        // Gaps and broadcasts are not dense.
        assert_eq!(l.narrow(2, 0, 2).unwrap().transpose(0, 2).unwrap().dense_permutation(), None);
        assert_eq!(Layout::contiguous([3, 1]).broadcast_as(&Shape::from([3, 4])).unwrap().dense_permutation(), None);
    }

    #[test]
    fn broadcast_and_narrow() {
        let l = Layout::contiguous([3, 1]);
        let b = l.broadcast_as(&Shape::from([2, 3, 4])).unwrap();
        assert_eq!(b.strides(), &[0, 1, 0]);
        assert!(l.broadcast_as(&Shape::from([2, 4])).is_err());
        assert!(Layout::contiguous([3]).narrow(0, 2, 2).is_err());
        assert!(Layout::contiguous([2, 3]).permute(&[0, 0]).is_err());
    }
}
