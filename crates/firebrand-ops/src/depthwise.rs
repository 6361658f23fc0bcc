//! Depthwise convolution (`groups == C`, each input channel convolved with
//! `M` filters of its own, `Cout = C·M`) computed directly, without im2col:
//! the forward pass, the input gradient and the weight gradient.
//!
//! Each task copies one input plane into a zero-padded scratch plane, split
//! by column phase when the stride is above 1 (phase `p` holds the padded
//! columns `p, p + s, p + 2s, …`), so every kernel tap reads a contiguous run
//! of the scratch: output row `oy`, tap `(ki, kj)` reads
//! `scratch[phase(kj)][oy·sy + ki·dy][(kj·dx) / sx + ox]` for `ox = 0..Wo`.
//! The forward pass keeps 16 outputs in registers across all taps (one store
//! per output); the input gradient scatters with contiguous axpys into a
//! padded plane and folds it back; the weight gradient is one dot product per
//! tap over the plane, summed over the batch. f32 runs an AVX-512 + FMA build
//! of the same code when the CPU has it; f64 (gradient checks) runs it
//! portably. The im2col + batched-matmul form stays as the reference.

use crate::elem::{KernelElem, fma_dispatch};
use crate::parallel::{PAR_MIN_ELEMS, num_threads, par_chunks_mut};
use firebrand_tensor::op::{UnaryOp, Window2d};

/// The geometry of one depthwise convolution: `(N, C, H, W)` in, `(N, C·M,
/// Ho, Wo)` out, and the padded scratch plane (`sx` phases of `hp × wq`).
#[derive(Clone, Copy, Debug)]
pub struct DwGeom {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    m: usize,
    win: Window2d,
    ho: usize,
    wo: usize,
    hp: usize,
    wp: usize,
    wq: usize,
}

impl DwGeom {
    /// The geometry for input `(n, c, h, w)`, multiplier `m` and window `win`.
    ///
    /// # Panics
    /// When the window does not fit (the caller checks).
    pub fn new([n, c, h, w]: [usize; 4], m: usize, win: Window2d) -> Self {
        let (ho, wo) = win.output_size(h, w).expect("depthwise conv: the caller checked the window fits");
        let (kh, kw) = win.kernel;
        let hp = if ho == 0 { 0 } else { (ho - 1) * win.stride.0 + (kh - 1) * win.dilation.0 + 1 };
        let wp = if wo == 0 { 0 } else { (wo - 1) * win.stride.1 + (kw - 1) * win.dilation.1 + 1 };
        DwGeom { n, c, h, w, m, win, ho, wo, hp, wp, wq: wp.div_ceil(win.stride.1) }
    }

    fn taps(&self) -> usize {
        self.win.kernel.0 * self.win.kernel.1
    }

    fn scratch_len(&self) -> usize {
        self.win.stride.1 * self.hp * self.wq
    }

    /// Offset in the scratch of tap `(ki, kj)` for output row 0, column 0
    /// (row-major tap order, as the weight).
    fn tap_offsets(&self) -> Vec<usize> {
        let (kh, kw) = self.win.kernel;
        let (sx, (dy, dx)) = (self.win.stride.1, self.win.dilation);
        (0..kh * kw)
            .map(|t| {
                let (ki, kj) = (t / kw, t % kw);
                (((kj * dx) % sx * self.hp) + ki * dy) * self.wq + (kj * dx) / sx
            })
            .collect()
    }

