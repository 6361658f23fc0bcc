//! Sliding-window kernels on contiguous `(N, C, H, W)` buffers: im2col and its
//! adjoint col2im (convolution runs as im2col + gemm), max and average pooling
//! with their backward passes. Work is split over `(n, c)` planes.

use crate::elem::KernelElem;
use crate::parallel::{PAR_MIN_ELEMS, SendPtr, for_rows, par_chunks_mut};
use firebrand_tensor::op::UnaryOp;
use firebrand_tensor::op::Window2d;
use firebrand_tensor::pool::{take_f32, zeros_f32};

fn out_size(win: &Window2d, h: usize, w: usize) -> (usize, usize) {
    win.output_size(h, w).expect("the caller checked the window fits")
}

/// Runs `f(plane, dst)` over chunks of `plane_len`, in parallel when large
/// (`par_for` hands the planes out in groups).
pub(crate) fn for_planes(out: &mut [f32], plane_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if plane_len == 0 {
        return;
    }
    if out.len() >= PAR_MIN_ELEMS {
        par_chunks_mut(out, plane_len, f);
    } else {
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

/// Writes an input row `srow` under one tap column into an output row `line`
/// of `Wo` values: columns `lo..hi` (from [`valid_cols`]) are inside the
/// image, the rest is padding (zeros). Element loops, not `memcpy` calls:
/// rows are a few dozen values.
#[inline(always)]
fn gather_line(line: &mut [f32], srow: &[f32], (lo, hi, off): (usize, usize, isize), sx: usize) {
    for d in &mut line[..lo] {
        *d = 0.0;
    }
    for d in &mut line[hi..] {
        *d = 0.0;
    }
    let start = (lo as isize * sx as isize + off) as usize;
    if sx == 1 {
        for (d, s) in line[lo..hi].iter_mut().zip(&srow[start..start + (hi - lo)]) {
            *d = *s;
        }
    } else {
        for (d, s) in line[lo..hi].iter_mut().zip(srow[start..].iter().step_by(sx)) {
            *d = *s;
        }
    }
}

/// One image's im2col row for a stride-1 tap when output and input rows have
/// the same width (e.g. "same" padding): the block is the input plane shifted
/// by a constant offset, so it is one contiguous copy, then zeros where rows
/// fall outside the image and where the shift wrapped across a row end —
/// instead of a copy and two fills per 14-value row.
fn shifted_plane(img: &mut [f32], src: &[f32], rows: &[Option<usize>], (lo, hi, off): (usize, usize, isize), w: usize) {
    let ho = rows.len();
    let y0 = rows.iter().position(|r| r.is_some()).unwrap_or(ho);
    let y1 = rows.iter().rposition(|r| r.is_some()).map_or(y0, |p| p + 1);
    img[..y0 * w].fill(0.0);
    img[y1 * w..].fill(0.0);
    if y0 < y1 {
        // Output index i reads src[i + shift]; rows[y0] = y0 + dy.
        let dy = rows[y0].expect("valid row") as isize - y0 as isize;
        let shift = dy * w as isize + off;
        let (a, b) = (y0 * w + lo, (y1 - 1) * w + hi);
        if a < b {
            let s = (a as isize + shift) as usize;
            img[a..b].copy_from_slice(&src[s..s + (b - a)]);
        }
        for line in img[y0 * w..y1 * w].chunks_exact_mut(w) {
            for v in &mut line[..lo] {
                *v = 0.0;
            }
            for v in &mut line[hi..] {
                *v = 0.0;
            }
        }
    }
}

/// im2col: `(N, C, H, W)` → `(C·kh·kw, N·Ho·Wo)`: row `(c, ki, kj)` holds the
/// input under that kernel tap for every image and output position (zeros in
/// padding). With the batch in the columns, a convolution is one gemm
/// `W (Cout, C·kh·kw) · cols` for the whole batch, and so are both of its
/// gradients.
pub fn im2col(x: &[f32], n: usize, c: usize, h: usize, w: usize, win: &Window2d) -> Vec<f32> {
    let (ho, wo) = out_size(win, h, w);
    let (kh, kw) = win.kernel;
    let l = ho * wo;
    let mut out = take_f32(c * kh * kw * n * l);
    // One task per row (c, ki, kj): N·Ho·Wo values.
    for_planes(&mut out, n * l, |r, dst| {
        let (ch, ki, kj) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let cols = valid_cols(kj, win, w, wo);
        let rows: Vec<Option<usize>> = (0..ho).map(|oy| src_row(oy, ki, win, h)).collect();
        for (b, img) in dst.chunks_exact_mut(l).enumerate() {
            let src = &x[(b * c + ch) * h * w..(b * c + ch + 1) * h * w];
            if win.stride == (1, 1) && wo == w {
                shifted_plane(img, src, &rows, cols, w);
                continue;
            }
            for (line, y) in img.chunks_exact_mut(wo).zip(&rows) {
                match y {
                    Some(y) => gather_line(line, &src[y * w..(y + 1) * w], cols, win.stride.1),
                    None => line.fill(0.0),
                }
            }
        }
    });
    out
}

/// col2im, the adjoint of [`im2col`]: sums `(C·kh·kw, N·Ho·Wo)` columns back
/// into `(N, C, H, W)` (overlapping taps add up).
pub fn col2im(cols: &[f32], n: usize, c: usize, h: usize, w: usize, win: &Window2d) -> Vec<f32> {
    let (ho, wo) = out_size(win, h, w);
    let (kh, kw) = win.kernel;
    let l = ho * wo;
    let mut out = zeros_f32(n * c * h * w);
    for_planes(&mut out, h * w, |plane, dst| {
        let (b, ch) = (plane / c, plane % c);
        for ki in 0..kh {
            for kj in 0..kw {
                let r = (ch * kh + ki) * kw + kj;
                let row = &cols[(r * n + b) * l..(r * n + b + 1) * l];
                let (lo, hi, off) = valid_cols(kj, win, w, wo);
                for oy in 0..ho {
                    let Some(y) = src_row(oy, ki, win, h) else { continue };
                    let line = &row[oy * wo..(oy + 1) * wo];
                    let drow = &mut dst[y * w..(y + 1) * w];
                    if win.stride.1 == 1 {
                        let start = (lo as isize + off) as usize;
                        for (d, s) in drow[start..start + (hi - lo)].iter_mut().zip(&line[lo..hi]) {
                            *d += s;
                        }
                    } else {
                        for ox in lo..hi {
                            drow[(ox as isize * win.stride.1 as isize + off) as usize] += line[ox];
                        }
                    }
                }
            }
        }
    });
    out
}

/// The convolution epilogue, fused: `y = act(transpose(yt) + bias)` from the
/// gemm's `(N·L, C)` output to `(N, C, L)`, `act` any unary op (none: the
/// identity). One transpose and one in-place pass per plane instead of a
/// broadcast add, a permuted copy and an activation, each with a buffer of
/// its own.
pub fn bias_act_to_nchw(
    yt: &[f32],
    bias: Option<&[f32]>,
    n: usize,
    l: usize,
    c: usize,
    act: Option<UnaryOp>,
) -> Vec<f32> {
    let mut out = take_f32(n * c * l);
    let bases: Vec<usize> = (0..n).map(|b| b * l * c).collect();
    crate::strided::transpose_batched(yt, &bases, c, l, c, &mut out);
    if bias.is_some() || act.is_some() {
        for_planes(&mut out, l, |row, y| {
            let b = bias.map_or(0.0, |b| b[row % c]);
            match act {
                // `z < 0 ? 0 : z` keeps a NaN (as PyTorch's relu); `max` would drop it.
                Some(UnaryOp::Relu) => y.iter_mut().for_each(|v| *v = crate::unary::relu(*v + b)),
                Some(op) => {
                    if b != 0.0 {
                        y.iter_mut().for_each(|v| *v += b);
                    }
                    crate::unary::map_in_place(op, y);
                }
                None => y.iter_mut().for_each(|v| *v += b),
            }
        });
    }
    out
}

/// Backward of [`bias_act_to_nchw`]: from `g` and the output `y` (both
/// `(N, C, L)`), the gradient of `yt` (`(N·L, C)`) and of the bias (`(C,)`).
/// `act` must be one whose derivative its output determines.
pub fn bias_act_to_nchw_backward(
    g: &[f32],
    y: &[f32],
    n: usize,
    l: usize,
    c: usize,
    act: Option<UnaryOp>,
) -> (Vec<f32>, Vec<f32>) {
    let masked;
    let gm: &[f32] = match act {
        Some(op) => {
            masked = crate::unary::unary_backward(op, y, y, g);
            &masked
        }
        None => g,
    };
    let dbias = crate::batch_norm::channel_sums(gm, [n, c, l]);
    let mut dyt = take_f32(n * l * c);
    // dyt[b][j][i] = gm[b][i][j]: a transpose of each (C, L) block.
    let bases: Vec<usize> = (0..n).map(|b| b * c * l).collect();
    crate::strided::transpose_batched(gm, &bases, l, c, l, &mut dyt);
    (dyt, dbias)
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
    let no_pad = win.padding == (0, 0);
    for_planes(&mut vals, plane_out, |plane, dst| {
        let src = &x[plane * h * w..(plane + 1) * h * w];
        // SAFETY: each plane writes its own disjoint range of `idx`.
        let idx = unsafe { std::slice::from_raw_parts_mut(idx_ptr.get().add(plane * plane_out), plane_out) };
        if no_pad {
            max_plane_unpadded(src, dst, idx, win, w, wo);
        } else {
            max_plane(src, dst, idx, win, h, w, wo);
        }
    });
    (vals, idx)
}

/// Maps `f32` to `i32` so that integer order is float order (`-0.0` just
/// below `0.0`) and every NaN is the largest value.
#[inline(always)]
fn order_key(v: f32) -> i32 {
    let b = v.to_bits() as i32;
    let k = b ^ ((b >> 31) & 0x7fff_ffff);
    let nan = (v.to_bits() & 0x7fff_ffff) > 0x7f80_0000;
    if nan { i32::MAX } else { k }
}

/// Inverse of [`order_key`] (NaNs come back as a quiet NaN).
#[inline(always)]
fn from_order_key(k: i32) -> f32 {
    f32::from_bits((k ^ ((k >> 31) & 0x7fff_ffff)) as u32)
}

/// One plane of max pooling, any window (taps in the padding skipped).
fn max_plane(src: &[f32], dst: &mut [f32], idx: &mut [i64], win: &Window2d, h: usize, w: usize, wo: usize) {
    for (o, (d, i)) in dst.iter_mut().zip(idx.iter_mut()).enumerate() {
        let (oy, ox) = (o / wo, o % wo);
        // Keys as in max_plane_unpadded: strict `>` keeps the first maximum, NaN wins.
        let (mut best, mut bi) = (i32::MIN, 0usize);
        for pos in window_taps(oy, ox, win, h, w) {
            let k = order_key(src[pos]);
            if k > best {
                best = k;
                bi = pos;
            }
        }
        *d = if best == i32::MIN { f32::NEG_INFINITY } else { from_order_key(best) };
        *i = bi as i64;
    }
}

/// One plane of max pooling without padding: every tap is inside, so the
/// loops index directly. Values are compared as order-preserving integer
/// keys (NaN the largest) with selects: float compares with NaN rules compile
/// to branches, which mispredict half the time on real activations.
fn max_plane_unpadded(src: &[f32], dst: &mut [f32], idx: &mut [i64], win: &Window2d, w: usize, wo: usize) {
    #[cfg(target_arch = "x86_64")]
    if matches!(win.stride.1, 1 | 2) && crate::simd512::available() {
        // SAFETY: AVX-512F is present; the stride is 1 or 2.
        unsafe { max_plane_unpadded_avx512(src, dst, idx, win, w, wo) };
        return;
    }
    max_plane_unpadded_scalar(src, dst, idx, win, w, wo);
}

/// The portable form of [`max_plane_unpadded`].
fn max_plane_unpadded_scalar(src: &[f32], dst: &mut [f32], idx: &mut [i64], win: &Window2d, w: usize, wo: usize) {
    let (kh, kw) = win.kernel;
    let (sy, sx) = win.stride;
    let (dy, dx) = win.dilation;
    for (o, (d, i)) in dst.iter_mut().zip(idx.iter_mut()).enumerate() {
        let base = (o / wo) * sy * w + (o % wo) * sx;
        // No value's key is i32::MIN, so the first tap always takes over.
        let (mut k, mut p) = (i32::MIN, 0usize);
        for ki in 0..kh {
            for kj in 0..kw {
                let pos = base + ki * dy * w + kj * dx;
                let v = order_key(src[pos]);
                let take = v > k; // strict: the first maximum in tap order wins
                k = std::hint::select_unpredictable(take, v, k);
                p = std::hint::select_unpredictable(take, pos, p);
            }
        }
        *d = from_order_key(k);
        *i = p as i64;
    }
}

/// [`max_plane_unpadded`] with AVX-512 for column strides 1 and 2: 16
/// outputs of a row at a time, their running maximum kept in registers over
/// all the taps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_plane_unpadded_avx512(
    src: &[f32],
    dst: &mut [f32],
    idx: &mut [i64],
    win: &Window2d,
    w: usize,
    wo: usize,
) {
    use std::arch::x86_64::*;
    let (kh, kw) = win.kernel;
    let (sy, sx) = win.stride;
    let (dy, dx) = win.dilation;
    let ho = dst.len() / wo;
    let lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let evens = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let iota = _mm512_mullo_epi32(lanes, _mm512_set1_epi32(sx as i32));
    let abs_mask = _mm512_set1_epi32(0x7fff_ffff);
    let last = (ho - 1) * sy * w + (wo - 1) * sx + (kh - 1) * dy * w + (kw - 1) * dx;
    assert!(last < src.len(), "max_pool2d: window beyond the plane");
    for oy in 0..ho {
        let mut ox = 0;
        while ox < wo {
            let cnt = (wo - ox).min(16);
            let m: __mmask16 = if cnt == 16 { 0xffff } else { (1u16 << cnt) - 1 };
            // Values loaded for stride 2: elements 0, 2, …, 2(cnt-1) of 2·cnt−1.
            let need = 2 * cnt - 1;
            let m_lo: __mmask16 = if need >= 16 { 0xffff } else { (1u16 << need) - 1 };
            let m_hi: __mmask16 = if need <= 16 { 0 } else { (1u16 << (need - 16)) - 1 };
            let mut best = _mm512_set1_epi32(i32::MIN);
            let mut at = _mm512_setzero_si512();
            for ki in 0..kh {
                for kj in 0..kw {
                    let start = oy * sy * w + ki * dy * w + kj * dx + ox * sx;
                    // SAFETY: every loaded lane is at most `last` (asserted in bounds).
                    let v = unsafe {
                        let p = src.as_ptr().add(start);
                        if sx == 1 {
                            _mm512_maskz_loadu_ps(m, p)
                        } else {
                            let lo = _mm512_maskz_loadu_ps(m_lo, p);
                            let hi = _mm512_maskz_loadu_ps(m_hi, p.add(16));
                            _mm512_permutex2var_ps(lo, evens, hi)
                        }
                    };
                    let b = _mm512_castps_si512(v);
                    let k = _mm512_xor_si512(b, _mm512_and_si512(_mm512_srai_epi32::<31>(b), abs_mask));
                    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                    let k = _mm512_mask_mov_epi32(k, nan, _mm512_set1_epi32(i32::MAX));
                    let take = _mm512_cmpgt_epi32_mask(k, best);
                    best = _mm512_mask_mov_epi32(best, take, k);
                    at = _mm512_mask_mov_epi32(at, take, _mm512_add_epi32(_mm512_set1_epi32(start as i32), iota));
                }
            }
            // Keys back to floats; positions widened to i64.
            let vals = _mm512_xor_si512(best, _mm512_and_si512(_mm512_srai_epi32::<31>(best), abs_mask));
            let o = oy * wo + ox;
            // SAFETY: lanes beyond `cnt` are masked off; `o + cnt <= dst.len()`.
            unsafe {
                _mm512_mask_storeu_ps(dst.as_mut_ptr().add(o), m, _mm512_castsi512_ps(vals));
                let lo = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(at));
                let hi = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64::<1>(at));
                _mm512_mask_storeu_epi64(idx.as_mut_ptr().add(o), (m & 0xff) as u8, lo);
                _mm512_mask_storeu_epi64(idx.as_mut_ptr().add(o + 8), (m >> 8) as u8, hi);
            }
            ox += 16;
        }
    }
}

