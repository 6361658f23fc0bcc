use crate::{Error, Result};

/// The sizes of a tensor's dimensions, known at run time.
///
/// ```
/// use firebrand_tensor::Shape;
/// let s = Shape::from([2, 3, 4]);
/// assert_eq!(s.rank(), 3);
/// assert_eq!(s.elem_count(), 24);
/// assert_eq!(s.contiguous_strides(), vec![12, 4, 1]);
/// let b = Shape::from([3, 1]).broadcast_with(&Shape::from([4]), "add").unwrap();
/// assert_eq!(b.dims(), &[3, 4]);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Shape {
    /// The dimension sizes.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for a scalar).
    pub fn elem_count(&self) -> usize {
        self.0.iter().product()
    }

    /// Row-major (C order) strides for this shape.
    pub fn contiguous_strides(&self) -> Vec<usize> {
        let mut strides = vec![0; self.0.len()];
        let mut acc = 1;
        for (s, &d) in strides.iter_mut().zip(&self.0).rev() {
            *s = acc;
            acc *= d;
        }
        strides
    }

    /// Size of dimension `dim` (negative counts from the end).
    ///
    /// # Errors
    /// [`Error::DimOutOfRange`] when `dim` is outside `-rank..rank`.
    pub fn dim(&self, dim: isize) -> Result<usize> {
        Ok(self.0[normalize_dim(dim, self.rank(), "dim", self)?])
    }

    /// The NumPy broadcast of two shapes: dimensions are aligned from the right
    /// and each pair must be equal or contain a 1.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] naming `op` when the shapes do not broadcast.
    pub fn broadcast_with(&self, other: &Shape, op: &'static str) -> Result<Shape> {
        let rank = self.rank().max(other.rank());
        let mut out = vec![0; rank];
        for i in 0..rank {
            let a = if i < self.rank() { self.0[self.rank() - 1 - i] } else { 1 };
            let b = if i < other.rank() { other.0[other.rank() - 1 - i] } else { 1 };
            out[rank - 1 - i] = if a == b || b == 1 {
                a
            } else if a == 1 {
                b
            } else {
                return Err(Error::ShapeMismatch { op, lhs: self.clone(), rhs: other.clone() });
            };
        }
        Ok(Shape(out))
    }

    /// Consumes the shape, returning its dimension sizes.
    pub fn into_dims(self) -> Vec<usize> {
        self.0
    }
}

/// Turns a possibly negative dimension index into `0..rank`.
///
/// # Errors
/// [`Error::DimOutOfRange`] when `dim` is outside `-rank..rank`.
pub fn normalize_dim(dim: isize, rank: usize, op: &'static str, shape: &Shape) -> Result<usize> {
    let r = rank as isize;
    let d = if dim < 0 { dim + r } else { dim };
    if d < 0 || d >= r {
        return Err(Error::DimOutOfRange { op, dim, shape: shape.clone() });
    }
    Ok(d as usize)
}

impl From<Vec<usize>> for Shape {
    fn from(v: Vec<usize>) -> Self {
        Shape(v)
    }
}

impl From<&[usize]> for Shape {
    fn from(v: &[usize]) -> Self {
        Shape(v.to_vec())
    }
}

impl From<&Vec<usize>> for Shape {
    fn from(v: &Vec<usize>) -> Self {
        Shape(v.clone())
    }
}

impl<const N: usize> From<[usize; N]> for Shape {
    fn from(v: [usize; N]) -> Self {
        Shape(v.to_vec())
    }
}

impl<const N: usize> From<&[usize; N]> for Shape {
    fn from(v: &[usize; N]) -> Self {
        Shape(v.to_vec())
    }
}

impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

impl From<()> for Shape {
    fn from(_: ()) -> Self {
        Shape(vec![])
    }
}

impl From<usize> for Shape {
    fn from(d: usize) -> Self {
        Shape(vec![d])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_rules() {
        let s = |d: &[usize]| Shape::from(d);
        assert_eq!(s(&[2, 1, 4]).broadcast_with(&s(&[3, 1]), "t").unwrap(), s(&[2, 3, 4]));
        assert_eq!(s(&[]).broadcast_with(&s(&[5]), "t").unwrap(), s(&[5]));
        assert_eq!(s(&[0, 1]).broadcast_with(&s(&[3]), "t").unwrap(), s(&[0, 3]));
        let e = s(&[2, 3]).broadcast_with(&s(&[4]), "add").unwrap_err();
        assert_eq!(e.to_string(), "add: shape mismatch between [2, 3] and [4]");
    }

    #[test]
    fn negative_dims() {
        let sh = Shape::from([2, 3]);
        assert_eq!(sh.dim(-1).unwrap(), 3);
        assert_eq!(sh.dim(0).unwrap(), 2);
        assert!(sh.dim(2).is_err());
        assert!(sh.dim(-3).is_err());
    }
}
