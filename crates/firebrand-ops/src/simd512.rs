//! AVX-512 forms of the transcendental unary ops, chosen at run time.
//!
//! `wide` picks its instruction set when the crate is compiled (SSE2 for a
//! default x86-64 build), so the hottest maps get hand-written AVX-512
//! versions here. Accuracy: `exp` is the Cephes polynomial (about 2 ulp);
//! `tanh` uses its small-argument polynomial below 0.625; GELU uses the
//! Abramowitz–Stegun erf (absolute error below 1.5e-7). Every one is tested
//! against the scalar reference in [`UnaryOp::apply`](firebrand_tensor::op::UnaryOp::apply).

#![allow(clippy::excessive_precision)] // published coefficients, kept as printed

use firebrand_tensor::op::UnaryOp;
use std::arch::x86_64::*;

/// Cephes' `exp`: `ln 2` split in two (`n·ln 2` subtracted exactly), and
/// the polynomial of `r` (highest power first) in `e^r ≈ 1 + r + r²·p(r)`.
pub(crate) const EXP_LN2: [f32; 2] = [0.693_359_4, -2.121_944_4e-4];
pub(crate) const EXP_P: [f32; 6] =
    [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];
/// Cephes' odd `tanh` polynomial in `x²` (highest power first), below 0.625.
pub(crate) const TANH_P: [f32; 5] = [-5.704_988_7e-3, 2.063_908_9e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328_2e-1];
/// Abramowitz & Stegun 7.1.26: `erf z ≈ 1 − t·p(t)·e^{−z²}`, `t = 1/(1 + ERF_T·z)`.
pub(crate) const ERF_T: f32 = 0.327_591_1;
pub(crate) const ERF_P: [f32; 5] = [1.061_405_4, -1.453_152_1, 1.421_413_7, -0.284_496_74, 0.254_829_6];

/// True when this CPU runs the AVX-512 kernels.
pub fn available() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| std::arch::is_x86_feature_detected!("avx512f"))
}

/// Ops with an AVX-512 form.
pub fn supports(op: UnaryOp) -> bool {
    matches!(
        op,
        UnaryOp::Exp
            | UnaryOp::Sigmoid
            | UnaryOp::Silu
            | UnaryOp::Tanh
            | UnaryOp::Gelu
            | UnaryOp::GeluTanh
            | UnaryOp::Relu
            | UnaryOp::Clamp(..)
            | UnaryOp::Hardtanh(..)
            | UnaryOp::Hardswish
            | UnaryOp::Hardsigmoid
            | UnaryOp::Affine(..)
            | UnaryOp::Neg
            | UnaryOp::Square
    )
}

/// `x` clamped into `[lo, hi]` keeping a NaN: `max`/`min` return their second
/// operand when either is NaN, and `x` is the second in both.
#[inline(always)]
unsafe fn clamp512(x: __m512, lo: f32, hi: f32) -> __m512 {
    unsafe { _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), x)) }
}

#[inline(always)]
unsafe fn exp512(x: __m512) -> __m512 {
    unsafe {
        let xc = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.73)), _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            xc,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2[0]), xc);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2[1]), r);
        let mut p = _mm512_set1_ps(EXP_P[0]);
        for c in &EXP_P[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        // Below about −103.97 the result rounds to 0: those lanes are not
        // scaled at all (masked off, so no underflow assist: a causal mask's
        // −∞ scores are half of an attention's row, and scaling them into
        // 0 cost 25 ns per vector in a profile of the GPT's attention).
        let live = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, _mm512_set1_ps(-103.97));
        let y = _mm512_maskz_scalef_ps(live, e, n);
        // NaN in, NaN out (the clamps above would have hidden it).
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_mask_blend_ps(nan, y, x)
    }
}

#[inline(always)]
unsafe fn recip_add1(e: __m512) -> __m512 {
    unsafe { _mm512_div_ps(_mm512_set1_ps(1.0), _mm512_add_ps(_mm512_set1_ps(1.0), e)) }
}

#[inline(always)]
unsafe fn tanh512(x: __m512) -> __m512 {
    unsafe {
        let a = _mm512_abs_ps(x);
        // |x| >= 0.625: 1 - 2 / (e^{2|x|} + 1), sign restored.
        let e = exp512(_mm512_add_ps(a, a));
        let big = _mm512_fnmadd_ps(_mm512_set1_ps(2.0), recip_add1(e), _mm512_set1_ps(1.0));
        let sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN));
        let big = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(big), sign));
        // |x| < 0.625: Cephes' odd polynomial.
        let z = _mm512_mul_ps(x, x);
        let mut p = _mm512_set1_ps(TANH_P[0]);
        for c in &TANH_P[1..] {
            p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(*c));
        }
        let small = _mm512_fmadd_ps(_mm512_mul_ps(p, z), x, x);
        let is_small = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, _mm512_set1_ps(0.625));
        _mm512_mask_blend_ps(is_small, big, small)
    }
}

