//! The AVX2 kernel of [`super::blocks`], for CPUs without AVX-512. Each
//! weight block is widened to two vectors of 16 `i16` (`Q8_0`'s bytes
//! zero-extended, or a 4-bit block's low nibbles then its high nibbles);
//! `VPMADDWD` against the activations' `i16` sums the block into 8 `i32`
//! lanes, widened to `f32` and multiplied by the block's scale, into two
//! accumulators (even and odd blocks). Up to 4 activation rows share each
//! unpacked block. The weights' offsets (`Q4_1`'s minimum, or the zero
//! point of `Q8_0` and `Q4_0`) are summed per output in one vector dot of
//! the row's offsets and the activations' block sums.

use super::blocks::{BLOCK, BlockFormat, BlockWeight, Q16Rows};
use std::arch::x86_64::*;
use std::ops::Range;

/// Activation rows per micro-kernel call.
const MR: usize = 4;

/// Whether this CPU has what the kernel needs (AVX2, FMA and F16C).
pub(crate) fn available() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    })
}

/// `out[i, j]` for every activation row `i` and weight row `j` in `cols`.
///
/// # Safety
/// [`available`]; `out` points to `a.m·w.n` floats, of which columns
/// `cols` are written; `a` and `w` match (checked by the caller).
pub(crate) unsafe fn gemm(a: &Q16Rows, w: &BlockWeight, cols: Range<usize>, out: *mut f32) {
    let nb = w.k / BLOCK;
    // Each weight row's scales and offsets as f32, converted once per row.
    let mut scales = vec![0.0f32; 2 * nb.next_multiple_of(8)];
    let mut i = 0;
    while i < a.m {
        let r = (a.m - i).min(MR);
        let c = cols.clone();
        let s = &mut scales;
        // SAFETY: as the caller promised; rows i..i+r exist.
        unsafe {
            match (w.format, r) {
                (BlockFormat::Q8_0, 1) => tile::<0, 1>(a, w, i, c, out, s),
                (BlockFormat::Q8_0, 2) => tile::<0, 2>(a, w, i, c, out, s),
                (BlockFormat::Q8_0, 3) => tile::<0, 3>(a, w, i, c, out, s),
                (BlockFormat::Q8_0, _) => tile::<0, 4>(a, w, i, c, out, s),
                (BlockFormat::Q4_0, 1) => tile::<1, 1>(a, w, i, c, out, s),
                (BlockFormat::Q4_0, 2) => tile::<1, 2>(a, w, i, c, out, s),
                (BlockFormat::Q4_0, 3) => tile::<1, 3>(a, w, i, c, out, s),
                (BlockFormat::Q4_0, _) => tile::<1, 4>(a, w, i, c, out, s),
                (BlockFormat::Q4_1, 1) => tile::<2, 1>(a, w, i, c, out, s),
                (BlockFormat::Q4_1, 2) => tile::<2, 2>(a, w, i, c, out, s),
                (BlockFormat::Q4_1, 3) => tile::<2, 3>(a, w, i, c, out, s),
                (BlockFormat::Q4_1, _) => tile::<2, 4>(a, w, i, c, out, s),
            }
        }
        i += r;
    }
}

/// `n` half-precision values at `src` to `f32` at `dst` (`n` rounded up to 8 readable at `dst`).
///
/// # Safety
/// F16C; `src` holds `n` values, `dst` room for `n.next_multiple_of(8)`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn halves(src: *const u16, n: usize, dst: *mut f32) {
    // SAFETY: as the caller promised.
    unsafe {
        let mut g = 0;
        while g + 8 <= n {
            _mm256_storeu_ps(dst.add(g), _mm256_cvtph_ps(_mm_loadu_si128(src.add(g) as *const __m128i)));
            g += 8;
        }
        for t in g..n {
            *dst.add(t) = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(*src.add(t) as i32)));
        }
    }
}

/// Block `b`'s 32 weights of a row starting at `wq`, as two vectors of 16 `i16`.
#[inline(always)]
unsafe fn widen<const F: u8>(wq: *const u8, b: usize) -> (__m256i, __m256i) {
    // SAFETY: the caller's row holds block b.
    unsafe {
        if F == 0 {
            let p = wq.add(b * 32);
            (
                _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i)),
                _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(16) as *const __m128i)),
            )
        } else {
            let v = _mm256_cvtepu8_epi16(_mm_loadu_si128(wq.add(b * 16) as *const __m128i));
            (_mm256_and_si256(v, _mm256_set1_epi16(0x0f)), _mm256_srli_epi16::<4>(v))
        }
    }
}

/// The sum of a vector's 8 lanes.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: plain register arithmetic.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

