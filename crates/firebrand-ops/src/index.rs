//! Indexing kernels on contiguous buffers viewed as `(outer, dim, inner)`:
//! index_select, index_add, gather, scatter_add, concatenation, one-hot and
//! `where`.

use crate::strided::contiguous_into;
use firebrand_tensor::pool::{take_f32, zeros_f32};
use firebrand_tensor::{Error, Layout, Result};

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
pub fn index_select<T: Copy + Default + Send + Sync>(
    src: &[T],
    outer: usize,
    dim: usize,
    inner: usize,
    idx: &[i64],
) -> Result<Vec<T>> {
    index_select_into(vec![T::default(); outer * idx.len() * inner], src, outer, dim, inner, idx)
}

/// [`index_select`] for `f32`, its output from the buffer pool (a gathered
/// batch of embedding rows is megabytes).
///
/// # Errors
/// [`Error::IndexOutOfRange`] for an index outside `0..dim`.
pub fn index_select_f32(src: &[f32], outer: usize, dim: usize, inner: usize, idx: &[i64]) -> Result<Vec<f32>> {
    index_select_into(take_f32(outer * idx.len() * inner), src, outer, dim, inner, idx)
}

/// Rows copied in parallel when the output is large.
fn index_select_into<T: Copy + Send + Sync>(
    mut out: Vec<T>,
    src: &[T],
    outer: usize,
    dim: usize,
    inner: usize,
    idx: &[i64],
) -> Result<Vec<T>> {
    let idx: Vec<usize> = idx.iter().map(|&i| check_index("index_select", i, dim)).collect::<Result<_>>()?;
    let n = idx.len();
    if outer * n * inner == 0 {
        return Ok(out);
    }
    crate::parallel::for_rows(&mut out, inner, |r0, chunk| {
        for (r, row) in chunk.chunks_exact_mut(inner).enumerate() {
            let (o, k) = ((r0 + r) / n, (r0 + r) % n);
            let s = (o * dim + idx[k]) * inner;
            row.copy_from_slice(&src[s..s + inner]);
        }
    });
    Ok(out)
}

/// `out = zeros(outer, dim, inner); out[o, idx[k], i] += src[o, k, i]`
/// (the backward of [`index_select`]). Blocks of columns go to the threads,
/// each adding every row's part of its block, so no two write one place; the
/// rows add in index order, whatever the threads.
///
/// # Errors
/// [`Error::IndexOutOfRange`] for an index outside `0..dim`.
pub fn index_add(src: &[f32], outer: usize, dim: usize, inner: usize, idx: &[i64]) -> Result<Vec<f32>> {
    let idx: Vec<usize> = idx.iter().map(|&i| check_index("index_add", i, dim)).collect::<Result<_>>()?;
    let mut out = zeros_f32(outer * dim * inner);
    let n = idx.len();
    let threads = crate::parallel::num_threads();
    let blocks = if outer * n * inner >= crate::parallel::PAR_MIN_ELEMS { threads.min(inner.div_ceil(16)) } else { 1 };
    let width = inner.div_ceil(blocks.max(1)).next_multiple_of(16).min(inner.max(1));
    let dst = crate::parallel::SendPtr(out.as_mut_ptr());
    crate::parallel::par_for(inner.div_ceil(width), |blk| {
        let (c0, c1) = (blk * width, ((blk + 1) * width).min(inner));
        for o in 0..outer {
            for (k, &d) in idx.iter().enumerate() {
                let s = (o * n + k) * inner;
                let t = (o * dim + d) * inner;
                // SAFETY: columns c0..c1 of output row (o, d), inside `out`; only
                // this task writes those columns, and no other slice of them is live.
                let row = unsafe { std::slice::from_raw_parts_mut(dst.get().add(t + c0), c1 - c0) };
                add_assign(row, &src[s + c0..s + c1]);
            }
        }
    });
    Ok(out)
}

crate::elem::simd_fn!(
    /// `out += x`.
    fn add_assign(out: &mut [f32], x: &[f32]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o += v;
        }
    }
);

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

/// Concatenates parts of shapes `(outer, dims[j], inner)` along the middle
/// axis. Each part is read through its layout, so a strided view (a `narrow`
/// or a transposed block) is copied once, straight into the output: when
/// `outer == 1` (a `stack` along dim 0, for one) each part's destination is one
/// contiguous run; otherwise a strided part is first made contiguous.
pub fn concat<T: Copy + Default + Send + Sync>(
    parts: &[(&[T], &Layout)],
    outer: usize,
    dims: &[usize],
    inner: usize,
) -> Vec<T> {
    let total: usize = dims.iter().sum();
    concat_into(vec![T::default(); outer * total * inner], parts, outer, dims, inner)
}

