//! The AVX2 kernels of [`super::int8`], for CPUs with neither AMX nor
//! AVX-512 VNNI (AMD Zen 1–3, Intel Haswell to Comet Lake). AVX2's
//! `u8·i8` product, `VPMADDUBSW`, adds two products into a saturating
//! `i16`: exact while the activations stay below 128 (2·127·127 fits), as
//! PyTorch's fbgemm keeps them on such CPUs (`reduce_range`). Two kernels:
//!
//! * **bytes** (rows quantized to `0..=127`, dynamic quantization on this
//!   kernel): the weight packed once in panels of 8 channels, one 32-byte
//!   vector per 4 depths (channel `c`'s four weights in bytes `4c..4c+4`);
//!   per step four bytes of a row are broadcast, `VPMADDUBSW` makes the
//!   pair sums and `VPMADDWD` by ones the sums of four in `i32` lanes;
//! * **wide** (rows over the whole `0..=255`, static quantization): both
//!   sides widened to `i16` and `VPMADDWD` adds two `i16·i16` products
//!   into each `i32` lane, the weight packed (on first use) in panels of 8
//!   channels, one vector per 2 depths.
//!
//! Both have a micro-kernel of up to 4 or 6 rows by 16 channels (two
//! panels); the sums and their dequantization equal the portable loop's
//! bit for bit.

use super::int8::{QuantizedRows, QuantizedWeight, tail_group};
use crate::parallel::SendPtr;
use crate::simd256::lanes;
use firebrand_tensor::op::UnaryOp;
use std::arch::x86_64::*;

/// Whether this CPU has AVX2 and FMA.
pub(crate) fn available() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
}

/// The weight `(n, k)` in panels of 8 channels × `k/4` groups of 32
/// bytes (zeros past `n` and `k`): the bytes kernel's layout.
pub(crate) fn pack_weight(w: &[i8], n: usize, k: usize) -> Vec<i8> {
    super::int8::pack_panels(w, n, k, 8, 4)
}

/// The weight `(n, k)` widened to `i16`, in panels of 8 channels ×
/// `k/2` pairs of 16 words (zeros past `n` and `k`), as bytes: the wide
/// kernel's layout.
pub(crate) fn pack_weight_wide(w: &[i8], n: usize, k: usize) -> Vec<i8> {
    super::int8::pack_panels(w, n, k, 8, 2)
        .into_iter()
        .flat_map(|v| (v as i16).to_le_bytes())
        .map(|b| b as i8)
        .collect()
}

/// `out = act(dequantized(a · wᵀ) + bias)` with AVX2 (`act` one with an
/// AVX2 form, or `None`): the bytes kernel when every level of `a` is
/// below 128, else the wide one.
///
/// # Safety
/// AVX2 and FMA are [`available`]; `packed` is [`pack_weight`] of `w` and
/// `wide` gives [`pack_weight_wide`] of it; `out` holds `m·n` values.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn gemm<'w>(
    a: &QuantizedRows,
    w: &'w QuantizedWeight,
    packed: &'w [i8],
    wide: impl FnOnce() -> &'w [i8],
    bias: Option<&[f32]>,
    act: Option<UnaryOp>,
    out: &mut [f32],
) {
    let m = a.m;
    let out = SendPtr(out.as_mut_ptr());
    if a.top < 128 {
        let job = Job { a, w, packed, bias, act, out };
        super::int8::par_row_blocks!(m, rows_block_bytes(&job), [4, 3, 2, 1]);
    } else {
        let job = Job { a, w, packed: wide(), bias, act, out };
        super::int8::par_row_blocks!(m, rows_block_wide(&job), [6, 5, 4, 3, 2, 1]);
    }
}

/// One product's operands, shared by its row blocks.
struct Job<'a> {
    a: &'a QuantizedRows,
    w: &'a QuantizedWeight,
    packed: &'a [i8],
    bias: Option<&'a [f32]>,
    act: Option<UnaryOp>,
    out: SendPtr<f32>,
}

