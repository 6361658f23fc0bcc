//! Reductions (sum, product, max, min, argmax, argmin) over any set of axes.
//!
//! The input is viewed as `(outer, reduced, inner)`: when the reduced axes form
//! one block of a contiguous tensor this needs no copy (a row reduction when
//! `inner == 1`, a sum of rows otherwise); any other set of axes is first
//! permuted to the end and copied.

pub use firebrand_tensor::op::ReduceOp;

use crate::parallel::{PAR_MIN_ELEMS, num_threads, par_chunks_mut, par_for};
use crate::strided::contiguous_f32;
use firebrand_tensor::Layout;
use firebrand_tensor::pool::take_f32;

/// The result of a reduction: values for `Sum`/`Max`/`Min`, indices for the arg ops.
#[derive(Debug, Clone, PartialEq)]
pub enum Reduced {
    /// Reduced values.
    Values(Vec<f32>),
    /// Indices along the reduced axes (row-major over them).
    Indices(Vec<i64>),
}

/// Reduces the axes flagged in `axes` (one bool per dim of `layout`); the
/// output holds the kept axes in order, row-major.
///
/// # Panics
/// When `axes.len()` differs from the rank.
pub fn reduce(op: ReduceOp, src: &[f32], layout: &Layout, axes: &[bool]) -> Reduced {
    let dims = layout.dims();
    assert_eq!(axes.len(), dims.len(), "reduce: one flag per dimension");
    let r: usize = dims.iter().zip(axes).filter(|(_, a)| **a).map(|(d, _)| d).product();
    let kept: Vec<usize> = (0..dims.len()).filter(|&d| !axes[d]).collect();
    let red: Vec<usize> = (0..dims.len()).filter(|&d| axes[d]).collect();
    // A contiguous input whose reduced axes (ignoring size-1 dims) form one block
    // reduces in place as (outer, r, inner).
    let nontrivial: Vec<usize> = (0..dims.len()).filter(|&d| dims[d] != 1).collect();
    let red_nt: Vec<usize> = nontrivial.iter().copied().filter(|&d| axes[d]).collect();
    let block = red_nt.windows(2).all(|w| {
        nontrivial.iter().position(|&d| d == w[1]).unwrap() == nontrivial.iter().position(|&d| d == w[0]).unwrap() + 1
    });
    if let (Some(range), true) = (layout.contiguous_range(), block) {
        let (outer, inner): (usize, usize) = match (red_nt.first(), red_nt.last()) {
            (Some(&first), Some(&last)) => (dims[..first].iter().product(), dims[last + 1..].iter().product()),
            _ => (layout.elem_count(), 1),
        };
        return reduce_ori(op, &src[range], outer, r, inner);
    }
    let perm: Vec<usize> = kept.iter().chain(&red).copied().collect();
    let permuted = layout.permute(&perm).expect("a permutation");
    let data = contiguous_f32(src, &permuted);
    let outer: usize = kept.iter().map(|&d| dims[d]).product();
    let out = reduce_ori(op, &data, outer, r, 1);
    firebrand_tensor::pool::recycle_f32(data); // a scratch copy: back to the pool
    out
}

