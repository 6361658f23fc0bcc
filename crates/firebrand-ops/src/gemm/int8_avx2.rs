//! The AVX2 kernel of [`super::int8`], for CPUs with neither AMX nor
//! AVX-512 VNNI (AMD Zen 1–3, Intel Haswell to Comet Lake). AVX2 has no
//! `u8·i8` dot product that cannot saturate (`VPMADDUBSW` adds two products
//! into an `i16`, and 2·255·127 does not fit), so both sides are widened
//! to `i16` and `VPMADDWD` adds two `i16·i16` products into each `i32`
//! lane, exactly. The weight is packed once, widened, in panels of 8
//! channels, one 32-byte vector per 2 depths (channel `c`'s two weights in
//! words `2c`, `2c+1`); each block of up to 6 rows of A is widened once
//! into a scratch buffer, and a micro-kernel of those rows by 16 channels
//! (two panels) broadcasts two words of a row per step into 12
//! accumulators. The sums and their dequantization equal the portable
//! loop's bit for bit.

use super::int8::{QuantizedRows, QuantizedWeight};
use crate::parallel::SendPtr;
use std::arch::x86_64::*;

/// Whether this CPU has AVX2 and FMA.
pub(crate) fn available() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
}

/// The weight `(n, k)` widened to `i16`, in panels of 8 channels ×
/// `k/2` pairs of 16 words (zeros past `n` and `k`), as bytes.
pub(crate) fn pack_weight(w: &[i8], n: usize, k: usize) -> Vec<i8> {
    let pairs = k.div_ceil(2);
    let panels = n.div_ceil(8);
    let mut words = vec![0i16; panels * pairs * 16];
    for p in 0..panels {
        for g in 0..pairs {
            let v = &mut words[(p * pairs + g) * 16..][..16];
            for c in 0..8 {
                let j = 8 * p + c;
                for e in 0..2 {
                    let d = 2 * g + e;
                    if j < n && d < k {
                        v[2 * c + e] = w[j * k + d] as i16;
                    }
                }
            }
        }
    }
    words.iter().flat_map(|w| w.to_le_bytes()).map(|b| b as i8).collect()
}

/// `out = dequantized(a · wᵀ) + bias` with AVX2 (no activation: the caller
/// applies it afterwards).
///
/// # Safety
/// AVX2 and FMA are [`available`]; `packed` is [`pack_weight`] of `w`;
/// `out` holds `m·n` values.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemm(
    a: &QuantizedRows,
    w: &QuantizedWeight,
    packed: &[i8],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let m = a.m;
    let job = Job { a, w, packed, bias, out: SendPtr(out.as_mut_ptr()) };
    super::int8::par_row_blocks!(m, rows_block(&job), [6, 5, 4, 3, 2, 1]);
}

/// One product's operands, shared by its row blocks.
struct Job<'a> {
    a: &'a QuantizedRows,
    w: &'a QuantizedWeight,
    packed: &'a [i8],
    bias: Option<&'a [f32]>,
    out: SendPtr<f32>,
}

thread_local! {
    /// A block's rows of A widened to `i16` (`R` rows of `2·⌈k/2⌉` words).
    static WIDE: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The lane mask of the first `width ≤ 8` lanes.
#[inline(always)]
unsafe fn lanes(width: usize) -> __m256i {
    // SAFETY: register arithmetic (AVX2 is the caller's).
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(width as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
}

/// Rows `i0..i0 + R` against every channel.
///
/// # Safety
/// As [`gemm`], with `i0 + R ≤ a.m`.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_block<const R: usize>(job: &Job, i0: usize) {
    let (a, w) = (job.a, job.w);
    let (n, k) = (w.n, a.k);
    let pairs = k.div_ceil(2);
    let panels = n.div_ceil(8);
    WIDE.with(|wide| {
        let mut wide = wide.borrow_mut();
        let len = 2 * pairs;
        if wide.len() < R * len {
            wide.resize(R * len, 0);
        }
        for r in 0..R {
            let row = &a.data[(i0 + r) * k..(i0 + r + 1) * k];
            let dst = &mut wide[r * len..(r + 1) * len];
            dst.iter_mut().zip(row).for_each(|(d, &b)| *d = b as i16);
            dst[k..].fill(0);
        }
        // Each row's pairs of words as `i32` lanes.
        let rows: [*const i32; R] = std::array::from_fn(|r| wide[r * len..].as_ptr() as *const i32);
        let mut p = 0;
        while p < panels {
            let np = (panels - p).min(2);
            // SAFETY: the panels hold `pairs` vectors each and the widened
            // rows `pairs` lanes; masked loads and stores stay within the
            // block's rows and the valid channels.
            unsafe {
                let bp0 = job.packed[p * pairs * 32..].as_ptr();
                let bp1 = if np == 2 { job.packed[(p + 1) * pairs * 32..].as_ptr() } else { bp0 };
                let acc = dot::<R>(&rows, pairs, [bp0, bp1]);
                for (h, acc) in acc.into_iter().enumerate().take(np) {
                    let j = 8 * (p + h);
                    let mask = lanes(8.min(n - j));
                    let rs = _mm256_maskload_epi32(w.row_sum[j..].as_ptr(), mask);
                    let sw = _mm256_maskload_ps(w.scale[j..].as_ptr(), mask);
                    let bv = job.bias.map_or(_mm256_setzero_ps(), |b| _mm256_maskload_ps(b[j..].as_ptr(), mask));
                    for (r, acc) in acc.into_iter().enumerate() {
                        let i = i0 + r;
                        // As `int8::dequantize`: one rounding for the scales'
                        // product, then one fused multiply-add.
                        let exact = _mm256_sub_epi32(acc, _mm256_mullo_epi32(_mm256_set1_epi32(a.zero[i]), rs));
                        let scale = _mm256_mul_ps(_mm256_set1_ps(a.scale[i]), sw);
                        let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(exact), scale, bv);
                        _mm256_maskstore_ps(job.out.get().add(i * n + j), mask, v);
                    }
                }
            }
            p += np;
        }
    });
}

/// The `i32` sums of `R` widened rows against two panels (`bp[1]` may
/// repeat `bp[0]`) over `pairs` pairs of depths. Returned by value, so the
/// accumulators live in registers.
///
/// # Safety
/// The rows hold `pairs` lanes, the panels `pairs` vectors; AVX2.
#[inline(always)]
unsafe fn dot<const R: usize>(rows: &[*const i32; R], pairs: usize, bp: [*const i8; 2]) -> [[__m256i; R]; 2] {
    // SAFETY: the caller's contract.
    unsafe {
        let mut a0 = [_mm256_setzero_si256(); R];
        let mut a1 = [_mm256_setzero_si256(); R];
        for g in 0..pairs {
            let b0 = _mm256_loadu_si256(bp[0].add(32 * g) as *const __m256i);
            let b1 = _mm256_loadu_si256(bp[1].add(32 * g) as *const __m256i);
            for r in 0..R {
                let av = _mm256_set1_epi32(rows[r].add(g).read_unaligned());
                a0[r] = _mm256_add_epi32(a0[r], _mm256_madd_epi16(av, b0));
                a1[r] = _mm256_add_epi32(a1[r], _mm256_madd_epi16(av, b1));
            }
        }
        [a0, a1]
    }
}