/// Backward of [`max_pool2d`]: each output gradient goes to its maximum's
/// position. (A gather form for non-overlapping windows, each input cell
/// looking up its window, measured slower than this scatter.)
#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_backward(g: &[f32], idx: &[i64], n: usize, c: usize, h: usize, w: usize, win: &Window2d) -> Vec<f32> {
    let (ho, wo) = out_size(win, h, w);
    let plane_out = ho * wo;
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

/// The divisor of an average-pooling window with `count` taps inside the image.
fn avg_divisor(win: &Window2d, count: usize, count_include_pad: bool) -> usize {
    if count_include_pad { win.kernel.0 * win.kernel.1 } else { count.max(1) }
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
                let div = avg_divisor(win, count, count_include_pad);
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
                let div = avg_divisor(win, count, count_include_pad);
                let v = gs[oy * wo + ox] / div as f32;
                for t in window_taps(oy, ox, win, h, w) {
                    dst[t] += v;
                }
            }
        }
    });
    out
}

/// The per-channel affine map with an activation, `y = act(x·scale[c] +
/// shift[c])` over `(N, C, L)` (a missing scale is 1, a missing shift 0): the
/// epilogue of a convolution that writes NCHW directly (bias + activation)
/// and evaluation-mode BatchNorm, each in one pass.
pub fn channel_affine<T: KernelElem>(
    x: &[T],
    scale: Option<&[T]>,
    shift: Option<&[T]>,
    [n, c, l]: [usize; 3],
    act: Option<UnaryOp>,
) -> Vec<T> {
    let mut out = T::buffer(n * c * l);
    for_rows(&mut out, l.max(1), |first, chunk| {
        for (i, y) in chunk.chunks_mut(l.max(1)).enumerate() {
            let row = first + i;
            let ch = row % c;
            let src = &x[row * l..(row + 1) * l];
            let t = shift.map_or(T::default(), |t| t[ch]);
            match scale {
                Some(s) => T::affine_row(src, s[ch], t, y),
                None => y.iter_mut().zip(src).for_each(|(d, &v)| *d = v + t),
            }
            if let Some(op) = act {
                T::activate(op, y);
            }
        }
    });
    out
}