    /// Copies plane `src` (`H·W`) into the zero-padded, phase-split scratch.
    fn pad_plane<T: KernelElem>(&self, src: &[T], dst: &mut [T]) {
        let (py, px) = self.win.padding;
        let sx = self.win.stride.1;
        for ph in 0..sx {
            // Columns j with 0 <= j·sx + ph − px < w come from the image.
            let first = px.saturating_sub(ph).div_ceil(sx).min(self.wq);
            let end = if self.w + px > ph { (self.w + px - ph).div_ceil(sx).min(self.wq) } else { 0 }.max(first);
            for yy in 0..self.hp {
                let row = &mut dst[(ph * self.hp + yy) * self.wq..(ph * self.hp + yy + 1) * self.wq];
                let y = yy as isize - py as isize;
                if !(0..self.h as isize).contains(&y) {
                    row.fill(T::default());
                    continue;
                }
                let srow = &src[y as usize * self.w..(y as usize + 1) * self.w];
                row[..first].fill(T::default());
                row[end..].fill(T::default());
                let x0 = first * sx + ph - px;
                if sx == 1 {
                    row[first..end].copy_from_slice(&srow[x0..x0 + (end - first)]);
                } else {
                    for (d, s) in row[first..end].iter_mut().zip(srow[x0..].iter().step_by(sx)) {
                        *d = *s;
                    }
                }
            }
        }
    }

    /// The adjoint of [`DwGeom::pad_plane`]: the gradient of the plane from
    /// the gradient of its padded scratch (padding dropped), row by row and
    /// phase by phase.
    fn unpad_plane<T: KernelElem>(&self, src: &[T], dst: &mut [T]) {
        let (py, px) = self.win.padding;
        let sx = self.win.stride.1;
        for (y, drow) in dst.chunks_exact_mut(self.w.max(1)).enumerate() {
            let yy = y + py;
            if yy >= self.hp {
                drow.fill(T::default());
                continue;
            }
            // Columns x with x + px < wp were read; the rest got no gradient.
            let valid = self.wp.saturating_sub(px).min(self.w);
            drow[valid..].fill(T::default());
            for ph in 0..sx {
                // x with (x + px) % sx == ph, starting at the first such x >= 0.
                let x0 = (ph + sx - px % sx) % sx;
                if x0 >= valid {
                    continue;
                }
                let j0 = (x0 + px) / sx;
                let srow = &src[(ph * self.hp + yy) * self.wq + j0..];
                for (d, s) in drow[x0..valid].iter_mut().step_by(sx).zip(srow) {
                    *d = *s;
                }
            }
        }
    }
}

/// Runs `task(first_plane, planes)` over runs of `per_task` consecutive
/// `plane_len` blocks of `out`, in parallel when the work is large enough.
fn for_plane_runs<T: Send>(out: &mut [T], plane_len: usize, work: usize, task: impl Fn(usize, &mut [T]) + Sync) {
    let planes = out.len() / plane_len.max(1);
    if planes == 0 {
        return;
    }
    let tasks = if work >= PAR_MIN_ELEMS { (num_threads() * 8).min(planes) } else { 1 };
    let per_task = planes.div_ceil(tasks);
    par_chunks_mut(out, per_task * plane_len, |i, chunk| task(i * per_task, chunk));
}

/// Depthwise convolution: `x` `(N, C, H, W)`, `weight` `(C·M, 1, kh, kw)`,
/// optional `bias` `(C·M,)`, then `act` in the same pass; `(N, C·M, Ho, Wo)`.
pub fn depthwise_conv2d<T: KernelElem>(
    x: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    g: &DwGeom,
    act: Option<UnaryOp>,
) -> Vec<T> {
    let (kk, plane_out) = (g.taps(), g.ho * g.wo);
    let mut out = T::buffer(g.n * g.c * g.m * plane_out);
    let offsets = g.tap_offsets();
    // One task: a run of input planes (n, ci), each giving M output planes.
    let work = out.len() * kk;
    for_plane_runs(&mut out, g.m * plane_out, work, |first, chunk| {
        let mut pad = T::buffer(g.scratch_len());
        for (i, outs) in chunk.chunks_exact_mut(g.m * plane_out).enumerate() {
            let plane = first + i; // n·C + ci
            let ci = plane % g.c;
            g.pad_plane(&x[plane * g.h * g.w..(plane + 1) * g.h * g.w], &mut pad);
            for (k, o) in outs.chunks_exact_mut(plane_out.max(1)).enumerate() {
                let co = ci * g.m + k;
                let b = bias.map_or(T::default(), |b| b[co]);
                forward_plane(g, &pad, &weight[co * kk..(co + 1) * kk], &offsets, b, o);
                if let Some(op) = act {
                    T::activate(op, o);
                }
            }
        }
        T::give_back(pad);
    });
    out
}

