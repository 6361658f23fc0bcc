//! Numerically stable softmax and log-softmax over the last axis of a
//! contiguous `(rows, cols)` buffer, with their backward rules.

use crate::parallel::for_rows;
use firebrand_tensor::pool::take_f32;
use wide::f32x8;

pub(crate) fn row_max(x: &[f32]) -> f32 {
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Writes `exp(x - shift)` into `dst` and returns its sum.
pub(crate) fn exp_shifted(x: &[f32], shift: f32, dst: &mut [f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::simd512::available() {
        // SAFETY: AVX-512F detected at run time.
        return unsafe { crate::simd512::exp_shifted_sum(x, shift, dst) };
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd256::available() {
        // SAFETY: AVX2 and FMA detected at run time.
        return unsafe { crate::simd256::exp_shifted_sum(x, shift, dst) };
    }
    let s = f32x8::splat(shift);
    let mut acc = f32x8::ZERO;
    let mut xs = x.chunks_exact(8);
    let mut ds = dst.chunks_exact_mut(8);
    for (xc, dc) in (&mut xs).zip(&mut ds) {
        let v = (f32x8::from(<[f32; 8]>::try_from(xc).unwrap()) - s).exp();
        acc += v;
        dc.copy_from_slice(&v.to_array());
    }
    let mut sum = acc.reduce_add();
    for (&xv, d) in xs.remainder().iter().zip(ds.into_remainder()) {
        *d = (xv - shift).exp();
        sum += *d;
    }
    sum
}

/// A new `(rows, cols)` buffer whose row `r` is written by `f(r, dst_row)`, rows in parallel.
fn map_rows(len: usize, cols: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) -> Vec<f32> {
    let mut out = take_f32(len);
    if cols == 0 {
        return out;
    }
    for_rows(&mut out, cols, |r0, chunk| {
        chunk.chunks_exact_mut(cols).enumerate().for_each(|(i, dst)| f(r0 + i, dst));
    });
    out
}

/// Writes the stable softmax (or log-softmax) of the row `x` into `dst`.
fn softmax_row(x: &[f32], dst: &mut [f32], log: bool) {
    let m = row_max(x);
    if m == f32::NEG_INFINITY || m.is_nan() {
        // All -inf (or NaN): PyTorch gives NaN for such rows.
        dst.fill(f32::NAN);
        return;
    }
    let sum = exp_shifted(x, m, dst);
    if log {
        let lse = m + sum.ln();
        dst.iter_mut().zip(x).for_each(|(d, &v)| *d = v - lse);
    } else {
        let inv = 1.0 / sum;
        dst.iter_mut().for_each(|d| *d *= inv);
    }
}

/// Softmax of each row of a contiguous `(rows, cols)` buffer.
pub fn softmax_rows(src: &[f32], cols: usize) -> Vec<f32> {
    map_rows(src.len(), cols, |r, dst| softmax_row(&src[r * cols..(r + 1) * cols], dst, false))
}

/// Log-softmax of each row of a contiguous `(rows, cols)` buffer.
pub fn log_softmax_rows(src: &[f32], cols: usize) -> Vec<f32> {
    map_rows(src.len(), cols, |r, dst| softmax_row(&src[r * cols..(r + 1) * cols], dst, true))
}

/// Backward of softmax: `dx = y ⊙ (g − Σ g⊙y)` per row.
pub fn softmax_backward_rows(y: &[f32], g: &[f32], cols: usize) -> Vec<f32> {
    map_rows(y.len(), cols, |r, dst| {
        let (y, g) = (&y[r * cols..(r + 1) * cols], &g[r * cols..(r + 1) * cols]);
        let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
        dst.iter_mut().zip(y).zip(g).for_each(|((d, &y), &g)| *d = y * (g - dot));
    })
}

/// Backward of log-softmax: `dx = g − exp(y) · Σ g` per row.
pub fn log_softmax_backward_rows(y: &[f32], g: &[f32], cols: usize) -> Vec<f32> {
    map_rows(y.len(), cols, |r, dst| {
        let (y, g) = (&y[r * cols..(r + 1) * cols], &g[r * cols..(r + 1) * cols]);
        let s: f32 = g.iter().sum();
        dst.iter_mut().zip(y).zip(g).for_each(|((d, &y), &g)| *d = g - y.exp() * s);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], cols: usize, log: bool) -> Vec<f64> {
        x.chunks(cols)
            .flat_map(|r| {
                let m = r.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
                let s: f64 = r.iter().map(|&v| (v as f64 - m).exp()).sum();
                r.iter()
                    .map(move |&v| if log { v as f64 - m - s.ln() } else { (v as f64 - m).exp() / s })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn against_reference_on_awkward_shapes() {
        for &(rows, cols) in &[(1, 1), (3, 7), (2, 8), (5, 17), (4, 1000), (300, 129)] {
            let x: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 * 0.03 - 15.0).collect();
            for log in [false, true] {
                let got = if log { log_softmax_rows(&x, cols) } else { softmax_rows(&x, cols) };
                let want = reference(&x, cols, log);
                for (g, w) in got.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() < 2e-6 * (1.0 + w.abs()), "({rows},{cols}) log={log}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn large_values_are_stable() {
        let x = [1000.0f32, 1001.0, -1000.0];
        let y = softmax_rows(&x, 3);
        assert!((y[0] + y[1] - 1.0).abs() < 1e-6 && y[2] == 0.0);
        let l = log_softmax_rows(&x, 3);
        assert!(l.iter().all(|v| v.is_finite()));
        let inf = softmax_rows(&[f32::NEG_INFINITY, 0.0], 2);
        assert_eq!(inf, vec![0.0, 1.0]);
    }

    #[test]
    fn backward_rules_match_finite_differences() {
        let cols = 5;
        let x: Vec<f32> = vec![0.3, -1.2, 2.0, 0.7, -0.1];
        let g: Vec<f32> = vec![0.5, -0.3, 0.8, 0.1, -0.9];
        for log in [false, true] {
            let f = |x: &[f32]| -> f64 {
                let y = if log { log_softmax_rows(x, cols) } else { softmax_rows(x, cols) };
                y.iter().zip(&g).map(|(a, b)| (*a as f64) * (*b as f64)).sum()
            };
            let y = if log { log_softmax_rows(&x, cols) } else { softmax_rows(&x, cols) };
            let dx = if log { log_softmax_backward_rows(&y, &g, cols) } else { softmax_backward_rows(&y, &g, cols) };
            for i in 0..cols {
                let (mut xp, mut xm) = (x.clone(), x.clone());
                xp[i] += 1e-3;
                xm[i] -= 1e-3;
                let num = (f(&xp) - f(&xm)) / 2e-3;
                assert!((num - dx[i] as f64).abs() < 1e-3, "log={log} i={i}: {} vs {num}", dx[i]);
            }
        }
    }
}