/// The gradients of [`channel_affine`] from the output gradient `g` and the
/// output `y`: `(dx, dscale, dshift)`, each computed only when asked for
/// (`need = [x, scale, shift]`; `dscale` needs `x`). `act` must be one whose
/// derivative the output determines ([`crate::elem::output_determines_grad`]).
#[allow(clippy::type_complexity)]
pub fn channel_affine_backward<T: KernelElem>(
    g: &[T],
    x: &[T],
    y: &[T],
    scale: Option<&[T]>,
    [n, c, l]: [usize; 3],
    act: Option<UnaryOp>,
    need: [bool; 3],
) -> (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>) {
    let masked;
    let gm: &[T] = match act {
        Some(op) => {
            masked = T::act_backward(op, y, g);
            &masked
        }
        None => g,
    };
    let dx = need[0].then(|| match scale {
        Some(s) => {
            let mut dx = T::buffer(gm.len());
            for_rows(&mut dx, l.max(1), |first, chunk| {
                for (i, d) in chunk.chunks_mut(l.max(1)).enumerate() {
                    let row = first + i;
                    let sv = s[row % c];
                    d.iter_mut().zip(&gm[row * l..(row + 1) * l]).for_each(|(d, &g)| *d = g * sv);
                }
            });
            dx
        }
        None => gm.to_vec(),
    });
    let (need_scale, need_shift) = (need[1] && scale.is_some(), need[2]);
    if !(need_scale || need_shift) {
        return (dx, None, None);
    }
    // Σ g and Σ g·x per channel, in one pass.
    let zeros = vec![T::default(); c];
    let sums = crate::batch_norm::channel_sums2(gm, x, (None, &zeros), [n, c, l]);
    let dscale = need_scale.then(|| sums.iter().map(|s| T::from_f64(s.1)).collect());
    let dshift = need_shift.then(|| sums.iter().map(|s| T::from_f64(s.0)).collect());
    (dx, dscale, dshift)
}

