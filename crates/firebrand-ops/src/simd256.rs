//! AVX2 + FMA forms of the transcendental unary ops, chosen at run time on
//! CPUs without AVX-512 (AMD Zen 1–3, Intel client cores).
//!
//! `wide` picks its instruction set when the crate is compiled (SSE2 for a
//! default x86-64 build: its `f32x8` is two SSE halves and no FMA), so
//! these maps are hand-written for 8-lane AVX2 as [`crate::simd512`]'s are
//! for AVX-512, with the same algorithms: `exp` is the Cephes polynomial
//! (about 2 ulp), `tanh` its small-argument polynomial below 0.625, GELU
//! the Abramowitz–Stegun erf (absolute error below 1.5e-7). AVX2 has no
//! `scalef`, so `exp` builds `2ⁿ` from two exponent fields (each normal over
//! the whole clamped range) and a division-free reciprocal has 12 bits
//! before its Newton step instead of 14. Every one is tested against the
//! scalar reference in [`UnaryOp::apply`](firebrand_tensor::op::UnaryOp::apply).

use crate::simd512::{ERF_P, ERF_T, EXP_LN2, EXP_P, TANH_P};
use firebrand_tensor::op::UnaryOp;
use std::arch::x86_64::*;

/// True when this CPU runs the AVX2 + FMA kernels.
pub fn available() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
}

/// Ops with an AVX2 form: the transcendental ones, and ReLU.
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
    )
}

#[inline(always)]
unsafe fn splat(v: f32) -> __m256 {
    unsafe { _mm256_set1_ps(v) }
}

#[inline(always)]
unsafe fn abs256(x: __m256) -> __m256 {
    unsafe { _mm256_andnot_ps(splat(-0.0), x) }
}

/// `2^k` for integer lanes `k` in `-126..=127`.
#[inline(always)]
unsafe fn pow2i(k: __m256i) -> __m256 {
    unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127)))) }
}

#[inline(always)]
unsafe fn exp256(x: __m256) -> __m256 {
    unsafe {
        let xc = _mm256_max_ps(_mm256_min_ps(x, splat(88.73)), splat(-104.0));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            xc,
            splat(std::f32::consts::LOG2_E),
        ));
        let r = _mm256_fnmadd_ps(n, splat(EXP_LN2[0]), xc);
        let r = _mm256_fnmadd_ps(n, splat(EXP_LN2[1]), r);
        let mut p = splat(EXP_P[0]);
        for c in &EXP_P[1..] {
            p = _mm256_fmadd_ps(p, r, splat(*c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), splat(1.0));
        // Below about −103.97 the result rounds to 0: those lanes get n = 0
        // (no subnormal product to slow the multiply) and are zeroed after.
        let live = _mm256_cmp_ps::<_CMP_GT_OQ>(x, splat(-103.97));
        let ni = _mm256_and_si256(_mm256_cvtps_epi32(n), _mm256_castps_si256(live));
        // 2ⁿ = 2^h · 2^(n−h), h = ⌊n/2⌋: both normal for n in −150..=128.
        let h = _mm256_srai_epi32::<1>(ni);
        let y = _mm256_mul_ps(_mm256_mul_ps(e, pow2i(h)), pow2i(_mm256_sub_epi32(ni, h)));
        let y = _mm256_and_ps(y, live);
        // NaN in, NaN out (the clamps above would have hidden it).
        let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
        _mm256_blendv_ps(y, x, nan)
    }
}

#[inline(always)]
unsafe fn recip_add1(e: __m256) -> __m256 {
    unsafe { _mm256_div_ps(splat(1.0), _mm256_add_ps(splat(1.0), e)) }
}

#[inline(always)]
unsafe fn tanh256(x: __m256) -> __m256 {
    unsafe {
        let a = abs256(x);
        // |x| >= 0.625: 1 - 2 / (e^{2|x|} + 1), sign restored.
        let e = exp256(_mm256_add_ps(a, a));
        let big = _mm256_fnmadd_ps(splat(2.0), recip_add1(e), splat(1.0));
        let big = _mm256_or_ps(big, _mm256_and_ps(x, splat(-0.0)));
        // |x| < 0.625: Cephes' odd polynomial.
        let z = _mm256_mul_ps(x, x);
        let mut p = splat(TANH_P[0]);
        for c in &TANH_P[1..] {
            p = _mm256_fmadd_ps(p, z, splat(*c));
        }
        let small = _mm256_fmadd_ps(_mm256_mul_ps(p, z), x, x);
        let is_small = _mm256_cmp_ps::<_CMP_LT_OQ>(a, splat(0.625));
        _mm256_blendv_ps(big, small, is_small)
    }
}

