//! Block-quantized matrix products: weights in GGUF's block formats (32
//! values share a scale), activations quantized on the fly per row to
//! `i16`, and each block's product summed exactly in integers before the
//! scales apply. No weight is widened to `f32`.
//!
//! With `u` a weight block's values as unsigned integers and `off` the
//! offset its format adds (`Q4_1`: its min `m`; `Q4_0`: `−8·d`; `Q8_0`:
//! `−128·d`, its `i8` values stored plus 128), a weight block is
//! `w = d·u + off`, an activation row `x = sa·q`, and a row's product is
//!
//! `Σ w·x = sa·Σ_b d_b·(Σ u·q)_b + Σ_b off_b·(sa·Σ q)_b`,
//!
//! where each `(Σ u·q)_b` is one `VPMADDWD` (`i16` pairs into `i32`) and
//! `sa·Σ q` is kept per block of the activations.
//!
//! llama.cpp quantizes activations into 8-bit blocks instead, which is
//! faster but moves SmolLM2's logits by up to 6% of the largest; 16 bits
//! per row keep them within 0.2% (see [`Q16Rows`]).
//!
//! Kernels, chosen at run time: AVX-512 (one block per 64-byte vector; a
//! micro-kernel of up to 4 activation rows shares each unpacked weight
//! block), and a portable loop. [`gemm_blocks_reference`] (the same sums
//! in `f64`) is the tests' reference.
//!
//! ```
//! use firebrand_ops::gemm::blocks::{BlockFormat, BlockWeight, gemm_blocks, quantize_rows_i16};
//! let w: Vec<f32> = (0..2 * 64).map(|i| (i as f32 * 0.37).sin()).collect(); // (n = 2, k = 64)
//! let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.11).cos()).collect(); // (m = 1, k = 64)
//! let qw = BlockWeight::quantize(&w, 2, 64, BlockFormat::Q4_1);
//! let qa = quantize_rows_i16(&x, 1, 64);
//! let mut out = [0.0f32; 2];
//! gemm_blocks(&qa, &qw, &mut out);
//! let exact: f32 = (0..64).map(|p| w[p] * x[p]).sum();
//! assert!((out[0] - exact).abs() < 0.2, "{} vs {exact}", out[0]);
//! ```

use crate::parallel::SendPtr;
use half::f16;

/// Values per block, in every format.
pub const BLOCK: usize = 32;

/// GGUF's block formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    /// An `f16` scale `d` and 32 `i8`: `w = d·q`.
    Q8_0,
    /// An `f16` scale `d` and 32 nibbles: `w = d·(q − 8)`.
    Q4_0,
    /// An `f16` scale `d`, an `f16` min `m` and 32 nibbles: `w = d·q + m`.
    Q4_1,
}

impl BlockFormat {
    /// Bytes of one block in a GGUF file.
    pub fn gguf_block_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q4_0 => 18,
            BlockFormat::Q4_1 => 20,
        }
    }

    /// Bytes of one block's values.
    pub(crate) fn qs_bytes(self) -> usize {
        match self {
            BlockFormat::Q8_0 => 32,
            BlockFormat::Q4_0 | BlockFormat::Q4_1 => 16,
        }
    }

    /// Whether the values are nibbles (low nibbles hold a block's first 16
    /// values, high nibbles its last 16).
    pub(crate) fn is_4bit(self) -> bool {
        self != BlockFormat::Q8_0
    }
}

/// A weight `(n, k)` in one of the block formats, `k` a multiple of 32:
/// each row `k/32` blocks. The values, scales and mins are kept in three
/// arrays (the same bytes a GGUF file holds, regrouped), so a kernel
/// streams each.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockWeight {
    /// The format.
    pub format: BlockFormat,
    /// Output channels (rows).
    pub n: usize,
    /// Depth (columns), a multiple of 32.
    pub k: usize,
    /// `(n, k/32, 16 or 32)`: nibbles as GGUF packs them, or `Q8_0`'s
    /// values plus 128 as `u8`.
    pub(crate) qs: Vec<u8>,
    /// `(n, k/32)` scales.
    pub(crate) d: Vec<f16>,
    /// `(n, k/32)` mins (`Q4_1` only, else empty).
    pub(crate) m: Vec<f16>,
}