fma_dispatch!(fn forward_plane(g: &DwGeom, pad: &[T], w: &[T], offsets: &[usize], b: T, out: &mut [T]) => forward_plane_generic);

/// One output plane: blocks of 16, then 4, then single outputs per row, each
/// block accumulated over every tap before it is stored.
#[inline(always)]
fn forward_plane_generic<T: KernelElem, const FMA: bool>(
    g: &DwGeom,
    pad: &[T],
    w: &[T],
    offsets: &[usize],
    b: T,
    out: &mut [T],
) {
    #[inline(always)]
    fn block<T: KernelElem, const L: usize, const FMA: bool>(
        pad: &[T],
        at: usize,
        w: &[T],
        offsets: &[usize],
        b: T,
        out: &mut [T],
    ) {
        let mut acc = [b; L];
        for (&off, &wv) in offsets.iter().zip(w) {
            let s: &[T; L] = pad[at + off..at + off + L].try_into().expect("block of L");
            for i in 0..L {
                acc[i] = T::madd::<FMA>(wv, s[i], acc[i]);
            }
        }
        out[..L].copy_from_slice(&acc);
    }
    let sy = g.win.stride.0;
    for (oy, orow) in out.chunks_exact_mut(g.wo.max(1)).enumerate() {
        let base = oy * sy * g.wq;
        let mut ox = 0;
        while ox + 16 <= g.wo {
            block::<T, 16, FMA>(pad, base + ox, w, offsets, b, &mut orow[ox..]);
            ox += 16;
        }
        while ox + 4 <= g.wo {
            block::<T, 4, FMA>(pad, base + ox, w, offsets, b, &mut orow[ox..]);
            ox += 4;
        }
        while ox < g.wo {
            block::<T, 1, FMA>(pad, base + ox, w, offsets, b, &mut orow[ox..]);
            ox += 1;
        }
    }
}

/// The gradient of the input `(N, C, H, W)` from the output gradient `gy`
/// `(N, C·M, Ho, Wo)` and the weight `(C·M, 1, kh, kw)`.
pub fn depthwise_conv2d_backward_input<T: KernelElem>(gy: &[T], weight: &[T], g: &DwGeom) -> Vec<T> {
    let (kk, plane_out, plane_in) = (g.taps(), g.ho * g.wo, g.h * g.w);
    let ((kh, kw), (py, px), (dy, dx)) = (g.win.kernel, g.win.padding, g.win.dilation);
    let (qy, qx) = (((kh - 1) * dy).wrapping_sub(py), ((kw - 1) * dx).wrapping_sub(px));
    if g.win.stride == (1, 1) && g.m == 1 && (kh - 1) * dy >= py && (kw - 1) * dx >= px {
        // At stride 1 the input gradient is the forward kernel again: the
        // output gradient, padded by (k − 1)·d − p, correlated with each
        // filter flipped (16 outputs kept in registers across the taps).
        let flipped: Vec<T> = (0..g.c * kk).map(|i| weight[i / kk * kk + kk - 1 - i % kk]).collect();
        let win = Window2d { kernel: (kh, kw), stride: (1, 1), padding: (qy, qx), dilation: (dy, dx) };
        let back = DwGeom::new([g.n, g.c, g.ho, g.wo], 1, win);
        debug_assert_eq!((back.ho, back.wo), (g.h, g.w));
        return depthwise_conv2d(gy, &flipped, None, &back, None);
    }
    let mut dx = T::buffer(g.n * g.c * plane_in);
    let offsets = g.tap_offsets();
    for_plane_runs(&mut dx, plane_in, gy.len() * kk, |first, chunk| {
        let mut dpad = T::buffer(g.scratch_len());
        for (i, dplane) in chunk.chunks_exact_mut(plane_in.max(1)).enumerate() {
            let plane = first + i;
            let ci = plane % g.c;
            dpad.fill(T::default());
            for k in 0..g.m {
                let co = ci * g.m + k;
                let gp = &gy[(plane * g.m + k) * plane_out..(plane * g.m + k + 1) * plane_out];
                scatter_plane(g, gp, &weight[co * kk..(co + 1) * kk], &offsets, &mut dpad);
            }
            g.unpad_plane(&dpad, dplane);
        }
        T::give_back(dpad);
    });
    dx
}

