//! AVX-512 sgemm: BLIS-style packing and cache blocking around a 12x32
//! register-blocked micro-kernel (24 zmm accumulators), parallel over blocks
//! of C with rayon.

use super::MatRef;
use crate::parallel::SendPtr; // each task writes a disjoint tile of C
use std::arch::x86_64::*;
use std::cell::RefCell;

/// Rows of a micro-tile (one broadcast of A each).
const MR: usize = 12;
/// Columns of a micro-tile (two zmm vectors of B).
const NR: usize = 32;
/// Depth of a block: an MR x KC strip of A (48 KiB) is reused from L1/L2 while
/// the micro-kernel sweeps a B block, and C is read and written once per KC of depth
/// (measured: KC = 1024 with 128-column blocks beat 512 x 256 by 2-3% at n >= 1024).
const KC: usize = 1024;
/// Widest block of B: a KC x NCB block (512 KiB) stays in the core's own L2.
const NCB_MAX: usize = 128;
/// A task reads B in place (no packing) when it has at most this many MR-row strips
/// (6: a 64-row product such as one thread's half of an LSTM step, 64x128x512,
/// ran at 142 GFLOP/s with B packed and 152-159 in place on one thread).
const DIRECT_B_MAX_STRIPS: usize = 6;
/// ... and when B spans at most this many floats (1 MiB: half the core's L2).
const DIRECT_B_MAX_SPAN: usize = 1 << 18;
/// Up to this many multiply-adds the calling thread computes tasks too (the
/// wake-up of a blocked caller would cost 20-35% of the product); above it the
/// pool's workers split the work statically.
const CALLER_JOINS_MAX_MACS: usize = 1 << 26;
/// Below this many multiply-adds the product runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 19;

/// A 64-byte aligned scratch buffer.
struct Aligned {
    buf: Vec<f32>,
}

impl Aligned {
    const fn new() -> Self {
        Aligned { buf: Vec::new() }
    }
    fn get(&mut self, len: usize) -> &mut [f32] {
        if self.buf.len() < len + 16 {
            self.buf = vec![0.0; len + 16];
        }
        let off = self.buf.as_ptr().align_offset(64).min(15);
        &mut self.buf[off..off + len]
    }
}

thread_local! {
    static B_PACK: RefCell<Aligned> = const { RefCell::new(Aligned::new()) };
}

