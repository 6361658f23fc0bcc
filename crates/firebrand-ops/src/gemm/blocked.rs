//! The blocked sgemm driver shared by the SIMD micro-kernels (AVX-512's
//! 12x32 in `avx512`, AVX2's 6x16 in `avx2`): BLIS-style cache blocking and
//! packing of B around a register-blocked micro-kernel that broadcasts A's
//! elements read in place, parallel over blocks of C. A [`Kernel`] supplies
//! the tile sizes, the depth and width of a block, the micro-kernel itself
//! and a square transpose for packing B's columns.

use super::MatRef;
use crate::parallel::SendPtr; // each task writes a disjoint tile of C
use firebrand_tensor::op::UnaryOp;
use std::cell::RefCell;

/// A register-blocked micro-kernel and the blocking that suits it.
pub(super) trait Kernel {
    /// Rows of a micro-tile (one broadcast of A each).
    const MR: usize;
    /// Columns of a micro-tile (the B vectors loaded per depth step).
    const NR: usize;
    /// Depth of a block: an MR x KC strip of A is reused from L1 while the
    /// micro-kernel sweeps a B block, and C is read and written once per KC.
    const KC: usize;
    /// Widest block of B (at depth KC): it stays in the core's own L2.
    const NCB_MAX: usize;
    /// Side of the square [`Kernel::transpose`] (a divisor of NR).
    const TB: usize;
    /// Whether the micro-kernel's store applies this activation (the
    /// caller applies the others in a pass afterwards).
    fn fuses(op: UnaryOp) -> bool;
    /// `C[0..mr, 0..nr] (+)= A·B` for one tile, as described at [`KernelArgs`].
    ///
    /// # Safety
    /// The CPU has the kernel's features; the pointers cover the tile.
    unsafe fn tile(args: KernelArgs);
    /// Transposes the TB x TB block whose row `j` starts at `src + j * lds`
    /// into `dst`, whose row `p` (TB floats) starts at `dst + p * ldd`.
    ///
    /// # Safety
    /// The CPU has the kernel's features; both blocks lie inside their buffers.
    unsafe fn transpose(src: *const f32, lds: usize, dst: *mut f32, ldd: usize);
}

/// The arguments of a micro-kernel: `(kc, a, rsa, csa, b, rsb, c, ldc, acc,
/// mr, nr, epi)`. `C[0..mr, 0..nr] (+)= A[0..mr, 0..kc] · B[0..kc, 0..nr]`:
/// A is read in place with strides `(rsa, csa)` (rows at or past `mr` alias
/// row `mr - 1` and are not stored); B rows are `rsb` apart with unit column
/// stride (a packed panel has `rsb = NR`); columns past `nr` are masked off,
/// so edge tiles need no scratch copy. `epi` (the last depth block only): the
/// value at `(i, j)` becomes `act(v·scale[i] + shift[i] + col[j])` before the
/// store (null pointers: no scale, no shift, no column shift; `act` only when
/// the kernel [`fuses`](Kernel::fuses) it).
pub(super) type KernelArgs = (
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
    Option<(*const f32, *const f32, *const f32, Option<UnaryOp>)>,
);

