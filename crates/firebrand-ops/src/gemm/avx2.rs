//! The AVX2 + FMA micro-kernel of the blocked sgemm (`blocked`), for x86-64
//! CPUs without AVX-512 (AMD Zen 1–3, Intel client cores): a 6x16 register
//! block (12 ymm accumulators, two B vectors and one broadcast: 15 of the 16
//! registers), edge columns through `vmaskmovps`, an activation with an
//! AVX2 form ([`crate::simd256`]) applied in the last block's store.

use super::blocked::{Kernel, KernelArgs};
use crate::simd256::lanes;
use std::arch::x86_64::*;

/// The AVX2 + FMA kernel.
pub(super) struct Avx2;

/// Rows of a micro-tile.
const MR: usize = 6;

impl Kernel for Avx2 {
    const MR: usize = MR;
    /// Two ymm vectors of B.
    const NR: usize = 16;
    /// An MR x KC strip of A (6 KiB) and a B panel (16 KiB) fit in L1 together.
    const KC: usize = 256;
    /// A KC x 256 block of B (256 KiB) stays in a Zen core's 512 KiB L2.
    const NCB_MAX: usize = 256;
    const TB: usize = 8;

    fn fuses(op: firebrand_tensor::op::UnaryOp) -> bool {
        crate::simd256::supports(op)
    }

    unsafe fn tile(args: KernelArgs) {
        let (mr, nr) = (args.9, args.10);
        // SAFETY: the caller's (AVX2 and FMA were detected).
        unsafe {
            match (nr == 16, mr) {
                (true, 5..) => kernel::<false, MR>(args),
                (true, 3..=4) => kernel::<false, 4>(args),
                (true, _) => kernel::<false, 2>(args),
                (false, 5..) => kernel::<true, MR>(args),
                (false, 3..=4) => kernel::<true, 4>(args),
                (false, _) => kernel::<true, 2>(args),
            }
        }
    }

    unsafe fn transpose(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        // SAFETY: the caller's.
        unsafe { transpose8_into(src, lds, dst, ldd) }
    }
}

/// Transposes the 8x8 block whose row `j` starts at `src + j * lds` into
/// `dst`, whose row `p` (8 floats) starts at `dst + p * ldd`.
#[target_feature(enable = "avx2,fma")]
unsafe fn transpose8_into(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|j| _mm256_loadu_ps(src.add(j * lds)));
        // Interleave row pairs (32-bit), then pairs of pairs (64-bit), within
        // 128-bit lanes; the lanes are swapped last.
        let t: [__m256; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 { _mm256_unpacklo_ps(a, b) } else { _mm256_unpackhi_ps(a, b) }
        });
        // u[4h + c]: rows 4h..4h+4 at columns c and 4 + c.
        let u: [__m256; 8] = std::array::from_fn(|i| {
            let (h, c) = (i / 4, i % 4);
            let (a, b) = (t[4 * h + c / 2], t[4 * h + 2 + c / 2]);
            if c % 2 == 0 { _mm256_shuffle_ps::<0x44>(a, b) } else { _mm256_shuffle_ps::<0xEE>(a, b) }
        });
        for c in 0..4 {
            _mm256_storeu_ps(dst.add(c * ldd), _mm256_permute2f128_ps::<0x20>(u[c], u[4 + c]));
            _mm256_storeu_ps(dst.add((4 + c) * ldd), _mm256_permute2f128_ps::<0x31>(u[c], u[4 + c]));
        }
    }
}

/// One tile (see [`KernelArgs`]) with `ROWS ≥ mr` rows of accumulators;
/// columns past `nr` are masked off with `vmaskmovps`.
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const MASKED: bool, const ROWS: usize>(
    (kc, a, rsa, csa, b, rsb, c, ldc, acc, mr, nr, epi): KernelArgs,
) {
    unsafe {
        let (m0, m1) = (lanes(nr.min(8)), lanes(nr.saturating_sub(8)));
        // A macro, not a closure: each load must stay one instruction.
        macro_rules! load {
            ($p:expr, $m:expr) => {
                if MASKED { _mm256_maskload_ps($p, $m) } else { _mm256_loadu_ps($p) }
            };
        }
        let mut c0 = [_mm256_setzero_ps(); ROWS];
        let mut c1 = [_mm256_setzero_ps(); ROWS];
        let mut rows = [0usize; ROWS];
        for (i, r) in rows.iter_mut().enumerate() {
            *r = i.min(mr - 1) * rsa;
        }
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let (b0, b1) = (load!(b, m0), load!(b.add(8), m1));
            for i in 0..ROWS {
                let ai = _mm256_broadcast_ss(&*a.add(rows[i]));
                c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
                c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
            }
            a = a.add(csa);
            b = b.add(rsb);
        }
        for i in 0..ROWS {
            if i >= mr {
                break;
            }
            let row = c.add(i * ldc);
            let (mut v0, mut v1) = (c0[i], c1[i]);
            if acc {
                v0 = _mm256_add_ps(load!(row, m0), v0);
                v1 = _mm256_add_ps(load!(row.add(8), m1), v1);
            }
            if let Some((scale, shift, col, act)) = epi {
                if !scale.is_null() {
                    let s = _mm256_set1_ps(*scale.add(i));
                    (v0, v1) = (_mm256_mul_ps(v0, s), _mm256_mul_ps(v1, s));
                }
                if !shift.is_null() {
                    let t = _mm256_set1_ps(*shift.add(i));
                    (v0, v1) = (_mm256_add_ps(v0, t), _mm256_add_ps(v1, t));
                }
                if !col.is_null() {
                    v0 = _mm256_add_ps(v0, load!(col, m0));
                    v1 = _mm256_add_ps(v1, load!(col.add(8), m1));
                }
                if let Some(op) = act {
                    (v0, v1) = (crate::simd256::apply256(op, v0), crate::simd256::apply256(op, v1));
                }
            }
            if MASKED {
                _mm256_maskstore_ps(row, m0, v0);
                _mm256_maskstore_ps(row.add(8), m1, v1);
            } else {
                _mm256_storeu_ps(row, v0);
                _mm256_storeu_ps(row.add(8), v1);
            }
        }
    }
}
