//! `C = A·B` on Intel AMX tiles with `bf16` inputs and `f32` accumulation
//! (`TDPBF16PS`): the [`MatmulPrecision::Medium`](super::MatmulPrecision)
//! path of an `f32` gemm, as PyTorch's `torch.set_float32_matmul_precision("medium")`.
//!
//! Both operands are rounded to `bf16` (to nearest, ties to even) while
//! they are packed into tiles; products of the rounded values are summed in
//! `f32`. Layout:
//!
//! * B is packed once per call, shared by the threads, as panels of 32
//!   columns; each 32-deep block of a panel is two 16x16 tiles of column
//!   pairs in AMX's "VNNI" order (row `r` holds `(B[2r][j], B[2r+1][j])` for
//!   16 columns `j`: 64 bytes).
//! * Each task packs strips of 32 rows of A (two 16x32 tiles per depth block)
//!   for a block of at most [`ROW_BLOCK`] rows, which then stays in the core's
//!   L2 while every B panel streams past it.
//! * The micro-kernel holds a 32x32 block of C in four tile registers, loads
//!   two A and two B tiles per depth block and issues four `TDPBF16PS`; the
//!   block is stored to a scratch tile and added into C (clipped at C's
//!   edges), so m, n and k need not be multiples of anything: the packing
//!   pads with zeros.
//!
//! The instructions are written in inline assembly (Rust has no stable AMX
//! intrinsics); Linux grants a process the AMX state on request
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), asked once by [`available`].

use super::MatRef;
use crate::parallel::SendPtr;
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;

thread_local! {
    /// The packed B of a call (on the calling thread).
    static B_PACK: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
    /// A task's packed rows of A.
    static A_PACK: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// `len` elements of a scratch vector (grown, never shrunk; contents stale).
fn scratch(v: &mut Vec<u16>, len: usize) -> &mut [u16] {
    if v.len() < len {
        v.resize(len, 0);
    }
    &mut v[..len]
}

/// Rows of A packed per task before the B panels sweep them (256 rows of
/// depth 1536 are 768 KiB of bf16: in L2 with a B panel beside them).
const ROW_BLOCK: usize = 256;

/// One tile: 16 rows of 64 bytes (32 bf16).
const TILE: usize = 512;

/// Whether this CPU has the AMX tile unit and the OS let this process use
/// it (asked once).
pub(super) fn tiles_granted() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        // CPUID leaf 7: EDX bit 24 is AMX-TILE (`is_x86_feature_detected!`
        // does not take AMX on stable Rust).
        if std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 24) == 0 || cfg!(not(target_os = "linux")) {
            return false;
        }
        // arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18).
        let r: i64;
        // SAFETY: a plain system call that only changes this process's permissions.
        unsafe {
            asm!("syscall", inlateout("rax") 158i64 => r, in("rdi") 0x1023i64, in("rsi") 18i64,
                 lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        r == 0
    })
}

/// Whether this CPU has AMX-BF16 (CPUID leaf 7, EDX bit 22) and the tiles are granted.
pub(super) fn available() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 22) != 0 && tiles_granted())
}

/// Whether this CPU has AMX-INT8 (CPUID leaf 7, EDX bit 25) and the tiles are granted.
pub(crate) fn int8_available() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| std::arch::x86_64::__cpuid_count(7, 0).edx & (1 << 25) != 0 && tiles_granted())
}

/// `f32` to `bf16` bits, to nearest with ties to even; NaN stays a (quiet) NaN.
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
    if b & 0x7fff_ffff > 0x7f80_0000 { ((b >> 16) | 0x40) as u16 } else { rounded }
}

/// The tile configuration: palette 1, tiles 0-7 all 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64;
        c[48 + t] = 16;
        t += 1;
    }
    TileConfig(c)
};

