//! The AVX-512 kernel of [`super::blocks`]. One 64-byte vector holds one
//! weight block widened to 32 `i16` (`Q8_0`'s bytes zero-extended, or a
//! 4-bit block's low nibbles then its high nibbles, which is the block's
//! order); `VPMADDWD` against the activations' 32 `i16` sums the block into
//! 16 `i32` lanes, which are widened to `f32` and multiplied by the block's
//! scale, picked out of a vector of 16 blocks' scales by one permute. A
//! micro-kernel of up to 4 activation rows shares each unpacked block and
//! its scale.

use super::blocks::{BLOCK, BlockFormat, BlockWeight, Q16Rows};
use std::arch::x86_64::*;
use std::ops::Range;

/// Activation rows per micro-kernel call.
const MR: usize = 4;

/// Whether this CPU has what the kernel needs (AVX-512 F, BW and VL).
pub(crate) fn available() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vl")
    })
}

/// `out[i, j]` for every activation row `i` and weight row `j` in `cols`.
///
/// # Safety
/// [`available`]; `out` points to `a.m·w.n` floats, of which columns
/// `cols` are written; `a` and `w` match (checked by the caller).
pub(crate) unsafe fn gemm(a: &Q16Rows, w: &BlockWeight, cols: Range<usize>, out: *mut f32) {
    let mut i = 0;
    while i < a.m {
        let r = (a.m - i).min(MR);
        let c = cols.clone();
        // SAFETY: as the caller promised; rows i..i+r exist.
        unsafe {
            match (w.format, r) {
                (BlockFormat::Q8_0, 1) => tile::<0, 1>(a, w, i, c, out),
                (BlockFormat::Q8_0, 2) => tile::<0, 2>(a, w, i, c, out),
                (BlockFormat::Q8_0, 3) => tile::<0, 3>(a, w, i, c, out),
                (BlockFormat::Q8_0, _) => tile::<0, 4>(a, w, i, c, out),
                (BlockFormat::Q4_0, 1) => tile::<1, 1>(a, w, i, c, out),
                (BlockFormat::Q4_0, 2) => tile::<1, 2>(a, w, i, c, out),
                (BlockFormat::Q4_0, 3) => tile::<1, 3>(a, w, i, c, out),
                (BlockFormat::Q4_0, _) => tile::<1, 4>(a, w, i, c, out),
                (BlockFormat::Q4_1, 1) => tile::<2, 1>(a, w, i, c, out),
                (BlockFormat::Q4_1, 2) => tile::<2, 2>(a, w, i, c, out),
                (BlockFormat::Q4_1, 3) => tile::<2, 3>(a, w, i, c, out),
                (BlockFormat::Q4_1, _) => tile::<2, 4>(a, w, i, c, out),
            }
        }
        i += r;
    }
}

/// Rows `i0..i0 + R` against weight rows `cols`, for format `F` (0:
/// `Q8_0`, 1: `Q4_0`, 2: `Q4_1`).
///
/// # Safety
/// As [`gemm`], with `i0 + R ≤ a.m`.
// The row index addresses the accumulators and the activation rows alike.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn tile<const F: u8, const R: usize>(
    a: &Q16Rows,
    w: &BlockWeight,
    i0: usize,
    cols: Range<usize>,
    out: *mut f32,
) {
    let (k, nb) = (w.k, w.k / BLOCK);
    let qb = if F == 0 { 32 } else { 16 };
    let (low, one) = (_mm256_set1_epi16(0x0f), _mm512_set1_epi32(1));
    // SAFETY: every pointer below stays inside its array: row j of the
    // weight has nb blocks of qb bytes and nb scales (and mins), row i of
    // the activations k values and nb block sums; masked loads read only
    // the group's blocks.
    unsafe {
        for j in cols {
            let wq = w.qs.as_ptr().add(j * nb * qb);
            let wd = w.d.as_ptr().add(j * nb) as *const i16;
            let wm = if F == 2 { w.m.as_ptr().add(j * nb) as *const i16 } else { std::ptr::null() };
            let mut acc = [_mm512_setzero_ps(); R];
            let mut acc_off = [_mm512_setzero_ps(); R];
            let mut g = 0;
            while g < nb {
                let gl = (nb - g).min(16);
                let mask: __mmask16 = if gl == 16 { 0xffff } else { (1u16 << gl) - 1 };
                let dw = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, wd.add(g)));
                let off = match F {
                    0 => _mm512_mul_ps(dw, _mm512_set1_ps(-128.0)),
                    1 => _mm512_mul_ps(dw, _mm512_set1_ps(-8.0)),
                    _ => _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, wm.add(g))),
                };
                for r in 0..R {
                    let sums = _mm512_maskz_loadu_ps(mask, a.s.as_ptr().add((i0 + r) * nb + g));
                    acc_off[r] = _mm512_fmadd_ps(off, sums, acc_off[r]);
                }
                let mut idx = _mm512_setzero_si512();
                for b in g..g + gl {
                    let wv = if F == 0 {
                        _mm512_cvtepu8_epi16(_mm256_loadu_si256(wq.add(b * 32) as *const __m256i))
                    } else {
                        let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(wq.add(b * 16) as *const __m128i));
                        let lo = _mm256_and_si256(v, low);
                        let hi = _mm256_srli_epi16::<4>(v);
                        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
                    };
                    let sc = _mm512_permutexvar_ps(idx, dw);
                    for r in 0..R {
                        let x = _mm512_loadu_si512(a.qs.as_ptr().add((i0 + r) * k + b * BLOCK) as *const _);
                        let dot = _mm512_madd_epi16(wv, x);
                        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sc, acc[r]);
                    }
                    idx = _mm512_add_epi32(idx, one);
                }
                g += gl;
            }
            for r in 0..R {
                let sa = *a.scale.get_unchecked(i0 + r);
                *out.add((i0 + r) * w.n + j) = sa * _mm512_reduce_add_ps(acc[r]) + _mm512_reduce_add_ps(acc_off[r]);
            }
        }
    }
}

