//! Indexing kernels on contiguous buffers viewed as `(outer, dim, inner)`:
//! index_select, index_add, gather, scatter_add, concatenation, one-hot and
//! `where`.

use firebrand_tensor::pool::{take_f32, zeros_f32};
use firebrand_tensor::{Error, Result};

fn check_index(op: &'static str, i: i64, size: usize) -> Result<usize> {
    if i < 0 || i as usize >= size {
        return Err(Error::IndexOutOfRange { op, index: i, size });
    }
    Ok(i as usize)
}

/// `out[o, k, i] = src[o, idx[k], i]` for `src` of shape `(outer, dim, inner)`.
///
/// # Errors
/// [`Error::IndexOutOfRange`] for an index outside `0..dim`.
pub fn index_select<T: Copy + Default>(
    src: &[T],
    outer: usize,
    dim: usize,
    inner: usize,
    idx: &[i64],
) -> Result<Vec<T>> {
    let idx: Vec<usize> = idx.iter().map(|&i| check_index("index_select", i, dim)).collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(outer * idx.len() * inner);
    for o in 0..outer {
        for &k in &idx {
            let s = (o * dim + k) * inner;
            out.extend_from_slice(&src[s..s + inner]);
        }
    }
    Ok(out)
}

/// `out = zeros(outer, dim, inner); out[o, idx[k], i] += src[o, k, i]`
/// (the backward of [`index_select`]).
///
/// # Errors
/// [`Error::IndexOutOfRange`] for an index outside `0..dim`.
pub fn index_add(src: &[f32], outer: usize, dim: usize, inner: usize, idx: &[i64]) -> Result<Vec<f32>> {
    let idx: Vec<usize> = idx.iter().map(|&i| check_index("index_add", i, dim)).collect::<Result<_>>()?;
    let mut out = zeros_f32(outer * dim * inner);
    for o in 0..outer {
        for (k, &d) in idx.iter().enumerate() {
            let s = (o * idx.len() + k) * inner;
            let t = (o * dim + d) * inner;
            out[t..t + inner].iter_mut().zip(&src[s..s + inner]).for_each(|(a, &b)| *a += b);
        }
    }
    Ok(out)
}

/// `out[o, k, i] = src[o, index[o, k, i], i]` with `src` of shape
/// `(outer, dim, inner)` and `index` of shape `(outer, k, inner)`.
///
/// # Errors
/// [`Error::IndexOutOfRange`] for an index outside `0..dim`.
pub fn gather<T: Copy + Default>(src: &[T], outer: usize, dim: usize, inner: usize, index: &[i64]) -> Result<Vec<T>> {
    let k = index.len().checked_div(outer * inner).unwrap_or(0);
    let mut out = vec![T::default(); index.len()];
    for o in 0..outer {
        for j in 0..k {
            for i in 0..inner {
                let p = (o * k + j) * inner + i;
                let d = check_index("gather", index[p], dim)?;
                out[p] = src[(o * dim + d) * inner + i];
            }
        }
    }
    Ok(out)
}

/// `out = zeros(outer, dim, inner); out[o, index[o, k, i], i] += src[o, k, i]`
/// (scatter-add, the backward of [`gather`]).
///
/// # Errors
/// [`Error::IndexOutOfRange`] for an index outside `0..dim`.
pub fn scatter_add(src: &[f32], outer: usize, dim: usize, inner: usize, index: &[i64]) -> Result<Vec<f32>> {
    let k = index.len().checked_div(outer * inner).unwrap_or(0);
    let mut out = zeros_f32(outer * dim * inner);
    for o in 0..outer {
        for j in 0..k {
            for i in 0..inner {
                let p = (o * k + j) * inner + i;
                let d = check_index("scatter_add", index[p], dim)?;
                out[(o * dim + d) * inner + i] += src[p];
            }
        }
    }
    Ok(out)
}