/// Packs B's columns `j0..j0+32` (zero past `n`), depth `kp` (zero past `k`),
/// into `dst` (`kp/32` blocks of two tiles).
fn pack_b_panel(k: usize, n: usize, b: MatRef, j0: usize, dst: &mut [u16]) {
    if simd_convert() && b.rs == 1 {
        // SAFETY: the CPU has the instructions; the extent was checked by gemm's caller.
        return unsafe { pack_b_panel_columns(k, n, b, j0, dst) };
    }
    if simd_convert() && b.cs == 1 {
        // SAFETY: as above.
        return unsafe { pack_b_panel_rows(k, n, b, j0, dst) };
    }
    let d = b.data;
    for (q, block) in dst.chunks_exact_mut(2 * TILE).enumerate() {
        for t in 0..2 {
            let tile = &mut block[t * TILE..(t + 1) * TILE];
            for c in 0..16 {
                let j = j0 + 16 * t + c;
                for r in 0..16 {
                    let k0 = 32 * q + 2 * r;
                    let at = |p: usize| if p < k && j < n { to_bf16(d[b.offset + p * b.rs + j * b.cs]) } else { 0 };
                    tile[32 * r + 2 * c] = at(k0);
                    tile[32 * r + 2 * c + 1] = at(k0 + 1);
                }
            }
        }
    }
}

/// Whether the packing can convert 32 floats an instruction (`VCVTNE2PS2BF16`;
/// every AMX CPU has it). It treats denormal inputs as zero, as `TDPBF16PS`
/// does anyway.
fn simd_convert() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FLAG.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512bf16") && std::arch::is_x86_feature_detected!("avx512bw")
    })
}

/// 32 floats from `src` (the first `len`, zeros after) as bf16: `[u16; 32]` in a zmm.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn convert32(src: *const f32, len: usize) -> __m512i {
    // SAFETY: the masked loads read only the first `len` (≤ 32) floats.
    unsafe {
        let lo = _mm512_maskz_loadu_ps(mask16(len), src);
        let hi = _mm512_maskz_loadu_ps(mask16(len.saturating_sub(16)), src.add(16.min(len)));
        std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
    }
}

fn mask16(len: usize) -> u16 {
    if len >= 16 { u16::MAX } else { (1u16 << len) - 1 }
}

/// [`pack_a_strip`] for rows of contiguous elements.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_a_strip_simd(m: usize, k: usize, a: MatRef, i0: usize, dst: &mut [u16]) {
    for (q, block) in dst.chunks_exact_mut(2 * TILE).enumerate() {
        let p0 = 32 * q;
        let depth = 32.min(k - p0.min(k));
        for (r, row) in block.chunks_exact_mut(32).enumerate() {
            let i = i0 + r;
            // SAFETY: row i's elements p0..p0+depth exist (the caller checked A's
            // extent); the store fills the 32 values of `row`.
            unsafe {
                let v = if i < m {
                    convert32(a.data.as_ptr().add(a.offset + i * a.rs + p0), depth)
                } else {
                    _mm512_setzero_si512()
                };
                _mm512_storeu_si512(row.as_mut_ptr() as *mut __m512i, v);
            }
        }
    }
}

/// [`pack_a_strip`] for A with contiguous columns (`xᵀ` in a weight's
/// gradient): each whole 32x32 block is turned by four 16x16 transposes
/// into rows, then converted; blocks at A's edges take the scalar path.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_a_strip_columns(m: usize, k: usize, a: MatRef, i0: usize, dst: &mut [u16]) {
    let mut rows = [0.0f32; 32 * 32];
    for (q, block) in dst.chunks_exact_mut(2 * TILE).enumerate() {
        let p0 = 32 * q;
        if i0 + 32 > m || p0 + 32 > k {
            pack_a_block_scalar(m, k, a, i0, p0, block);
            continue;
        }
        for (ib, pb) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            // Source row j (depth p0 + 16pb + j) holds 16 consecutive rows of A.
            let src = a.data[a.offset + (i0 + 16 * ib) + (p0 + 16 * pb) * a.cs..].as_ptr();
            // SAFETY: the 16x16 block lies inside A (checked: no edge here) and `rows`.
            unsafe { super::avx512::transpose16_into(src, a.cs, rows.as_mut_ptr().add(16 * ib * 32 + 16 * pb), 32) };
        }
        for (r, row) in block.chunks_exact_mut(32).enumerate() {
            // SAFETY: 32 floats of `rows`; the store fills `row`.
            unsafe { _mm512_storeu_si512(row.as_mut_ptr() as *mut __m512i, convert32(rows[32 * r..].as_ptr(), 32)) };
        }
    }
}