/// Why bytes are not a block weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockError(pub String);

impl std::fmt::Display for BlockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BlockError {}

impl BlockWeight {
    /// The weight `(n, k)` from a GGUF tensor's bytes (row after row, each
    /// `k/32` blocks), taken as they are.
    ///
    /// # Errors
    /// When `k` is not a multiple of 32 or the bytes are not `n·k/32` blocks.
    pub fn from_gguf_bytes(format: BlockFormat, bytes: &[u8], n: usize, k: usize) -> Result<BlockWeight, BlockError> {
        if !k.is_multiple_of(BLOCK) {
            return Err(BlockError(format!("{format:?} weight ({n}, {k}): the depth is not a multiple of {BLOCK}")));
        }
        let blocks = n * k / BLOCK;
        let bb = format.gguf_block_bytes();
        if bytes.len() != blocks * bb {
            return Err(BlockError(format!(
                "{format:?} weight ({n}, {k}): {} bytes, expected {blocks} blocks of {bb}",
                bytes.len()
            )));
        }
        let qb = format.qs_bytes();
        let mut w = BlockWeight {
            format,
            n,
            k,
            qs: Vec::with_capacity(blocks * qb),
            d: Vec::with_capacity(blocks),
            m: Vec::new(),
        };
        let h = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]);
        for b in bytes.chunks_exact(bb) {
            w.d.push(h(b));
            match format {
                BlockFormat::Q8_0 => w.qs.extend(b[2..].iter().map(|&q| q ^ 0x80)),
                BlockFormat::Q4_0 => w.qs.extend_from_slice(&b[2..]),
                BlockFormat::Q4_1 => {
                    w.m.push(h(&b[2..]));
                    w.qs.extend_from_slice(&b[4..]);
                }
            }
        }
        Ok(w)
    }

    /// The weight's blocks as a GGUF file holds them (the inverse of
    /// [`from_gguf_bytes`](Self::from_gguf_bytes)).
    pub fn to_gguf_bytes(&self) -> Vec<u8> {
        let qb = self.format.qs_bytes();
        let mut out = Vec::with_capacity(self.d.len() * self.format.gguf_block_bytes());
        for (b, d) in self.d.iter().enumerate() {
            out.extend_from_slice(&d.to_le_bytes());
            let qs = &self.qs[b * qb..(b + 1) * qb];
            match self.format {
                BlockFormat::Q8_0 => out.extend(qs.iter().map(|&q| q ^ 0x80)),
                BlockFormat::Q4_0 => out.extend_from_slice(qs),
                BlockFormat::Q4_1 => {
                    out.extend_from_slice(&self.m[b].to_le_bytes());
                    out.extend_from_slice(qs);
                }
            }
        }
        out
    }

    /// Quantizes `w` `(n, k)` as llama.cpp's reference quantizers do
    /// (`Q8_0`: `d = max|w|/127`; `Q4_0`: `d = −max/8` for the value of
    /// largest magnitude; `Q4_1`: `d = (max − min)/15`, `m = min`), rounding
    /// to nearest. A block holding NaN or an infinity gets a NaN scale.
    ///
    /// # Panics
    /// When `k` is not a multiple of 32 or `w` holds fewer than `n·k` values.
    pub fn quantize(w: &[f32], n: usize, k: usize, format: BlockFormat) -> BlockWeight {
        assert!(k.is_multiple_of(BLOCK), "BlockWeight::quantize: depth {k} is not a multiple of {BLOCK}");
        assert!(w.len() >= n * k, "BlockWeight::quantize: {} values for ({n}, {k})", w.len());
        let blocks = n * k / BLOCK;
        let mut out = BlockWeight {
            format,
            n,
            k,
            qs: Vec::with_capacity(blocks * format.qs_bytes()),
            d: Vec::with_capacity(blocks),
            m: Vec::new(),
        };
        for x in w[..n * k].chunks_exact(BLOCK) {
            let finite = x.iter().all(|v| v.is_finite());
            match format {
                BlockFormat::Q8_0 => {
                    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let d = if finite { amax / 127.0 } else { f32::NAN };
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    out.d.push(f16::from_f32(d));
                    out.qs.extend(x.iter().map(|v| ((v * id).round().clamp(-128.0, 127.0) as i8 as u8) ^ 0x80));
                }
                BlockFormat::Q4_0 => {
                    let big = x.iter().fold(0.0f32, |a, &v| if v.abs() > a.abs() { v } else { a });
                    let d = if finite { big / -8.0 } else { f32::NAN };
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    out.d.push(f16::from_f32(d));
                    let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                    out.qs.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
                }
                BlockFormat::Q4_1 => {
                    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &v| (l.min(v), h.max(v)));
                    let d = if finite { (hi - lo) / 15.0 } else { f32::NAN };
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    out.d.push(f16::from_f32(d));
                    out.m.push(f16::from_f32(lo));
                    let q = |v: f32| (((v - lo) * id + 0.5) as i32).clamp(0, 15) as u8;
                    out.qs.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
                }
            }
        }
        out
    }

    /// The weights stacked by rows, `(Σ n, k)` (several projections of the
    /// same input as one product); `None` when the formats or depths differ
    /// or there are none.
    pub fn concat(parts: &[&BlockWeight]) -> Option<BlockWeight> {
        let first = parts.first()?;
        if parts.iter().any(|p| p.format != first.format || p.k != first.k) {
            return None;
        }
        Some(BlockWeight {
            format: first.format,
            n: parts.iter().map(|p| p.n).sum(),
            k: first.k,
            qs: parts.iter().flat_map(|p| p.qs.iter().copied()).collect(),
            d: parts.iter().flat_map(|p| p.d.iter().copied()).collect(),
            m: parts.iter().flat_map(|p| p.m.iter().copied()).collect(),
        })
    }

    /// Blocks per row.
    pub fn blocks_per_row(&self) -> usize {
        self.k / BLOCK
    }

    /// Bytes held (values, scales and mins).
    pub fn bytes(&self) -> usize {
        self.qs.len() + 2 * (self.d.len() + self.m.len())
    }

    /// Block `b` of row `j`: `(unsigned values, d, off)` with `w = d·u + off`.
    fn block(&self, j: usize, b: usize) -> ([u8; BLOCK], f32, f32) {
        let i = j * self.blocks_per_row() + b;
        let qb = self.format.qs_bytes();
        let qs = &self.qs[i * qb..(i + 1) * qb];
        let d = self.d[i].to_f32();
        let mut u = [0u8; BLOCK];
        if self.format.is_4bit() {
            for t in 0..16 {
                u[t] = qs[t] & 0x0f;
                u[t + 16] = qs[t] >> 4;
            }
        } else {
            u.copy_from_slice(qs);
        }
        let off = match self.format {
            BlockFormat::Q8_0 => -128.0 * d,
            BlockFormat::Q4_0 => -8.0 * d,
            BlockFormat::Q4_1 => self.m[i].to_f32(),
        };
        (u, d, off)
    }

    /// Row `j` as `f32` (for checks and for lookups such as an embedding's).
    ///
    /// # Panics
    /// When `j ≥ n` or `out` is not `k` long.
    pub fn dequantize_row(&self, j: usize, out: &mut [f32]) {
        assert!(j < self.n && out.len() == self.k, "BlockWeight::dequantize_row: row {j} of ({}, {})", self.n, self.k);
        for b in 0..self.blocks_per_row() {
            let (u, d, off) = self.block(j, b);
            for (o, &q) in out[b * BLOCK..(b + 1) * BLOCK].iter_mut().zip(&u) {
                *o = d * q as f32 + off;
            }
        }
    }

    /// The whole weight as `f32` `(n, k)`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.n * self.k];
        for (j, row) in out.chunks_exact_mut(self.k.max(1)).enumerate().take(self.n) {
            self.dequantize_row(j, row);
        }
        out
    }
}

