//! Training-mode batch normalization over `(N, C, L)`, fused: one pass for
//! the batch statistics, the normalization as the per-channel affine map
//! ([`crate::conv::channel_affine`], one pass), and a backward of two passes
//! (the two per-channel sums, then `dx`), instead of the composite's mean,
//! variance, subtract, multiply, scale and shift, each a pass with a
//! backward rule of its own. The composite stays as the test reference.
//!
//! Sums are taken per `(n, c)` row with 16 `f32` lanes over blocks and added
//! in `f64`, around a per-channel pivot (the variance) or the mean (the
//! backward's `Σ g·(x − mean)`), so large means do not cancel the variance.

use crate::elem::{KernelElem, fma_dispatch};
use crate::parallel::{PAR_MIN_ELEMS, for_rows, par_chunks_mut};
use firebrand_tensor::op::UnaryOp;

/// An activation applied after the normalization, `(op, y)` with its output
/// `y` (same length as the gradient), whose derivative the backward pass
/// applies to the incoming gradient block by block as it reads it
/// (`op` one whose output determines its derivative).
pub type Activated<'a, T> = Option<(UnaryOp, &'a [T])>;

/// Rows are walked in blocks of this many elements when an activation's
/// derivative is applied on the way (the masked block stays in L1).
const ACT_BLOCK: usize = 1024;

/// Calls `f(g_block, range)` over the range `r` of `g` in blocks, with `g`
/// masked by the activation's derivative when there is one (into `tmp`, a
/// scratch block the caller keeps across rows).
#[inline(always)]
fn masked_blocks<T: KernelElem>(
    g: &[T],
    act: Activated<'_, T>,
    r: std::ops::Range<usize>,
    tmp: &mut Vec<T>,
    mut f: impl FnMut(&[T], std::ops::Range<usize>),
) {
    match act {
        None => f(&g[r.clone()], r),
        Some((op, y)) => {
            let want = r.len().min(ACT_BLOCK);
            if tmp.len() < want {
                tmp.resize(want, T::default());
            }
            let mut at = r.start;
            while at < r.end {
                let end = (at + ACT_BLOCK).min(r.end);
                let m = &mut tmp[..end - at];
                T::act_backward_row(op, &y[at..end], &g[at..end], m);
                f(m, at..end);
                at = end;
            }
        }
    }
}

/// Per-row sums `(Σ (a + sa), Σ (a + sa)·(b + sb))`, in blocks of 16 lanes
/// whose totals are added in `f64`.
#[inline(always)]
fn row_sums2<T: KernelElem, const FMA: bool>(a: &[T], b: &[T], [sa, sb]: [T; 2]) -> (f64, f64) {
    const BLOCK: usize = 1024;
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (mut l1, mut l2) = ([T::default(); 16], [T::default(); 16]);
        let (ac, bc) = (ab.chunks_exact(16), bb.chunks_exact(16));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (av, bv) in ac.zip(bc) {
            for i in 0..16 {
                let (u, v) = (av[i] + sa, bv[i] + sb);
                l1[i] = l1[i] + u;
                l2[i] = T::madd::<FMA>(u, v, l2[i]);
            }
        }
        for (&av, &bv) in ar.iter().zip(br) {
            let (u, v) = (av + sa, bv + sb);
            l1[0] = l1[0] + u;
            l2[0] = T::madd::<FMA>(u, v, l2[0]);
        }
        s1 += l1.iter().map(|v| v.to_f64()).sum::<f64>();
        s2 += l2.iter().map(|v| v.to_f64()).sum::<f64>();
    }
    (s1, s2)
}

fma_dispatch!(fn sums2(a: &[T], b: &[T], s: [T; 2]) -> (f64, f64) => row_sums2);

/// For every `(n, c)` row: `(Σ (a − pa[c]), Σ (a − pa[c])·(b − pb[c]))`
/// (a missing pivot is 0), then summed per channel: the per-channel
/// reductions of batch norm, and of any per-channel scale and shift
/// ([`crate::conv::channel_affine_backward`]).
pub(crate) fn channel_sums2<T: KernelElem>(
    a: &[T],
    b: &[T],
    (pa, pb): (Option<&[T]>, &[T]),
    dims: [usize; 3],
) -> Vec<(f64, f64)> {
    channel_sums2_act(a, None, b, (pa, pb), dims)
}

