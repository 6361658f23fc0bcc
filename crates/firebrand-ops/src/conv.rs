//! Sliding-window kernels on contiguous `(N, C, H, W)` buffers: im2col and its
//! adjoint col2im (convolution runs as im2col + gemm), max and average pooling
//! with their backward passes. Work is split over `(n, c)` planes.

use crate::parallel::{PAR_MIN_ELEMS, par_chunks_mut};
use firebrand_tensor::op::Window2d;
use firebrand_tensor::pool::{take_f32, zeros_f32};

fn out_size(win: &Window2d, h: usize, w: usize) -> (usize, usize) {
    win.output_size(h, w).expect("the caller checked the window fits")
}

/// Runs `f(plane, dst)` over chunks of `plane_len`, in parallel when large.
fn for_planes(out: &mut [f32], plane_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() >= PAR_MIN_ELEMS && plane_len > 0 {
        par_chunks_mut(out, plane_len, f);
    } else if plane_len > 0 {
        out.chunks_mut(plane_len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

/// For input row `oy` of tap `ki`: the source row, if inside the image.
#[inline]
fn src_row(oy: usize, ki: usize, win: &Window2d, h: usize) -> Option<usize> {
    let y = (oy * win.stride.0 + ki * win.dilation.0) as isize - win.padding.0 as isize;
    (0..h as isize).contains(&y).then_some(y as usize)
}

/// Positions within an `H·W` plane under the window of output `(oy, ox)`,
/// skipping taps that fall in the padding (row-major tap order).
#[inline]
fn window_taps(oy: usize, ox: usize, win: &Window2d, h: usize, w: usize) -> impl Iterator<Item = usize> + '_ {
    (0..win.kernel.0).filter_map(move |ki| src_row(oy, ki, win, h)).flat_map(move |y| {
        (0..win.kernel.1).filter_map(move |kj| {
            let xx = (ox * win.stride.1 + kj * win.dilation.1) as isize - win.padding.1 as isize;
            (0..w as isize).contains(&xx).then(|| y * w + xx as usize)
        })
    })
}

/// The range of output columns `ox` whose source column for tap `kj` is inside
/// the image, and the source column of the first one.
#[inline]
fn valid_cols(kj: usize, win: &Window2d, w: usize, wo: usize) -> (usize, usize, isize) {
    let off = (kj * win.dilation.1) as isize - win.padding.1 as isize;
    let s = win.stride.1 as isize;
    // ox valid when 0 <= ox*s + off < w
    let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
    let hi = if (w as isize) - off <= 0 { 0 } else { (((w as isize) - off - 1) / s + 1).min(wo as isize) };
    let lo = lo.min(hi);
    (lo as usize, hi as usize, off)
}

/// im2col: `(N, C, H, W)` → `(N, C·kh·kw, Ho·Wo)`, row `(c, ki, kj)` holding the
/// input under that kernel tap for every output position (zeros in padding).
pub fn im2col(x: &[f32], n: usize, c: usize, h: usize, w: usize, win: &Window2d) -> Vec<f32> {
    let (ho, wo) = out_size(win, h, w);
    let (kh, kw) = win.kernel;
    let rows = c * kh * kw;
    let mut out = take_f32(n * rows * ho * wo);
    // One task per (n, c): its kh·kw rows of Ho·Wo.
    for_planes(&mut out, kh * kw * ho * wo, |plane, dst| {
        let src = &x[plane * h * w..(plane + 1) * h * w];
        for ki in 0..kh {
            for kj in 0..kw {
                let row = &mut dst[(ki * kw + kj) * ho * wo..(ki * kw + kj + 1) * ho * wo];
                let (lo, hi, off) = valid_cols(kj, win, w, wo);
                for oy in 0..ho {
                    let line = &mut row[oy * wo..(oy + 1) * wo];
                    let Some(y) = src_row(oy, ki, win, h) else {
                        line.fill(0.0);
                        continue;
                    };
                    let srow = &src[y * w..(y + 1) * w];
                    line[..lo].fill(0.0);
                    line[hi..].fill(0.0);
                    if win.stride.1 == 1 {
                        let start = (lo as isize + off) as usize;
                        line[lo..hi].copy_from_slice(&srow[start..start + (hi - lo)]);
                    } else {
                        for (ox, d) in line.iter_mut().enumerate().take(hi).skip(lo) {
                            *d = srow[(ox as isize * win.stride.1 as isize + off) as usize];
                        }
                    }
                }
            }
        }
    });
    out
}

/// col2im, the adjoint of [`im2col`]: sums `(N, C·kh·kw, Ho·Wo)` columns back
/// into `(N, C, H, W)` (overlapping taps add up).
pub fn col2im(cols: &[f32], n: usize, c: usize, h: usize, w: usize, win: &Window2d) -> Vec<f32> {
    let (ho, wo) = out_size(win, h, w);
    let (kh, kw) = win.kernel;
    let mut out = zeros_f32(n * c * h * w);
    for_planes(&mut out, h * w, |plane, dst| {
        let src = &cols[plane * kh * kw * ho * wo..(plane + 1) * kh * kw * ho * wo];
        for ki in 0..kh {
            for kj in 0..kw {
                let row = &src[(ki * kw + kj) * ho * wo..(ki * kw + kj + 1) * ho * wo];
                let (lo, hi, off) = valid_cols(kj, win, w, wo);
                for oy in 0..ho {
                    let Some(y) = src_row(oy, ki, win, h) else { continue };
                    let line = &row[oy * wo..(oy + 1) * wo];
                    let drow = &mut dst[y * w..(y + 1) * w];
                    for ox in lo..hi {
                        drow[(ox as isize * win.stride.1 as isize + off) as usize] += line[ox];
                    }
                }
            }
        }
    });
    out
}

/// Max pooling of `(N, C, H, W)`: values `(N, C, Ho, Wo)` and the flat index
/// within each `H·W` plane of every maximum (PyTorch's `return_indices`).
/// Padding never wins (it is −∞); NaN propagates.
pub fn max_pool2d(x: &[f32], n: usize, c: usize, h: usize, w: usize, win: &Window2d) -> (Vec<f32>, Vec<i64>) {
    let (ho, wo) = out_size(win, h, w);
    let mut vals = take_f32(n * c * ho * wo);
    let mut idx = vec![0i64; n * c * ho * wo];
    let plane_out = ho * wo;
    let idx_ptr = SendPtr(idx.as_mut_ptr());
    for_planes(&mut vals, plane_out, |plane, dst| {
        let src = &x[plane * h * w..(plane + 1) * h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                let (mut best, mut bi) = (f32::NEG_INFINITY, -1i64);
                for pos in window_taps(oy, ox, win, h, w) {
                    let v = src[pos];
                    if v > best || bi < 0 || (v.is_nan() && !best.is_nan()) {
                        best = v;
                        bi = pos as i64;
                    }
                }
                dst[oy * wo + ox] = best;
                // SAFETY: each plane writes its own disjoint range of `idx`.
                unsafe { *idx_ptr.get().add(plane * plane_out + oy * wo + ox) = bi.max(0) };
            }
        }
    });
    (vals, idx)
}

#[derive(Clone, Copy)]
struct SendPtr(*mut i64);
// SAFETY: planes write disjoint ranges.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(&self) -> *mut i64 {
        self.0
    }
}