/// [`concat()`] for `f32`, its output taken from the buffer pool (a stack of
/// many steps' outputs is megabytes, and fresh pages fault on first touch).
pub fn concat_f32(parts: &[(&[f32], &Layout)], outer: usize, dims: &[usize], inner: usize) -> Vec<f32> {
    let total: usize = dims.iter().sum();
    concat_into(take_f32(outer * total * inner), parts, outer, dims, inner)
}

fn concat_into<T: Copy + Default + Send + Sync>(
    mut out: Vec<T>,
    parts: &[(&[T], &Layout)],
    outer: usize,
    dims: &[usize],
    inner: usize,
) -> Vec<T> {
    assert_eq!(parts.len(), dims.len(), "concat: one size per part");
    if outer == 1 {
        // Each part's destination is one run: the parts are copied in parallel
        // (a stack of a recurrence's steps is megabytes).
        let starts: Vec<usize> =
            dims.iter().scan(0, |pos, &d| Some(std::mem::replace(pos, *pos + d * inner))).collect();
        let dst = crate::parallel::SendPtr(out.as_mut_ptr());
        let copy = |j: usize| {
            let (src, layout) = parts[j];
            // SAFETY: part j's run starts[j]..+dims[j]·inner lies inside `out`,
            // and the runs of different parts are disjoint.
            let run = unsafe { std::slice::from_raw_parts_mut(dst.get().add(starts[j]), dims[j] * inner) };
            contiguous_into(src, layout, run);
        };
        if out.len() >= crate::parallel::PAR_MIN_ELEMS {
            crate::parallel::par_for(parts.len(), copy);
        } else {
            (0..parts.len()).for_each(copy);
        }
        return out;
    }
    let dense: Vec<std::borrow::Cow<[T]>> = parts
        .iter()
        .map(|&(src, l)| match l.contiguous_range() {
            Some(r) => std::borrow::Cow::Borrowed(&src[r]),
            None => {
                let mut v = vec![T::default(); l.elem_count()];
                contiguous_into(src, l, &mut v);
                std::borrow::Cow::Owned(v)
            }
        })
        .collect();
    let mut pos = 0;
    for o in 0..outer {
        for (p, &d) in dense.iter().zip(dims) {
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
        let (la, lb) = (Layout::contiguous([2, 1, 2]), Layout::contiguous([2, 2, 2]));
        assert_eq!(concat(&[(&a, &la), (&b, &lb)], 2, &[1, 2], 2), vec![1, 2, 5, 6, 7, 8, 3, 4, 9, 10, 11, 12]);
        // Strided parts: a transposed (2, 2) block and a narrowed (1, 3) row,
        // at outer == 1 (written in place) and outer > 1 (copied first).
        let m = [1, 2, 3, 4, 5, 6]; // (2, 3)
        let t = Layout::contiguous([2, 3]).narrow(1, 1, 2).unwrap().transpose(0, 1).unwrap(); // [[2, 5], [3, 6]]
        let row = Layout::contiguous([2, 3]).narrow(0, 1, 1).unwrap(); // [[4, 5, 6]]
        assert_eq!(concat(&[(&m, &t), (&m, &row)], 1, &[4, 3], 1), vec![2, 5, 3, 6, 4, 5, 6]);
        let col = Layout::contiguous([2, 3]).narrow(1, 0, 1).unwrap(); // [[1], [4]]
        assert_eq!(concat(&[(&m, &t), (&m, &col)], 2, &[2, 1], 1), vec![2, 5, 1, 3, 6, 4]);
        assert_eq!(
            concat_f32(&[(&[1.0, 2.0, 3.0][..], &Layout::contiguous([3]).narrow(0, 1, 2).unwrap())], 1, &[2], 1),
            vec![2.0, 3.0]
        );
        assert_eq!(one_hot(&[1, 0], 3).unwrap(), vec![0., 1., 0., 1., 0., 0.]);
        assert!(one_hot(&[3], 3).is_err());
        assert_eq!(where_select(&[1.0, 0.0], &[1.0, 2.0], &[3.0, 4.0]), vec![1.0, 4.0]);
    }
}