/// Reduces a contiguous `(outer, r, inner)` buffer over its middle axis.
pub fn reduce_ori(op: ReduceOp, src: &[f32], outer: usize, r: usize, inner: usize) -> Reduced {
    let n_out = outer * inner;
    match op {
        ReduceOp::Sum | ReduceOp::Prod | ReduceOp::Max | ReduceOp::Min => {
            let mut out = take_f32(n_out);
            if r == 0 {
                let fill = match op {
                    ReduceOp::Sum => 0.0,
                    ReduceOp::Prod => 1.0,
                    ReduceOp::Max => f32::NEG_INFINITY,
                    _ => f32::INFINITY,
                };
                out.fill(fill);
                return Reduced::Values(out);
            }
            let work = |o: usize, dst: &mut [f32]| {
                let base = &src[o * r * inner..(o + 1) * r * inner];
                if inner == 1 {
                    dst[0] = match op {
                        ReduceOp::Sum => sum_slice(base),
                        ReduceOp::Prod => base.iter().product(),
                        ReduceOp::Max => extreme_slice::<true>(base),
                        _ => extreme_slice::<false>(base),
                    };
                } else {
                    dst.copy_from_slice(&base[..inner]);
                    for row in base.chunks_exact(inner).skip(1) {
                        match op {
                            ReduceOp::Sum => dst.iter_mut().zip(row).for_each(|(d, &x)| *d += x),
                            ReduceOp::Prod => dst.iter_mut().zip(row).for_each(|(d, &x)| *d *= x),
                            ReduceOp::Max => dst.iter_mut().zip(row).for_each(|(d, &x)| *d = nan_max(*d, x)),
                            _ => dst.iter_mut().zip(row).for_each(|(d, &x)| *d = nan_min(*d, x)),
                        }
                    }
                }
            };
            if src.len() >= PAR_MIN_ELEMS && outer > 1 && num_threads() > 1 {
                par_chunks_mut(&mut out, inner, work);
            } else if inner == 1 && src.len() >= PAR_MIN_ELEMS && op == ReduceOp::Sum && num_threads() > 1 {
                // One long row: split it.
                const CHUNK: usize = PAR_MIN_ELEMS / 2;
                let parts: Vec<std::sync::Mutex<f32>> =
                    (0..src.len().div_ceil(CHUNK)).map(|_| std::sync::Mutex::new(0.0)).collect();
                par_for(parts.len(), |c| {
                    *parts[c].lock().unwrap() = sum_slice(&src[c * CHUNK..((c + 1) * CHUNK).min(src.len())])
                });
                let part: f32 = parts.iter().map(|p| *p.lock().unwrap()).sum();
                out[0] = part;
            } else {
                out.chunks_mut(inner).enumerate().for_each(|(o, d)| work(o, d));
            }
            Reduced::Values(out)
        }
        ReduceOp::ArgMax | ReduceOp::ArgMin => {
            let better = |a: f32, b: f32| if op == ReduceOp::ArgMax { a > b } else { a < b };
            let mut out = vec![0i64; n_out];
            if r == 0 {
                return Reduced::Indices(out);
            }
            if inner == 1 {
                // Rows: the vectorized extreme, then the first position holding it.
                for (o, row) in src.chunks_exact(r).enumerate() {
                    let m =
                        if op == ReduceOp::ArgMax { extreme_slice::<true>(row) } else { extreme_slice::<false>(row) };
                    let pos =
                        if m.is_nan() { row.iter().position(|x| x.is_nan()) } else { row.iter().position(|&x| x == m) };
                    out[o] = pos.expect("the extreme is an element of the row") as i64;
                }
                return Reduced::Indices(out);
            }
            for o in 0..outer {
                for i in 0..inner {
                    let mut best = src[o * r * inner + i];
                    let mut bi = 0;
                    if !best.is_nan() {
                        for k in 1..r {
                            let v = src[(o * r + k) * inner + i];
                            if v.is_nan() {
                                bi = k;
                                break;
                            }
                            if better(v, best) {
                                best = v;
                                bi = k;
                            }
                        }
                    }
                    out[o * inner + i] = bi as i64;
                }
            }
            Reduced::Indices(out)
        }
    }
}

fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() { f32::NAN } else { a.max(b) }
}

fn nan_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() { f32::NAN } else { a.min(b) }
}

/// Largest (`MAX`) or smallest element, NaN if any is NaN. Sixteen lanes of
/// compare-and-select plus a lane-wise NaN flag, so it vectorizes.
fn extreme_slice<const MAX: bool>(s: &[f32]) -> f32 {
    #[inline(always)]
    fn pick<const MAX: bool>(a: f32, x: f32) -> f32 {
        if (MAX && x > a) || (!MAX && x < a) { x } else { a }
    }
    let mut acc = [s[0]; 16];
    let mut nan = [false; 16];
    let mut chunks = s.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] = pick::<MAX>(acc[i], c[i]);
            nan[i] |= c[i].is_nan();
        }
    }
    let mut m = acc.iter().fold(s[0], |a, &x| pick::<MAX>(a, x));
    let mut any_nan = nan.iter().any(|&n| n);
    for &x in chunks.remainder() {
        m = pick::<MAX>(m, x);
        any_nan |= x.is_nan();
    }
    if any_nan { f32::NAN } else { m }
}

