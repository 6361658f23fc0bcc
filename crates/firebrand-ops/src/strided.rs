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
/// Batched transposes (the last two dims swapped, e.g. `permute(0, 2, 1)`)
/// go through a blocked transpose (16x16 AVX-512 tiles): walked element by element, the strided
/// side touches a new cache line per value.
pub fn contiguous_f32(src: &[f32], layout: &Layout) -> Vec<f32> {
    let mut out = take_f32(layout.elem_count());
    if layout.contiguous_range().is_none() && !out.is_empty() {
        let (dims, strides) = coalesce(layout.dims(), &[layout.strides()]);
        let s = &strides[0];
        let r = dims.len();
        // Output (…, i, j) reads src[i + j·ld]: a transpose of (cols x rows) blocks.
        if r >= 2 && s[r - 2] == 1 && s[r - 1] >= dims[r - 2] && dims[r - 1] >= 16 && dims[r - 2] >= 16 {
            let (rows, cols, ld) = (dims[r - 2], dims[r - 1], s[r - 1]);
            // Treating `rows` as the run, the walk visits each batch entry's start once.
            let mut bases = Vec::with_capacity(out.len() / (rows * cols));
            for_each_run(&dims[..r - 1], &[s[..r - 1].to_vec()], &[layout.offset()], |pos| bases.push(pos[0]));
            transpose_batched(src, &bases, rows, cols, ld, &mut out);
            return out;
        }
    }
    contiguous_into(src, layout, &mut out);
    out
}

/// `out[b][i][j] = src[bases[b] + i + j·ld]` for `i < rows`, `j < cols`: one
/// transpose per batch entry, in 16x16 register tiles where AVX-512 is
/// present, split over the batch and row blocks.
pub(crate) fn transpose_batched(src: &[f32], bases: &[usize], rows: usize, cols: usize, ld: usize, out: &mut [f32]) {
    let block = 16 * cols; // 16 output rows
    let blocks_per = rows.div_ceil(16);
    let plane = rows * cols;
    assert_eq!(out.len(), bases.len() * plane, "transpose_batched: output length");
    if let (Some(&last), true) = (bases.iter().max(), rows * cols > 0) {
        assert!(last + (rows - 1) + (cols - 1) * ld < src.len(), "transpose_batched: source too short");
    }
    let task = |t: usize, dst: &mut [f32]| {
        let (b, i0) = (t / blocks_per, (t % blocks_per) * 16);
        let ib = (rows - i0).min(16);
        let base = bases[b] + i0;
        let mut j0 = 0;
        #[cfg(target_arch = "x86_64")]
        if ib == 16 && crate::simd512::available() {
            while j0 + 16 <= cols {
                // SAFETY: AVX-512F is present; source rows j0..j0+16 (length ≥ 16 from
                // base, checked above) and destination rows 0..16 at columns j0.. exist.
                unsafe {
                    crate::gemm::avx512::transpose16_into(
                        src.as_ptr().add(base + j0 * ld),
                        ld,
                        dst.as_mut_ptr().add(j0),
                        cols,
                    )
                };
                j0 += 16;
            }
        }
        for i in 0..ib {
            let row = &mut dst[i * cols..(i + 1) * cols];
            for (j, o) in row.iter_mut().enumerate().skip(j0) {
                *o = src[base + i + j * ld];
            }
        }
    };
    // Chunks of 16 output rows, never straddling two batch entries.
    let ntasks = bases.len() * blocks_per;
    let chunk = |t: usize| {
        let b = t / blocks_per;
        let start = b * plane + (t % blocks_per) * block;
        (start, (start + block).min((b + 1) * plane))
    };
    let ptr = crate::parallel::SendPtr(out.as_mut_ptr());
    let run = |t: usize| {
        let (s, e) = chunk(t);
        // SAFETY: the chunks of distinct tasks are disjoint ranges of `out`.
        task(t, unsafe { std::slice::from_raw_parts_mut(ptr.get().add(s), e - s) });
    };
    if out.len() >= crate::parallel::PAR_MIN_ELEMS {
        crate::parallel::par_for(ntasks, run); // tasks of 16 rows, handed out in groups
    } else {
        (0..ntasks).for_each(run);
    }
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
    fn batched_transposes_match_strided_index() {
        let src: Vec<f32> = (0..40_000).map(|i| i as f32).collect();
        let cases = [
            Layout::contiguous([3, 40, 33]).permute(&[0, 2, 1]).unwrap(), // edges in both dims
            Layout::contiguous([64, 32]).transpose(0, 1).unwrap(),
            Layout::contiguous([2, 17, 5, 48]).permute(&[0, 2, 3, 1]).unwrap(), // coalesces to a transpose
            Layout::contiguous([50, 70]).narrow(1, 3, 40).unwrap().transpose(0, 1).unwrap(), // ld > rows
            Layout::contiguous([5, 200, 32]).narrow(0, 2, 2).unwrap().permute(&[0, 2, 1]).unwrap(), // offset
        ];
        for l in cases {
            let want: Vec<f32> = l.strided_index().map(|i| src[i]).collect();
            assert_eq!(contiguous_f32(&src, &l), want, "{l:?}");
        }
    }

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