/// [`channel_sums2`] with `a` first multiplied by an activation's derivative.
fn channel_sums2_act<T: KernelElem>(
    a: &[T],
    act: Activated<'_, T>,
    b: &[T],
    (pa, pb): (Option<&[T]>, &[T]),
    [_, c, l]: [usize; 3],
) -> Vec<(f64, f64)> {
    let rows = a.len().checked_div(l).unwrap_or(0);
    let mut per_row = vec![(0.0f64, 0.0f64); rows];
    // Rows `first..` into `sums`, with one scratch block for all of them.
    let some_rows = |first: usize, sums: &mut [(f64, f64)]| {
        let mut tmp = Vec::new();
        for (i, out) in sums.iter_mut().enumerate() {
            let row = first + i;
            let neg = |v: T| T::from_f64(-v.to_f64());
            let sa = pa.map_or(T::default(), |p| neg(p[row % c]));
            let pivots = [sa, neg(pb[row % c])];
            *out = (0.0, 0.0);
            masked_blocks(a, act, row * l..(row + 1) * l, &mut tmp, |ab, r| {
                let (s1, s2) = sums2(ab, &b[r], pivots);
                out.0 += s1;
                out.1 += s2;
            });
        }
    };
    if a.len() >= PAR_MIN_ELEMS {
        // Tasks of at least 16 Ki elements (one row when rows are long).
        let per_task = (16384 / l.max(1)).max(1);
        par_chunks_mut(&mut per_row, per_task, |task, s| some_rows(task * per_task, s));
    } else {
        some_rows(0, &mut per_row);
    }
    let mut out = vec![(0.0, 0.0); c];
    for (row, (s1, s2)) in per_row.into_iter().enumerate() {
        out[row % c].0 += s1;
        out[row % c].1 += s2;
    }
    out
}

/// Per-channel sums `Σ a` of `(N, C, L)` (a per-channel shift's gradient).
pub(crate) fn channel_sums<T: KernelElem>(a: &[T], dims: [usize; 3]) -> Vec<T> {
    let zeros = vec![T::default(); dims[1]];
    channel_sums2(a, a, (None, &zeros), dims).into_iter().map(|(s, _)| T::from_f64(s)).collect()
}

/// The batch statistics of `x` `(N, C, L)`: per channel the mean and the
/// biased variance, as `[mean | var]` `(2, C)`.
pub fn batch_norm_stats<T: KernelElem>(x: &[T], dims: [usize; 3]) -> Vec<T> {
    let [n, c, l] = dims;
    let count = (n * l) as f64;
    // A pivot per channel (its first value) keeps Σ(x − p)² free of cancellation.
    let pivot: Vec<T> = (0..c).map(|ch| if n * l > 0 { x[ch * l] } else { T::default() }).collect();
    let sums = channel_sums2(x, x, (Some(&pivot), &pivot), dims);
    let mut out = vec![T::default(); 2 * c];
    for ch in 0..c {
        // With d = x − p: sd = Σd, sdd = Σd².
        let (sd, sdd) = sums[ch];
        let p = pivot[ch].to_f64();
        let mean_d = sd / count;
        out[ch] = T::from_f64(p + mean_d);
        out[c + ch] = T::from_f64((sdd / count - mean_d * mean_d).max(0.0));
    }
    out
}