/// Activations `(m, k)` quantized per row to `i16`: `x ≈ scale·q`,
/// `scale = max|x|/32767`, with each block's `scale·Σ q` for the weights'
/// offsets. Sixteen bits keep SmolLM2's logits within 2e-3 of the `f32`
/// model's, where llama.cpp's 8-bit blocks lose 6e-2 (measured in PyTorch,
/// `tests/reference/activation_bits.py` of `firebrand-pretrained`).
#[derive(Debug, Clone, Default)]
pub struct Q16Rows {
    /// Rows.
    pub m: usize,
    /// Depth, a multiple of 32.
    pub k: usize,
    /// `(m, k)`.
    pub(crate) qs: Vec<i16>,
    /// `(m,)` scales.
    pub(crate) scale: Vec<f32>,
    /// `(m, k/32)`: `scale·Σ q` of each block.
    pub(crate) s: Vec<f32>,
}

/// Quantizes `x` `(m, k)` row by row to `i16`, rounding to nearest even. A
/// row holding NaN or an infinity gets a NaN scale, so its outputs are NaN.
///
/// # Panics
/// When `k` is not a multiple of 32 or `x` holds fewer than `m·k` values.
pub fn quantize_rows_i16(x: &[f32], m: usize, k: usize) -> Q16Rows {
    let mut q = Q16Rows::default();
    quantize_rows_i16_into(x, m, k, &mut q);
    q
}

