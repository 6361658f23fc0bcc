//! Layer normalization over the last dim, fused: one pass per row forward
//! (mean, reciprocal standard deviation, scale and shift) and one backward,
//! instead of the eight elementwise and reduction ops of the composite form
//! and their backward rules; and root-mean-square normalization's
//! forward pass ([`rms_norm`]).

use crate::parallel::{SendPtr, par_for};
use firebrand_tensor::pool::take_f32;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

/// Sum with 16 independent accumulators (so it vectorizes).
#[inline(always)]
fn sum16(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let full = n / 16 * 16;
    for base in (0..full).step_by(16) {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(base + l);
        }
    }
    acc.iter().sum::<f32>() + (full..n).map(f).sum::<f32>()
}

/// Forward over rows `lo..hi`; `y` and `stats` are the whole outputs.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_rows(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    cols: usize,
    eps: f32,
    lo: usize,
    hi: usize,
    y: SendPtr<f32>,
    stats: (SendPtr<f32>, usize),
) {
    for r in lo..hi {
        let xr = &x[r * cols..(r + 1) * cols];
        // SAFETY: row r of y and entries r, rows + r of stats belong to the caller's task.
        let yr = unsafe { std::slice::from_raw_parts_mut(y.get().add(r * cols), cols) };
        let mean = sum16(cols, |j| xr[j]) / cols as f32;
        let var = sum16(cols, |j| (xr[j] - mean) * (xr[j] - mean)) / cols as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for (((o, v), w), b) in yr.iter_mut().zip(xr).zip(w).zip(b) {
            *o = (v - mean) * rstd * w + b;
        }
        unsafe {
            *stats.0.get().add(r) = mean;
            *stats.0.get().add(stats.1 + r) = rstd;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn forward_rows_avx512(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    cols: usize,
    eps: f32,
    lo: usize,
    hi: usize,
    y: SendPtr<f32>,
    stats: (SendPtr<f32>, usize),
) {
    forward_rows(x, w, b, cols, eps, lo, hi, y, stats)
}

/// `y = (x − mean) · rstd · weight + bias` over each row of `x` `(rows, cols)`
/// (biased variance, `rstd = 1/√(var + eps)`). Returns `y` and the rows'
/// statistics `[mean | rstd]` `(2, rows)` for the backward pass.
///
/// ```
/// use firebrand_ops::norm::layer_norm;
/// let (y, stats) = layer_norm(&[1.0, 3.0], None, None, 1, 2, 0.0);
/// assert_eq!(y, vec![-1.0, 1.0]);
/// assert_eq!(stats, vec![2.0, 1.0]); // mean 2, rstd 1
/// ```
pub fn layer_norm(
    x: &[f32],
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    rows: usize,
    cols: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), rows * cols, "layer_norm: x is not (rows, cols)");
    assert!(
        weight.is_none_or(|w| w.len() == cols) && bias.is_none_or(|b| b.len() == cols),
        "layer_norm: affine length"
    );
    let (ones, zeros) = (vec![1.0f32; cols], vec![0.0f32; cols]);
    let (w, b) = (weight.unwrap_or(&ones), bias.unwrap_or(&zeros));
    let mut y = take_f32(rows * cols);
    let mut stats = take_f32(2 * rows);
    let (yp, sp) = (SendPtr(y.as_mut_ptr()), (SendPtr(stats.as_mut_ptr()), rows));
    par_for(rows.div_ceil(ROWS_PER_TASK), |task| {
        let (lo, hi) = (task * ROWS_PER_TASK, ((task + 1) * ROWS_PER_TASK).min(rows));
        #[cfg(target_arch = "x86_64")]
        if crate::simd512::available() {
            // SAFETY: AVX-512F detected at run time; the rows are this task's.
            return unsafe { forward_rows_avx512(x, w, b, cols, eps, lo, hi, yp, sp) };
        }
        forward_rows(x, w, b, cols, eps, lo, hi, yp, sp)
    });
    (y, stats)
}

/// Backward over rows `lo..hi`: `dx` rows written, `dw`/`db` accumulated.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_rows(
    x: &[f32],
    w: &[f32],
    stats: &[f32],
    g: &[f32],
    cols: usize,
    lo: usize,
    hi: usize,
    dx: SendPtr<f32>,
    dw: &mut [f32],
    db: &mut [f32],
    xhat: &mut [f32],
    gh: &mut [f32],
) {
    let rows = stats.len() / 2;
    for r in lo..hi {
        let (xr, gr) = (&x[r * cols..(r + 1) * cols], &g[r * cols..(r + 1) * cols]);
        let (mean, rstd) = (stats[r], stats[rows + r]);
        for j in 0..cols {
            xhat[j] = (xr[j] - mean) * rstd;
            gh[j] = gr[j] * w[j];
            dw[j] += gr[j] * xhat[j];
            db[j] += gr[j];
        }
        let mg = sum16(cols, |j| gh[j]) / cols as f32;
        let mgx = sum16(cols, |j| gh[j] * xhat[j]) / cols as f32;
        // SAFETY: row r of dx belongs to the caller's task.
        let dxr = unsafe { std::slice::from_raw_parts_mut(dx.get().add(r * cols), cols) };
        for ((d, g), xh) in dxr.iter_mut().zip(gh.iter()).zip(xhat.iter()) {
            *d = rstd * (g - mg - xh * mgx);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn backward_rows_avx512(
    x: &[f32],
    w: &[f32],
    stats: &[f32],
    g: &[f32],
    cols: usize,
    lo: usize,
    hi: usize,
    dx: SendPtr<f32>,
    dw: &mut [f32],
    db: &mut [f32],
    xhat: &mut [f32],
    gh: &mut [f32],
) {
    backward_rows(x, w, stats, g, cols, lo, hi, dx, dw, db, xhat, gh)
}

/// Backward of [`layer_norm`]: from `x`, `weight`, the statistics and the
/// output's gradient `g` (all `(rows, cols)` row-major), the input's gradient
/// and `[dweight | dbias]` `(2, cols)`.
///
/// `dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ · x̂))` with `ĝ = g · weight` and
/// `x̂ = (x − mean) · rstd`; `dweight = Σ_rows g · x̂`, `dbias = Σ_rows g`.
pub fn layer_norm_backward(
    x: &[f32],
    weight: Option<&[f32]>,
    stats: &[f32],
    g: &[f32],
    rows: usize,
    cols: usize,
) -> (Vec<f32>, Vec<f32>) {
    assert!(x.len() == rows * cols && g.len() == x.len(), "layer_norm_backward: x/g are not (rows, cols)");
    assert_eq!(stats.len(), 2 * rows, "layer_norm_backward: stats are not (2, rows)");
    let ones = vec![1.0f32; cols];
    let w = weight.unwrap_or(&ones);
    let tasks = rows.div_ceil(ROWS_PER_TASK);
    let mut dx = take_f32(rows * cols);
    // Per task partial sums of dweight and dbias, added up after the loop.
    let mut partial = vec![0.0f32; tasks * 2 * cols];
    let (dxp, pp) = (SendPtr(dx.as_mut_ptr()), SendPtr(partial.as_mut_ptr()));
    par_for(tasks, |task| {
        // SAFETY: this task's slice of the partial sums.
        let part = unsafe { std::slice::from_raw_parts_mut(pp.get().add(task * 2 * cols), 2 * cols) };
        let (dw, db) = part.split_at_mut(cols);
        let (mut xhat, mut gh) = (vec![0.0f32; cols], vec![0.0f32; cols]);
        let (lo, hi) = (task * ROWS_PER_TASK, ((task + 1) * ROWS_PER_TASK).min(rows));
        #[cfg(target_arch = "x86_64")]
        if crate::simd512::available() {
            // SAFETY: AVX-512F detected at run time; the rows are this task's.
            return unsafe { backward_rows_avx512(x, w, stats, g, cols, lo, hi, dxp, dw, db, &mut xhat, &mut gh) };
        }
        backward_rows(x, w, stats, g, cols, lo, hi, dxp, dw, db, &mut xhat, &mut gh)
    });
    let mut dwb = vec![0.0f32; 2 * cols];
    for part in partial.chunks_exact(2 * cols) {
        dwb.iter_mut().zip(part).for_each(|(a, b)| *a += b);
    }
    (dx, dwb)
}

/// Root-mean-square normalization of `rows` rows of `cols`:
/// `out = x / √(mean(x²) + eps) · w` (`w` `(cols,)`), each row's sum of
/// squares in eight lanes (a forward pass for inference; training takes
/// the composite form, whose ops have backward rules).
///
/// # Panics
/// When a slice is shorter than its shape.
pub fn rms_norm(x: &[f32], w: &[f32], rows: usize, cols: usize, eps: f32, out: &mut [f32]) {
    assert!(x.len() >= rows * cols && out.len() >= rows * cols && w.len() >= cols, "rms_norm: slices too short");
    for (xr, yr) in x.chunks_exact(cols.max(1)).zip(out.chunks_exact_mut(cols.max(1))).take(rows) {
        let mut lanes = [0.0f32; 8];
        let mut chunks = xr.chunks_exact(8);
        for c in &mut chunks {
            lanes.iter_mut().zip(c).for_each(|(l, &v)| *l += v * v);
        }
        let tail: f32 = chunks.remainder().iter().map(|&v| v * v).sum();
        let ms = (lanes.iter().sum::<f32>() + tail) / cols as f32;
        let r = 1.0 / (ms + eps).sqrt();
        yr.iter_mut().zip(xr).zip(w).for_each(|((y, &v), &g)| *y = v * r * g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values in `[-2, 2]`.
    fn fill(n: usize, seed: u32) -> Vec<f32> {
        crate::test_data::uniform(n, seed).into_iter().map(|v| 2.0 * v).collect()
    }

    /// The definition in f64.
    fn reference(x: &[f32], w: Option<&[f32]>, b: Option<&[f32]>, cols: usize, eps: f64) -> Vec<f32> {
        x.chunks(cols)
            .flat_map(|r| {
                let m = r.iter().map(|&v| v as f64).sum::<f64>() / cols as f64;
                let var = r.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / cols as f64;
                (0..cols).map(move |j| {
                    let n = (r[j] as f64 - m) / (var + eps).sqrt();
                    (n * w.map_or(1.0, |w| w[j] as f64) + b.map_or(0.0, |b| b[j] as f64)) as f32
                })
            })
            .collect()
    }

    #[test]
    fn forward_matches_the_definition_on_awkward_shapes() {
        for (rows, cols) in [(1, 1), (1, 7), (3, 1), (17, 5), (40, 128), (33, 513)] {
            let x = fill(rows * cols, 3);
            let (w, b) = (fill(cols, 5), fill(cols, 7));
            for affine in [false, true] {
                let (wo, bo) = if affine { (Some(&w[..]), Some(&b[..])) } else { (None, None) };
                let (y, _) = layer_norm(&x, wo, bo, rows, cols, 1e-5);
                for (i, (a, e)) in y.iter().zip(reference(&x, wo, bo, cols, 1e-5)).enumerate() {
                    assert!((a - e).abs() < 2e-4 * (1.0 + e.abs()), "{rows}x{cols} affine {affine}: y[{i}] {a} vs {e}");
                }
            }
        }
    }

    /// Central differences of `Σ g·y` in f64 through the reference.
    #[test]
    fn backward_matches_finite_differences() {
        let (rows, cols) = (19, 6);
        let (x, w, b, g) = (fill(rows * cols, 11), fill(cols, 13), fill(cols, 17), fill(rows * cols, 19));
        let loss = |x: &[f32], w: &[f32], b: &[f32]| -> f64 {
            reference(x, Some(w), Some(b), cols, 1e-5).iter().zip(&g).map(|(y, g)| *y as f64 * *g as f64).sum()
        };
        let (_, stats) = layer_norm(&x, Some(&w), Some(&b), rows, cols, 1e-5);
        let (dx, dwb) = layer_norm_backward(&x, Some(&w), &stats, &g, rows, cols);
        let h = 1e-2f32;
        let numeric = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * h as f64);
        for i in 0..x.len() {
            let n = numeric(&|d| {
                let mut xs = x.clone();
                xs[i] += d;
                loss(&xs, &w, &b)
            });
            assert!((n - dx[i] as f64).abs() < 2e-2 * (1.0 + n.abs()), "dx[{i}]: {n} vs {}", dx[i]);
        }
        for j in 0..cols {
            let nw = numeric(&|d| {
                let mut ws = w.clone();
                ws[j] += d;
                loss(&x, &ws, &b)
            });
            let nb = numeric(&|d| {
                let mut bs = b.clone();
                bs[j] += d;
                loss(&x, &w, &bs)
            });
            assert!((nw - dwb[j] as f64).abs() < 2e-2 * (1.0 + nw.abs()), "dw[{j}]: {nw} vs {}", dwb[j]);
            assert!((nb - dwb[cols + j] as f64).abs() < 2e-2 * (1.0 + nb.abs()), "db[{j}]: {nb} vs {}", dwb[cols + j]);
        }
    }
}