/// GELU's pieces: `Φ(x) = 0.5 (1 + erf(x / √2))` and `exp(−x²/2)`.
#[inline(always)]
unsafe fn normal_cdf_and_gauss512(x: __m512) -> (__m512, __m512) {
    unsafe {
        // erf by Abramowitz & Stegun 7.1.26.
        let z = _mm512_abs_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2)));
        // t = 1 / (1 + 0.3275911 z): the 14-bit reciprocal estimate and one
        // Newton step (error ~2⁻²⁸, below f32's rounding), a third of a
        // division's cost (measured: MiniLM's GELUs took 16% of its
        // inference with the division).
        // z is capped at 10 (erf is 1 in f32 from 4 on) so that an infinite
        // input does not make 0·∞ in the Newton step; NaN still propagates
        // through the final product with x.
        let zc = _mm512_min_ps(z, _mm512_set1_ps(10.0));
        let d = _mm512_fmadd_ps(zc, _mm512_set1_ps(ERF_T), _mm512_set1_ps(1.0));
        let r = _mm512_rcp14_ps(d);
        let t = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0)));
        let mut p = _mm512_set1_ps(ERF_P[0]);
        for c in &ERF_P[1..] {
            p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(*c));
        }
        p = _mm512_mul_ps(p, t);
        let e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(z, z)));
        let erf_abs = _mm512_fnmadd_ps(p, e, _mm512_set1_ps(1.0));
        let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
        let erf = _mm512_mask_sub_ps(erf_abs, neg, _mm512_setzero_ps(), erf_abs);
        (_mm512_mul_ps(_mm512_set1_ps(0.5), _mm512_add_ps(_mm512_set1_ps(1.0), erf)), e)
    }
}

#[inline(always)]
unsafe fn gelu512(x: __m512) -> __m512 {
    unsafe { _mm512_mul_ps(x, normal_cdf_and_gauss512(x).0) }
}

/// GELU's derivative `Φ(x) + x·φ(x)`, `φ(x) = exp(−x²/2)/√(2π)`.
#[inline(always)]
unsafe fn gelu_grad512(x: __m512) -> __m512 {
    unsafe {
        let (cdf, gauss) = normal_cdf_and_gauss512(x);
        const INV_SQRT_2PI: f32 = 0.398_942_28;
        _mm512_fmadd_ps(_mm512_mul_ps(x, gauss), _mm512_set1_ps(INV_SQRT_2PI), cdf)
    }
}

/// SiLU's derivative `σ(x)·(1 + x·(1 − σ(x)))`.
#[inline(always)]
unsafe fn silu_grad512(x: __m512) -> __m512 {
    unsafe {
        let s = recip_add1(exp512(_mm512_sub_ps(_mm512_setzero_ps(), x)));
        let one = _mm512_set1_ps(1.0);
        _mm512_mul_ps(s, _mm512_fmadd_ps(x, _mm512_sub_ps(one, s), one))
    }
}

/// Ops whose backward has an AVX-512 form ([`backward`]).
pub fn supports_backward(op: UnaryOp) -> bool {
    matches!(op, UnaryOp::Gelu | UnaryOp::Silu)
}

/// `dst[i] = g[i] · op'(x[i])` with AVX-512 (masked tail).
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]) and `op` must be
/// [`supports_backward`]ed.
#[target_feature(enable = "avx512f")]
pub unsafe fn backward(op: UnaryOp, x: &[f32], g: &[f32], dst: &mut [f32]) {
    assert!(x.len() == dst.len() && g.len() == dst.len());
    let grad = |v: __m512| unsafe {
        match op {
            UnaryOp::Gelu => gelu_grad512(v),
            UnaryOp::Silu => silu_grad512(v),
            _ => unreachable!("supports_backward() lists the ops"),
        }
    };
    let n = dst.len();
    let mut i = 0;
    unsafe {
        while i + 16 <= n {
            let d = _mm512_mul_ps(grad(_mm512_loadu_ps(x.as_ptr().add(i))), _mm512_loadu_ps(g.as_ptr().add(i)));
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), d);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            let d = _mm512_mul_ps(
                grad(_mm512_maskz_loadu_ps(m, x.as_ptr().add(i))),
                _mm512_maskz_loadu_ps(m, g.as_ptr().add(i)),
            );
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), m, d);
        }
    }
}