/// Plain-loop forms of the convolution and pooling primitives for `f64`
/// (and any other `Copy` element with zero, addition and order): the same
/// layouts and rules as the `f32` kernels above, without their SIMD and
/// threading. They serve `f64` tensors and are the `f32` kernels' test reference.
pub mod plain {
    use super::{out_size, window_taps};
    use firebrand_tensor::op::Window2d;
    use std::ops::{Add, Div};

    /// What the plain kernels need of an element.
    pub trait Elem: Copy + Default + PartialOrd + Add<Output = Self> + Div<Output = Self> + 'static {
        /// `n` as this type (a divisor).
        fn from_count(n: usize) -> Self;
        /// True for NaN.
        fn is_nan(self) -> bool;
    }

    impl Elem for f32 {
        fn from_count(n: usize) -> Self {
            n as f32
        }
        fn is_nan(self) -> bool {
            f32::is_nan(self)
        }
    }

    impl Elem for f64 {
        fn from_count(n: usize) -> Self {
            n as f64
        }
        fn is_nan(self) -> bool {
            f64::is_nan(self)
        }
    }

    /// Every (column index, input index) pair of im2col's definition: column
    /// `((c, ki, kj), (b, oy, ox))` reads input `(b, c, y, x)`; taps in the
    /// padding are left out.
    fn taps(n: usize, c: usize, h: usize, w: usize, win: &Window2d) -> impl Iterator<Item = (usize, usize)> + '_ {
        let (ho, wo) = out_size(win, h, w);
        let (kh, kw) = win.kernel;
        (0..n).flat_map(move |b| {
            (0..c * kh * kw).flat_map(move |r| {
                let (ch, ki, kj) = (r / (kh * kw), (r / kw) % kh, r % kw);
                (0..ho * wo).filter_map(move |o| {
                    let (oy, ox) = (o / wo, o % wo);
                    let y = (oy * win.stride.0 + ki * win.dilation.0) as isize - win.padding.0 as isize;
                    let xx = (ox * win.stride.1 + kj * win.dilation.1) as isize - win.padding.1 as isize;
                    ((0..h as isize).contains(&y) && (0..w as isize).contains(&xx))
                        .then(|| ((r * n + b) * ho * wo + o, ((b * c + ch) * h + y as usize) * w + xx as usize))
                })
            })
        })
    }

    /// [`super::im2col`]: `(N, C, H, W)` → `(C·kh·kw, N·Ho·Wo)`, zeros in padding.
    pub fn im2col<T: Elem>(x: &[T], n: usize, c: usize, h: usize, w: usize, win: &Window2d) -> Vec<T> {
        let (ho, wo) = out_size(win, h, w);
        let mut out = vec![T::default(); n * c * win.kernel.0 * win.kernel.1 * ho * wo];
        for (col, src) in taps(n, c, h, w, win) {
            out[col] = x[src];
        }
        out
    }

    /// [`super::col2im`], the adjoint of [`im2col`].
    pub fn col2im<T: Elem>(cols: &[T], n: usize, c: usize, h: usize, w: usize, win: &Window2d) -> Vec<T> {
        let mut out = vec![T::default(); n * c * h * w];
        for (col, dst) in taps(n, c, h, w, win) {
            out[dst] = out[dst] + cols[col];
        }
        out
    }

    /// [`super::max_pool2d`]: values and each maximum's flat index in its
    /// plane; padding never wins, the first maximum wins, NaN propagates.
    pub fn max_pool2d<T: Elem>(x: &[T], n: usize, c: usize, h: usize, w: usize, win: &Window2d) -> (Vec<T>, Vec<i64>) {
        let (ho, wo) = out_size(win, h, w);
        let (mut vals, mut idx) = (Vec::with_capacity(n * c * ho * wo), Vec::with_capacity(n * c * ho * wo));
        for plane in 0..n * c {
            let src = &x[plane * h * w..(plane + 1) * h * w];
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut best: Option<(T, usize)> = None;
                    for t in window_taps(oy, ox, win, h, w) {
                        let v = src[t];
                        best = match best {
                            Some((b, _)) if b.is_nan() || !(v > b || v.is_nan()) => best,
                            _ => Some((v, t)),
                        };
                    }
                    let (v, t) = best.expect("a window has at least one tap inside the image");
                    vals.push(v);
                    idx.push(t as i64);
                }
            }
        }
        (vals, idx)
    }

    /// [`super::max_pool2d_backward`].
    #[allow(clippy::too_many_arguments)]
    pub fn max_pool2d_backward<T: Elem>(
        g: &[T],
        idx: &[i64],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        win: &Window2d,
    ) -> Vec<T> {
        let (ho, wo) = out_size(win, h, w);
        let mut out = vec![T::default(); n * c * h * w];
        for plane in 0..n * c {
            for o in 0..ho * wo {
                let at = plane * h * w + idx[plane * ho * wo + o] as usize;
                out[at] = out[at] + g[plane * ho * wo + o];
            }
        }
        out
    }

    /// [`super::avg_pool2d`].
    pub fn avg_pool2d<T: Elem>(x: &[T], n: usize, c: usize, h: usize, w: usize, win: &Window2d, cip: bool) -> Vec<T> {
        let (ho, wo) = out_size(win, h, w);
        let mut out = Vec::with_capacity(n * c * ho * wo);
        for plane in 0..n * c {
            let src = &x[plane * h * w..(plane + 1) * h * w];
            for oy in 0..ho {
                for ox in 0..wo {
                    let (mut sum, mut count) = (T::default(), 0);
                    for t in window_taps(oy, ox, win, h, w) {
                        sum = sum + src[t];
                        count += 1;
                    }
                    out.push(sum / T::from_count(super::avg_divisor(win, count, cip)));
                }
            }
        }
        out
    }

    /// [`super::avg_pool2d_backward`].
    pub fn avg_pool2d_backward<T: Elem>(
        g: &[T],
        n: usize,
        c: usize,
        h: usize,
        w: usize,
        win: &Window2d,
        cip: bool,
    ) -> Vec<T> {
        let (ho, wo) = out_size(win, h, w);
        let mut out = vec![T::default(); n * c * h * w];
        for plane in 0..n * c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let count = window_taps(oy, ox, win, h, w).count();
                    let v = g[plane * ho * wo + oy * wo + ox] / T::from_count(super::avg_divisor(win, count, cip));
                    for t in window_taps(oy, ox, win, h, w) {
                        let at = plane * h * w + t;
                        out[at] = out[at] + v;
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain kernels are the definitions the fast ones are held to.
    use super::plain::im2col as im2col_ref;

    fn windows() -> Vec<Window2d> {
        vec![
            Window2d::new((3, 3), (1, 1), (1, 1)),
            Window2d::new((1, 1), (1, 1), (0, 0)),
            Window2d::new((3, 2), (2, 3), (1, 0)),
            Window2d { kernel: (2, 3), stride: (1, 2), padding: (2, 1), dilation: (2, 2) },
            Window2d::new((5, 5), (1, 1), (0, 0)),
            // Stride 1 with output width = input width: the shifted-plane path.
            Window2d::new((5, 5), (1, 1), (2, 2)),
            Window2d { kernel: (3, 3), stride: (1, 1), padding: (2, 2), dilation: (2, 2) },
            Window2d::new((1, 3), (1, 1), (0, 1)),
            Window2d::new((7, 7), (1, 1), (3, 3)), // taps reaching past the whole image
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
    fn fast_kernels_equal_the_plain_ones() {
        let (n, c, h, w) = (2, 3, 7, 6);
        let mut x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
        x[9] = f32::NAN;
        let same = |a: &[f32], b: &[f32]| {
            a.len() == b.len() && a.iter().zip(b).all(|(p, q)| p == q || (p.is_nan() && q.is_nan()))
        };
        for win in windows() {
            let cols = im2col(&x, n, c, h, w, &win);
            assert!(same(&cols, &plain::im2col(&x, n, c, h, w, &win)), "im2col {win:?}");
            let back = col2im(&cols, n, c, h, w, &win);
            let plain_back = plain::col2im(&cols, n, c, h, w, &win);
            assert!(
                back.iter()
                    .zip(&plain_back)
                    .all(|(p, q)| (p.is_nan() && q.is_nan()) || (p - q).abs() <= 1e-4 * q.abs().max(1.0)),
                "col2im {win:?}"
            );
            if win.padding.0 * 2 >= win.kernel.0 || win.padding.1 * 2 >= win.kernel.1 {
                continue; // pooling needs padding at most half the window
            }
            let ((v, i), (pv, pi)) = (max_pool2d(&x, n, c, h, w, &win), plain::max_pool2d(&x, n, c, h, w, &win));
            assert!(same(&v, &pv) && i == pi, "max_pool2d {win:?}");
            let g: Vec<f32> = (0..v.len()).map(|k| ((k * 7) % 5) as f32 - 2.0).collect();
            assert_eq!(
                max_pool2d_backward(&g, &i, n, c, h, w, &win),
                plain::max_pool2d_backward(&g, &pi, n, c, h, w, &win)
            );
            for cip in [true, false] {
                assert!(
                    same(&avg_pool2d(&x, n, c, h, w, &win, cip), &plain::avg_pool2d(&x, n, c, h, w, &win, cip)),
                    "avg {win:?}"
                );
                let (fa, pa) = (
                    avg_pool2d_backward(&g, n, c, h, w, &win, cip),
                    plain::avg_pool2d_backward(&g, n, c, h, w, &win, cip),
                );
                assert!(fa.iter().zip(&pa).all(|(p, q)| (p - q).abs() < 1e-5), "avg backward {win:?}");
            }
        }
    }

    #[test]
    fn fused_epilogue_matches_its_definition() {
        for (n, l, c) in [(2, 37, 20), (1, 16, 16), (3, 5, 17)] {
            let yt: Vec<f32> = (0..n * l * c).map(|i| ((i * 37) % 23) as f32 - 11.0).collect();
            let bias: Vec<f32> = (0..c).map(|i| i as f32 * 0.5 - 3.0).collect();
            for act in [None, Some(UnaryOp::Relu), Some(UnaryOp::Hardtanh(-2.0, 4.0))] {
                let y = bias_act_to_nchw(&yt, Some(&bias), n, l, c, act);
                let g: Vec<f32> = (0..y.len()).map(|i| ((i * 11) % 7) as f32 - 3.0).collect();
                let (dyt, db) = bias_act_to_nchw_backward(&g, &y, n, l, c, act);
                let mut want_db = vec![0.0f32; c];
                for b in 0..n {
                    for ch in 0..c {
                        for j in 0..l {
                            let z = yt[(b * l + j) * c + ch] + bias[ch];
                            let want = act.map_or(z, |op| op.apply(z));
                            assert_eq!(y[(b * c + ch) * l + j], want, "{act:?}");
                            let gz = g[(b * c + ch) * l + j] * act.map_or(1.0, |op| op.derivative(z, want));
                            assert_eq!(dyt[(b * l + j) * c + ch], gz, "{act:?}");
                            want_db[ch] += gz;
                        }
                    }
                }
                assert_eq!(db, want_db);
            }
            // Any activation is fused in the forward pass.
            let y = bias_act_to_nchw(&yt, None, n, l, c, Some(UnaryOp::Silu));
            for b in 0..n {
                for ch in 0..c {
                    for j in 0..l {
                        let (got, z) = (y[(b * c + ch) * l + j], yt[(b * l + j) * c + ch]);
                        assert!((got - UnaryOp::Silu.apply(z)).abs() < 1e-5, "silu {got} vs {z}");
                    }
                }
            }
        }
    }

    /// The per-channel affine map and its three gradients against their
    /// definitions, in f64 and f32, with and without an activation, on odd
    /// sizes (a 1-element plane, planes shorter and longer than 8).
    #[test]
    fn channel_affine_matches_its_definition() {
        for [n, c, l] in [[1, 1, 1], [2, 3, 5], [3, 4, 19], [1, 17, 64]] {
            let x: Vec<f64> = (0..n * c * l).map(|i| ((i * 37) % 23) as f64 * 0.5 - 5.0).collect();
            let s: Vec<f64> = (0..c).map(|i| i as f64 * 0.25 - 0.5).collect();
            let t: Vec<f64> = (0..c).map(|i| 1.0 - i as f64).collect();
            let g: Vec<f64> = (0..n * c * l).map(|i| ((i * 11) % 7) as f64 - 3.0).collect();
            for act in [None, Some(UnaryOp::Relu), Some(UnaryOp::Hardtanh(0.0, 6.0))] {
                let y = channel_affine(&x, Some(&s), Some(&t), [n, c, l], act);
                let (dx, ds, dt) = channel_affine_backward(&g, &x, &y, Some(&s), [n, c, l], act, [true; 3]);
                let (dx, ds, dt) = (dx.unwrap(), ds.unwrap(), dt.unwrap());
                let (mut want_ds, mut want_dt) = (vec![0.0; c], vec![0.0; c]);
                for i in 0..n * c * l {
                    let ch = (i / l) % c;
                    let z = x[i] * s[ch] + t[ch];
                    let want = act.map_or(z, |op| op.eval(z));
                    assert_eq!(y[i], want, "{act:?}");
                    let gz = g[i] * act.map_or(1.0, |op| op.derivative_of(z, want));
                    assert_eq!(dx[i], gz * s[ch]);
                    want_ds[ch] += gz * x[i];
                    want_dt[ch] += gz;
                }
                for ch in 0..c {
                    assert!((ds[ch] - want_ds[ch]).abs() < 1e-9 && (dt[ch] - want_dt[ch]).abs() < 1e-9);
                }
                let f = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
                let y32 = channel_affine(&f(&x), Some(&f(&s)), None, [n, c, l], act);
                for (i, v) in y32.iter().enumerate() {
                    let z = x[i] as f32 * s[(i / l) % c] as f32;
                    assert_eq!(*v, act.map_or(z, |op| op.apply(z)));
                }
            }
        }
    }

    #[test]
    fn unpadded_max_pooling_matches_the_general_path() {
        let (h, w) = (9, 37); // rows wider than one 16-lane chunk
        let mut x: Vec<f32> = (0..h * w).map(|i| ((i * 29) % 31) as f32 - 15.0).collect();
        x[5] = f32::NAN;
        x[40] = 7.0; // ties with other 7s: the first in tap order must win in both paths
        for win in [
            Window2d::new((2, 2), (2, 2), (0, 0)),
            Window2d::new((3, 3), (2, 2), (0, 0)),
            Window2d::new((3, 2), (1, 3), (0, 0)),
            Window2d { kernel: (2, 3), stride: (2, 1), padding: (0, 0), dilation: (2, 2) },
            Window2d::new((1, 1), (1, 1), (0, 0)),
        ] {
            let (ho, wo) = win.output_size(h, w).unwrap();
            let (mut d1, mut i1) = (vec![0.0; ho * wo], vec![0i64; ho * wo]);
            max_plane(&x, &mut d1, &mut i1, &win, h, w, wo);
            // The dispatching form (AVX-512 where present) and the portable one.
            type Plane = fn(&[f32], &mut [f32], &mut [i64], &Window2d, usize, usize);
            for f in [max_plane_unpadded as Plane, max_plane_unpadded_scalar] {
                let (mut d2, mut i2) = (vec![0.0; ho * wo], vec![0i64; ho * wo]);
                f(&x, &mut d2, &mut i2, &win, w, wo);
                assert_eq!(i1, i2, "{win:?}");
                let same = d1.iter().zip(&d2).all(|(a, b)| a == b || (a.is_nan() && b.is_nan()));
                assert!(same, "{win:?}: {d1:?} vs {d2:?}");
            }
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
        let back = max_pool2d_backward(&g, &idx, n, c, h, w, &win);
        assert_eq!(back.iter().sum::<f32>(), g.iter().sum::<f32>());
        // Non-overlapping windows: every gradient lands on its window's maximum.
        let (n, c, h, w) = (2, 3, 9, 7);
        let x: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 29) % 31) as f32).collect();
        for win in [Window2d::new((2, 2), (2, 2), (0, 0)), Window2d::new((2, 3), (3, 3), (0, 0))] {
            let (_, idx) = max_pool2d(&x, n, c, h, w, &win);
            let g: Vec<f32> = (0..idx.len()).map(|i| i as f32 + 0.5).collect();
            let mut want = vec![0.0f32; x.len()];
            let plane_out = idx.len() / (n * c);
            for (o, (&gv, &i)) in g.iter().zip(&idx).enumerate() {
                want[(o / plane_out) * h * w + i as usize] += gv;
            }
            assert_eq!(max_pool2d_backward(&g, &idx, n, c, h, w, &win), want, "{win:?}");
        }
    }
}
