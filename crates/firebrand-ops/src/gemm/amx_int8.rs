//! The AMX-INT8 kernel of [`super::int8`]: `TDPBUSD` (`u8·i8`, four
//! products a lane summed into `i32`) on 16x16 tiles, in the layout of the
//! bf16 kernel (`super::amx`): a 32x32 block of C in four tile registers,
//! two A and two B tiles per 64-deep block. The weight is packed once when
//! it is quantized; each task packs the rows of A of its block.

use super::amx::TileProduct;
use super::int8::{QuantizedRows, QuantizedWeight};
use crate::parallel::SendPtr;
use std::arch::x86_64::*;
use std::cell::RefCell;

/// One tile: 16 rows of 64 bytes.
const TILE: usize = 1024;

thread_local! {
    static A_PACK: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// The weight `(n, k)` in tiles: panels of 32 channels; per 64-deep block
/// two tiles (channels 0–15 and 16–31 of the panel), row `r` of a tile
/// holding for each of its 16 channels the 4 weights at depth `4r..4r+4`.
/// Zeros past `n` and `k`.
pub(super) fn pack_weight(w: &[i8], n: usize, k: usize) -> Vec<i8> {
    let kb = k.div_ceil(64);
    let panels = n.div_ceil(32);
    let mut out = vec![0i8; panels * kb * 2 * TILE];
    for p in 0..panels {
        for q in 0..kb {
            for t in 0..2 {
                let tile = &mut out[((p * kb + q) * 2 + t) * TILE..][..TILE];
                for c in 0..16 {
                    let j = 32 * p + 16 * t + c;
                    if j >= n {
                        continue;
                    }
                    for r in 0..16 {
                        for e in 0..4 {
                            let d = 64 * q + 4 * r + e;
                            if d < k {
                                tile[64 * r + 4 * c + e] = w[j * k + d];
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

/// Rows `i0..i0+32` of A in tiles: per 64-deep block two tiles of 16 rows
/// of 64 bytes, zeros past `m` and `k` (a zero times the padded weight's
/// zero adds nothing, whatever the row's zero point).
fn pack_a_strip(a: &QuantizedRows, i0: usize, dst: &mut [u8]) {
    let (m, k) = (a.m, a.k);
    for (q, block) in dst.chunks_exact_mut(2 * TILE).enumerate() {
        let p0 = 64 * q;
        let depth = 64.min(k - p0.min(k));
        for (r, row) in block.chunks_exact_mut(64).enumerate() {
            let i = i0 + r;
            if i < m {
                row[..depth].copy_from_slice(&a.data[i * k + p0..i * k + p0 + depth]);
                row[depth..].fill(0);
            } else {
                row.fill(0);
            }
        }
    }
}

/// Rows `i0..i0+mr`, columns `j0..j0+nc` (≤ 32) of `out` from the `i32`
/// sums stored there to `act(sa[i]·sw[j]·(acc − za[i]·Σw[j]) + bias[j])`
/// (`act` one with an AVX-512 form).
///
/// # Safety
/// The block lies in `out` (`n` columns) and holds sums; AVX-512F is available.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn finish(
    a: &QuantizedRows,
    w: &QuantizedWeight,
    bias: Option<&[f32]>,
    act: Option<firebrand_tensor::op::UnaryOp>,
    out: *mut f32,
    i0: usize,
    mr: usize,
    j0: usize,
    nc: usize,
) {
    let n = w.n;
    // SAFETY: masked loads and stores stay within the block's `nc` columns,
    // and the per-column vectors have `n` values.
    unsafe {
        for h in 0..2 {
            let width = nc.saturating_sub(16 * h).min(16);
            if width == 0 {
                break;
            }
            let mask: __mmask16 = if width == 16 { 0xffff } else { (1u16 << width) - 1 };
            let j = j0 + 16 * h;
            let rs = _mm512_maskz_loadu_epi32(mask, w.row_sum[j..].as_ptr());
            let sw = _mm512_maskz_loadu_ps(mask, w.scale[j..].as_ptr());
            let b = match bias {
                Some(b) => _mm512_maskz_loadu_ps(mask, b[j..].as_ptr()),
                None => _mm512_setzero_ps(),
            };
            for i in i0..i0 + mr {
                let p = out.add(i * n + j);
                let acc = _mm512_maskz_loadu_epi32(mask, p as *const i32);
                let v = super::int8::dequantize16(acc, a, i, rs, sw, b, act);
                _mm512_mask_storeu_ps(p, mask, v);
            }
        }
    }
}

/// `out = dequantized(a · wᵀ) + bias` on AMX tiles.
///
/// # Safety
/// AMX-INT8 is available; `packed` is `pack_weight` of `w`; `out` holds
/// `m·n` values (checked by the caller).
pub(super) unsafe fn gemm(
    a: &QuantizedRows,
    w: &QuantizedWeight,
    packed: &[i8],
    bias: Option<&[f32]>,
    act: Option<firebrand_tensor::op::UnaryOp>,
    out: &mut [f32],
) {
    let (m, n, k) = (a.m, w.n, a.k);
    let kb = k.div_ceil(64);
    let optr = SendPtr(out.as_mut_ptr());
    super::amx::for_strip_blocks(m.div_ceil(32), crate::parallel::num_threads(), |s0, s1| {
        let strip_len = kb * 2 * TILE;
        A_PACK.with(|ap| {
            let mut ap = ap.borrow_mut();
            if ap.len() < (s1 - s0) * strip_len {
                ap.resize((s1 - s0) * strip_len, 0);
            }
            for s in s0..s1 {
                pack_a_strip(a, 32 * s, &mut ap[(s - s0) * strip_len..(s - s0 + 1) * strip_len]);
            }
            let rows = m.min(32 * s1) - 32 * s0;
            let strip = |s: usize| ap[(s - s0) * strip_len..].as_ptr();
            let panel = |p: usize| packed[p * kb * 2 * TILE..].as_ptr();
            // The sums go into `out` itself (an `i32` is as wide as an `f32`),
            // dequantized in place a panel later.
            let sums = optr.get() as *mut i32;
            // SAFETY: AMX-INT8 is available (the caller's contract); both packs hold
            // `kb` blocks; rows of strips s0..s1 of `out` are this task's alone.
            unsafe {
                super::amx::sweep(TileProduct::U8I8, kb, (s0, s1), m, n, strip, panel, sums, n, false, |j0, nc| {
                    finish(a, w, bias, act, optr.get(), 32 * s0, rows, j0, nc)
                })
            };
        });
    });
}