/// The gradients of training-mode batch norm `y = (x − mean)·invstd·γ + β`
/// (`stats` = `[mean | invstd]` `(2, C)`, `weight` γ or none) from `g`:
/// `dx` and `[dγ | dβ]` `(2, C)`. `dx = a·g + b·(x − mean) + c` per channel
/// with `a = γ·invstd`, `b = −γ·invstd³·Σg(x − mean)/M`, `c = −γ·invstd·Σg/M`.
///
/// With `act = Some((op, y))` the normalization was followed by `op` with
/// output `y`, and `g` is that output's gradient: both passes apply `op`'s
/// derivative to `g` as they read it (no masked copy of `g` is made).
pub fn batch_norm_backward<T: KernelElem>(
    g: &[T],
    x: &[T],
    stats: &[T],
    weight: Option<&[T]>,
    dims: [usize; 3],
    act: Activated<'_, T>,
) -> (Vec<T>, Vec<T>) {
    let [n, c, l] = dims;
    if let Some((op, y)) = act {
        assert!(y.len() == g.len(), "batch_norm backward: {} outputs for {} gradients", y.len(), g.len());
        assert!(crate::elem::output_determines_grad(op), "batch_norm backward: {} needs its input", op.name());
    }
    let (mean, invstd) = stats.split_at(c);
    let sums = channel_sums2_act(g, act, x, (None, mean), dims);
    let count = (n * l) as f64;
    let mut daffine = vec![T::default(); 2 * c];
    let mut coef = vec![(T::default(), T::default(), T::default()); c];
    for ch in 0..c {
        let (sg, sgx) = sums[ch]; // Σg, Σg(x − mean)
        let r = invstd[ch].to_f64();
        let gamma = weight.map_or(1.0, |w| w[ch].to_f64());
        daffine[ch] = T::from_f64(r * sgx);
        daffine[c + ch] = T::from_f64(sg);
        let a = gamma * r;
        coef[ch] = (T::from_f64(a), T::from_f64(-a * r * r * sgx / count), T::from_f64(-a * sg / count));
    }
    let mut dx = T::buffer(g.len());
    for_rows(&mut dx, l.max(1), |first, chunk| {
        let mut tmp = Vec::new();
        for (i, d) in chunk.chunks_mut(l.max(1)).enumerate() {
            let row = first + i;
            let ch = row % c;
            let (a, b, cc) = coef[ch];
            let (m, start) = (mean[ch], row * l);
            masked_blocks(g, act, start..start + l, &mut tmp, |gs, r| {
                dx_row(&mut d[r.start - start..r.end - start], gs, &x[r], a, b, cc, m)
            });
        }
    });
    (dx, daffine)
}

#[inline(always)]
fn dx_row_generic<T: KernelElem, const FMA: bool>(d: &mut [T], g: &[T], x: &[T], a: T, b: T, c: T, m: T) {
    let neg_m = T::from_f64(-m.to_f64());
    for ((d, &gv), &xv) in d.iter_mut().zip(g).zip(x) {
        *d = T::madd::<FMA>(a, gv, T::madd::<FMA>(b, xv + neg_m, c));
    }
}

fma_dispatch!(fn dx_row(d: &mut [T], g: &[T], x: &[T], a: T, b: T, c: T, m: T) => dx_row_generic);

#[cfg(test)]
mod tests {
    use super::*;

