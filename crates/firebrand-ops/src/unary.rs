//! Elementwise unary ops, table-driven: each [`UnaryOp`] gives its scalar
//! function ([`UnaryOp::apply`]) and its derivative ([`UnaryOp::derivative`]);
//! the kernels here map them over buffers (with `wide` SIMD for the
//! transcendental ones) and the autograd layer gets every backward rule from
//! the same table.

pub use firebrand_tensor::op::{ALL_UNARY_OPS, UnaryOp, erf, needs_positive_input};
use firebrand_tensor::op::{GELU_C, SQRT_2_OVER_PI};

use crate::parallel::for_rows;
use crate::strided::contiguous_f32;
use firebrand_tensor::Layout;
use firebrand_tensor::pool::take_f32;
use wide::f32x8;

/// `max(x, 0)` that keeps a NaN (`x < 0 ? 0 : x`; `f32::max` drops it).
#[inline(always)]
pub fn relu(x: f32) -> f32 {
    if x < 0.0 { 0.0 } else { x }
}

/// `x` clamped into `[lo, hi]`, a NaN kept, written as two selects so the
/// loop vectorizes without branches (random activations mispredict them).
#[inline(always)]
fn clamp_keep_nan(x: f32, lo: f32, hi: f32) -> f32 {
    let y = if x < lo { lo } else { x };
    if y > hi { hi } else { y }
}

/// `g` where `keep`, else 0, as a bit mask rather than a branch.
#[inline(always)]
fn masked(g: f32, keep: bool) -> f32 {
    f32::from_bits(g.to_bits() & (keep as u32).wrapping_neg())
}

/// The `wide` SIMD form, for ops whose scalar form does not auto-vectorize.
fn simd(op: UnaryOp) -> Option<fn(f32x8) -> f32x8> {
    match op {
        UnaryOp::Exp => Some(|x| x.exp()),
        UnaryOp::Tanh => Some(|x| x.tanh()),
        UnaryOp::Sigmoid => Some(|x| f32x8::ONE / (f32x8::ONE + (-x).exp())),
        UnaryOp::Silu => Some(|x| x / (f32x8::ONE + (-x).exp())),
        UnaryOp::Gelu => Some(|x| x * normal_cdf_and_gauss8(x).0),
        UnaryOp::GeluTanh => Some(|x| {
            let inner = f32x8::splat(SQRT_2_OVER_PI) * (x + f32x8::splat(GELU_C) * x * x * x);
            f32x8::splat(0.5) * x * (f32x8::ONE + inner.tanh())
        }),
        _ => None,
    }
}

/// GELU's pieces in `wide` SIMD, as the AVX-512 form computes them:
/// `Φ(x) = 0.5 (1 + erf(x / √2))` (erf by Abramowitz & Stegun 7.1.26,
/// |error| < 1.5e-7) and `exp(−x²/2)`. The scalar `erf` (an f64 series)
/// took a quarter of MiniLM's inference on a CPU without AVX-512.
fn normal_cdf_and_gauss8(x: f32x8) -> (f32x8, f32x8) {
    let z = (x * f32x8::splat(std::f32::consts::FRAC_1_SQRT_2)).abs();
    // Capped so that an infinite input does not make ∞/∞; a NaN input
    // still propagates through the product with x.
    let zc = z.fast_min(f32x8::splat(10.0));
    let t = f32x8::ONE / (zc * f32x8::splat(0.327_591_1) + f32x8::ONE);
    let mut p = f32x8::splat(1.061_405_4);
    for c in [-1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
        p = p * t + f32x8::splat(c);
    }
    p *= t;
    let e = (-(z * z)).exp();
    let erf_abs = f32x8::ONE - p * e;
    let erf = x.simd_lt(f32x8::ZERO).select(-erf_abs, erf_abs);
    (f32x8::splat(0.5) * (f32x8::ONE + erf), e)
}