/// One 32-deep block of a strip of A (rows `i0..i0+32`, depth `p0..p0+32`),
/// element by element, zero past `m` and `k`.
fn pack_a_block_scalar(m: usize, k: usize, a: MatRef, i0: usize, p0: usize, block: &mut [u16]) {
    let depth = 32.min(k - p0.min(k));
    for (r, row) in block.chunks_exact_mut(32).enumerate() {
        let i = i0 + r;
        if i >= m {
            row.fill(0);
            continue;
        }
        let base = a.offset + i * a.rs + p0 * a.cs;
        for (p, o) in row[..depth].iter_mut().enumerate() {
            *o = to_bf16(a.data[base + p * a.cs]);
        }
        row[depth..].fill(0);
    }
}

/// [`pack_b_panel`] for B with contiguous columns (`Wᵀ` of a `(n, k)`
/// weight): each column's 32-deep run converts to 16 pairs at once, and a
/// 16x16 transpose of the pairs makes the tile.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_b_panel_columns(k: usize, n: usize, b: MatRef, j0: usize, dst: &mut [u16]) {
    let mut pairs = [0u32; 256];
    for (q, block) in dst.chunks_exact_mut(2 * TILE).enumerate() {
        let p0 = 32 * q;
        let depth = 32.min(k - p0.min(k));
        for t in 0..2 {
            for c in 0..16 {
                let j = j0 + 16 * t + c;
                // SAFETY: column j's elements p0..p0+depth exist when j < n.
                unsafe {
                    let v = if j < n {
                        convert32(b.data.as_ptr().add(b.offset + j * b.cs + p0), depth)
                    } else {
                        _mm512_setzero_si512()
                    };
                    _mm512_storeu_si512(pairs.as_mut_ptr().add(16 * c) as *mut __m512i, v);
                }
            }
            let tile = block[t * TILE..].as_mut_ptr() as *mut f32;
            // SAFETY: `pairs` is 16x16 words; the tile is 16 rows of 16 words.
            unsafe { super::avx512::transpose16_into(pairs.as_ptr() as *const f32, 16, tile, 16) };
        }
    }
}

/// [`pack_b_panel`] for row-major B: rows `2r` and `2r+1` convert together
/// and interleave into tile row `r`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_b_panel_rows(k: usize, n: usize, b: MatRef, j0: usize, dst: &mut [u16]) {
    // Word 2c of the result takes the even row's column c, word 2c+1 the odd row's.
    let idx: [u16; 32] = std::array::from_fn(|w| if w % 2 == 0 { (w / 2) as u16 } else { 16 + (w / 2) as u16 });
    // SAFETY: reads 64 bytes.
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr() as *const __m512i) };
    for (q, block) in dst.chunks_exact_mut(2 * TILE).enumerate() {
        for t in 0..2 {
            let j = j0 + 16 * t;
            let width = 16.min(n.saturating_sub(j));
            let mask = mask16(width);
            for r in 0..16 {
                let p = 32 * q + 2 * r;
                // SAFETY: rows p and p+1 are read only below k, columns j..j+width exist.
                unsafe {
                    let row = |p: usize| {
                        if p < k && width > 0 {
                            _mm512_maskz_loadu_ps(mask, b.data.as_ptr().add(b.offset + p * b.rs + j))
                        } else {
                            _mm512_setzero_ps()
                        }
                    };
                    let (even, odd) = (row(p), row(p + 1));
                    let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(odd, even));
                    let out = block[t * TILE + 32 * r..].as_mut_ptr() as *mut __m512i;
                    _mm512_storeu_si512(out, _mm512_permutexvar_epi16(idx, both));
                }
            }
        }
    }
}

