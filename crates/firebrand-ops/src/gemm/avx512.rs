//! The AVX-512 micro-kernel of the blocked sgemm (`blocked`): a 12x32
//! register block (24 zmm accumulators), masked edge tiles, and the epilogue
//! with the activations that have an AVX-512 form.

use super::blocked::{Kernel, KernelArgs};
use std::arch::x86_64::*;

/// The AVX-512F kernel.
pub(super) struct Avx512;

/// Rows of a micro-tile.
const MR: usize = 12;

impl Kernel for Avx512 {
    const MR: usize = MR;
    /// Two zmm vectors of B.
    const NR: usize = 32;
    /// An MR x KC strip of A (48 KiB) is reused from L1/L2 (measured: KC =
    /// 1024 with 128-column blocks beat 512 x 256 by 2-3% at n >= 1024).
    const KC: usize = 1024;
    /// A KC x 128 block of B (512 KiB) stays in the core's own L2.
    const NCB_MAX: usize = 128;
    const TB: usize = 16;

    fn fuses(op: firebrand_tensor::op::UnaryOp) -> bool {
        crate::simd512::supports(op)
    }

    unsafe fn tile(args: KernelArgs) {
        let (mr, nr) = (args.9, args.10);
        // SAFETY: the caller's. A short last strip runs a kernel of fewer rows
        // (16 rows: 12 + 4, not 12 + 12 with 8 of them wasted).
        unsafe {
            match (nr == 32, mr) {
                (true, 9..) => kernel::<false, MR>(args),
                (true, 5..=8) => kernel::<false, 8>(args),
                (true, _) => kernel::<false, 4>(args),
                (false, 9..) => kernel::<true, MR>(args),
                (false, 5..=8) => kernel::<true, 8>(args),
                (false, _) => kernel::<true, 4>(args),
            }
        }
    }

    unsafe fn transpose(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
        // SAFETY: the caller's.
        unsafe { transpose16_into(src, lds, dst, ldd) }
    }
}

/// Transposes the 16x16 block whose row `j` starts at `src + j * lds` into
/// `dst`, whose row `p` (16 floats) starts at `dst + p * ldd`.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn transpose16_into(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    unsafe {
        let r: [__m512; 16] = std::array::from_fn(|j| _mm512_loadu_ps(src.add(j * lds)));
        // 32-bit interleave of row pairs, then 64-bit, within 128-bit lanes:
        // u[4g + c] holds rows 4g..4g+4 at columns 4L + c of each lane L.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 { _mm512_unpacklo_ps(a, b) } else { _mm512_unpackhi_ps(a, b) }
        });
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (g, c) = (i / 4, i % 4);
            let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
            if c % 2 == 0 { _mm512_shuffle_ps::<0x44>(a, b) } else { _mm512_shuffle_ps::<0xEE>(a, b) }
        });
        for c in 0..4 {
            // Gather lane L of the four row groups: column 4L + c.
            let v = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
            let v2 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
            let w = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
            let w2 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
            _mm512_storeu_ps(dst.add(c * ldd), _mm512_shuffle_f32x4::<0x88>(v, w));
            _mm512_storeu_ps(dst.add((8 + c) * ldd), _mm512_shuffle_f32x4::<0xDD>(v, w));
            _mm512_storeu_ps(dst.add((4 + c) * ldd), _mm512_shuffle_f32x4::<0x88>(v2, w2));
            _mm512_storeu_ps(dst.add((12 + c) * ldd), _mm512_shuffle_f32x4::<0xDD>(v2, w2));
        }
    }
}

/// One tile (see [`KernelArgs`]) with `ROWS ≥ mr` rows of accumulators;
/// columns past `nr` are masked off with AVX-512 masks.
#[target_feature(enable = "avx512f")]
unsafe fn kernel<const MASKED: bool, const ROWS: usize>(
    (kc, a, rsa, csa, b, rsb, c, ldc, acc, mr, nr, epi): KernelArgs,
) {
    unsafe {
        let m0: __mmask16 = if nr >= 16 { 0xffff } else { ((1u32 << nr) - 1) as u16 };
        let m1: __mmask16 = if nr >= 32 {
            0xffff
        } else if nr > 16 {
            ((1u32 << (nr - 16)) - 1) as u16
        } else {
            0
        };
        let mut c0 = [_mm512_setzero_ps(); ROWS];
        let mut c1 = [_mm512_setzero_ps(); ROWS];
        let mut rows = [0usize; ROWS];
        for (i, r) in rows.iter_mut().enumerate() {
            *r = i.min(mr - 1) * rsa;
        }
        let (mut a, mut b) = (a, b);
        for _ in 0..kc {
            let (b0, b1) = if MASKED {
                (_mm512_maskz_loadu_ps(m0, b), _mm512_maskz_loadu_ps(m1, b.add(16)))
            } else {
                (_mm512_loadu_ps(b), _mm512_loadu_ps(b.add(16)))
            };
            for i in 0..ROWS {
                let ai = _mm512_set1_ps(*a.add(rows[i]));
                c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
                c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
            }
            a = a.add(csa);
            b = b.add(rsb);
        }
        // A loop of constant length (unrolled, the accumulators stay in
        // registers) that stops at `mr`.
        for i in 0..ROWS {
            if i >= mr {
                break;
            }
            let row = c.add(i * ldc);
            let (mut v0, mut v1) = (c0[i], c1[i]);
            if acc {
                v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, row), v0);
                v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, row.add(16)), v1);
            }
            if let Some((scale, shift, col, act)) = epi {
                if !scale.is_null() {
                    let s = _mm512_set1_ps(*scale.add(i));
                    (v0, v1) = (_mm512_mul_ps(v0, s), _mm512_mul_ps(v1, s));
                }
                if !shift.is_null() {
                    let t = _mm512_set1_ps(*shift.add(i));
                    (v0, v1) = (_mm512_add_ps(v0, t), _mm512_add_ps(v1, t));
                }
                if !col.is_null() {
                    v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, col));
                    v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, col.add(16)));
                }
                if let Some(op) = act {
                    (v0, v1) = (crate::simd512::apply512(op, v0), crate::simd512::apply512(op, v1));
                }
            }
            _mm512_mask_storeu_ps(row, m0, v0);
            _mm512_mask_storeu_ps(row.add(16), m1, v1);
        }
    }
}