/// GELU, `x·Φ(x)` with `Φ(x) = 0.5 (1 + erf(x / √2))`.
#[inline(always)]
unsafe fn gelu256(x: __m256) -> __m256 {
    unsafe {
        // erf by Abramowitz & Stegun 7.1.26.
        let z = abs256(_mm256_mul_ps(x, splat(std::f32::consts::FRAC_1_SQRT_2)));
        // t = 1 / (1 + 0.3275911 z): the 12-bit reciprocal estimate and one
        // Newton step (relative error about 2⁻²², inside the test's bound);
        // z capped at 10 (erf is 1 in f32 from 4 on) so that an infinite
        // input does not make 0·∞ in the Newton step.
        let zc = _mm256_min_ps(z, splat(10.0));
        let d = _mm256_fmadd_ps(zc, splat(ERF_T), splat(1.0));
        let r = _mm256_rcp_ps(d);
        let t = _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, splat(2.0)));
        let mut p = splat(ERF_P[0]);
        for c in &ERF_P[1..] {
            p = _mm256_fmadd_ps(p, t, splat(*c));
        }
        p = _mm256_mul_ps(p, t);
        let e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(z, z)));
        let erf_abs = _mm256_fnmadd_ps(p, e, splat(1.0));
        // erf takes x's sign.
        let erf = _mm256_xor_ps(erf_abs, _mm256_and_ps(x, splat(-0.0)));
        _mm256_mul_ps(x, _mm256_mul_ps(splat(0.5), _mm256_add_ps(splat(1.0), erf)))
    }
}

/// `op` on one vector (an op [`supports`] lists).
#[inline(always)]
pub(crate) unsafe fn apply256(op: UnaryOp, x: __m256) -> __m256 {
    unsafe {
        match op {
            UnaryOp::Exp => exp256(x),
            UnaryOp::Sigmoid => recip_add1(exp256(_mm256_sub_ps(_mm256_setzero_ps(), x))),
            UnaryOp::Silu => _mm256_mul_ps(x, recip_add1(exp256(_mm256_sub_ps(_mm256_setzero_ps(), x)))),
            UnaryOp::Tanh => tanh256(x),
            UnaryOp::Gelu => gelu256(x),
            UnaryOp::GeluTanh => {
                use firebrand_tensor::op::{GELU_C, SQRT_2_OVER_PI};
                let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
                let inner = _mm256_mul_ps(splat(SQRT_2_OVER_PI), _mm256_fmadd_ps(x3, splat(GELU_C), x));
                _mm256_mul_ps(_mm256_mul_ps(splat(0.5), x), _mm256_add_ps(splat(1.0), tanh256(inner)))
            }
            // The scalar form's `max(0, x)` keeps a NaN: `max` returns its
            // second operand when either is NaN.
            UnaryOp::Relu => _mm256_max_ps(_mm256_setzero_ps(), x),
            _ => unreachable!("supports() lists the ops"),
        }
    }
}

/// The lane mask of the first `n ≤ 8` lanes.
#[inline(always)]
pub(crate) unsafe fn lanes(n: usize) -> __m256i {
    // SAFETY: register arithmetic (AVX2 is the caller's).
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
}

/// `dst[i] = op(src[i])` with AVX2 (masked tail).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]) and `op` must be [`supports`]ed.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn map(op: UnaryOp, src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len());
    let n = src.len();
    let mut i = 0;
    unsafe {
        while i + 8 <= n {
            let v = apply256(op, _mm256_loadu_ps(src.as_ptr().add(i)));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
            i += 8;
        }
        if i < n {
            let m = lanes(n - i);
            let v = apply256(op, _mm256_maskload_ps(src.as_ptr().add(i), m));
            _mm256_maskstore_ps(dst.as_mut_ptr().add(i), m, v);
        }
    }
}

/// Writes `exp(x - shift)` into `dst` and returns the sum (softmax's inner loop).
///
/// # Safety
/// The CPU must support AVX2 and FMA ([`available`]).
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_shifted_sum(x: &[f32], shift: f32, dst: &mut [f32]) -> f32 {
    assert_eq!(x.len(), dst.len());
    let n = x.len();
    let mut i = 0;
    unsafe {
        let s = splat(shift);
        let mut acc = _mm256_setzero_ps();
        while i + 8 <= n {
            let v = exp256(_mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(i)), s));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
            acc = _mm256_add_ps(acc, v);
            i += 8;
        }
        if i < n {
            let m = lanes(n - i);
            let v = exp256(_mm256_sub_ps(_mm256_maskload_ps(x.as_ptr().add(i), m), s));
            _mm256_maskstore_ps(dst.as_mut_ptr().add(i), m, v);
            acc = _mm256_add_ps(acc, _mm256_and_ps(v, _mm256_castsi256_ps(m)));
        }
        let mut l = [0.0f32; 8];
        _mm256_storeu_ps(l.as_mut_ptr(), acc);
        l.iter().sum()
    }
}