/// Sum with sixteen independent accumulators (vectorizes, and is more accurate
/// than a single running sum).
pub fn sum_slice(s: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let mut chunks = s.chunks_exact(16);
    for c in &mut chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    let mut total: f32 = acc.iter().sum();
    for &x in chunks.remainder() {
        total += x;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebrand_tensor::Shape;

    /// Slow reference: walk every element and accumulate into its output slot in f64.
    fn reference(op: ReduceOp, src: &[f32], l: &Layout, axes: &[bool]) -> Vec<f64> {
        let dims = l.dims();
        let out_dims: Vec<usize> = (0..dims.len()).filter(|&d| !axes[d]).map(|d| dims[d]).collect();
        let n_out: usize = out_dims.iter().product();
        let mut acc: Vec<Vec<f64>> = vec![Vec::new(); n_out];
        for (flat, pos) in l.strided_index().enumerate() {
            // unravel flat into a multi-index
            let mut rem = flat;
            let mut idx = vec![0; dims.len()];
            for d in (0..dims.len()).rev() {
                idx[d] = rem % dims[d];
                rem /= dims[d];
            }
            let mut o = 0;
            for d in 0..dims.len() {
                if !axes[d] {
                    o = o * dims[d] + idx[d];
                }
            }
            acc[o].push(src[pos] as f64);
        }
        acc.iter()
            .map(|v| match op {
                ReduceOp::Sum => v.iter().sum(),
                ReduceOp::Prod => v.iter().product(),
                ReduceOp::Max => v.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                ReduceOp::Min => v.iter().cloned().fold(f64::INFINITY, f64::min),
                ReduceOp::ArgMax => {
                    v.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
                        as f64
                }
                ReduceOp::ArgMin => {
                    v.iter().enumerate().fold((0, f64::INFINITY), |b, (i, &x)| if x < b.1 { (i, x) } else { b }).0
                        as f64
                }
            })
            .collect()
    }

    #[test]
    fn all_axis_sets_against_reference() {
        let src: Vec<f32> = (0..210).map(|i| ((i * 37) % 101) as f32 * 0.1 - 5.0).collect();
        let base = Layout::contiguous([2, 3, 5, 7]);
        let layouts = [
            base.clone(),
            base.permute(&[2, 0, 3, 1]).unwrap(),
            Layout::contiguous([3, 1, 7]).broadcast_as(&Shape::from([2, 3, 5, 7])).unwrap(),
            Layout::contiguous([2, 1, 5, 21])
                .narrow(3, 2, 7)
                .unwrap()
                .broadcast_as(&Shape::from([2, 3, 5, 7]))
                .unwrap(),
        ];
        for l in &layouts {
            for mask in 0..16u32 {
                let axes: Vec<bool> = (0..4).map(|d| mask & (1 << d) != 0).collect();
                for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::ArgMax, ReduceOp::ArgMin] {
                    let want = reference(op, &src, l, &axes);
                    let got: Vec<f64> = match reduce(op, &src, l, &axes) {
                        Reduced::Values(v) => v.iter().map(|&x| x as f64).collect(),
                        Reduced::Indices(v) => v.iter().map(|&x| x as f64).collect(),
                    };
                    assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(&want) {
                        assert!((g - w).abs() < 1e-3, "{op:?} {axes:?} {l:?}: {g} vs {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn size_one_and_large() {
        let l = Layout::contiguous([1, 1]);
        assert_eq!(reduce(ReduceOp::Sum, &[4.0], &l, &[true, false]), Reduced::Values(vec![4.0]));
        let n = 100_003;
        let v: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        let want: f64 = v.iter().map(|&x| x as f64).sum();
        let Reduced::Values(got) = reduce(ReduceOp::Sum, &v, &Layout::contiguous([n]), &[true]) else { panic!() };
        assert!((got[0] as f64 - want).abs() < 1.0);
        // Column sums of a tall matrix take the parallel (outer, r, inner) path.
        let l = Layout::contiguous([3, 33_001]);
        let Reduced::Values(got) = reduce(ReduceOp::Max, &v[..99_003], &l, &[true, false]) else { panic!() };
        assert_eq!(got.len(), 33_001);
        assert_eq!(got[0], 6.0f32.max(v[33_001]).max(v[66_002]));
    }

    #[test]
    fn nan_and_ties() {
        let l = Layout::contiguous([4]);
        assert_eq!(reduce(ReduceOp::ArgMax, &[1.0, 3.0, 3.0, 0.0], &l, &[true]), Reduced::Indices(vec![1]));
        assert_eq!(reduce(ReduceOp::ArgMax, &[1.0, f32::NAN, 3.0, 0.0], &l, &[true]), Reduced::Indices(vec![1]));
        let Reduced::Values(v) = reduce(ReduceOp::Max, &[1.0, f32::NAN, 3.0, 0.0], &l, &[true]) else { panic!() };
        assert!(v[0].is_nan());
    }
}