/// Backward of [`max_pool2d`]: each output gradient goes to its maximum's position.
pub fn max_pool2d_backward(
    g: &[f32],
    idx: &[i64],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    plane_out: usize,
) -> Vec<f32> {
    let mut out = zeros_f32(n * c * h * w);
    for_planes(&mut out, h * w, |plane, dst| {
        let gs = &g[plane * plane_out..(plane + 1) * plane_out];
        let is = &idx[plane * plane_out..(plane + 1) * plane_out];
        for (&gv, &i) in gs.iter().zip(is) {
            dst[i as usize] += gv;
        }
    });
    out
}

/// Average pooling; with `count_include_pad` the divisor is always `kh·kw`
/// (PyTorch's default), otherwise the number of taps inside the image.
pub fn avg_pool2d(
    x: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    win: &Window2d,
    count_include_pad: bool,
) -> Vec<f32> {
    let (ho, wo) = out_size(win, h, w);
    let mut out = take_f32(n * c * ho * wo);
    for_planes(&mut out, ho * wo, |plane, dst| {
        let src = &x[plane * h * w..(plane + 1) * h * w];
        for oy in 0..ho {
            for ox in 0..wo {
                let (mut sum, mut count) = (0.0f32, 0usize);
                for pos in window_taps(oy, ox, win, h, w) {
                    sum += src[pos];
                    count += 1;
                }
                let div = if count_include_pad { win.kernel.0 * win.kernel.1 } else { count.max(1) };
                dst[oy * wo + ox] = sum / div as f32;
            }
        }
    });
    out
}