/// Packs A's rows `i0..i0+32` (zero past `m`), depth `kp` (zero past `k`).
fn pack_a_strip(m: usize, k: usize, a: MatRef, i0: usize, dst: &mut [u16]) {
    if simd_convert() && a.cs == 1 {
        // SAFETY: the CPU has the instructions; the extent was checked by gemm's caller.
        return unsafe { pack_a_strip_simd(m, k, a, i0, dst) };
    }
    if simd_convert() && a.rs == 1 {
        // SAFETY: as above.
        return unsafe { pack_a_strip_columns(m, k, a, i0, dst) };
    }
    for (q, block) in dst.chunks_exact_mut(2 * TILE).enumerate() {
        pack_a_block_scalar(m, k, a, i0, 32 * q, block);
    }
}

/// Which tile product a kernel issues.
#[derive(Clone, Copy)]
pub(super) enum TileProduct {
    /// `TDPBF16PS`: pairs of bf16 summed into f32.
    Bf16,
    /// `TDPBUSD`: fours of `u8·i8` summed into i32.
    U8I8,
}

/// The 32x32 block of 4-byte sums at `out` (rows `ld` elements apart) = (or
/// `+=` when `load`) the strip's rows times the panel's columns, over
/// `blocks` depth blocks of two A tiles and two B tiles (2 KiB each side).
///
/// # Safety
/// AMX (with the product's extension) is available and [`configure`]d on
/// this thread; `a` and `b` hold `blocks` blocks of two tiles each; `out`
/// has 32 rows of 32 elements `ld` apart.
pub(super) unsafe fn kernel<A, B, C>(
    op: TileProduct,
    blocks: usize,
    a: *const A,
    b: *const B,
    out: *mut C,
    ld: usize,
    load: bool,
) {
    let s = ld * 4; // bytes per row of C
    let o16 = out.wrapping_add(16 * ld); // rows 16..32
    // The depth loop, with the product's instruction.
    macro_rules! depth_loop {
        ($insn:literal) => {
            asm!(
                "2:",
                "tileloadd tmm4, [{a} + {s64}*1]",
                "tileloadd tmm6, [{b} + {s64}*1]",
                "tileloadd tmm5, [{a} + {s64}*1 + 1024]",
                "tileloadd tmm7, [{b} + {s64}*1 + 1024]",
                concat!($insn, " tmm0, tmm4, tmm6"),
                concat!($insn, " tmm1, tmm4, tmm7"),
                concat!($insn, " tmm2, tmm5, tmm6"),
                concat!($insn, " tmm3, tmm5, tmm7"),
                "add {a}, 2048",
                "add {b}, 2048",
                "dec {n}",
                "jnz 2b",
                a = inout(reg) a => _,
                b = inout(reg) b => _,
                n = inout(reg) blocks => _,
                s64 = in(reg) 64usize,
                options(nostack, readonly),
            )
        };
    }
    // SAFETY: the tiles read lie inside the packed buffers (`blocks` × 2 KiB
    // each) and the loads and stores of C inside `out` (the caller's contract).
    unsafe {
        if load {
            asm!(
                "tileloadd tmm0, [{o} + {s}*1]",
                "tileloadd tmm1, [{o} + {s}*1 + 64]",
                "tileloadd tmm2, [{p} + {s}*1]",
                "tileloadd tmm3, [{p} + {s}*1 + 64]",
                o = in(reg) out, p = in(reg) o16, s = in(reg) s, options(nostack, readonly),
            );
        } else {
            asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        }
        match op {
            TileProduct::Bf16 => depth_loop!("tdpbf16ps"),
            TileProduct::U8I8 => depth_loop!("tdpbusd"),
        }
        asm!(
            "tilestored [{o} + {s}*1], tmm0",
            "tilestored [{o} + {s}*1 + 64], tmm1",
            "tilestored [{p} + {s}*1], tmm2",
            "tilestored [{p} + {s}*1 + 64], tmm3",
            o = in(reg) out, p = in(reg) o16, s = in(reg) s, options(nostack),
        );
    }
}