/// Concatenates contiguous parts of shapes `(outer, dims[j], inner)` along the
/// middle axis.
pub fn concat<T: Copy>(parts: &[&[T]], outer: usize, dims: &[usize], inner: usize) -> Vec<T> {
    let total: usize = dims.iter().sum();
    let mut out = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for (p, &d) in parts.iter().zip(dims) {
            out.extend_from_slice(&p[o * d * inner..(o + 1) * d * inner]);
        }
    }
    out
}

/// [`concat()`] for `f32`, its output taken from the buffer pool (a stack of
/// many steps' outputs is megabytes, and fresh pages fault on first touch).
pub fn concat_f32(parts: &[&[f32]], outer: usize, dims: &[usize], inner: usize) -> Vec<f32> {
    let total: usize = dims.iter().sum();
    let mut out = take_f32(outer * total * inner);
    let mut pos = 0;
    for o in 0..outer {
        for (p, &d) in parts.iter().zip(dims) {
            out[pos..pos + d * inner].copy_from_slice(&p[o * d * inner..(o + 1) * d * inner]);
            pos += d * inner;
        }
    }
    out
}

/// One-hot rows: `out[i, c] = 1.0` where `c == idx[i]`.
///
/// # Errors
/// [`Error::IndexOutOfRange`] for an index outside `0..classes`.
pub fn one_hot(idx: &[i64], classes: usize) -> Result<Vec<f32>> {
    let mut out = zeros_f32(idx.len() * classes);
    for (row, &i) in idx.iter().enumerate() {
        out[row * classes + check_index("one_hot", i, classes)?] = 1.0;
    }
    Ok(out)
}

/// `out[i] = if cond[i] != 0 { a[i] } else { b[i] }` on equal-length buffers.
pub fn where_select(cond: &[f32], a: &[f32], b: &[f32]) -> Vec<f32> {
    cond.iter().zip(a).zip(b).map(|((&c, &a), &b)| if c != 0.0 { a } else { b }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_and_add_are_adjoint() {
        // (outer=2, dim=3, inner=2)
        let src: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let idx = [2i64, 0, 2];
        let out = index_select(&src, 2, 3, 2, &idx).unwrap();
        assert_eq!(out, vec![4., 5., 0., 1., 4., 5., 10., 11., 6., 7., 10., 11.]);
        let back = index_add(&out, 2, 3, 2, &idx).unwrap();
        assert_eq!(back, vec![0., 1., 0., 0., 8., 10., 6., 7., 0., 0., 20., 22.]);
        assert_eq!(
            index_select(&src, 2, 3, 2, &[3]).unwrap_err().to_string(),
            "index_select: index 3 out of range for size 3"
        );
        assert!(index_select(&src, 2, 3, 2, &[-1]).is_err());
    }

    #[test]
    fn gather_scatter() {
        // src (outer=1, dim=3, inner=2) = [[0,1],[2,3],[4,5]], index (1, 2, 2)
        let src = [0.0f32, 1., 2., 3., 4., 5.];
        let index = [2i64, 0, 1, 1];
        assert_eq!(gather(&src, 1, 3, 2, &index).unwrap(), vec![4., 1., 2., 3.]);
        let s = scatter_add(&[1.0, 2.0, 3.0, 4.0], 1, 3, 2, &index).unwrap();
        assert_eq!(s, vec![0., 2., 3., 4., 1., 0.]);
        assert!(gather(&src, 1, 3, 2, &[0, 0, 0, 3]).is_err());
    }

    #[test]
    fn concat_one_hot_where() {
        let a = [1, 2, 3, 4]; // (2, 1, 2)
        let b = [5, 6, 7, 8, 9, 10, 11, 12]; // (2, 2, 2)
        assert_eq!(concat(&[&a, &b], 2, &[1, 2], 2), vec![1, 2, 5, 6, 7, 8, 3, 4, 9, 10, 11, 12]);
        assert_eq!(one_hot(&[1, 0], 3).unwrap(), vec![0., 1., 0., 1., 0., 0.]);
        assert!(one_hot(&[3], 3).is_err());
        assert_eq!(where_select(&[1.0, 0.0], &[1.0, 2.0], &[3.0, 4.0]), vec![1.0, 4.0]);
    }
}