/// Backward of [`avg_pool2d`].
pub fn avg_pool2d_backward(
    g: &[f32],
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    win: &Window2d,
    count_include_pad: bool,
) -> Vec<f32> {
    let (ho, wo) = out_size(win, h, w);
    let mut out = zeros_f32(n * c * h * w);
    for_planes(&mut out, h * w, |plane, dst| {
        let gs = &g[plane * ho * wo..(plane + 1) * ho * wo];
        for oy in 0..ho {
            for ox in 0..wo {
                let count = window_taps(oy, ox, win, h, w).count();
                let div = if count_include_pad { win.kernel.0 * win.kernel.1 } else { count.max(1) };
                let v = gs[oy * wo + ox] / div as f32;
                for t in window_taps(oy, ox, win, h, w) {
                    dst[t] += v;
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct definition of im2col, for reference.
    fn im2col_ref(x: &[f32], n: usize, c: usize, h: usize, w: usize, win: &Window2d) -> Vec<f32> {
        let (ho, wo) = win.output_size(h, w).unwrap();
        let (kh, kw) = win.kernel;
        let mut out = vec![0.0; n * c * kh * kw * ho * wo];
        for b in 0..n {
            for ch in 0..c {
                for ki in 0..kh {
                    for kj in 0..kw {
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let y = (oy * win.stride.0 + ki * win.dilation.0) as isize - win.padding.0 as isize;
                                let xx = (ox * win.stride.1 + kj * win.dilation.1) as isize - win.padding.1 as isize;
                                let v = if y >= 0 && y < h as isize && xx >= 0 && xx < w as isize {
                                    x[((b * c + ch) * h + y as usize) * w + xx as usize]
                                } else {
                                    0.0
                                };
                                out[(((b * c + ch) * kh + ki) * kw + kj) * ho * wo + oy * wo + ox] = v;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    fn windows() -> Vec<Window2d> {
        vec![
            Window2d::new((3, 3), (1, 1), (1, 1)),
            Window2d::new((1, 1), (1, 1), (0, 0)),
            Window2d::new((3, 2), (2, 3), (1, 0)),
            Window2d { kernel: (2, 3), stride: (1, 2), padding: (2, 1), dilation: (2, 2) },
            Window2d::new((5, 5), (1, 1), (0, 0)),
        ]
    }

    #[test]
    fn im2col_matches_definition_and_col2im_is_its_adjoint() {
        let (n, c, h, w) = (2, 3, 7, 6);
        let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        for win in windows() {
            let cols = im2col(&x, n, c, h, w, &win);
            assert_eq!(cols, im2col_ref(&x, n, c, h, w, &win), "{win:?}");
            // <im2col(x), y> == <x, col2im(y)> for any y.
            let y: Vec<f32> = (0..cols.len()).map(|i| ((i * 11) % 7) as f32 - 3.0).collect();
            let lhs: f64 = cols.iter().zip(&y).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            let back = col2im(&y, n, c, h, w, &win);
            let rhs: f64 = x.iter().zip(&back).map(|(a, b)| (*a as f64) * (*b as f64)).sum();
            assert!((lhs - rhs).abs() < 1e-6 * lhs.abs().max(1.0), "{win:?}: {lhs} vs {rhs}");
        }
    }

    #[test]
    fn pooling_against_definition() {
        let (n, c, h, w) = (1, 2, 5, 4);
        let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 29) % 17) as f32 - 8.0).collect();
        let win = Window2d::new((2, 2), (2, 2), (1, 0));
        let (v, idx) = max_pool2d(&x, n, c, h, w, &win);
        let (ho, wo) = win.output_size(h, w).unwrap();
        assert_eq!((ho, wo), (3, 2));
        for p in 0..n * c {
            for o in 0..ho * wo {
                let i = idx[p * ho * wo + o] as usize;
                assert_eq!(v[p * ho * wo + o], x[p * h * w + i]);
            }
        }
        // Plane 0, output (0, 0) covers rows -1..1 (only row 0) and columns 0..2.
        assert_eq!(v[0], x[0].max(x[1]));
        let a = avg_pool2d(&x, n, c, h, w, &win, true);
        assert_eq!(a[0], (x[0] + x[1]) / 4.0);
        let a = avg_pool2d(&x, n, c, h, w, &win, false);
        assert_eq!(a[0], (x[0] + x[1]) / 2.0);
        // Backward passes are adjoints.
        let g: Vec<f32> = (0..v.len()).map(|i| i as f32 + 1.0).collect();
        for cip in [true, false] {
            let fwd = avg_pool2d(&x, n, c, h, w, &win, cip);
            let back = avg_pool2d_backward(&g, n, c, h, w, &win, cip);
            let lhs: f32 = fwd.iter().zip(&g).map(|(a, b)| a * b).sum();
            let rhs: f32 = x.iter().zip(&back).map(|(a, b)| a * b).sum();
            assert!((lhs - rhs).abs() < 1e-3, "{lhs} vs {rhs}");
        }
        let back = max_pool2d_backward(&g, &idx, n, c, h, w, ho * wo);
        assert_eq!(back.iter().sum::<f32>(), g.iter().sum::<f32>());
    }
}