/// Loop order (the roles of BLIS with C transposed, since our C is row-major):
/// tasks own blocks of C columns (and, when there are fewer column blocks than
/// threads, row ranges); each task packs its KC x NCB block of B into its own
/// L2 and, for every MR-row strip of A (read in place: the micro-kernel only
/// broadcasts A's elements, so A needs no packing and stays in L1 for the
/// sweep), runs the micro-kernel over the B micro-panels.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
    epi: Option<&super::Epilogue>,
) {
    // A transposed A (columns contiguous, the `gᵀ` of a weight gradient) is
    // read by the micro-kernel one row element per depth step, each a whole
    // row stride apart: no prefetcher follows that, and a 2048x1024x512
    // product took 13.4 ms against 6.2 for the same A row-major. Laid out
    // row-major first (a parallel 16x16-tile transpose), the same product
    // takes 7.6 ms. Only when the copy is small beside the product (n ≥ 64).
    if a.rs == 1 && a.cs > 1 && m >= 2 * MR && n >= 64 && m * k >= 1 << 16 {
        let mut rows = firebrand_tensor::pool::take_f32(m * k);
        crate::strided::transpose_batched(a.data, &[a.offset], m, k, a.cs, &mut rows);
        // SAFETY: as for the caller's call; `rows` is A itself, row-major.
        unsafe { gemm(m, k, n, MatRef::row_major(&rows, k), b, c, ldc, accumulate, parallel, epi) };
        firebrand_tensor::pool::recycle_f32(rows);
        return;
    }
    // The epilogue's row vectors as pointers (null: none); its activation only
    // when it has an AVX-512 form (the caller applies the others afterwards).
    let (scale, shift) = epi.map_or((std::ptr::null(), std::ptr::null()), |e| {
        (e.row_scale.map_or(std::ptr::null(), |s| s.as_ptr()), e.row_shift.map_or(std::ptr::null(), |s| s.as_ptr()))
    });
    let act = epi.and_then(|e| e.act).filter(|&op| crate::simd512::supports(op));
    let col = epi.and_then(|e| e.col_shift).map_or(std::ptr::null(), |s| s.as_ptr());
    let (scale, shift, col) = (SendPtr(scale as *mut f32), SendPtr(shift as *mut f32), SendPtr(col as *mut f32));
    let threads = if parallel && m * n * k >= PARALLEL_MIN_MACS { crate::parallel::num_threads() } else { 1 };
    let cptr = SendPtr(c.as_mut_ptr());
    let n_panels = n.div_ceil(NR);
    // A few column blocks are rounded up to a multiple of the threads: 3 blocks
    // on 2 threads leave one idle for a third of the product (measured on
    // 64x6272x288, a convolution's weight gradient: 268 -> 332 GFLOP/s, same run).
    // A shallow product keeps the same L2 footprint with wider blocks: each
    // task then sweeps every strip of A across its whole width, so C's rows
    // are written in long runs (a 144x24x3136 product, a 1x1 convolution's
    // forward pass, stored 12 rows of 512 bytes per block before).
    let m_panels = m.div_ceil(MR);
    let ncb_max = (KC * NCB_MAX / k.clamp(1, KC)).next_multiple_of(NR);
    let mut n_blocks = n.div_ceil(ncb_max).max(threads);
    if n_blocks < 8 * threads {
        n_blocks = n_blocks.div_ceil(threads) * threads;
    }
    let n_blocks = n_blocks.min(n_panels);
    let row_splits = if n_blocks < threads { threads.div_ceil(n_blocks).min(m_panels) } else { 1 };
    let task = |t: usize| {
        let (blk, rs) = (t / row_splits, t % row_splits);
        let (q0, q1) = (blk * n_panels / n_blocks, (blk + 1) * n_panels / n_blocks);
        let (p0, p1) = (rs * m_panels / row_splits, (rs + 1) * m_panels / row_splits);
        if q0 == q1 || p0 == p1 {
            return;
        }
        let j0 = q0 * NR;
        let ncb = (q1 * NR).min(n) - j0;
        // A B block used by only a few A strips is cheaper to read in place than
        // to pack, when B is small enough to stay in L2 from call to call (an
        // LSTM's recurrent weight). A large B read in place is `k` streams of 128
        // bytes a panel, which the prefetchers do not follow: a 1x1
        // convolution's input gradient, 16x96x12544, took 14.4 ms that way and
        // 7.3 packed (a wide block's rows are packed in long runs).
        let direct_b = b.cs == 1 && p1 - p0 <= DIRECT_B_MAX_STRIPS && k * b.rs <= DIRECT_B_MAX_SPAN;
        B_PACK.with(|bp| {
            let mut bp = bp.borrow_mut();
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let bsub = MatRef { offset: b.offset + pc * b.rs + j0 * b.cs, ..b };
                let (bptr, rsb, panel_stride): (*const f32, usize, usize) = if direct_b {
                    (b.data[bsub.offset..].as_ptr(), b.rs, NR)
                } else {
                    let bpack = bp.get((q1 - q0) * NR * kc);
                    for (jp, dst) in bpack.chunks_mut(NR * kc).enumerate() {
                        pack_b_panel(kc, ncb, jp, bsub, dst);
                    }
                    (bpack.as_ptr(), NR, NR * kc)
                };
                let acc = accumulate || pc > 0;
                let last = pc + kc == k;
                for ip in p0..p1 {
                    let i = ip * MR;
                    let mr = MR.min(m - i);
                    let ap = a.data[a.offset + i * a.rs + pc * a.cs..].as_ptr();
                    for jp in 0..(q1 - q0) {
                        let j = jp * NR;
                        let nr = NR.min(ncb - j);
                        // SAFETY: tile (i.., j0+j..) of size mr x nr lies inside C and no
                        // other task writes it; A rows i..i+mr and B columns j0+j..+nr exist
                        // (checked by the caller), and loads past nr are masked.
                        unsafe {
                            let cp = cptr.get().add(i * ldc + j0 + j);
                            let bp = bptr.add(jp * panel_stride);
                            let e = if last && epi.is_some() {
                                let at =
                                    |p: *mut f32| if p.is_null() { p as *const f32 } else { p.add(i) as *const f32 };
                                let cp = col.get();
                                let cp = if cp.is_null() { cp as *const f32 } else { cp.add(j0 + j) as *const f32 };
                                Some((at(scale.get()), at(shift.get()), cp, act))
                            } else {
                                None
                            };
                            // A short last strip runs a kernel of fewer rows (16 rows: 12 + 4,
                            // not 12 + 12 with 8 of them wasted).
                            let args = (kc, ap, a.rs, a.cs, bp, rsb, cp, ldc, acc, mr, nr, e);
                            match (nr == NR, mr) {
                                (true, 9..) => kernel::<false, MR>(args),
                                (true, 5..=8) => kernel::<false, 8>(args),
                                (true, _) => kernel::<false, 4>(args),
                                (false, 9..) => kernel::<true, MR>(args),
                                (false, 5..=8) => kernel::<true, 8>(args),
                                (false, _) => kernel::<true, 4>(args),
                            }
                        };
                    }
                }
            }
        });
    };
    let ntasks = n_blocks * row_splits;
    if threads > 1 && ntasks > 1 {
        if m * n * k <= CALLER_JOINS_MAX_MACS {
            crate::parallel::par_for(ntasks, task);
        } else {
            crate::parallel::par_for_long(ntasks, task);
        }
    } else {
        (0..ntasks).for_each(task);
    }
}