fma_dispatch!(fn scatter_plane(g: &DwGeom, gp: &[T], w: &[T], offsets: &[usize], dpad: &mut [T]) => scatter_plane_generic);

/// `dpad[tap(oy, ki, kj) + ox] += w[ki, kj] · gp[oy, ox]`: one contiguous axpy
/// per output row and tap.
#[inline(always)]
fn scatter_plane_generic<T: KernelElem, const FMA: bool>(
    g: &DwGeom,
    gp: &[T],
    w: &[T],
    offsets: &[usize],
    dpad: &mut [T],
) {
    let sy = g.win.stride.0;
    for (oy, grow) in gp.chunks_exact(g.wo.max(1)).enumerate() {
        let base = oy * sy * g.wq;
        for (&off, &wv) in offsets.iter().zip(w) {
            let d = &mut dpad[base + off..base + off + g.wo];
            for (d, &gv) in d.iter_mut().zip(grow) {
                *d = T::madd::<FMA>(wv, gv, *d);
            }
        }
    }
}

/// The gradient of the weight `(C·M, 1, kh, kw)` from the output gradient
/// `gy` `(N, C·M, Ho, Wo)` and the input `x` `(N, C, H, W)`, summed over the
/// batch (a task owns a run of channels, so no two tasks write one filter).
pub fn depthwise_conv2d_backward_weight<T: KernelElem>(gy: &[T], x: &[T], g: &DwGeom) -> Vec<T> {
    let (kk, plane_out, plane_in) = (g.taps(), g.ho * g.wo, g.h * g.w);
    let mut dw = T::buffer(g.c * g.m * kk);
    dw.fill(T::default());
    let offsets = g.tap_offsets();
    for_plane_runs(&mut dw, g.m * kk, gy.len() * kk, |first, chunk| {
        let mut pad = T::buffer(g.scratch_len());
        for (i, dws) in chunk.chunks_exact_mut(g.m * kk).enumerate() {
            let ci = first + i;
            for b in 0..g.n {
                let plane = b * g.c + ci;
                g.pad_plane(&x[plane * plane_in..(plane + 1) * plane_in], &mut pad);
                for (k, dwk) in dws.chunks_exact_mut(kk).enumerate() {
                    let gp = &gy[(plane * g.m + k) * plane_out..(plane * g.m + k + 1) * plane_out];
                    correlate_plane(g, gp, &pad, &offsets, dwk);
                }
            }
        }
        T::give_back(pad);
    });
    dw
}

fma_dispatch!(fn correlate_plane(g: &DwGeom, gp: &[T], pad: &[T], offsets: &[usize], dw: &mut [T]) => correlate_plane_generic);

/// `dw[t] += Σ_oy Σ_ox gp[oy, ox] · pad[tap_t(oy) + ox]`, 16 partial sums per
/// tap: a 3x3 filter keeps all nine tap sums in registers (each gradient
/// chunk read once), other sizes take one tap at a time.
#[inline(always)]
fn correlate_plane_generic<T: KernelElem, const FMA: bool>(
    g: &DwGeom,
    gp: &[T],
    pad: &[T],
    offsets: &[usize],
    dw: &mut [T],
) {
    if offsets.len() == 9 {
        correlate_taps::<T, 9, FMA>(g, gp, pad, offsets.try_into().expect("9 taps"), dw);
        return;
    }
    for (off, d) in offsets.iter().zip(dw.iter_mut()) {
        correlate_taps::<T, 1, FMA>(g, gp, pad, &[*off], std::slice::from_mut(d));
    }
}