/// Row `j` of `w` as `f32` into `out` (`w.k` values).
///
/// # Safety
/// [`available`]; `j < w.n`; `out` has room for `w.k` floats.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn dequantize_row(w: &BlockWeight, j: usize, out: *mut f32) {
    let nb = w.k / BLOCK;
    let low = _mm512_set1_epi32(0x0f);
    // SAFETY: block i of row j lies inside the weight's arrays; out holds k floats.
    unsafe {
        for b in 0..nb {
            let i = j * nb + b;
            let d = w.d[i].to_f32();
            let off = match w.format {
                BlockFormat::Q8_0 => -128.0 * d,
                BlockFormat::Q4_0 => -8.0 * d,
                BlockFormat::Q4_1 => w.m[i].to_f32(),
            };
            let (dv, ov) = (_mm512_set1_ps(d), _mm512_set1_ps(off));
            let (lo, hi) = if w.format == BlockFormat::Q8_0 {
                let p = w.qs.as_ptr().add(i * 32);
                (
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i)),
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(16) as *const __m128i)),
                )
            } else {
                let u = _mm512_cvtepu8_epi32(_mm_loadu_si128(w.qs.as_ptr().add(i * 16) as *const __m128i));
                (_mm512_and_si512(u, low), _mm512_srli_epi32::<4>(u))
            };
            let o = out.add(b * BLOCK);
            _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), dv, ov));
            _mm512_storeu_ps(o.add(16), _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), dv, ov));
        }
    }
}

/// One row quantized to `i16` (`out`, `k` values) with each block's
/// integer sum in `sums` (`k/32`), given `id = 1/scale`: the same values as
/// the portable loop (round to nearest even, clamp to ±32767).
///
/// # Safety
/// [`available`]; `row` and `out` hold `k` values, `sums` `k/32`, `k` a multiple of 32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(crate) unsafe fn quantize_row_i16(row: &[f32], id: f32, out: &mut [i16], sums: &mut [i32]) {
    let idv = _mm512_set1_ps(id);
    let (lo, hi) = (_mm512_set1_ps(-32767.0), _mm512_set1_ps(32767.0));
    // SAFETY: each block reads 32 values of row and writes 32 of out.
    unsafe {
        for (b, s) in sums.iter_mut().enumerate() {
            let mut acc = _mm512_setzero_si512();
            for h in 0..2 {
                let p = b * BLOCK + 16 * h;
                let v = _mm512_mul_ps(_mm512_loadu_ps(row.as_ptr().add(p)), idv);
                // Clamp in f32 (a NaN row's values do not matter: its scale is NaN).
                let q = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(v, lo), hi));
                acc = _mm512_add_epi32(acc, q);
                _mm256_storeu_si256(out.as_mut_ptr().add(p) as *mut __m256i, _mm512_cvtepi32_epi16(q));
            }
            *s = _mm512_reduce_add_epi32(acc);
        }
    }
}