/// Rows `i0..i0 + R` against weight rows `cols`, for format `F` (0:
/// `Q8_0`, 1: `Q4_0`, 2: `Q4_1`); `scales` is scratch of `2·nb` rounded up.
///
/// # Safety
/// As [`gemm`], with `i0 + R ≤ a.m`.
// The row index addresses the accumulators and the activation rows alike.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const F: u8, const R: usize>(
    a: &Q16Rows,
    w: &BlockWeight,
    i0: usize,
    cols: Range<usize>,
    out: *mut f32,
    scales: &mut [f32],
) {
    let (k, nb) = (w.k, w.k / BLOCK);
    let qb = if F == 0 { 32 } else { 16 };
    let (dw, mw) = scales.split_at_mut(nb.next_multiple_of(8));
    // SAFETY: every pointer below stays inside its array: row j of the
    // weight has nb blocks of qb bytes and nb scales (and mins), row i of
    // the activations k values and nb block sums.
    unsafe {
        for j in cols {
            let wq = w.qs.as_ptr().add(j * nb * qb);
            halves(w.d.as_ptr().add(j * nb) as *const u16, nb, dw.as_mut_ptr());
            if F == 2 {
                halves(w.m.as_ptr().add(j * nb) as *const u16, nb, mw.as_mut_ptr());
            }
            // Two accumulators per row, for even and odd blocks: with one,
            // a single row (a generation step) waited on the multiply-add's
            // latency every block.
            let mut acc = [[_mm256_setzero_ps(); R]; 2];
            macro_rules! block {
                ($b:expr, $h:expr) => {{
                    let b = $b;
                    let (w0, w1) = widen::<F>(wq, b);
                    let sc = _mm256_set1_ps(dw[b]);
                    for r in 0..R {
                        let x = a.qs.as_ptr().add((i0 + r) * k + b * BLOCK);
                        let x0 = _mm256_loadu_si256(x as *const __m256i);
                        let x1 = _mm256_loadu_si256(x.add(16) as *const __m256i);
                        let dot = _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
                        acc[$h][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sc, acc[$h][r]);
                    }
                }};
            }
            let mut b = 0;
            while b + 2 <= nb {
                block!(b, 0);
                block!(b + 1, 1);
                b += 2;
            }
            if b < nb {
                block!(b, 0);
            }
            for r in 0..R {
                // The offsets' term, Σ_b off_b · s_b over the row's block
                // sums: Q4_1's minimums, or −128·d (Q8_0) and −8·d (Q4_0).
                let sr = a.s.as_ptr().add((i0 + r) * nb);
                let offs = if F == 2 { mw.as_ptr() } else { dw.as_ptr() };
                let mut o = _mm256_setzero_ps();
                let mut g = 0;
                while g + 8 <= nb {
                    o = _mm256_fmadd_ps(_mm256_loadu_ps(offs.add(g)), _mm256_loadu_ps(sr.add(g)), o);
                    g += 8;
                }
                let mut off = hsum(o);
                for t in g..nb {
                    off += *offs.add(t) * *sr.add(t);
                }
                let off = match F {
                    0 => -128.0 * off,
                    1 => -8.0 * off,
                    _ => off,
                };
                let sa = *a.scale.get_unchecked(i0 + r);
                *out.add((i0 + r) * w.n + j) = sa * hsum(_mm256_add_ps(acc[0][r], acc[1][r])) + off;
            }
        }
    }
}

/// Row `j` of `w` as `f32` into `out` (`w.k` values).
///
/// # Safety
/// [`available`]; `j < w.n`; `out` has room for `w.k` floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dequantize_row(w: &BlockWeight, j: usize, out: *mut f32) {
    let nb = w.k / BLOCK;
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
            let (dv, ov) = (_mm256_set1_ps(d), _mm256_set1_ps(off));
            let (lo, hi) = match w.format {
                BlockFormat::Q8_0 => widen::<0>(w.qs.as_ptr().add(j * nb * 32), b),
                _ => widen::<1>(w.qs.as_ptr().add(j * nb * 16), b),
            };
            let o = out.add(b * BLOCK);
            for (h, v) in [lo, hi].into_iter().enumerate() {
                let a = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(v)));
                let c = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256::<1>(v)));
                _mm256_storeu_ps(o.add(16 * h), _mm256_fmadd_ps(a, dv, ov));
                _mm256_storeu_ps(o.add(16 * h + 8), _mm256_fmadd_ps(c, dv, ov));
            }
        }
    }
}

/// One row quantized to `i16` (`out`, `k` values) with each block's
/// integer sum in `sums` (`k/32`), given `id = 1/scale`: the same values as
/// the portable loop (round to nearest even, clamp to ±32767).
///
/// # Safety
/// [`available`]; `row` and `out` hold `k` values, `sums` `k/32`, `k` a multiple of 32.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn quantize_row_i16(row: &[f32], id: f32, out: &mut [i16], sums: &mut [i32]) {
    let idv = _mm256_set1_ps(id);
    let (lo, hi) = (_mm256_set1_ps(-32767.0), _mm256_set1_ps(32767.0));
    // SAFETY: each block reads 32 values of row and writes 32 of out.
    unsafe {
        for (b, s) in sums.iter_mut().enumerate() {
            let mut acc = _mm256_setzero_si256();
            for h in 0..2 {
                let p = b * BLOCK + 16 * h;
                let q = |o: usize| {
                    let v = _mm256_mul_ps(_mm256_loadu_ps(row.as_ptr().add(p + o)), idv);
                    // Clamp in f32 (a NaN row's values do not matter: its scale is NaN).
                    _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi))
                };
                let (q0, q1) = (q(0), q(8));
                acc = _mm256_add_epi32(acc, _mm256_add_epi32(q0, q1));
                // packs interleaves 128-bit lanes; the permute puts them back in order.
                let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(q0, q1));
                _mm256_storeu_si256(out.as_mut_ptr().add(p) as *mut __m256i, packed);
            }
            let s4 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256::<1>(acc));
            let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
            *s = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<0b10_11_00_01>(s2)));
        }
    }
}
