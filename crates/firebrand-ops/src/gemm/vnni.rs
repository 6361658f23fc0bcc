//! The AVX-512 VNNI kernel of [`super::int8`], for CPUs without AMX
//! (Ice Lake, Cascade Lake): `VPDPBUSD` adds, per 32-bit lane, four `u8·i8`
//! products into an `i32`. The weight is packed once in panels of 16
//! channels, one 64-byte vector per 4 depths (channel `c`'s four weights in
//! bytes `4c..4c+4`); a micro-kernel of 8 rows by 32 channels (two panels)
//! broadcasts four bytes of a row of A per step into 16 accumulators, each
//! broadcast feeding both panels (a last odd panel alone).

use super::int8::{QuantizedRows, QuantizedWeight, tail_group};
use crate::parallel::SendPtr;
use std::arch::x86_64::*;

/// Whether this CPU has AVX-512 VNNI (and BW for the masked byte work).
pub(crate) fn available() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512bw")
    })
}

/// The weight `(n, k)` in panels of 16 channels × `k/4` groups of 64 bytes.
pub(crate) fn pack_weight(w: &[i8], n: usize, k: usize) -> Vec<i8> {
    super::int8::pack_panels(w, n, k, 16, 4)
}

/// `out = act(dequantized(a · wᵀ) + bias)` with VNNI (`act` one with an
/// AVX-512 form, or `None`).
///
/// # Safety
/// AVX-512 VNNI and BW are [`available`]; `packed` is [`pack_weight`] of
/// `w`; `out` holds `m·n` values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(crate) unsafe fn gemm(
    a: &QuantizedRows,
    w: &QuantizedWeight,
    packed: &[i8],
    bias: Option<&[f32]>,
    act: Option<firebrand_tensor::op::UnaryOp>,
    out: &mut [f32],
) {
    let m = a.m;
    let uniform = a.zero.iter().all(|&z| z == a.zero[0]) && a.scale.iter().all(|s| s.to_bits() == a.scale[0].to_bits());
    let job = Job { a, w, packed, bias, act, uniform, out: SendPtr(out.as_mut_ptr()) };
    super::int8::par_row_blocks!(m, rows_block(&job), [8, 7, 6, 5, 4, 3, 2, 1]);
}

/// One product's operands, shared by its row blocks.
struct Job<'a> {
    a: &'a QuantizedRows,
    w: &'a QuantizedWeight,
    packed: &'a [i8],
    bias: Option<&'a [f32]>,
    act: Option<firebrand_tensor::op::UnaryOp>,
    /// Every row has the same scale and zero point (static quantization).
    uniform: bool,
    out: SendPtr<f32>,
}

/// Rows `i0..i0 + R` against every channel.
///
/// # Safety
/// As [`gemm`], with `i0 + R ≤ a.m`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn rows_block<const R: usize>(job: &Job, i0: usize) {
    let (a, w) = (job.a, job.w);
    let (n, k) = (w.n, a.k);
    let groups = k.div_ceil(4);
    let panels = n.div_ceil(16);
    // The rows' whole four-byte groups are read in place; a partial last
    // one (k not a multiple of 4) is gathered once per block.
    let full = k / 4;
    let tail: [i32; R] = std::array::from_fn(|r| if full < groups { tail_group(a, i0 + r) } else { 0 });
    // SAFETY: rows i0..i0 + R of A hold k bytes each.
    let rows: [*const u8; R] = std::array::from_fn(|r| unsafe { a.data.as_ptr().add((i0 + r) * k) });
    // Two panels (32 channels) at a time: each broadcast row group feeds
    // both; a last odd panel alone.
    let mut p = 0;
    while p < panels {
        let np = (panels - p).min(2);
        // SAFETY: the panels hold `groups` vectors each; masked loads and
        // stores stay within the block's rows and the valid channels.
        unsafe {
            let bp0 = job.packed[p * groups * 64..].as_ptr();
            let bp1 = if np == 2 { job.packed[(p + 1) * groups * 64..].as_ptr() } else { bp0 };
            let acc = dot::<R>(&rows, &tail, full, groups, [bp0, bp1]);
            for (h, acc) in acc.into_iter().enumerate().take(np) {
                let j = 16 * (p + h);
                let width = 16.min(n - j);
                let mask: __mmask16 = if width == 16 { 0xffff } else { (1u16 << width) - 1 };
                let rs = _mm512_maskz_loadu_epi32(mask, w.row_sum[j..].as_ptr());
                let sw = _mm512_maskz_loadu_ps(mask, w.scale[j..].as_ptr());
                let bv = job.bias.map_or(_mm512_setzero_ps(), |b| _mm512_maskz_loadu_ps(mask, b[j..].as_ptr()));
                if job.uniform {
                    // The same arithmetic as `dequantize16`, its per-row
                    // terms computed once.
                    let corr = _mm512_mullo_epi32(_mm512_set1_epi32(a.zero[i0]), rs);
                    let scale = _mm512_mul_ps(_mm512_set1_ps(a.scale[i0]), sw);
                    for (r, acc) in acc.into_iter().enumerate() {
                        let exact = _mm512_sub_epi32(acc, corr);
                        let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, bv);
                        let v = match job.act {
                            Some(op) => crate::simd512::apply512(op, v),
                            None => v,
                        };
                        _mm512_mask_storeu_ps(job.out.get().add((i0 + r) * n + j), mask, v);
                    }
                } else {
                    for (r, acc) in acc.into_iter().enumerate() {
                        let i = i0 + r;
                        let v = super::int8::dequantize16(acc, a, i, rs, sw, bv, job.act);
                        _mm512_mask_storeu_ps(job.out.get().add(i * n + j), mask, v);
                    }
                }
            }
        }
        p += np;
    }
}

/// The `i32` sums of `R` rows against two panels (`bp[1]` may repeat
/// `bp[0]`) over `groups` four-byte groups, the last one from `tail` when
/// `full < groups`. Returned by value, so the accumulators live in registers.
///
/// # Safety
/// The rows hold `4·full` bytes, the panels `groups` vectors.
#[inline(always)]
unsafe fn dot<const R: usize>(
    rows: &[*const u8; R],
    tail: &[i32; R],
    full: usize,
    groups: usize,
    bp: [*const i8; 2],
) -> [[__m512i; R]; 2] {
    // SAFETY: the caller's contract.
    unsafe {
        let mut a0 = [_mm512_setzero_si512(); R];
        let mut a1 = [_mm512_setzero_si512(); R];
        // A macro, not a closure: a closure would be compiled without VNNI.
        macro_rules! step {
            ($g:expr, $lane:expr) => {{
                let b0 = _mm512_loadu_si512(bp[0].add(64 * $g) as *const __m512i);
                let b1 = _mm512_loadu_si512(bp[1].add(64 * $g) as *const __m512i);
                for r in 0..R {
                    let av = _mm512_set1_epi32($lane(r));
                    a0[r] = _mm512_dpbusd_epi32(a0[r], av, b0);
                    a1[r] = _mm512_dpbusd_epi32(a1[r], av, b1);
                }
            }};
        }
        for g in 0..full {
            step!(g, |r: usize| (rows[r].add(4 * g) as *const i32).read_unaligned());
        }
        if full < groups {
            step!(full, |r: usize| tail[r]);
        }
        [a0, a1]
    }
}