/// `row[j] = act(row[j]·s + t + col[j])` for `j < nc ≤ 32` (a missing scale
/// is 1, shift 0; a null `col` adds nothing).
///
/// # Safety
/// `row` and (unless null) `col` hold `nc` floats; AVX-512F is available.
#[target_feature(enable = "avx512f")]
unsafe fn finish_row(
    row: *mut f32,
    nc: usize,
    s: Option<f32>,
    t: Option<f32>,
    col: *const f32,
    act: Option<firebrand_tensor::op::UnaryOp>,
) {
    // SAFETY: masked loads and stores touch the first `nc` floats only.
    unsafe {
        for h in 0..2 {
            let width = nc.saturating_sub(16 * h).min(16);
            if width == 0 {
                break;
            }
            let m = mask16(width);
            let p = row.add(16 * h);
            let mut v = _mm512_maskz_loadu_ps(m, p);
            if let Some(s) = s {
                v = _mm512_mul_ps(v, _mm512_set1_ps(s));
            }
            if let Some(t) = t {
                v = _mm512_add_ps(v, _mm512_set1_ps(t));
            }
            if !col.is_null() {
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, col.add(16 * h)));
            }
            if let Some(op) = act {
                v = crate::simd512::apply512(op, v);
            }
            _mm512_mask_storeu_ps(p, m, v);
        }
    }
}

/// Loads the tile configuration on the calling thread (it costs hundreds of
/// cycles: once per task, not per block).
pub(super) fn configure() {
    // SAFETY: AMX is available (checked by every caller's caller); the
    // configuration is a valid palette-1 layout.
    unsafe { asm!("ldtilecfg [{cfg}]", cfg = in(reg) CONFIG.0.as_ptr(), options(nostack, readonly)) };
}

/// Releases the AMX state of the calling thread (so that it is not saved
/// and restored on every context switch).
pub(super) fn release() {
    // SAFETY: valid whenever AMX is available; a no-op otherwise configured.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// `C = A·B` (or `C += A·B`) with operands rounded to bf16.
///
/// # Safety
/// [`available`] returned true; the operands' extents were checked by the
/// caller; `c` holds `(m-1)·ldc + n` elements.
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
    let kb = k.div_ceil(32);
    // The activation only when it has an AVX-512 form (the caller applies the
    // others afterwards), as on the f32 kernel.
    let act = epi.and_then(|e| e.act).filter(|&op| crate::simd512::supports(op));
    // The epilogue of rows i0..i0+mr, columns j0..j0+nc of C, applied to each
    // block right after it is stored (while it is in L1).
    let finish = |c: *mut f32, i0: usize, mr: usize, j0: usize, nc: usize| {
        let Some(e) = epi else { return };
        let col = e.col_shift.map_or(std::ptr::null(), |cs| cs[j0..].as_ptr());
        for r in 0..mr {
            let i = i0 + r;
            let (s, t) = (e.row_scale.map(|s| s[i]), e.row_shift.map(|t| t[i]));
            // SAFETY: the block's rows lie in C and belong to the calling task;
            // `col` has `nc` values from j0 (checked by gemm_fused).
            unsafe { finish_row(c.add(i * ldc + j0), nc, s, t, col, act) };
        }
    };
    let panels = n.div_ceil(32);
    let panel_len = kb * 2 * TILE;
    // The buffer is taken out of the thread-local for the call (and put
    // back after), so that a product started on this thread while it waits
    // for the tasks (work stealing) finds none borrowed.
    let mut bp = B_PACK.with(|b| std::mem::take(&mut *b.borrow_mut()));
    {
        let bpack = scratch(&mut bp, panels * panel_len);
        let pack = |p: usize, dst: &mut [u16]| pack_b_panel(k, n, b, 32 * p, dst);
        let threads = if parallel { crate::parallel::num_threads() } else { 1 };
        if threads > 1 && panels > 1 {
            crate::parallel::par_chunks_mut(bpack, panel_len, pack);
        } else {
            bpack.chunks_exact_mut(panel_len).enumerate().for_each(|(p, d)| pack(p, d));
        }
        let cptr = SendPtr(c.as_mut_ptr());
        let bpack_ref = &*bpack;
        for_strip_blocks(m.div_ceil(32), threads, |s0, s1| {
            let strip_len = kb * 2 * TILE;
            A_PACK.with(|ap| {
                let mut ap = ap.borrow_mut();
                let apack = scratch(&mut ap, (s1 - s0) * strip_len);
                for (s, dst) in apack.chunks_exact_mut(strip_len).enumerate() {
                    pack_a_strip(m, k, a, 32 * (s0 + s), dst);
                }
                let strip = |s: usize| apack[(s - s0) * strip_len..].as_ptr();
                let panel = |p: usize| bpack_ref[p * panel_len..].as_ptr();
                let rows = m.min(32 * s1) - 32 * s0;
                // SAFETY: AMX is available (the caller's contract); the packs hold
                // `kb` blocks per strip and panel; rows of strips s0..s1 of C are
                // this task's alone.
                unsafe {
                    sweep(TileProduct::Bf16, kb, (s0, s1), m, n, strip, panel, cptr.get(), ldc, accumulate, |j0, nc| {
                        finish(cptr.get(), 32 * s0, rows, j0, nc)
                    })
                };
            });
        });
    }
    B_PACK.with(|b| *b.borrow_mut() = bp);
}