/// A task reads B in place (no packing) when it has at most this many MR-row strips
/// (6: a 64-row product such as one thread's half of an LSTM step, 64x128x512,
/// ran at 142 GFLOP/s with B packed and 152-159 in place on one thread, AVX-512).
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
pub(super) unsafe fn gemm<K: Kernel>(
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
    if a.rs == 1 && a.cs > 1 && m >= 2 * K::MR && n >= 64 && m * k >= 1 << 16 {
        let mut rows = firebrand_tensor::pool::take_f32(m * k);
        crate::strided::transpose_batched(a.data, &[a.offset], m, k, a.cs, &mut rows);
        // SAFETY: as for the caller's call; `rows` is A itself, row-major.
        unsafe { gemm::<K>(m, k, n, MatRef::row_major(&rows, k), b, c, ldc, accumulate, parallel, epi) };
        firebrand_tensor::pool::recycle_f32(rows);
        return;
    }
    // The epilogue's row vectors as pointers (null: none); its activation only
    // when the kernel fuses it (the caller applies the others afterwards).
    let (scale, shift) = epi.map_or((std::ptr::null(), std::ptr::null()), |e| {
        (e.row_scale.map_or(std::ptr::null(), |s| s.as_ptr()), e.row_shift.map_or(std::ptr::null(), |s| s.as_ptr()))
    });
    let act = epi.and_then(|e| e.act).filter(|&op| K::fuses(op));
    let col = epi.and_then(|e| e.col_shift).map_or(std::ptr::null(), |s| s.as_ptr());
    let (scale, shift, col) = (SendPtr(scale as *mut f32), SendPtr(shift as *mut f32), SendPtr(col as *mut f32));
    let threads = if parallel && m * n * k >= PARALLEL_MIN_MACS { crate::parallel::num_threads() } else { 1 };
    let cptr = SendPtr(c.as_mut_ptr());
    let n_panels = n.div_ceil(K::NR);
    // A few column blocks are rounded up to a multiple of the threads: 3 blocks
    // on 2 threads leave one idle for a third of the product (measured on
    // 64x6272x288, a convolution's weight gradient: 268 -> 332 GFLOP/s, same run).
    // A shallow product keeps the same L2 footprint with wider blocks: each
    // task then sweeps every strip of A across its whole width, so C's rows
    // are written in long runs (a 144x24x3136 product, a 1x1 convolution's
    // forward pass, stored 12 rows of 512 bytes per block before).
    let m_panels = m.div_ceil(K::MR);
    let ncb_max = (K::KC * K::NCB_MAX / k.clamp(1, K::KC)).next_multiple_of(K::NR);
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
        let j0 = q0 * K::NR;
        let ncb = (q1 * K::NR).min(n) - j0;
        // A B block used by only a few A strips is cheaper to read in place than
        // to pack, when B is small enough to stay in L2 from call to call (an
        // LSTM's recurrent weight). A large B read in place is `k` streams of 128
        // bytes a panel, which the prefetchers do not follow: a 1x1
        // convolution's input gradient, 16x96x12544, took 14.4 ms that way and
        // 7.3 packed (a wide block's rows are packed in long runs).
        let direct_b = b.cs == 1 && p1 - p0 <= DIRECT_B_MAX_STRIPS && k * b.rs <= DIRECT_B_MAX_SPAN;
        B_PACK.with(|bp| {
            let mut bp = bp.borrow_mut();
            for pc in (0..k).step_by(K::KC) {
                let kc = K::KC.min(k - pc);
                let bsub = MatRef { offset: b.offset + pc * b.rs + j0 * b.cs, ..b };
                let (bptr, rsb, panel_stride): (*const f32, usize, usize) = if direct_b {
                    (b.data[bsub.offset..].as_ptr(), b.rs, K::NR)
                } else {
                    let bpack = bp.get((q1 - q0) * K::NR * kc);
                    for (jp, dst) in bpack.chunks_mut(K::NR * kc).enumerate() {
                        pack_b_panel::<K>(kc, ncb, jp, bsub, dst);
                    }
                    (bpack.as_ptr(), K::NR, K::NR * kc)
                };
                let acc = accumulate || pc > 0;
                let last = pc + kc == k;
                for ip in p0..p1 {
                    let i = ip * K::MR;
                    let mr = K::MR.min(m - i);
                    let ap = a.data[a.offset + i * a.rs + pc * a.cs..].as_ptr();
                    for jp in 0..(q1 - q0) {
                        let j = jp * K::NR;
                        let nr = K::NR.min(ncb - j);
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
                            K::tile((kc, ap, a.rs, a.cs, bp, rsb, cp, ldc, acc, mr, nr, e))
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
fn pack_b_panel<K: Kernel>(kc: usize, nc: usize, jp: usize, b: MatRef, dst: &mut [f32]) {
    let j0 = jp * K::NR;
    let cols = K::NR.min(nc - j0);
    let d = b.data;
    if b.cs == 1 {
        for p in 0..kc {
            let src = &d[b.offset + p * b.rs + j0..][..cols];
            dst[p * K::NR..p * K::NR + cols].copy_from_slice(src);
            dst[p * K::NR + cols..p * K::NR + K::NR].fill(0.0);
        }
    } else if b.rs == 1 && cols == K::NR {
        // B's columns are contiguous (B = Wᵀ of a row-major W): square register transposes.
        let tb = K::TB;
        let kct = kc / tb * tb;
        for jj in (0..K::NR).step_by(tb) {
            let src = d[b.offset + (j0 + jj) * b.cs..].as_ptr();
            for p0 in (0..kct).step_by(tb) {
                // SAFETY: columns j0+jj..+TB and rows p0..p0+TB lie inside B (checked by
                // the caller); the destination rows p0..p0+TB hold NR floats each.
                unsafe { K::transpose(src.add(p0), b.cs, dst[p0 * K::NR + jj..].as_mut_ptr(), K::NR) };
            }
        }
        for j in 0..K::NR {
            let base = b.offset + (j0 + j) * b.cs;
            for p in kct..kc {
                dst[p * K::NR + j] = d[base + p];
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
                        dst[p * K::NR + j] = v;
                    }
                } else {
                    for p in p0..p1 {
                        dst[p * K::NR + j] = d[base + p * b.rs];
                    }
                }
            }
        }
        if cols < K::NR {
            for p in 0..kc {
                dst[p * K::NR + cols..p * K::NR + K::NR].fill(0.0);
            }
        }
    }
}