/// `op` on one vector (an op [`supports`] lists).
#[inline(always)]
pub(crate) unsafe fn apply512(op: UnaryOp, x: __m512) -> __m512 {
    unsafe {
        match op {
            UnaryOp::Exp => exp512(x),
            UnaryOp::Sigmoid => recip_add1(exp512(_mm512_sub_ps(_mm512_setzero_ps(), x))),
            UnaryOp::Silu => _mm512_mul_ps(x, recip_add1(exp512(_mm512_sub_ps(_mm512_setzero_ps(), x)))),
            UnaryOp::Tanh => tanh512(x),
            UnaryOp::Gelu => gelu512(x),
            UnaryOp::GeluTanh => {
                use firebrand_tensor::op::{GELU_C, SQRT_2_OVER_PI};
                let x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
                let inner =
                    _mm512_mul_ps(_mm512_set1_ps(SQRT_2_OVER_PI), _mm512_fmadd_ps(x3, _mm512_set1_ps(GELU_C), x));
                let t = tanh512(inner);
                _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5), x), _mm512_add_ps(_mm512_set1_ps(1.0), t))
            }
            // The piecewise ones, with the scalar forms' operation order.
            UnaryOp::Relu => _mm512_max_ps(_mm512_setzero_ps(), x),
            UnaryOp::Clamp(lo, hi) | UnaryOp::Hardtanh(lo, hi) => clamp512(x, lo, hi),
            UnaryOp::Hardswish => _mm512_div_ps(
                _mm512_mul_ps(x, clamp512(_mm512_add_ps(x, _mm512_set1_ps(3.0)), 0.0, 6.0)),
                _mm512_set1_ps(6.0),
            ),
            UnaryOp::Hardsigmoid => {
                _mm512_div_ps(clamp512(_mm512_add_ps(x, _mm512_set1_ps(3.0)), 0.0, 6.0), _mm512_set1_ps(6.0))
            }
            UnaryOp::Affine(m, a) => _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(m), x), _mm512_set1_ps(a)),
            UnaryOp::Neg => _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MIN))),
            UnaryOp::Square => _mm512_mul_ps(x, x),
            _ => unreachable!("supports() lists the ops"),
        }
    }
}

/// `dst[i] = src[i]·s + t` (a multiply and an add, as the scalar form).
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]).
#[target_feature(enable = "avx512f")]
pub unsafe fn affine(src: &[f32], s: f32, t: f32, dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    let n = src.len();
    let mut i = 0;
    unsafe {
        let (sv, tv) = (_mm512_set1_ps(s), _mm512_set1_ps(t));
        while i + 16 <= n {
            let v = _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(src.as_ptr().add(i)), sv), tv);
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), v);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            let v = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, src.as_ptr().add(i)), sv), tv);
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), m, v);
        }
    }
}

/// Copies `src` to `dst` in 16-lane moves (masked tail): for short rows,
/// where a call to `memcpy` per row costs more than the copy.
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]); `dst` must be valid for
/// `src.len()` writes that overlap nothing `src` covers.
#[target_feature(enable = "avx512f")]
pub unsafe fn copy(src: &[f32], dst: *mut f32) {
    let n = src.len();
    let mut i = 0;
    unsafe {
        while i + 16 <= n {
            _mm512_storeu_ps(dst.add(i), _mm512_loadu_ps(src.as_ptr().add(i)));
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            _mm512_mask_storeu_ps(dst.add(i), m, _mm512_maskz_loadu_ps(m, src.as_ptr().add(i)));
        }
    }
}

/// `dst[i] = op(src[i])` with AVX-512 (masked tail).
///
/// # Safety
/// The CPU must support AVX-512F ([`available`]) and `op` must be [`supports`]ed.
#[target_feature(enable = "avx512f")]
pub unsafe fn map(op: UnaryOp, src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    let n = src.len();
    let mut i = 0;
    unsafe {
        while i + 16 <= n {
            let v = apply512(op, _mm512_loadu_ps(src.as_ptr().add(i)));
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), v);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            let v = apply512(op, _mm512_maskz_loadu_ps(m, src.as_ptr().add(i)));
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), m, v);
        }
    }
}

/// Writes `exp(x - shift)` into `dst` and returns the sum (softmax's inner loop).
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub unsafe fn exp_shifted_sum(x: &[f32], shift: f32, dst: &mut [f32]) -> f32 {
    let n = x.len();
    let mut i = 0;
    unsafe {
        let s = _mm512_set1_ps(shift);
        let mut acc = _mm512_setzero_ps();
        while i + 16 <= n {
            let v = exp512(_mm512_sub_ps(_mm512_loadu_ps(x.as_ptr().add(i)), s));
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), v);
            acc = _mm512_add_ps(acc, v);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = ((1u32 << (n - i)) - 1) as u16;
            let v = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x.as_ptr().add(i)), s));
            _mm512_mask_storeu_ps(dst.as_mut_ptr().add(i), m, v);
            acc = _mm512_mask_add_ps(acc, m, acc, v);
        }
        _mm512_reduce_add_ps(acc)
    }
}