/// One task's part of an AMX product: the strips `s0..s1` of 32 rows
/// against every panel of 32 columns, each 32x32 block of 4-byte sums
/// (`f32` or `i32`) computed by [`kernel`] into `c` (rows `ldc` apart) —
/// stored (or, with `accumulate`, added) straight into `c` when whole, its
/// rows prefetched for writing; through a scratch block and clipped at C's
/// edges. `finish(j0, nc)` then runs over the task's rows of each panel one
/// panel later, when the tile stores have retired (read back at once they
/// stall the loads: the epilogue took 17% of MiniLM's inference so).
/// Configures the tiles and releases them.
///
/// # Safety
/// AMX with the product's extension is available; `strip(s)` and
/// `panel(p)` point at `kb` packed blocks; the strips' rows of `c` (`n`
/// columns) belong to the caller alone.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sweep<A, B, T: Copy + Default + std::ops::AddAssign>(
    op: TileProduct,
    kb: usize,
    (s0, s1): (usize, usize),
    m: usize,
    n: usize,
    strip: impl Fn(usize) -> *const A,
    panel: impl Fn(usize) -> *const B,
    c: *mut T,
    ldc: usize,
    accumulate: bool,
    mut finish: impl FnMut(usize, usize),
) {
    let panels = n.div_ceil(32);
    let mut out = [T::default(); 32 * 32];
    configure();
    for p in 0..panels {
        let j0 = 32 * p;
        let nc = 32.min(n - j0);
        for s in s0..s1 {
            let i0 = 32 * s;
            let mr = 32.min(m - i0);
            // SAFETY: the caller's contract; the block at (i0, j0) lies in C.
            unsafe {
                let c0 = c.add(i0 * ldc + j0);
                if mr == 32 && nc == 32 {
                    for r in 0..32 {
                        let row = c0.add(r * ldc) as *const i8;
                        _mm_prefetch::<_MM_HINT_ET0>(row);
                        _mm_prefetch::<_MM_HINT_ET0>(row.add(64));
                    }
                    kernel(op, kb, strip(s), panel(p), c0, ldc, accumulate);
                    continue;
                }
                kernel(op, kb, strip(s), panel(p), out.as_mut_ptr(), 32, false);
                for r in 0..mr {
                    let row = std::slice::from_raw_parts_mut(c0.add(r * ldc), nc);
                    let src = &out[32 * r..32 * r + nc];
                    if accumulate {
                        row.iter_mut().zip(src).for_each(|(o, &v)| *o += v);
                    } else {
                        row.copy_from_slice(src);
                    }
                }
            }
        }
        if p > 0 {
            finish(j0 - 32, 32);
        }
    }
    if panels > 0 {
        let j0 = 32 * (panels - 1);
        finish(j0, n - j0);
    }
    release();
}