#[inline(always)]
fn correlate_taps<T: KernelElem, const K: usize, const FMA: bool>(
    g: &DwGeom,
    gp: &[T],
    pad: &[T],
    offsets: &[usize; K],
    dw: &mut [T],
) {
    let sy = g.win.stride.0;
    let wo = g.wo.max(1);
    let mut acc = [[T::default(); 16]; K];
    let mut tail = [T::default(); K];
    for (oy, grow) in gp.chunks_exact(wo).enumerate() {
        let base = oy * sy * g.wq;
        let mut ox = 0;
        while ox + 16 <= g.wo {
            let gv: &[T; 16] = grow[ox..ox + 16].try_into().expect("16");
            for t in 0..K {
                let at = base + offsets[t] + ox;
                let pv: &[T; 16] = pad[at..at + 16].try_into().expect("16");
                for i in 0..16 {
                    acc[t][i] = T::madd::<FMA>(gv[i], pv[i], acc[t][i]);
                }
            }
            ox += 16;
        }
        for x in ox..g.wo {
            for t in 0..K {
                tail[t] = T::madd::<FMA>(grow[x], pad[base + offsets[t] + x], tail[t]);
            }
        }
    }
    for t in 0..K {
        dw[t] = acc[t].iter().fold(dw[t] + tail[t], |s, &v| s + v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::plain;

    /// The reference: the direct definition, one output at a time, in f64.
    fn reference(x: &[f64], wt: &[f64], dims: [usize; 4], m: usize, win: &Window2d) -> Vec<f64> {
        let [n, c, h, w] = dims;
        let (ho, wo) = win.output_size(h, w).unwrap();
        let (kh, kw) = win.kernel;
        let mut out = vec![0.0; n * c * m * ho * wo];
        for b in 0..n {
            for co in 0..c * m {
                let ci = co / m;
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut s = 0.0;
                        for ki in 0..kh {
                            for kj in 0..kw {
                                let y = (oy * win.stride.0 + ki * win.dilation.0) as isize - win.padding.0 as isize;
                                let xx = (ox * win.stride.1 + kj * win.dilation.1) as isize - win.padding.1 as isize;
                                if (0..h as isize).contains(&y) && (0..w as isize).contains(&xx) {
                                    s += wt[co * kh * kw + ki * kw + kj]
                                        * x[((b * c + ci) * h + y as usize) * w + xx as usize];
                                }
                            }
                        }
                        out[((b * c * m + co) * ho + oy) * wo + ox] = s;
                    }
                }
            }
        }
        out
    }

    fn vals(len: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
            })
            .collect()
    }

    /// Awkward shapes: 1-pixel images, odd sizes, strides 2 and 3, dilation,
    /// padding larger than the kernel's reach, a multiplier, rows longer than
    /// one 16-wide block with a tail.
    fn cases() -> Vec<([usize; 4], usize, Window2d)> {
        let win = |k: (usize, usize), s: (usize, usize), p: (usize, usize), d: (usize, usize)| Window2d {
            kernel: k,
            stride: s,
            padding: p,
            dilation: d,
        };
        vec![
            ([1, 1, 1, 1], 1, win((1, 1), (1, 1), (0, 0), (1, 1))),
            ([1, 1, 1, 1], 1, win((3, 3), (1, 1), (1, 1), (1, 1))),
            ([2, 3, 5, 7], 1, win((3, 3), (1, 1), (1, 1), (1, 1))),
            ([2, 3, 9, 37], 1, win((3, 3), (2, 2), (1, 1), (1, 1))),
            ([1, 4, 11, 23], 2, win((5, 5), (2, 2), (2, 2), (1, 1))),
            ([3, 2, 8, 19], 3, win((3, 5), (3, 2), (2, 1), (2, 1))),
            ([1, 5, 6, 40], 1, win((3, 3), (1, 3), (0, 4), (1, 2))),
            ([2, 2, 4, 4], 1, win((2, 2), (2, 2), (0, 0), (1, 1))),
        ]
    }

    #[test]
    fn forward_matches_the_definition_in_f32_and_f64() {
        for (dims, m, win) in cases() {
            let [n, c, h, w] = dims;
            let x = vals(n * c * h * w, 1);
            let wt = vals(c * m * win.kernel.0 * win.kernel.1, 2);
            let bias = vals(c * m, 3);
            let g = DwGeom::new(dims, m, win);
            let want = reference(&x, &wt, dims, m, &win);
            let plane = g.ho * g.wo;
            let with_bias: Vec<f64> = want.iter().enumerate().map(|(i, v)| v + bias[(i / plane) % (c * m)]).collect();
            let got = depthwise_conv2d(&x, &wt, Some(&bias), &g, None);
            for (a, b) in got.iter().zip(&with_bias) {
                assert!((a - b).abs() < 1e-12, "{dims:?} m={m} {win:?}: {a} vs {b}");
            }
            let f = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let got = depthwise_conv2d(&f(&x), &f(&wt), None, &g, Some(UnaryOp::Hardtanh(0.0, 0.1)));
            assert_eq!(got.len(), want.len());
            for (a, b) in got.iter().zip(&want) {
                let b = b.clamp(0.0, 0.1) as f32;
                assert!((a - b).abs() < 1e-5, "f32 {dims:?} m={m} {win:?}: {a} vs {b}");
            }
        }
    }

    /// Both gradients are the adjoints of the forward pass: checked against
    /// the im2col reference (`col2im` of `Wᵀ·dY` for the input, `dY·colsᵀ`
    /// for the weight), computed with the plain f64 kernels.
    #[test]
    fn gradients_match_the_im2col_adjoints() {
        for (dims, m, win) in cases() {
            let [n, c, h, w] = dims;
            let g = DwGeom::new(dims, m, win);
            let (kk, l) = (win.kernel.0 * win.kernel.1, g.ho * g.wo);
            let x = vals(n * c * h * w, 4);
            let wt = vals(c * m * kk, 5);
            let gy = vals(n * c * m * l, 6);
            let cols = plain::im2col(&x, n, c, h, w, &win); // (C·kk, N·L)
            // Input gradient: dcols[(ci, t), (b, o)] = Σ_k w[ci·m+k, t] · gy[b, ci·m+k, o].
            let mut dcols = vec![0.0; cols.len()];
            let mut dw_ref = vec![0.0; c * m * kk];
            for ci in 0..c {
                for t in 0..kk {
                    for b in 0..n {
                        for o in 0..l {
                            let col = (ci * kk + t) * n * l + b * l + o;
                            for k in 0..m {
                                let co = ci * m + k;
                                let gv = gy[(b * c * m + co) * l + o];
                                dcols[col] += wt[co * kk + t] * gv;
                                dw_ref[co * kk + t] += gv * cols[col];
                            }
                        }
                    }
                }
            }
            let dx_ref = plain::col2im(&dcols, n, c, h, w, &win);
            let dx = depthwise_conv2d_backward_input(&gy, &wt, &g);
            let dw = depthwise_conv2d_backward_weight(&gy, &x, &g);
            for (a, b) in dx.iter().zip(&dx_ref) {
                assert!((a - b).abs() < 1e-12, "dx {dims:?} m={m} {win:?}: {a} vs {b}");
            }
            for (a, b) in dw.iter().zip(&dw_ref) {
                assert!((a - b).abs() < 1e-11, "dw {dims:?} m={m} {win:?}: {a} vs {b}");
            }
            // And the f32 build (AVX-512 where available) agrees.
            let f = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<f32>>();
            let dx32 = depthwise_conv2d_backward_input(&f(&gy), &f(&wt), &g);
            let dw32 = depthwise_conv2d_backward_weight(&f(&gy), &f(&x), &g);
            for (a, b) in dx32.iter().zip(&dx_ref) {
                assert!((*a as f64 - b).abs() < 1e-5, "dx f32 {dims:?}: {a} vs {b}");
            }
            for (a, b) in dw32.iter().zip(&dw_ref) {
                assert!((*a as f64 - b).abs() < 1e-4, "dw f32 {dims:?}: {a} vs {b}");
            }
        }
    }
}