/// [`quantize_rows_i16`] into `q`, reusing its buffers.
///
/// # Panics
/// As [`quantize_rows_i16`].
pub fn quantize_rows_i16_into(x: &[f32], m: usize, k: usize, q: &mut Q16Rows) {
    assert!(k.is_multiple_of(BLOCK), "quantize_rows_i16: depth {k} is not a multiple of {BLOCK}");
    assert!(x.len() >= m * k, "quantize_rows_i16: {} values for ({m}, {k})", x.len());
    let nb = k / BLOCK;
    let mut sums: Vec<i32> = Vec::new();
    (q.m, q.k) = (m, k);
    q.qs.resize(m * k, 0);
    q.scale.resize(m, 0.0);
    q.s.resize(m * nb, 0.0);
    // The SIMD row quantizer this CPU has, if any.
    type RowQuantizer = unsafe fn(&[f32], f32, &mut [i16], &mut [i32]);
    #[cfg(target_arch = "x86_64")]
    let simd: Option<RowQuantizer> = if super::blocks_avx512::available() {
        Some(super::blocks_avx512::quantize_row_i16)
    } else if super::blocks_avx2::available() {
        Some(super::blocks_avx2::quantize_row_i16)
    } else {
        None
    };
    #[cfg(not(target_arch = "x86_64"))]
    let simd: Option<RowQuantizer> = None;
    for i in 0..m {
        let xs = &x[i * k..(i + 1) * k];
        let amax = xs.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let d = if xs.iter().all(|v| v.is_finite()) { amax / 32767.0 } else { f32::NAN };
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        q.scale[i] = d;
        let row = &mut q.qs[i * k..(i + 1) * k];
        if let Some(quantize_row) = simd {
            sums.resize(nb, 0);
            // SAFETY: the CPU has the kernel's features (chosen by
            // `available`); the slices hold k and k/32 values.
            unsafe { quantize_row(xs, id, row, &mut sums) };
            for (s, &t) in q.s[i * nb..(i + 1) * nb].iter_mut().zip(&sums) {
                *s = d * t as f32;
            }
            continue;
        }
        for (b, (qb, xb)) in row.chunks_exact_mut(BLOCK).zip(xs.chunks_exact(BLOCK)).enumerate() {
            let mut sum = 0i32;
            for (t, &v) in qb.iter_mut().zip(xb) {
                *t = (v * id).round_ties_even().clamp(-32767.0, 32767.0) as i16;
                sum += *t as i32;
            }
            q.s[i * nb + b] = d * sum as f32;
        }
    }
}

