//! Walking strided layouts efficiently: dimensions are coalesced, and the
//! innermost one becomes a plain loop.

use firebrand_tensor::Layout;
use firebrand_tensor::pool::take_f32;

/// Dims and per-operand strides after merging dimensions that are contiguous
/// for *every* operand, with size-1 dims dropped. Always at least one dim.
pub(crate) fn coalesce(dims: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_dims: Vec<usize> = Vec::with_capacity(dims.len());
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::with_capacity(dims.len()); strides.len()];
    for (d, &size) in dims.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let mergeable =
            !out_dims.is_empty() && strides.iter().zip(&out_strides).all(|(s, o)| *o.last().unwrap() == s[d] * size);
        if mergeable {
            *out_dims.last_mut().unwrap() *= size;
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                *o.last_mut().unwrap() = s[d];
            }
        } else {
            out_dims.push(size);
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                o.push(s[d]);
            }
        }
    }
    if out_dims.is_empty() {
        out_dims.push(1);
        for o in out_strides.iter_mut() {
            o.push(0);
        }
    }
    (out_dims, out_strides)
}

/// Calls `f(offsets, inner_len)` for every run of the innermost dimension, in
/// row-major order, where `offsets[k]` is operand k's buffer position of the
/// run's first element (starting from `base[k]`).
pub(crate) fn for_each_run(dims: &[usize], strides: &[Vec<usize>], base: &[usize], mut f: impl FnMut(&[usize])) {
    let rank = dims.len();
    let outer = &dims[..rank - 1];
    let mut idx = vec![0usize; outer.len()];
    let mut pos: Vec<usize> = base.to_vec();
    let n_outer: usize = outer.iter().product();
    for _ in 0..n_outer {
        f(&pos);
        // Advance the outer multi-index.
        for d in (0..outer.len()).rev() {
            idx[d] += 1;
            if idx[d] < outer[d] {
                for (p, s) in pos.iter_mut().zip(strides) {
                    *p += s[d];
                }
                break;
            }
            for (p, s) in pos.iter_mut().zip(strides) {
                *p -= (outer[d] - 1) * s[d];
            }
            idx[d] = 0;
        }
    }
}

/// The elements of `layout` copied into a new row-major buffer.
pub fn contiguous<T: Copy + Default + Send + Sync>(src: &[T], layout: &Layout) -> Vec<T> {
    let mut out = vec![T::default(); layout.elem_count()];
    contiguous_into(src, layout, &mut out);
    out
}

/// [`contiguous`] for `f32`, with the output buffer taken from the pool.
pub fn contiguous_f32(src: &[f32], layout: &Layout) -> Vec<f32> {
    let mut out = take_f32(layout.elem_count());
    contiguous_into(src, layout, &mut out);
    out
}

/// Copies the elements of `layout` into `dst` (of length `elem_count`) in row-major order.
pub fn contiguous_into<T: Copy>(src: &[T], layout: &Layout, dst: &mut [T]) {
    assert_eq!(dst.len(), layout.elem_count(), "contiguous_into: destination length");
    if let Some(r) = layout.contiguous_range() {
        dst.copy_from_slice(&src[r]);
        return;
    }
    if dst.is_empty() {
        return;
    }
    let (dims, strides) = coalesce(layout.dims(), &[layout.strides()]);
    let inner = *dims.last().unwrap();
    let is = *strides[0].last().unwrap();
    let mut runs = dst.chunks_exact_mut(inner);
    for_each_run(&dims, &strides, &[layout.offset()], |pos| {
        let (p, out) = (pos[0], runs.next().unwrap());
        if is == 1 {
            out.copy_from_slice(&src[p..p + inner]);
        } else if is == 0 {
            out.fill(src[p]);
        } else {
            out.iter_mut().enumerate().for_each(|(i, o)| *o = src[p + i * is]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebrand_tensor::Shape;

    #[test]
    fn contiguous_matches_strided_index() {
        let src: Vec<i64> = (0..120).collect();
        let base = Layout::contiguous([2, 3, 4, 5]);
        let cases = [
            base.permute(&[3, 1, 0, 2]).unwrap(),
            base.narrow(2, 1, 2).unwrap().transpose(0, 3).unwrap(),
            Layout::contiguous([3, 1]).broadcast_as(&Shape::from([2, 3, 7])).unwrap(),
            base.narrow(1, 2, 1).unwrap(),
            Layout::contiguous([1]),
            base.narrow(0, 1, 0).unwrap(),
        ];
        for l in cases {
            let want: Vec<i64> = l.strided_index().map(|i| src[i]).collect();
            assert_eq!(contiguous(&src, &l), want, "{l:?}");
        }
    }
}