/// Runs `task(s0, s1)` over blocks of the strips of 32 rows `s0..s1` (at
/// most [`ROW_BLOCK`] rows each, and at least one block per thread), on
/// `threads` threads.
pub(super) fn for_strip_blocks(strips: usize, threads: usize, task: impl Fn(usize, usize) + Sync + Send) {
    let nblocks = strips.div_ceil(ROW_BLOCK / 32).max(threads.min(strips));
    let run = |t: usize| {
        let (s0, s1) = (t * strips / nblocks, (t + 1) * strips / nblocks);
        if s0 < s1 {
            task(s0, s1);
        }
    };
    if threads > 1 && nblocks > 1 {
        crate::parallel::par_for_long(nblocks, run);
    } else {
        (0..nblocks).for_each(run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::uniform as data;

    fn bf(x: f32) -> f64 {
        f32::from_bits((to_bf16(x) as u32) << 16) as f64
    }

    #[test]
    fn rounding_is_to_nearest_even_and_keeps_specials() {
        for x in [0.0f32, -0.0, 1.0, -2.5, 3.17, 1e-40, 65504.0, f32::MAX, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(to_bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        // Ties: 1 + 2^-8 sits halfway between two bf16 values and goes to the even one.
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert!(f32::from_bits((to_bf16(f32::NAN) as u32) << 16).is_nan());
        assert!(f32::from_bits((to_bf16(-f32::NAN) as u32) << 16).is_nan());
    }

    /// Against f64 sums of the bf16-rounded operands: edge tiles, depth
    /// not a multiple of 32, transposed and offset views, accumulation,
    /// more strips than a row block, one and several threads.
    #[test]
    fn products_of_rounded_operands_on_awkward_shapes() {
        if !available() {
            eprintln!("SKIPPED: no AMX-BF16 on this CPU or OS");
            return;
        }
        for (m, k, n) in
            [(1, 1, 1), (16, 16, 16), (33, 31, 17), (1, 300, 40), (300, 65, 1), (531, 70, 97), (64, 1024, 96)]
        {
            // The layouts: row-major, transposed, and neither (every other element:
            // the scalar packing), each with an offset.
            for (ta, tb, acc) in [(0, 0, false), (1, 0, true), (0, 1, false), (1, 1, true), (2, 2, false)] {
                let (av, bv) = (data(2 * m * k + 3, 1), data(2 * k * n + 5, 2));
                let a = match ta {
                    0 => MatRef { data: &av, offset: 3, rs: k, cs: 1 },
                    1 => MatRef { data: &av, offset: 3, rs: 1, cs: m },
                    _ => MatRef { data: &av, offset: 3, rs: 2 * k, cs: 2 },
                };
                let b = match tb {
                    0 => MatRef { data: &bv, offset: 5, rs: n, cs: 1 },
                    1 => MatRef { data: &bv, offset: 5, rs: 1, cs: k },
                    _ => MatRef { data: &bv, offset: 5, rs: 2 * n, cs: 2 },
                };
                let ldc = n + 3;
                let init = data(m * ldc, 3);
                for parallel in [false, true] {
                    let mut c = init.clone();
                    // SAFETY: available; the views lie inside their buffers.
                    unsafe { gemm(m, k, n, a, b, &mut c, ldc, acc, parallel, None) };
                    for i in 0..m {
                        for j in 0..n {
                            let mut want: f64 = if acc { init[i * ldc + j] as f64 } else { 0.0 };
                            let mut mag = want.abs();
                            for p in 0..k {
                                let x = bf(a.data[a.offset + i * a.rs + p * a.cs])
                                    * bf(b.data[b.offset + p * b.rs + j * b.cs]);
                                want += x;
                                mag += x.abs();
                            }
                            let got = c[i * ldc + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-6 * (1.0 + mag),
                                "({m},{k},{n}) ta={ta} tb={tb} at ({i},{j}): {got} vs {want}"
                            );
                        }
                        for j in n..ldc {
                            assert_eq!(c[i * ldc + j], init[i * ldc + j], "padding column written");
                        }
                    }
                }
            }
        }
    }
}