    /// Statistics and gradients against the definitions in f64, on odd
    /// shapes and with a mean far from zero (where `E[x²] − mean²` in
    /// single precision would lose the variance).
    #[test]
    fn matches_the_definition() {
        for [n, c, l] in [[1, 1, 2], [2, 3, 5], [3, 2, 37], [4, 5, 1100]] {
            let x: Vec<f64> = (0..n * c * l).map(|i| 1000.0 + ((i * 37) % 23) as f64 * 0.1).collect();
            let g: Vec<f64> = (0..n * c * l).map(|i| ((i * 11) % 7) as f64 - 3.0).collect();
            let w: Vec<f64> = (0..c).map(|i| 0.5 + i as f64).collect();
            let m = (n * l) as f64;
            let st = batch_norm_stats(&x, [n, c, l]);
            let at = |b: usize, ch: usize, j: usize| (b * c + ch) * l + j;
            let mut inv = vec![0.0; c];
            for ch in 0..c {
                let vals: Vec<f64> =
                    (0..n).flat_map(|b| (0..l).map(move |j| (b, j))).map(|(b, j)| x[at(b, ch, j)]).collect();
                let mean = vals.iter().sum::<f64>() / m;
                let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / m;
                assert!((st[ch] - mean).abs() < 1e-9 && (st[c + ch] - var).abs() < 1e-9, "{st:?}");
                inv[ch] = 1.0 / (var + 1e-5).sqrt();
            }
            let stats: Vec<f64> = st[..c].iter().copied().chain(inv.iter().copied()).collect();
            let (dx, da) = batch_norm_backward(&g, &x, &stats, Some(&w), [n, c, l], None);
            for ch in 0..c {
                let idx: Vec<usize> = (0..n).flat_map(|b| (0..l).map(move |j| at(b, ch, j))).collect();
                let xhat: Vec<f64> = idx.iter().map(|&i| (x[i] - st[ch]) * inv[ch]).collect();
                let sg: f64 = idx.iter().map(|&i| g[i]).sum();
                let sgx: f64 = idx.iter().zip(&xhat).map(|(&i, h)| g[i] * h).sum();
                assert!((da[ch] - sgx).abs() < 1e-6 * (1.0 + sgx.abs()) && (da[c + ch] - sg).abs() < 1e-9);
                for (k, &i) in idx.iter().enumerate() {
                    let want = w[ch] * inv[ch] * (g[i] - sg / m - xhat[k] * sgx / m);
                    assert!((dx[i] - want).abs() < 1e-6 * (1.0 + want.abs()), "dx {}: {} vs {want}", i, dx[i]);
                }
            }
            // The f32 build agrees to single precision.
            let f = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let st32 = batch_norm_stats(&f(&x), [n, c, l]);
            for ch in 0..c {
                assert!((st32[ch] as f64 - st[ch]).abs() < 1e-3, "mean {} vs {}", st32[ch], st[ch]);
                assert!(
                    (st32[c + ch] as f64 - st[c + ch]).abs() < 1e-3 * (1.0 + st[c + ch]),
                    "var {} vs {}",
                    st32[c + ch],
                    st[c + ch]
                );
            }
            let (dx32, _) = batch_norm_backward(&f(&g), &f(&x), &f(&stats), Some(&f(&w)), [n, c, l], None);
            for (a, b) in dx32.iter().zip(&dx) {
                assert!((*a as f64 - b).abs() < 1e-2 * (1.0 + b.abs()), "dx f32 {a} vs {b}");
            }
        }
    }

    /// With an activation the gradient is masked block by block as it is
    /// read: the same numbers as masking it first, on rows of 1, of 37, and
    /// longer than a block (1100), in f32 and f64.
    #[test]
    fn an_activation_is_applied_as_the_gradient_is_read() {
        fn check<T: KernelElem + std::fmt::Debug + PartialEq>(f: impl Fn(f64) -> T) {
            for [n, c, l] in [[5, 2, 1], [3, 2, 37], [2, 3, 1100]] {
                let x: Vec<T> = (0..n * c * l).map(|i| f(((i * 37) % 23) as f64 * 0.5 - 4.0)).collect();
                let g: Vec<T> = (0..n * c * l).map(|i| f(((i * 11) % 7) as f64 - 3.0)).collect();
                let w: Vec<T> = (0..c).map(|i| f(0.5 + i as f64)).collect();
                let st = batch_norm_stats(&x, [n, c, l]);
                let stats: Vec<T> = (0..2 * c).map(|i| if i < c { st[i] } else { f(0.4) }).collect();
                for op in [UnaryOp::Relu, UnaryOp::Hardtanh(0.0, 6.0)] {
                    // Any output with the activation's range works for the mask.
                    let y: Vec<T> = x.iter().map(|v| f(op.eval(v.to_f64() * 2.0))).collect();
                    let gm = T::act_backward(op, &y, &g);
                    let want = batch_norm_backward(&gm, &x, &stats, Some(&w), [n, c, l], None);
                    let got = batch_norm_backward(&g, &x, &stats, Some(&w), [n, c, l], Some((op, &y)));
                    assert_eq!(got, want, "{op:?} {n}x{c}x{l}");
                }
            }
        }
        check(|v| v as f32);
        check(|v| v);
    }
}