impl Q16Rows {
    /// Block `b` of row `i`: `(q, d·Σ q)`.
    fn block(&self, i: usize, b: usize) -> (&[i16], f32) {
        (&self.qs[i * self.k + b * BLOCK..][..BLOCK], self.s[i * (self.k / BLOCK) + b])
    }
}

/// The kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKernel {
    /// AVX-512 (F, BW, VL).
    Avx512,
    /// AVX2, FMA and F16C, for CPUs without AVX-512.
    Avx2,
    /// The portable loop.
    Portable,
}

impl BlockKernel {
    /// The fastest kernel this CPU has.
    pub fn best() -> BlockKernel {
        [BlockKernel::Avx512, BlockKernel::Avx2].into_iter().find(|k| k.available()).unwrap_or(BlockKernel::Portable)
    }

    /// Whether this CPU runs it.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            BlockKernel::Avx512 => super::blocks_avx512::available(),
            #[cfg(target_arch = "x86_64")]
            BlockKernel::Avx2 => super::blocks_avx2::available(),
            #[cfg(not(target_arch = "x86_64"))]
            BlockKernel::Avx512 | BlockKernel::Avx2 => false,
            BlockKernel::Portable => true,
        }
    }
}

/// `out (m, n) = a · wᵀ` on the fastest kernel.
///
/// # Panics
/// When the depths differ or `out` is not `m·n` long.
pub fn gemm_blocks(a: &Q16Rows, w: &BlockWeight, out: &mut [f32]) {
    gemm_blocks_with(BlockKernel::best(), a, w, out)
}

/// [`gemm_blocks`] on a chosen kernel.
///
/// # Panics
/// As [`gemm_blocks`], and when this CPU lacks the kernel.
pub fn gemm_blocks_with(kernel: BlockKernel, a: &Q16Rows, w: &BlockWeight, out: &mut [f32]) {
    assert!(
        a.k == w.k && out.len() == a.m * w.n,
        "gemm_blocks: activations ({}, {}) for a {:?} weight ({}, {}) into {} outputs",
        a.m,
        a.k,
        w.format,
        w.n,
        w.k,
        out.len()
    );
    assert!(kernel.available(), "gemm_blocks: this CPU lacks the {kernel:?} kernel");
    let (m, n) = (a.m, w.n);
    if m == 0 || n == 0 {
        return;
    }
    // Tasks of weight rows; each runs every activation row over its rows,
    // which stay in cache.
    let threads = crate::parallel::num_threads();
    let chunk = (n / (threads * 8)).clamp(16, 256);
    let ptr = SendPtr(out.as_mut_ptr());
    crate::parallel::par_for(n.div_ceil(chunk), |t| {
        let cols = t * chunk..(t * chunk + chunk).min(n);
        match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the kernel is available (asserted); the task writes
            // columns `cols` of `out` only, disjoint from the other tasks'.
            BlockKernel::Avx512 => unsafe { super::blocks_avx512::gemm(a, w, cols, ptr.get()) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            BlockKernel::Avx2 => unsafe { super::blocks_avx2::gemm(a, w, cols, ptr.get()) },
            // SAFETY: as above.
            _ => unsafe { portable(a, w, cols, ptr.get()) },
        }
    });
}

/// Rows of activations from which [`linear_blocks_f32`] beats the integer
/// kernel: with a prompt's many rows the product is bound by arithmetic,
/// and the `f32` gemm (on FMA, or AMX under a lower matmul precision) is
/// faster than widening each block's integer sums: SmolLM2's 128-token
/// prompt ran at 219 tokens/s on the integer kernel, 360–575 this way
/// (docs/benchmarks.md).
pub const F32_PATH_MIN_ROWS: usize = 16;

/// Weight rows widened per step of [`linear_blocks_f32`] (a panel that stays in cache).
const F32_PANEL: usize = 256;