thread_local! {
    /// A block's rows of A widened to `i16` (`R` rows of `2·⌈k/2⌉` words).
    static WIDE: std::cell::RefCell<Vec<i16>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Rows `i0..i0 + R` against every channel with the bytes kernel.
///
/// # Safety
/// As [`gemm`], with `i0 + R ≤ a.m` and `job.packed` the bytes layout.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_block_bytes<const R: usize>(job: &Job, i0: usize) {
    let a = job.a;
    let (n, k) = (job.w.n, a.k);
    let groups = k.div_ceil(4);
    let panels = n.div_ceil(8);
    // The rows' whole four-byte groups are read in place; a partial last
    // one (k not a multiple of 4) is gathered once per block.
    let full = k / 4;
    let tail: [i32; R] = std::array::from_fn(|r| if full < groups { tail_group(a, i0 + r) } else { 0 });
    // SAFETY: rows i0..i0 + R of A hold k bytes each.
    let rows: [*const u8; R] = std::array::from_fn(|r| unsafe { a.data.as_ptr().add((i0 + r) * k) });
    let mut p = 0;
    while p < panels {
        let np = (panels - p).min(2);
        // SAFETY: the panels hold `groups` vectors each; `store` stays
        // within the block's rows and the valid channels.
        unsafe {
            let bp0 = job.packed[p * groups * 32..].as_ptr();
            let bp1 = if np == 2 { job.packed[(p + 1) * groups * 32..].as_ptr() } else { bp0 };
            store::<R>(job, i0, p, np, dot_bytes::<R>(&rows, &tail, full, groups, [bp0, bp1]));
        }
        p += np;
    }
}

/// The `i32` sums of `R` rows against two byte panels (`bp[1]` may repeat
/// `bp[0]`) over `groups` four-byte groups, the last one from `tail` when
/// `full < groups`.
///
/// # Safety
/// The rows hold `4·full` bytes below 128, the panels `groups` vectors; AVX2.
#[inline(always)]
unsafe fn dot_bytes<const R: usize>(
    rows: &[*const u8; R],
    tail: &[i32; R],
    full: usize,
    groups: usize,
    bp: [*const i8; 2],
) -> [[__m256i; R]; 2] {
    // SAFETY: the caller's contract.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut a0 = [_mm256_setzero_si256(); R];
        let mut a1 = [_mm256_setzero_si256(); R];
        // A macro, not a closure: a closure would be compiled without AVX2.
        macro_rules! step {
            ($g:expr, $lane:expr) => {{
                let b0 = _mm256_loadu_si256(bp[0].add(32 * $g) as *const __m256i);
                let b1 = _mm256_loadu_si256(bp[1].add(32 * $g) as *const __m256i);
                for r in 0..R {
                    let av = _mm256_set1_epi32($lane(r));
                    // Pairs into i16 (exact: the levels are below 128), then
                    // pairs of pairs into i32.
                    a0[r] = _mm256_add_epi32(a0[r], _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones));
                    a1[r] = _mm256_add_epi32(a1[r], _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones));
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

/// Dequantizes and stores the sums of rows `i0..i0 + R` against panels
/// `p..p + np` (8 channels each).
///
/// # Safety
/// As [`gemm`], with `i0 + R ≤ a.m` and `p + np` panels within `n`.
#[inline(always)]
unsafe fn store<const R: usize>(job: &Job, i0: usize, p: usize, np: usize, acc: [[__m256i; R]; 2]) {
    let (a, w, n) = (job.a, job.w, job.w.n);
    // SAFETY: masked loads and stores stay within the valid channels and the block's rows.
    unsafe {
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
                // A `match`, not a closure (which would be compiled without AVX2).
                let v = match job.act {
                    Some(op) => crate::simd256::apply256(op, v),
                    None => v,
                };
                _mm256_maskstore_ps(job.out.get().add(i * n + j), mask, v);
            }
        }
    }
}

/// Rows `i0..i0 + R` against every channel with the wide kernel.
///
/// # Safety
/// As [`gemm`], with `i0 + R ≤ a.m` and `job.packed` the wide layout.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_block_wide<const R: usize>(job: &Job, i0: usize) {
    let a = job.a;
    let (n, k) = (job.w.n, a.k);
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
                store::<R>(job, i0, p, np, dot_wide::<R>(&rows, pairs, [bp0, bp1]));
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
unsafe fn dot_wide<const R: usize>(rows: &[*const i32; R], pairs: usize, bp: [*const i8; 2]) -> [[__m256i; R]; 2] {
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