/// Packs columns `jp*NR..` of `b` (depth `kc`) as `[p][NR]`, zero-padding past `nc`.
fn pack_b_panel(kc: usize, nc: usize, jp: usize, b: MatRef, dst: &mut [f32]) {
    let j0 = jp * NR;
    let cols = NR.min(nc - j0);
    let d = b.data;
    if b.cs == 1 {
        for p in 0..kc {
            let src = &d[b.offset + p * b.rs + j0..][..cols];
            dst[p * NR..p * NR + cols].copy_from_slice(src);
            dst[p * NR + cols..p * NR + NR].fill(0.0);
        }
    } else if b.rs == 1 && cols == NR {
        // B's columns are contiguous (B = Wᵀ of a row-major W): 16x16 register transposes.
        let kc16 = kc / 16 * 16;
        for jj in [0, 16] {
            let src = d[b.offset + (j0 + jj) * b.cs..].as_ptr();
            for p0 in (0..kc16).step_by(16) {
                // SAFETY: columns j0+jj..+16 and rows p0..p0+16 lie inside B (checked by
                // the caller); the destination rows p0..p0+16 hold NR floats each.
                unsafe { transpose16_into(src.add(p0), b.cs, dst[p0 * NR + jj..].as_mut_ptr(), NR) };
            }
        }
        for j in 0..NR {
            let base = b.offset + (j0 + j) * b.cs;
            for p in kc16..kc {
                dst[p * NR + j] = d[base + p];
            }
        }
    } else {
        // Transposing copy, blocked over p so the destination block stays in L1.
        const PB: usize = 64;
        for p0 in (0..kc).step_by(PB) {
            let p1 = (p0 + PB).min(kc);
            for j in 0..cols {
                let base = b.offset + (j0 + j) * b.cs;
                if b.rs == 1 {
                    for (p, &v) in (p0..p1).zip(&d[base + p0..base + p1]) {
                        dst[p * NR + j] = v;
                    }
                } else {
                    for p in p0..p1 {
                        dst[p * NR + j] = d[base + p * b.rs];
                    }
                }
            }
        }
        if cols < NR {
            for p in 0..kc {
                dst[p * NR + cols..p * NR + NR].fill(0.0);
            }
        }
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

/// The arguments of [`kernel`]: `(kc, a, rsa, csa, b, rsb, c, ldc, acc, mr, nr, epi)`.
type KernelArgs = (
    usize,
    *const f32,
    usize,
    usize,
    *const f32,
    usize,
    *mut f32,
    usize,
    bool,
    usize,
    usize,
    Option<(*const f32, *const f32, *const f32, Option<firebrand_tensor::op::UnaryOp>)>,
);

/// `C[0..mr, 0..nr] (+)= A[0..mr, 0..kc] · B[0..kc, 0..nr]` with `ROWS ≥ mr`
/// rows of accumulators.
///
/// A is read in place with strides `(rsa, csa)` (rows at or past `mr` alias row
/// `mr - 1` and are not stored); B rows are `rsb` apart with unit column
/// stride (a packed panel has `rsb = NR`); columns past `nr` are masked off, so
/// edge tiles need no scratch copy. `epi` (the last depth block only): the
/// value at `(i, j)` becomes `act(v·scale[i] + shift[i] + col[j])` before the
/// store (null pointers: no scale, no shift, no column shift).
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