/// `out (m, n) = epi(x · wᵀ)` for `x` `(m, k)` in `f32`: the weight is
/// widened to `f32` one panel of 256 rows at a time, into a buffer the
/// `f32` gemm reads at once (no `f32` copy of the weight is kept), and the
/// epilogue (bias per column, activation) applies as the product is
/// stored. For many rows, where it is faster than quantizing `x`
/// ([`F32_PATH_MIN_ROWS`]); its values are the dequantized weight's
/// `f32` product.
///
/// # Panics
/// When `x` is not `m·k` long, `out` not `m·n`, or a bias not `n`.
pub fn linear_blocks_f32(x: &[f32], m: usize, w: &BlockWeight, out: &mut [f32], epi: &super::Epilogue) {
    let (n, k) = (w.n, w.k);
    assert!(
        x.len() == m * k && out.len() == m * n && epi.col_shift.is_none_or(|b| b.len() == n),
        "linear_blocks_f32: input of {} values for ({m}, {k}), a {:?} weight ({n}, {k}), {} outputs",
        x.len(),
        w.format,
        out.len()
    );
    thread_local! {
        static PANEL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    PANEL.with(|p| {
        let mut panel = p.borrow_mut();
        for j0 in (0..n).step_by(F32_PANEL) {
            let nc = F32_PANEL.min(n - j0);
            panel.resize(nc * k, 0.0);
            let ptr = SendPtr(panel.as_mut_ptr());
            crate::parallel::par_for(nc.div_ceil(16), |t| {
                for j in 16 * t..(16 * t + 16).min(nc) {
                    // SAFETY: row j of the panel belongs to this task alone.
                    let row = unsafe { std::slice::from_raw_parts_mut(ptr.get().add(j * k), k) };
                    #[cfg(target_arch = "x86_64")]
                    if super::blocks_avx512::available() {
                        // SAFETY: the CPU has the features; the row holds k floats.
                        unsafe { super::blocks_avx512::dequantize_row(w, j0 + j, row.as_mut_ptr()) };
                        continue;
                    }
                    #[cfg(target_arch = "x86_64")]
                    if super::blocks_avx2::available() {
                        // SAFETY: the CPU has the features; the row holds k floats.
                        unsafe { super::blocks_avx2::dequantize_row(w, j0 + j, row.as_mut_ptr()) };
                        continue;
                    }
                    w.dequantize_row(j0 + j, row);
                }
            });
            let e = super::Epilogue { col_shift: epi.col_shift.map(|b| &b[j0..j0 + nc]), ..*epi };
            super::gemm_fused(
                m,
                k,
                nc,
                super::MatRef::row_major(x, k),
                super::MatRef::row_major(&panel, k).t(),
                &mut out[j0..],
                n,
                &e,
            );
        }
    });
}

/// The portable kernel over weight rows `cols`.
///
/// # Safety
/// `out` points to `a.m·w.n` floats; only columns `cols` are written.
unsafe fn portable(a: &Q16Rows, w: &BlockWeight, cols: std::ops::Range<usize>, out: *mut f32) {
    let nb = w.blocks_per_row();
    for i in 0..a.m {
        for j in cols.clone() {
            let (mut acc, mut acc_off) = (0.0f32, 0.0f32);
            for b in 0..nb {
                let (q, sa) = a.block(i, b);
                let (u, d, off) = w.block(j, b);
                let dot: i32 = u.iter().zip(q).map(|(&u, &q)| u as i32 * q as i32).sum();
                acc += d * dot as f32;
                acc_off += off * sa;
            }
            // SAFETY: (i, j) is inside `out` and in this task's columns.
            unsafe { *out.add(i * w.n + j) = a.scale[i] * acc + acc_off };
        }
    }
}

/// The same product with every block's sum taken in `f64` (the tests' reference).
///
/// # Panics
/// As [`gemm_blocks`].
pub fn gemm_blocks_reference(a: &Q16Rows, w: &BlockWeight) -> Vec<f64> {
    assert!(a.k == w.k, "gemm_blocks_reference: depths {} and {}", a.k, w.k);
    let nb = w.blocks_per_row();
    let mut out = vec![0.0; a.m * w.n];
    for i in 0..a.m {
        for j in 0..w.n {
            out[i * w.n + j] = (0..nb)
                .map(|b| {
                    let (q, sa) = a.block(i, b);
                    let (u, d, off) = w.block(j, b);
                    let dot: i64 = u.iter().zip(q).map(|(&u, &q)| u as i64 * q as i64).sum();
                    a.scale[i] as f64 * d as f64 * dot as f64 + off as f64 * sa as f64
                })
                .sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as f32 * 0.618 + seed as f32 * 1.3).sin() * 3.0) + if i % 7 == 0 { 2.5 } else { 0.0 })
            .collect()
    }

    const FORMATS: [BlockFormat; 3] = [BlockFormat::Q8_0, BlockFormat::Q4_0, BlockFormat::Q4_1];

    fn kernels() -> Vec<BlockKernel> {
        [BlockKernel::Avx512, BlockKernel::Avx2, BlockKernel::Portable].into_iter().filter(|k| k.available()).collect()
    }

    /// Every kernel on awkward shapes (one row, odd rows, an odd block
    /// count, more than 16 blocks (a partial group of 16), tails of the
    /// 4-row micro-kernel)
    /// against the `f64` reference, and near the `f32` product.
    #[test]
    fn kernels_match_the_reference_on_awkward_shapes() {
        for format in FORMATS {
            for (m, n, k) in
                [(1, 1, 32), (1, 17, 96), (3, 5, 64), (7, 33, 576), (5, 40, 544), (9, 3, 1024), (4, 300, 160)]
            {
                let (x, wf) = (data(m * k, 1), data(n * k, 2));
                let w = BlockWeight::quantize(&wf, n, k, format);
                let a = quantize_rows_i16(&x, m, k);
                // The activations: round to nearest even of x / scale, per row.
                for i in 0..m {
                    for p in 0..k {
                        let want = (x[i * k + p] / a.scale[i]).round_ties_even() as i16;
                        assert!(
                            (a.qs[i * k + p] - want).abs() <= 1,
                            "row {i} value {p}: {} vs {want}",
                            a.qs[i * k + p]
                        );
                    }
                    // Each block's sum is the scale times the sum of its values.
                    for b in 0..k / BLOCK {
                        let sum: i32 = a.qs[i * k + b * BLOCK..][..BLOCK].iter().map(|&q| q as i32).sum();
                        assert_eq!(a.s[i * (k / BLOCK) + b], a.scale[i] * sum as f32, "row {i} block {b}");
                    }
                }
                let want = gemm_blocks_reference(&a, &w);
                let scale = want.iter().fold(1.0f64, |s, v| s.max(v.abs()));
                for kernel in kernels() {
                    let mut out = vec![f32::NAN; m * n];
                    gemm_blocks_with(kernel, &a, &w, &mut out);
                    for (idx, (&o, &r)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            (o as f64 - r).abs() <= 1e-5 * scale,
                            "{format:?} {kernel:?} ({m}, {n}, {k}) at {idx}: {o} vs {r}"
                        );
                    }
                }
                // The quantized product stays near the f32 one.
                let wd = w.dequantize();
                let err = (0..m * n)
                    .map(|idx| {
                        let (i, j) = (idx / n, idx % n);
                        let exact: f32 = (0..k).map(|p| x[i * k + p] * wd[j * k + p]).sum();
                        (exact as f64 - want[idx]).abs()
                    })
                    .fold(0.0, f64::max);
                assert!(
                    err <= 1e-3 * scale,
                    "{format:?} ({m}, {n}, {k}): activation rounding error {err} (scale {scale})"
                );
            }
        }
    }

    /// The f32 path for many rows: the dequantized weight's product (odd
    /// rows, a partial panel past 256 rows, a bias and an activation).
    #[test]
    fn the_f32_path_is_the_dequantized_product() {
        for format in FORMATS {
            let (m, n, k) = (17, 300, 96);
            let (x, wf, bias) = (data(m * k, 7), data(n * k, 8), data(n, 9));
            let w = BlockWeight::quantize(&wf, n, k, format);
            let wd = w.dequantize();
            let mut out = vec![f32::NAN; m * n];
            let epi = super::super::Epilogue {
                col_shift: Some(&bias),
                act: Some(firebrand_tensor::op::UnaryOp::Relu),
                ..Default::default()
            };
            linear_blocks_f32(&x, m, &w, &mut out, &epi);
            for i in 0..m {
                for j in 0..n {
                    let want = ((0..k).map(|p| x[i * k + p] as f64 * wd[j * k + p] as f64).sum::<f64>()
                        + bias[j] as f64)
                        .max(0.0);
                    let got = out[i * n + j] as f64;
                    assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{format:?} ({i}, {j}): {got} vs {want}");
                }
            }
        }
    }

    /// Quantizing follows llama.cpp's reference quantizers: values come
    /// back within half a step, GGUF bytes round-trip.
    #[test]
    fn quantize_round_trips_and_keeps_gguf_bytes() {
        let (n, k) = (3, 64);
        let w = data(n * k, 5);
        for format in FORMATS {
            let q = BlockWeight::quantize(&w, n, k, format);
            let back = q.dequantize();
            for b in 0..n * k / BLOCK {
                let xs = &w[b * BLOCK..(b + 1) * BLOCK];
                let d = q.d[b].to_f32().abs();
                // Q4_0's 16 steps run from −8·d to 7·d: the far end clamps by a step.
                let tol = if format == BlockFormat::Q4_0 { 1.01 * d } else { 0.505 * d } + 4e-3;
                for (i, (&x, &y)) in xs.iter().zip(&back[b * BLOCK..]).enumerate() {
                    assert!((x - y).abs() <= tol, "{format:?} block {b} value {i}: {x} → {y} (d {d})");
                }
            }
            // Stacked by rows: the rows' own values.
            let two = BlockWeight::concat(&[&q, &q]).unwrap();
            assert_eq!((two.n, two.k), (2 * n, k));
            let (back2, back1) = (two.dequantize(), q.dequantize());
            assert_eq!(&back2[..n * k], &back1[..]);
            assert_eq!(&back2[n * k..], &back1[..]);
            let bytes = q.to_gguf_bytes();
            assert_eq!(bytes.len(), n * k / BLOCK * format.gguf_block_bytes());
            assert_eq!(BlockWeight::from_gguf_bytes(format, &bytes, n, k).unwrap(), q);
        }
        let e = BlockWeight::from_gguf_bytes(BlockFormat::Q4_1, &[0; 39], 1, 64).unwrap_err();
        assert!(e.0.contains("Q4_1") && e.0.contains("(1, 64)") && e.0.contains("39 bytes"), "{e}");
        let e = BlockWeight::from_gguf_bytes(BlockFormat::Q8_0, &[], 1, 48).unwrap_err();
        assert!(e.0.contains("multiple of 32"), "{e}");
    }

    /// A NaN in an activation row makes its outputs NaN; an all-zero row is exact.
    #[test]
    fn nan_propagates_and_zeros_are_exact() {
        let (m, n, k) = (2, 20, 64);
        let mut x = data(m * k, 3);
        x[5] = f32::NAN;
        x[k..].iter_mut().for_each(|v| *v = 0.0);
        for format in FORMATS {
            let w = BlockWeight::quantize(&data(n * k, 4), n, k, format);
            let a = quantize_rows_i16(&x, m, k);
            for kernel in kernels() {
                let mut out = vec![0.0; m * n];
                gemm_blocks_with(kernel, &a, &w, &mut out);
                assert!(out[..n].iter().all(|v| v.is_nan()), "{format:?} {kernel:?}: {:?}", &out[..n]);
                assert!(out[n..].iter().all(|&v| v == 0.0), "{format:?} {kernel:?}: {:?}", &out[n..]);
            }
        }
    }

    #[test]
    fn mismatched_depths_name_the_shapes() {
        let w = BlockWeight::quantize(&data(64, 1), 1, 64, BlockFormat::Q4_1);
        let a = quantize_rows_i16(&data(96, 1), 1, 96);
        let e = std::panic::catch_unwind(|| gemm_blocks(&a, &w, &mut [0.0])).unwrap_err();
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("(1, 96)") && msg.contains("Q4_1 weight (1, 64)"), "{msg}");
    }
}