/// GELU's derivative `Φ(x) + x·φ(x)` in `wide` SIMD.
fn gelu_grad8(x: f32x8) -> f32x8 {
    let (cdf, gauss) = normal_cdf_and_gauss8(x);
    x * gauss * f32x8::splat(0.398_942_3) + cdf
}

pub(crate) fn map_slice(op: UnaryOp, src: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd512::supports(op) && crate::simd512::available() {
        // SAFETY: AVX-512F detected at run time; the op is supported.
        unsafe { crate::simd512::map(op, src, dst) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if crate::simd256::supports(op) && crate::simd256::available() {
        // SAFETY: AVX2 and FMA detected at run time; the op is supported.
        unsafe { crate::simd256::map(op, src, dst) };
        return;
    }
    map_slice_portable(op, src, dst)
}

/// `op` applied in place, through [`map_slice`] on L1-sized copies (the
/// SIMD kernels read and write separate slices).
pub(crate) fn map_in_place(op: UnaryOp, buf: &mut [f32]) {
    let mut tmp = [0.0f32; 256];
    for chunk in buf.chunks_mut(256) {
        let t = &mut tmp[..chunk.len()];
        t.copy_from_slice(chunk);
        map_slice(op, t, chunk);
    }
}

/// The portable path (`wide` SIMD or scalar); also the reference the AVX-512
/// path is tested against.
fn map_slice_portable(op: UnaryOp, src: &[f32], dst: &mut [f32]) {
    if let Some(f) = simd(op) {
        let mut s = src.chunks_exact(8);
        let mut d = dst.chunks_exact_mut(8);
        for (s, d) in (&mut s).zip(&mut d) {
            let v = f(f32x8::from(<[f32; 8]>::try_from(s).unwrap()));
            d.copy_from_slice(&v.to_array());
        }
        for (s, d) in s.remainder().iter().zip(d.into_remainder()) {
            *d = op.apply(*s);
        }
        return;
    }
    macro_rules! simple {
        ($f:expr) => {
            dst.iter_mut().zip(src).for_each(|(d, &x)| *d = $f(x))
        };
    }
    match op {
        UnaryOp::Neg => simple!(|x: f32| -x),
        UnaryOp::Relu => simple!(relu),
        UnaryOp::Square => simple!(|x: f32| x * x),
        UnaryOp::Abs => simple!(|x: f32| x.abs()),
        UnaryOp::Affine(m, a) => simple!(|x: f32| m * x + a),
        UnaryOp::Clamp(lo, hi) | UnaryOp::Hardtanh(lo, hi) => simple!(|x: f32| clamp_keep_nan(x, lo, hi)),
        UnaryOp::Hardswish => simple!(|x: f32| x * clamp_keep_nan(x + 3.0, 0.0, 6.0) / 6.0),
        UnaryOp::Hardsigmoid => simple!(|x: f32| clamp_keep_nan(x + 3.0, 0.0, 6.0) / 6.0),
        op => simple!(|x: f32| op.apply(x)),
    }
}

/// `op` applied to every element of `layout`, as a new row-major buffer.
pub fn unary_map(op: UnaryOp, src: &[f32], layout: &Layout) -> Vec<f32> {
    let map = |src: &[f32]| {
        let mut out = take_f32(src.len());
        for_rows(&mut out, 1, |start, chunk| map_slice(op, &src[start..start + chunk.len()], chunk));
        out
    };
    match layout.contiguous_range() {
        Some(r) => map(&src[r]),
        None => {
            let scratch = contiguous_f32(src, layout);
            let out = map(&scratch);
            firebrand_tensor::pool::recycle_f32(scratch); // back to the pool
            out
        }
    }
}

/// The backward rule of every unary op: `dx = g · op'(x)` with `y = op(x)`
/// (all three contiguous and of equal length).
///
/// # Panics
/// When the lengths differ.
pub fn unary_backward(op: UnaryOp, x: &[f32], y: &[f32], g: &[f32]) -> Vec<f32> {
    assert!(x.len() == y.len() && y.len() == g.len(), "unary_backward({}): length mismatch", op.name());
    let mut out = take_f32(g.len());
    for_rows(&mut out, 1, |start, chunk| {
        let n = chunk.len();
        backward_rows(op, &x[start..start + n], &y[start..start + n], &g[start..start + n], chunk);
    });
    out
}

crate::elem::simd_fn!(
    /// `d = g · op'(x)` over one chunk (`y = op(x)` for the rules that read
    /// the output). Plain loops built for AVX-512 where present: the
    /// piecewise rules (ReLU6's in a MobileNetV2 step) were SSE2 code.
    pub(crate) fn backward_rows(op: UnaryOp, x: &[f32], y: &[f32], g: &[f32], d: &mut [f32]) {
        match op {
            UnaryOp::Relu => d
                .iter_mut()
                .zip(x)
                .zip(g)
                // A bit mask, not a branch: which units are active is random, and
                // the branch LLVM emits for `if` mispredicts half the time.
                .for_each(|((d, &x), &g)| *d = f32::from_bits(g.to_bits() & ((x > 0.0) as u32).wrapping_neg())),
            UnaryOp::Clamp(lo, hi) => {
                d.iter_mut().zip(x).zip(g).for_each(|((d, &x), &g)| *d = masked(g, (x >= lo) & (x <= hi)))
            }
            // PyTorch's rule: zero at or beyond a bound, so a NaN passes.
            UnaryOp::Hardtanh(lo, hi) => {
                d.iter_mut().zip(x).zip(g).for_each(|((d, &x), &g)| *d = masked(g, !((x <= lo) | (x >= hi))))
            }
            UnaryOp::Hardsigmoid => d
                .iter_mut()
                .zip(x)
                .zip(g)
                .for_each(|((d, &x), &g)| *d = masked(g * (1.0 / 6.0), (x > -3.0) & (x < 3.0))),
            UnaryOp::Hardswish => {
                d.iter_mut().zip(x).zip(g).for_each(|((d, &x), &g)| {
                    let slope = if x < 3.0 { x / 3.0 + 0.5 } else { 1.0 };
                    // Zero up to -3 inclusive; a NaN passes (PyTorch's rule).
                    let dead = x <= -3.0;
                    *d = masked(g * slope, !dead);
                })
            }
            UnaryOp::Tanh => d.iter_mut().zip(y).zip(g).for_each(|((d, &y), &g)| *d = g * (1.0 - y * y)),
            UnaryOp::Sigmoid => d.iter_mut().zip(y).zip(g).for_each(|((d, &y), &g)| *d = g * y * (1.0 - y)),
            #[cfg(target_arch = "x86_64")]
            _ if crate::simd512::supports_backward(op) && crate::simd512::available() => {
                // SAFETY: AVX-512F detected at run time; the op is supported.
                unsafe { crate::simd512::backward(op, x, g, d) }
            }
            UnaryOp::Gelu => {
                let (mut xs, mut gs, mut ds) = (x.chunks_exact(8), g.chunks_exact(8), d.chunks_exact_mut(8));
                for ((x, g), d) in (&mut xs).zip(&mut gs).zip(&mut ds) {
                    let x = f32x8::from(<[f32; 8]>::try_from(x).unwrap());
                    let g = f32x8::from(<[f32; 8]>::try_from(g).unwrap());
                    d.copy_from_slice(&(gelu_grad8(x) * g).to_array());
                }
                let (xr, gr) = (xs.remainder(), gs.remainder());
                for (j, d) in ds.into_remainder().iter_mut().enumerate() {
                    *d = gr[j] * op.derivative(xr[j], 0.0);
                }
            }
            _ => {
                for (j, d) in d.iter_mut().enumerate() {
                    *d = g[j] * op.derivative(x[j], y[j]);
                }
            }
        }
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_match_scalar_reference() {
        // Odd length, a non-contiguous layout and values around the SIMD paths' edges.
        let n = 3 * 37;
        let src: Vec<f32> = (0..n).map(|i| (i as f32 - 55.0) * 0.173).collect();
        let pos: Vec<f32> = src.iter().map(|x| x.abs() + 0.05).collect();
        let layouts = [Layout::contiguous([n]), Layout::contiguous([3, 37]).transpose(0, 1).unwrap()];
        for &op in ALL_UNARY_OPS {
            let data = if needs_positive_input(op) { &pos } else { &src };
            for l in &layouts {
                let got = unary_map(op, data, l);
                for (g, i) in got.iter().zip(l.strided_index()) {
                    let w = op.apply(data[i]);
                    assert!(*g == w || (g - w).abs() <= 2e-6 * (1.0 + w.abs()), "{op:?} at {}: {g} vs {w}", data[i]);
                }
            }
        }
    }

    #[test]
    fn simd_paths_match_scalar_on_wide_ranges() {
        let mut xs: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) * 0.01).collect(); // [-20, 20]
        xs.extend([
            -104.0,
            -100.0,
            -88.0,
            -0.625,
            0.625,
            0.624_99,
            1e-20,
            -1e-8,
            88.0,
            88.7,
            100.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        let close = |op: UnaryOp, g: f32, x: f32| {
            let w = op.apply(x);
            let ok = g == w || (g.is_nan() && w.is_nan()) || (g - w).abs() <= 3e-7 + 2e-6 * w.abs();
            assert!(ok, "{op:?}({x}) = {g}, reference {w}");
        };
        for op in [UnaryOp::Exp, UnaryOp::Sigmoid, UnaryOp::Silu, UnaryOp::Tanh, UnaryOp::Gelu, UnaryOp::GeluTanh] {
            let mut out = vec![0.0; xs.len()];
            map_slice_portable(op, &xs, &mut out);
            xs.iter().zip(&out).for_each(|(&x, &g)| close(op, g, x));
            // The AVX-512 and AVX2 maps where the CPU has them; odd lengths
            // exercise their masked tails.
            #[cfg(target_arch = "x86_64")]
            {
                type Map = unsafe fn(UnaryOp, &[f32], &mut [f32]);
                let maps: [(bool, Map, usize); 2] = [
                    (crate::simd512::available(), crate::simd512::map, 16),
                    (crate::simd256::available(), crate::simd256::map, 8),
                ];
                for (_, map, lanes) in maps.into_iter().filter(|m| m.0) {
                    for len in [1, lanes - 1, lanes + 1, xs.len()] {
                        let mut out = vec![0.0; len];
                        // SAFETY: the CPU has the map's features; the op is supported.
                        unsafe { map(op, &xs[..len], &mut out) };
                        xs.iter().zip(&out).for_each(|(&x, &g)| close(op, g, x));
                    }
                }
            }
            #[cfg(target_arch = "x86_64")]
            if crate::simd256::available() {
                // Softmax's loop: exp(x − shift) and its sum.
                let mut out = vec![0.0; 9];
                // SAFETY: as above.
                let sum = unsafe { crate::simd256::exp_shifted_sum(&xs[..9], 1.5, &mut out) };
                xs.iter().zip(&out).for_each(|(&x, &g)| close(UnaryOp::Exp, g, x - 1.5));
                assert!((sum - out.iter().sum::<f32>()).abs() <= 1e-6 * sum, "{sum}");
            } else {
                eprintln!("SKIPPED: the AVX2 maps (no AVX2 and FMA on this CPU)");
            }
        }
        let nan = [f32::NAN; 3];
        let mut out = [0.0; 3];
        for op in [UnaryOp::Exp, UnaryOp::Gelu, UnaryOp::Tanh, UnaryOp::Relu] {
            map_slice(op, &nan, &mut out);
            assert!(out.iter().all(|x| x.is_nan()), "{op:?}");
        }
    }

    /// The piecewise and arithmetic ops' AVX-512 forms give the scalar
    /// table's values bit for bit (NaN kept, signed zeros, infinities, the
    /// bounds themselves, masked tails).
    #[test]
    fn simd_piecewise_ops_equal_the_scalar_table() {
        #[cfg(target_arch = "x86_64")]
        if crate::simd512::available() {
            let mut xs: Vec<f32> = (0..203).map(|i| (i as f32 - 100.0) * 0.0731).collect();
            xs.extend([f32::NAN, -0.0, 0.0, 6.0, -3.0, 3.0, f32::INFINITY, f32::NEG_INFINITY, 1e-30]);
            let ops = [
                UnaryOp::Relu,
                UnaryOp::Clamp(-1.0, 2.5),
                UnaryOp::Hardtanh(0.0, 6.0),
                UnaryOp::Hardswish,
                UnaryOp::Hardsigmoid,
                UnaryOp::Affine(-1.5, 0.25),
                UnaryOp::Neg,
                UnaryOp::Square,
            ];
            for op in ops {
                assert!(crate::simd512::supports(op));
                for len in [1, 15, 17, xs.len()] {
                    let mut out = vec![0.0; len];
                    unsafe { crate::simd512::map(op, &xs[..len], &mut out) };
                    for (&x, &g) in xs.iter().zip(&out) {
                        let w = op.apply(x);
                        assert!(
                            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                            "{op:?}({x}) = {g}, table {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn simd_backward_matches_the_scalar_derivative() {
        let xs: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) * 0.01).chain([-100.0, 1e-20, 100.0]).collect();
        let g: Vec<f32> = (0..xs.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        for op in [UnaryOp::Gelu, UnaryOp::Silu] {
            let y: Vec<f32> = xs.iter().map(|&x| op.apply(x)).collect();
            // Odd lengths exercise the masked tail; the full length goes through unary_backward.
            for len in [1, 15, 17, xs.len()] {
                let got = unary_backward(op, &xs[..len], &y[..len], &g[..len]);
                for (i, d) in got.iter().enumerate() {
                    let want = g[i] * op.derivative(xs[i], y[i]);
                    assert!(
                        (d - want).abs() <= 1e-6 + 2e-6 * want.abs(),
                        "{op:?}'({}) · g = {d}, reference {want}",
                        xs[i]
                    );
                }
            }
        }
    }

    #[test]
    fn hard_activation_kernels_equal_the_table_at_kinks_and_nan() {
        let xs: Vec<f32> = (0..2001)
            .map(|i| (i as f32 - 1000.0) * 0.01)
            .chain([-3.0, 3.0, 0.0, 6.0, -0.5, 0.7, f32::NAN, f32::INFINITY, f32::NEG_INFINITY])
            .collect();
        let g: Vec<f32> = (0..xs.len()).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
        let same = |a: f32, b: f32| a == b || (a.is_nan() && b.is_nan());
        for op in [UnaryOp::Clamp(-0.5, 0.7), UnaryOp::Hardtanh(0.0, 6.0), UnaryOp::Hardswish, UnaryOp::Hardsigmoid] {
            let mut y = vec![0.0; xs.len()];
            map_slice(op, &xs, &mut y);
            for (i, &x) in xs.iter().enumerate() {
                assert!(same(y[i], op.apply(x)), "{op:?}({x}) = {}, table {}", y[i], op.apply(x));
            }
            let got = unary_backward(op, &xs, &y, &g);
            for (i, &x) in xs.iter().enumerate() {
                let want = g[i] * op.derivative(x, y[i]);
                assert!(same(got[i], want), "{op:?}'({x}) · g = {}, table {want}", got[i]);
            }
        }
    }

    #[test]
    fn extremes_stay_finite() {
        let v = [-100.0f32, -20.0, 20.0, 100.0, 0.0];
        let l = Layout::contiguous([5]);
        for op in [UnaryOp::Sigmoid, UnaryOp::Tanh, UnaryOp::Silu, UnaryOp::Softplus, UnaryOp::GeluTanh] {
            let out = unary_map(op, &v, &l);
            assert!(out.iter().all(|x| x.is_finite()), "{op:?}: {out:?}");
        }
    }
}
