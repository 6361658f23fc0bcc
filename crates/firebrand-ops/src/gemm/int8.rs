//! Integer matrix products for quantized inference: `u8` activations times
//! `i8` weights, summed exactly in `i32`, then dequantized to `f32`:
//!
//! `out[i, j] = sa[i]·sw[j]·(Σ_p a[i, p]·w[j, p] − za[i]·Σ_p w[j, p]) + bias[j]`
//!
//! for activations quantized per row (`a = round(x / sa) + za`, asymmetric,
//! [`quantize_rows_u8`]) and weights per output channel (`w = round(W / sw)`,
//! symmetric, [`QuantizedWeight`]).
//!
//! Kernels, chosen at run time:
//! * AMX-INT8 (`TDPBUSD`: 16x16 tiles of `u8·i8` sums of four into `i32`),
//!   the weight packed once into the tiles' "VNNI" order;
//! * AVX-512 VNNI (`VPDPBUSD`: fours of `u8·i8` into `i32` lanes);
//! * AVX2 (`VPMADDUBSW` then `VPMADDWD`: fours into `i32`, for rows
//!   quantized to `0..=127`; both sides widened to `i16` for full-range
//!   rows);
//! * a portable loop otherwise (also the tests' reference).
//!
//! ```
//! use firebrand_ops::gemm::int8::{QuantizedWeight, gemm_u8i8, quantize_rows_u8};
//! let w = [1.0f32, -2.0, 0.5, 4.0, 0.0, -1.0]; // (n = 2, k = 3)
//! let x = [0.5f32, 1.0, -1.0]; // (m = 1, k = 3)
//! let qw = QuantizedWeight::from_f32(&w, 2, 3);
//! let qa = quantize_rows_u8(&x, 1, 3);
//! let mut out = [0.0f32; 2];
//! gemm_u8i8(&qa, &qw, None, &mut out);
//! assert!((out[0] - (0.5 - 2.0 - 0.5)).abs() < 0.05 && (out[1] - (2.0 + 1.0)).abs() < 0.05);
//! ```

use crate::parallel::SendPtr;

/// Activations `(m, k)` quantized to `u8` per row: `x ≈ scale[i]·(q − zero[i])`.
#[derive(Debug, Clone)]
pub struct QuantizedRows {
    /// Rows.
    pub m: usize,
    /// Columns (depth).
    pub k: usize,
    /// `(m, k)` row-major.
    pub data: Vec<u8>,
    /// One per row.
    pub scale: Vec<f32>,
    /// One per row, in `0..=top`.
    pub zero: Vec<i32>,
    /// The highest level a value may have: 255, or 127 for rows made for
    /// the AVX2 kernel ([`Kernel::activation_top`]). Rows built by hand must
    /// keep every value at or below it: below 128, the AVX2 kernel's `i16`
    /// pair sums are exact only then.
    pub top: u8,
}

impl Default for QuantizedRows {
    fn default() -> Self {
        QuantizedRows::new()
    }
}

impl QuantizedRows {
    /// No rows (buffers to fill with [`quantize_rows_u8_into`]).
    pub const fn new() -> QuantizedRows {
        QuantizedRows { m: 0, k: 0, data: Vec::new(), scale: Vec::new(), zero: Vec::new(), top: 255 }
    }

    /// Shapes the buffers for `m` rows of `k` bytes that all share `iq`
    /// (static quantization); the bytes are left for the caller to write.
    pub fn reset_static(&mut self, m: usize, k: usize, iq: InputQuant) {
        (self.m, self.k, self.top) = (m, k, 255);
        self.data.resize(m * k, 0);
        self.scale.clear();
        self.scale.resize(m, iq.scale);
        self.zero.clear();
        self.zero.resize(m, iq.zero as i32);
    }
}

/// Quantizes `x` `(m, k)` row by row to `u8` (levels `0..=255`) over each
/// row's own range (PyTorch's dynamic quantization takes one range per
/// batch; one per row loses less). A row's range always includes 0, so 0
/// is exact; values round to nearest, ties to even. A row holding NaN or an
/// infinity gets a NaN scale, so its outputs are NaN rather than garbage.
///
/// # Panics
/// When `x` holds fewer than `m·k` values.
pub fn quantize_rows_u8(x: &[f32], m: usize, k: usize) -> QuantizedRows {
    let mut q = QuantizedRows::default();
    quantize_rows_u8_into(x, m, k, 255, &mut q);
    q
}

/// [`quantize_rows_u8`] into `q`, reusing its buffers, with levels
/// `0..=top` (a weight's [`Kernel::activation_top`]: 127 on AVX2, whose
/// products need it, as PyTorch's `reduce_range`).
///
/// # Panics
/// When `x` holds fewer than `m·k` values or `top` is 0.
pub fn quantize_rows_u8_into(x: &[f32], m: usize, k: usize, top: u8, q: &mut QuantizedRows) {
    assert!(x.len() >= m * k, "quantize_rows_u8: {} values for ({m}, {k})", x.len());
    assert!(top > 0, "quantize_rows_u8: no levels above 0");
    (q.m, q.k, q.top) = (m, k, top);
    q.data.resize(m * k, 0);
    q.scale.resize(m, 0.0);
    q.zero.resize(m, 0);
    let rows = SendPtr(q.data.as_mut_ptr());
    let (sp, zp) = (SendPtr(q.scale.as_mut_ptr()), SendPtr(q.zero.as_mut_ptr()));
    crate::parallel::par_for(m.div_ceil(64), |c| {
        for i in 64 * c..(64 * c + 64).min(m) {
            let row = &x[i * k..(i + 1) * k];
            // SAFETY: row i of the outputs belongs to this task alone.
            let out = unsafe { std::slice::from_raw_parts_mut(rows.get().add(i * k), k) };
            #[cfg(target_arch = "x86_64")]
            let (s, z) = if crate::simd512::available() {
                // SAFETY: AVX-512F is available.
                unsafe { quantize_row_avx512(row, out, top) }
            } else if super::int8_avx2::available() {
                // SAFETY: AVX2 and FMA are available.
                unsafe { quantize_row_avx2(row, out, top) }
            } else {
                quantize_row(row, out, top)
            };
            #[cfg(not(target_arch = "x86_64"))]
            let (s, z) = quantize_row(row, out, top);
            // SAFETY: as above.
            unsafe {
                *sp.get().add(i) = s;
                *zp.get().add(i) = z;
            }
        }
    });
}

/// How an activation tensor maps to `u8`: `x ≈ scale·(q − zero)`, fixed
/// ahead of time by calibration (static quantization).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputQuant {
    /// The step between two levels.
    pub scale: f32,
    /// The level of 0.0.
    pub zero: u8,
}

impl InputQuant {
    /// Parameters covering `[lo, hi]`, widened to include 0 so that zero
    /// (padding, a ReLU's output) is exact; a degenerate range gets scale 1.
    ///
    /// ```
    /// use firebrand_ops::gemm::int8::InputQuant;
    /// let q = InputQuant::from_range(-1.0, 3.0);
    /// assert_eq!((q.scale, q.zero), (4.0 / 255.0, 64));
    /// ```
    pub fn from_range(lo: f32, hi: f32) -> InputQuant {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        let scale = if hi > lo && (hi - lo).is_finite() { (hi - lo) / 255.0 } else { 1.0 };
        InputQuant { scale, zero: (-lo / scale).round_ties_even().clamp(0.0, 255.0) as u8 }
    }

    /// One value's level: round to nearest (ties to even), clamp to `0..=255`.
    #[inline(always)]
    pub fn quantize(self, v: f32, inv: f32) -> u8 {
        // Adding 1.5·2^23 rounds a value in [0, 2^22) to an integer, ties
        // to even, in the default rounding mode (no libm call).
        const MAGIC: f32 = 12_582_912.0;
        let t = v.mul_add(inv, self.zero as f32).clamp(0.0, 255.0);
        ((t + MAGIC) - MAGIC) as u8
    }
}

/// [`quantize_rows_u8_into`] with fixed parameters (static quantization)
/// instead of each row's range: values past the range saturate, and a row
/// holding NaN or an infinity gets a NaN scale (its outputs are NaN).
///
/// # Panics
/// When `x` holds fewer than `m·k` values.
pub fn quantize_rows_u8_static_into(x: &[f32], m: usize, k: usize, iq: InputQuant, q: &mut QuantizedRows) {
    assert!(x.len() >= m * k, "quantize_rows_u8_static: {} values for ({m}, {k})", x.len());
    q.reset_static(m, k, iq);
    for ((row, out), s) in x.chunks_exact(k.max(1)).zip(q.data.chunks_exact_mut(k.max(1))).zip(&mut q.scale).take(m) {
        if !quantize_fixed(row, out, iq) {
            *s = f32::NAN;
        }
    }
}

/// `dst[i] = iq.quantize(src[i])` (AVX-512 where the CPU has it, the same
/// bytes); whether every value was finite.
pub(crate) fn quantize_fixed(src: &[f32], dst: &mut [u8], iq: InputQuant) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::simd512::available() {
        // SAFETY: AVX-512F/BW are available.
        return unsafe { quantize_fixed_avx512(src, dst, iq) };
    }
    let inv = 1.0 / iq.scale;
    for (o, &v) in dst.iter_mut().zip(src) {
        *o = iq.quantize(v, inv);
    }
    src.iter().all(|v| v.is_finite())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,fma")]
unsafe fn quantize_fixed_avx512(src: &[f32], dst: &mut [u8], iq: InputQuant) -> bool {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut bad: __mmask16 = 0;
    for p in (0..n).step_by(16) {
        let m: __mmask16 = if n - p >= 16 { 0xffff } else { (1u16 << (n - p)) - 1 };
        // SAFETY: the masked load and store stay within the first `n` values.
        unsafe {
            let v = _mm512_maskz_loadu_ps(m, src.as_ptr().add(p));
            let (q, b) = quantize16(v, iq);
            bad |= b & m;
            _mm512_mask_cvtepi32_storeu_epi8(dst.as_mut_ptr().add(p) as *mut i8, m, q);
        }
    }
    bad == 0
}

/// Sixteen values' levels under `iq` (as [`InputQuant::quantize`]: fused
/// multiply-add, round to nearest even, clamp) and the mask of those that
/// are NaN or infinite.
///
/// # Safety
/// AVX-512F and FMA are available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn quantize16(
    v: std::arch::x86_64::__m512,
    iq: InputQuant,
) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__mmask16) {
    use std::arch::x86_64::*;
    // SAFETY: register arithmetic only (the caller guarantees the features).
    unsafe {
        let t = _mm512_fmadd_ps(v, _mm512_set1_ps(1.0 / iq.scale), _mm512_set1_ps(iq.zero as f32));
        let q =
            _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(t), _mm512_setzero_si512()), _mm512_set1_epi32(255));
        let bad = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(_mm512_abs_ps(v), _mm512_set1_ps(f32::INFINITY));
        (q, bad)
    }
}

/// A row's scale and zero point from its range (which includes 0), for
/// levels `0..=top`.
fn scale_and_zero(lo: f32, hi: f32, finite: bool, top: u8) -> (f32, f32) {
    if !finite {
        return (f32::NAN, 0.0);
    }
    let top = top as f32;
    let s = if hi > lo { (hi - lo) / top } else { 1.0 };
    (s, (-lo / s).round_ties_even().clamp(0.0, top))
}

/// One row, element by element (the portable path).
fn quantize_row(row: &[f32], out: &mut [u8], top: u8) -> (f32, i32) {
    let (lo, hi) = row.iter().fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (s, z) = scale_and_zero(lo, hi, row.iter().all(|v| v.is_finite()), top);
    let inv = 1.0 / s;
    for (o, &v) in out.iter_mut().zip(row) {
        *o = level(v, inv, z, top);
    }
    (s, z as i32)
}

/// One value's level: `v·inv + z` fused, rounded to nearest even, clamped
/// to `0..=top` (the formula the vector rows apply 16 or 8 at a time).
#[inline(always)]
fn level(v: f32, inv: f32, z: f32, top: u8) -> u8 {
    v.mul_add(inv, z).round_ties_even().clamp(0.0, top as f32) as u8
}

/// One row with AVX-512: the same values as [`quantize_row`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_row_avx512(row: &[f32], out: &mut [u8], top: u8) -> (f32, i32) {
    use std::arch::x86_64::*;
    let k = row.len();
    let mask = |j: usize| -> __mmask16 { if k - j >= 16 { 0xffff } else { (1u16 << (k - j)) - 1 } };
    // SAFETY: masked loads and stores touch the row's `k` values only.
    unsafe {
        let (mut lo, mut hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut bad: __mmask16 = 0;
        for j in (0..k).step_by(16) {
            let v = _mm512_maskz_loadu_ps(mask(j), row.as_ptr().add(j));
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
            // NaN (unordered with itself) or ±∞ (|v| = ∞).
            bad |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v)
                | _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(_mm512_abs_ps(v), _mm512_set1_ps(f32::INFINITY));
        }
        let (s, z) = scale_and_zero(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi), bad == 0, top);
        let (inv, zv) = (_mm512_set1_ps(1.0 / s), _mm512_set1_ps(z));
        let (zero, top) = (_mm512_setzero_si512(), _mm512_set1_epi32(top as i32));
        for j in (0..k).step_by(16) {
            let v = _mm512_maskz_loadu_ps(mask(j), row.as_ptr().add(j));
            // Round to nearest even (the default rounding mode), then clamp.
            let q = _mm512_cvtps_epi32(_mm512_fmadd_ps(v, inv, zv));
            let q = _mm512_min_epi32(_mm512_max_epi32(q, zero), top);
            _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(j) as *mut i8, mask(j), q);
        }
        (s, z as i32)
    }
}

/// One row with AVX2 and FMA: the same values as [`quantize_row`] (its
/// last `k mod 8` values by that formula).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(row: &[f32], out: &mut [u8], top: u8) -> (f32, i32) {
    use std::arch::x86_64::*;
    let k = row.len();
    let full = k / 8 * 8;
    // SAFETY: the loads and stores touch the row's first `full` values only.
    unsafe {
        let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut lo2, mut hi2) = (lo, hi);
        // NaN or ±∞: |v| not below ∞ (unordered compares count).
        let (inf, sign) = (_mm256_set1_ps(f32::INFINITY), _mm256_set1_ps(-0.0));
        let mut bad = _mm256_setzero_ps();
        // Vector `j` of the row into chain `j mod 2` (two chains each, so
        // that a short row is not bound by the latency).
        for (j, chunk) in row[..full].chunks_exact(8).enumerate() {
            let v = _mm256_loadu_ps(chunk.as_ptr());
            let (l, h) = if j % 2 == 0 { (&mut lo, &mut hi) } else { (&mut lo2, &mut hi2) };
            (*l, *h) = (_mm256_min_ps(*l, v), _mm256_max_ps(*h, v));
            bad = _mm256_or_ps(bad, _mm256_cmp_ps::<_CMP_NLT_UQ>(_mm256_andnot_ps(sign, v), inf));
        }
        let (lo, hi) = (_mm256_min_ps(lo, lo2), _mm256_max_ps(hi, hi2));
        let (mut l, mut h) = ([0.0f32; 8], [0.0f32; 8]);
        _mm256_storeu_ps(l.as_mut_ptr(), lo);
        _mm256_storeu_ps(h.as_mut_ptr(), hi);
        let rest = &row[full..];
        let lo = l.iter().chain(rest).fold(0.0f32, |m, &v| m.min(v));
        let hi = h.iter().chain(rest).fold(0.0f32, |m, &v| m.max(v));
        let finite = _mm256_movemask_ps(bad) == 0 && rest.iter().all(|v| v.is_finite());
        let (s, z) = scale_and_zero(lo, hi, finite, top);
        let inv = 1.0 / s;
        let (iv, zv) = (_mm256_set1_ps(inv), _mm256_set1_ps(z));
        let (zero, topv) = (_mm256_setzero_si256(), _mm256_set1_epi32(top as i32));
        let mut j = 0;
        while j < full {
            let v = _mm256_loadu_ps(row.as_ptr().add(j));
            // Round to nearest even (the default rounding mode), then clamp.
            let q = _mm256_cvtps_epi32(_mm256_fmadd_ps(v, iv, zv));
            let q = _mm256_min_epi32(_mm256_max_epi32(q, zero), topv);
            // Bytes 0..4 of each 128-bit half hold that half's four levels.
            let w = _mm256_packus_epi32(q, q);
            let b = _mm256_packus_epi16(w, w);
            let o = out.as_mut_ptr().add(j);
            (o as *mut i32).write_unaligned(_mm_cvtsi128_si32(_mm256_castsi256_si128(b)));
            (o.add(4) as *mut i32).write_unaligned(_mm_cvtsi128_si32(_mm256_extracti128_si256::<1>(b)));
            j += 8;
        }
        for (o, &v) in out[full..].iter_mut().zip(rest) {
            *o = level(v, inv, z, top);
        }
        (s, z as i32)
    }
}

/// A weight `(n, k)` quantized to `i8` per output channel (row):
/// `W[j, p] ≈ scale[j]·q[j, p]`, `q` in `−127..=127`; with each row's sum
/// (for the activations' zero points) and, on AMX, the tiles' layout.
#[derive(Debug, Clone)]
pub struct QuantizedWeight {
    /// Output channels.
    pub n: usize,
    /// Inputs (depth).
    pub k: usize,
    /// `(n, k)` row-major.
    pub data: Vec<i8>,
    /// One per output channel.
    pub scale: Vec<f32>,
    /// `Σ_p q[j, p]` per output channel.
    pub row_sum: Vec<i32>,
    /// The kernel's layout: AMX's (panels of 32 channels, each 64-deep block
    /// two 16x64-byte tiles whose row `r` holds, for 16 channels, the 4
    /// weights at depth `4r..4r+4`), or VNNI's (panels of 16 channels, one
    /// 64-byte vector per 4 depths), or AVX2's (panels of 8 channels, one
    /// 32-byte vector per 4 depths); empty for the portable loop.
    packed: Vec<i8>,
    /// AVX2's layout for full-range rows (`i16`, 2 depths per vector),
    /// made on first use (static quantization only).
    wide: std::sync::OnceLock<Vec<i8>>,
    /// Which layout `packed` has.
    kernel: Kernel,
}

impl QuantizedWeight {
    /// Quantizes a row-major `f32` weight `(n, k)` symmetrically per row.
    ///
    /// # Panics
    /// When `w` holds fewer than `n·k` values.
    pub fn from_f32(w: &[f32], n: usize, k: usize) -> QuantizedWeight {
        assert!(w.len() >= n * k, "QuantizedWeight::from_f32: {} values for ({n}, {k})", w.len());
        let mut data = vec![0i8; n * k];
        let mut scale = vec![0.0f32; n];
        for j in 0..n {
            let row = &w[j * k..(j + 1) * k];
            let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let s = if max > 0.0 { max / 127.0 } else { 1.0 };
            scale[j] = s;
            for (q, &v) in data[j * k..(j + 1) * k].iter_mut().zip(row) {
                *q = (v / s).round().clamp(-127.0, 127.0) as i8;
            }
        }
        QuantizedWeight::from_i8(data, scale, n, k)
    }

    /// A weight already in `i8` (`(n, k)` row-major) with its per-channel scales.
    ///
    /// # Panics
    /// When the lengths do not match `n` and `k`.
    pub fn from_i8(data: Vec<i8>, scale: Vec<f32>, n: usize, k: usize) -> QuantizedWeight {
        assert!(
            data.len() == n * k && scale.len() == n,
            "QuantizedWeight: {} values, {} scales for ({n}, {k})",
            data.len(),
            scale.len()
        );
        let row_sum = (0..n).map(|j| data[j * k..(j + 1) * k].iter().map(|&q| q as i32).sum()).collect();
        let mut q = QuantizedWeight {
            n,
            k,
            data,
            scale,
            row_sum,
            packed: Vec::new(),
            wide: Default::default(),
            kernel: Kernel::Portable,
        };
        q.set_kernel(Kernel::best());
        q
    }

    /// Packs the weight for `kernel` (which the CPU must have; else the
    /// portable loop runs). For tests and comparisons: [`from_f32`] picks
    /// the best one.
    ///
    /// [`from_f32`]: QuantizedWeight::from_f32
    pub fn set_kernel(&mut self, kernel: Kernel) {
        let kernel = if kernel.available() { kernel } else { Kernel::Portable };
        self.packed = match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::AmxInt8 => super::amx_int8::pack_weight(&self.data, self.n, self.k),
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => super::vnni::pack_weight(&self.data, self.n, self.k),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => super::int8_avx2::pack_weight(&self.data, self.n, self.k),
            _ => Vec::new(),
        };
        self.wide = Default::default();
        self.kernel = kernel;
    }

    /// The kernel this weight is packed for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// AVX2's widened layout, packed on first use.
    #[cfg(target_arch = "x86_64")]
    fn wide(&self) -> &[i8] {
        self.wide.get_or_init(|| super::int8_avx2::pack_weight_wide(&self.data, self.n, self.k))
    }

    /// The weight as `f32` `(n, k)`: each value times its channel's scale.
    pub fn dequantize(&self) -> Vec<f32> {
        self.data.iter().enumerate().map(|(i, &q)| q as f32 * self.scale[i / self.k.max(1)]).collect()
    }

    /// The weights of several layers on the same input stacked into one
    /// (`(Σ n, k)`, the channels in order): exact, since each channel has its
    /// own scale. One product then serves them all (a transformer's q, k, v).
    ///
    /// # Panics
    /// When the depths differ or `parts` is empty.
    pub fn concat(parts: &[&QuantizedWeight]) -> QuantizedWeight {
        let k = parts.first().expect("QuantizedWeight::concat: no parts").k;
        assert!(parts.iter().all(|p| p.k == k), "QuantizedWeight::concat: depths differ");
        let data = parts.iter().flat_map(|p| p.data.iter().copied()).collect();
        let scale = parts.iter().flat_map(|p| p.scale.iter().copied()).collect();
        QuantizedWeight::from_i8(data, scale, parts.iter().map(|p| p.n).sum(), k)
    }

    /// Bytes of the quantized weight (values, scales and sums; not the
    /// kernel's copy).
    pub fn bytes(&self) -> usize {
        self.data.len() + 8 * self.n
    }
}

/// The int8 kernels, chosen by CPU feature at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AMX-INT8 tiles (`TDPBUSD`): Sapphire Rapids and later.
    AmxInt8,
    /// AVX-512 VNNI (`VPDPBUSD`): Ice Lake, Cascade Lake and later.
    Vnni,
    /// AVX2 and FMA (`VPMADDUBSW` and `VPMADDWD`; operands widened to
    /// `i16` for full-range rows): CPUs without AVX-512 VNNI, such as AMD
    /// Zen 1–3.
    Avx2,
    /// The portable loop.
    Portable,
}

impl Kernel {
    /// Every kernel, fastest first (for tests and comparisons: not every CPU
    /// has each; see [`Kernel::available`]).
    pub const ALL: [Kernel; 4] = [Kernel::AmxInt8, Kernel::Vnni, Kernel::Avx2, Kernel::Portable];

    /// The fastest kernel this CPU has, or one set lower with
    /// `FIREBRAND_INT8=avx512-vnni|avx2|portable` (for comparisons).
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            let cap = std::env::var("FIREBRAND_INT8").ok();
            let from = Kernel::ALL.iter().position(|k| Some(k.name()) == cap.as_deref()).unwrap_or(0);
            Kernel::ALL[from..].iter().copied().find(|k| k.available()).unwrap_or(Kernel::Portable)
        })
    }

    /// Whether this CPU (and OS) runs it.
    pub fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::AmxInt8 => super::amx::int8_available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Vnni => super::vnni::available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => super::int8_avx2::available(),
            Kernel::Portable => true,
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The highest activation level this kernel takes at full speed: 127
    /// on AVX2 (its `u8·i8` pair sums saturate in `i16` past that; PyTorch's
    /// fbgemm reduces the range the same way), 255 elsewhere. Dynamic
    /// quantization quantizes rows to `0..=activation_top`.
    ///
    /// `FIREBRAND_INT8_REDUCE_RANGE=0` keeps the full range on AVX2 too (its
    /// slower wide kernel then runs): 7 bits cost MiniLM's worst sentence
    /// cosine 0.996 → 0.988 in the tests.
    pub fn activation_top(self) -> u8 {
        static REDUCE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let reduce = *REDUCE.get_or_init(|| std::env::var("FIREBRAND_INT8_REDUCE_RANGE").as_deref() != Ok("0"));
        if self == Kernel::Avx2 && reduce { 127 } else { 255 }
    }

    /// Its name: `amx-int8`, `avx512-vnni`, `avx2` or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::AmxInt8 => "amx-int8",
            Kernel::Vnni => "avx512-vnni",
            Kernel::Avx2 => "avx2",
            Kernel::Portable => "portable",
        }
    }
}

/// Which int8 kernel this CPU runs.
pub fn int8_backend() -> &'static str {
    Kernel::best().name()
}

/// `out (m, n) = dequantized(a · wᵀ) + bias` (see the module's formula).
///
/// # Panics
/// When the depths differ, `out` is shorter than `m·n`, or `bias` than `n`.
pub fn gemm_u8i8(a: &QuantizedRows, w: &QuantizedWeight, bias: Option<&[f32]>, out: &mut [f32]) {
    gemm_u8i8_act(a, w, bias, None, out)
}

/// [`gemm_u8i8`] followed by an elementwise activation, applied as each
/// block is dequantized (where it has an AVX-512 form; in a pass afterwards
/// otherwise).
///
/// # Panics
/// As [`gemm_u8i8`].
pub fn gemm_u8i8_act(
    a: &QuantizedRows,
    w: &QuantizedWeight,
    bias: Option<&[f32]>,
    act: Option<firebrand_tensor::op::UnaryOp>,
    out: &mut [f32],
) {
    assert_eq!(a.k, w.k, "gemm_u8i8: activations ({}, {}) for a weight ({}, {})", a.m, a.k, w.n, w.k);
    assert!(out.len() >= a.m * w.n, "gemm_u8i8: output of {} for ({}, {})", out.len(), a.m, w.n);
    assert!(bias.is_none_or(|b| b.len() >= w.n), "gemm_u8i8: bias shorter than {}", w.n);
    let (m, n) = (a.m, w.n);
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if w.kernel != Kernel::Portable {
        // The activation in the dequantizing store where the kernel has it
        // (AVX-512 forms; AVX2 ones for the AVX2 kernel), else in a pass after.
        let fused = act.filter(|&op| match w.kernel {
            Kernel::Avx2 => crate::simd256::supports(op),
            _ => crate::simd512::supports(op),
        });
        match w.kernel {
            // SAFETY: the weight was packed for a kernel this CPU has (`set_kernel`).
            Kernel::AmxInt8 => unsafe { super::amx_int8::gemm(a, w, &w.packed, bias, fused, out) },
            // SAFETY: as above.
            Kernel::Avx2 => unsafe {
                super::int8_avx2::gemm(a, w, &w.packed, || w.wide(), bias, fused, &mut out[..m * n])
            },
            // SAFETY: as above.
            _ => unsafe { super::vnni::gemm(a, w, &w.packed, bias, fused, &mut out[..m * n]) },
        }
        if let Some(op) = act.filter(|_| fused.is_none()) {
            crate::unary::map_in_place(op, &mut out[..m * n]);
        }
        return;
    }
    gemm_u8i8_reference(a, w, bias, out);
    if let Some(op) = act {
        crate::unary::map_in_place(op, &mut out[..m * n]);
    }
}

/// The portable form: exact `i32` sums, then the same dequantization.
pub fn gemm_u8i8_reference(a: &QuantizedRows, w: &QuantizedWeight, bias: Option<&[f32]>, out: &mut [f32]) {
    let (m, n, k) = (a.m, w.n, a.k);
    for i in 0..m {
        let ar = &a.data[i * k..(i + 1) * k];
        for j in 0..n {
            let wr = &w.data[j * k..(j + 1) * k];
            let acc: i32 = ar.iter().zip(wr).map(|(&x, &y)| x as i32 * y as i32).sum();
            out[i * n + j] = dequantize(acc, a, w, i, j, bias);
        }
    }
}

/// Sixteen outputs of row `i` from their `i32` sums: `act(sa·sw·(acc −
/// za·Σw) + b)`, with `rs`, `sw` and `b` the 16 channels' row sums, scales
/// and biases (the same bits as [`dequantize`]).
///
/// # Safety
/// AVX-512F is available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn dequantize16(
    acc: std::arch::x86_64::__m512i,
    a: &QuantizedRows,
    i: usize,
    rs: std::arch::x86_64::__m512i,
    sw: std::arch::x86_64::__m512,
    b: std::arch::x86_64::__m512,
    act: Option<firebrand_tensor::op::UnaryOp>,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: register arithmetic only (the caller guarantees AVX-512F).
    unsafe {
        let exact = _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_set1_epi32(a.zero[i]), rs));
        let scale = _mm512_mul_ps(_mm512_set1_ps(a.scale[i]), sw);
        let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact), scale, b);
        // A `match`, not a closure: a closure is a function of its own,
        // compiled without the caller's AVX-512, and the activation's
        // intrinsics would become calls (measured: MiniLM int8 at 49
        // sentences/s instead of 165).
        match act {
            Some(op) => crate::simd512::apply512(op, v),
            None => v,
        }
    }
}

/// Runs `$block::<R>($job, i0)` for every block of up to `$mr` rows of
/// `$m` (`i0` its first row), in parallel: `R`, the block's row count, is a
/// constant of each copy of the kernel, so its depth loop keeps
/// accumulators and row pointers in registers without a branch per row
/// (with a run-time count the VNNI kernel ran 10-30% slower). `$mr` first,
/// then every smaller count down to 1.
#[cfg(target_arch = "x86_64")]
macro_rules! par_row_blocks {
    ($m:expr, $block:ident($job:expr), [$mr:literal $(, $r:literal)*]) => {{
        let m: usize = $m;
        crate::parallel::par_for(m.div_ceil($mr), |rb| {
            let i0 = rb * $mr;
            // SAFETY: rows i0..i0 + R exist; the caller's contract covers the rest.
            unsafe {
                match m.min(i0 + $mr) - i0 {
                    $mr => $block::<$mr>($job, i0),
                    $($r => $block::<$r>($job, i0),)*
                    rows => unreachable!("a block of {rows} rows"),
                }
            }
        })
    }};
}
#[cfg(target_arch = "x86_64")]
pub(super) use par_row_blocks;

/// The weight `(n, k)` in panels of `channels` output channels, each panel
/// `⌈k/depths⌉` groups of `channels·depths` values, channel `c`'s `depths`
/// consecutive weights at `depths·c..` (zeros past `n` and `k`): the VNNI
/// and AVX2 kernels' layouts, one vector per group.
#[cfg(target_arch = "x86_64")]
pub(super) fn pack_panels(w: &[i8], n: usize, k: usize, channels: usize, depths: usize) -> Vec<i8> {
    let groups = k.div_ceil(depths);
    let size = channels * depths;
    let mut out = vec![0i8; n.div_ceil(channels) * groups * size];
    for (p, panel) in out.chunks_exact_mut(groups * size).enumerate() {
        for (g, v) in panel.chunks_exact_mut(size).enumerate() {
            for c in 0..channels.min(n.saturating_sub(channels * p)) {
                let (j, d) = (channels * p + c, depths * g);
                let e = depths.min(k - d);
                v[depths * c..depths * c + e].copy_from_slice(&w[j * k + d..j * k + d + e]);
            }
        }
    }
    out
}

/// The last, partial four-byte group of row `i` of A (zeros past `k`), as
/// one lane (the VNNI and AVX2 kernels read whole groups in place).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) fn tail_group(a: &QuantizedRows, i: usize) -> i32 {
    let (k, p) = (a.k, a.k / 4 * 4);
    let mut b = [0u8; 4];
    b[..k - p].copy_from_slice(&a.data[i * k + p..(i + 1) * k]);
    i32::from_le_bytes(b)
}

/// One output from its `i32` sum.
#[inline(always)]
pub(crate) fn dequantize(
    acc: i32,
    a: &QuantizedRows,
    w: &QuantizedWeight,
    i: usize,
    j: usize,
    bias: Option<&[f32]>,
) -> f32 {
    let exact = acc - a.zero[i] * w.row_sum[j];
    // One rounding for the scales' product and one fused multiply-add, as
    // the vector kernels do, so that both give the same bits.
    (a.scale[i] * w.scale[j]).mul_add(exact as f32, bias.map_or(0.0, |b| b[j]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::uniform as data;

    /// The kernel against the portable loop on awkward shapes (1, odd,
    /// depths not a multiple of 64 or of 4, more rows than a block),
    /// exactly: the integer sums are exact and the dequantization is the
    /// same formula. Rows at both ranges (`0..=255`; `0..=127`, which takes
    /// AVX2's bytes kernel, its levels pushed to the top of the range).
    #[test]
    fn kernel_equals_the_reference_and_dequantizes_close_to_f32() {
        for top in [255u8, 127] {
            kernel_case(top);
        }
    }

    fn kernel_case(top: u8) {
        for (m, k, n) in [
            (1, 1, 1),
            (2, 3, 2),
            (3, 5, 7),
            (6, 13, 50),
            (13, 9, 33),
            (15, 257, 31),
            (33, 65, 17),
            (1, 300, 40),
            (300, 64, 1),
            (531, 130, 97),
            (64, 1024, 96),
        ] {
            let x = data(m * k, 1);
            let wf = data(n * k, 2);
            let b = data(n, 3);
            let mut qa = QuantizedRows::new();
            quantize_rows_u8_into(&x, m, k, top, &mut qa);
            // The extremes of both sides meet: the largest level against ±127.
            qa.data[0] = top;
            let mut qw = QuantizedWeight::from_f32(&wf, n, k);
            qw.data[..k.min(4)].fill(-127);
            qw = QuantizedWeight::from_i8(qw.data.clone(), qw.scale.clone(), n, k);
            let mut want = vec![0.0; m * n];
            gemm_u8i8_reference(&qa, &qw, Some(&b), &mut want);
            for kernel in Kernel::ALL {
                if !kernel.available() {
                    eprintln!("SKIPPED: the {} kernel (not on this CPU)", kernel.name());
                    continue;
                }
                qw.set_kernel(kernel);
                let mut got = vec![f32::NAN; m * n];
                gemm_u8i8(&qa, &qw, Some(&b), &mut got);
                assert_eq!(got, want, "({m},{k},{n}) on {} at top {top}", kernel.name());
            }
            qw.set_kernel(Kernel::best());
            let got = {
                let mut g = vec![f32::NAN; m * n];
                gemm_u8i8(&qa, &qw, Some(&b), &mut g);
                g
            };
            // The activation in the dequantizing pass equals it afterwards.
            let mut gelu = vec![f32::NAN; m * n];
            gemm_u8i8_act(&qa, &qw, Some(&b), Some(firebrand_tensor::op::UnaryOp::Gelu), &mut gelu);
            crate::unary::map_in_place(firebrand_tensor::op::UnaryOp::Gelu, &mut want);
            assert_eq!(gelu, want, "({m},{k},{n}) with GELU");
            // And close to the f32 product: within the quantization steps
            // (the extremes set above aside).
            for i in 0..m {
                for j in 0..n {
                    if i == 0 || j == 0 {
                        continue;
                    }
                    let f: f32 = (0..k).map(|p| x[i * k + p] * wf[j * k + p]).sum::<f32>() + b[j];
                    let step = qa.scale[i] * k as f32 * 0.5 + qw.scale[j] * k as f32 * 0.5;
                    assert!(
                        (got[i * n + j] - f).abs() <= step,
                        "({m},{k},{n}) at ({i},{j}): {} vs {f}",
                        got[i * n + j]
                    );
                }
            }
        }
    }

    /// The AVX-512 and AVX2 row quantizations equal the portable one at
    /// both ranges, and a row with NaN or ∞ gets a NaN scale.
    #[test]
    fn vector_and_portable_quantization_agree() {
        for (k, top) in [1usize, 7, 8, 9, 15, 16, 17, 31, 100, 384].into_iter().flat_map(|k| [(k, 255u8), (k, 127)]) {
            let row: Vec<f32> = data(k, 9).iter().map(|v| v * 3.0 - 0.7).collect();
            let (mut a, mut b) = (vec![0u8; k], vec![0u8; k]);
            let want = quantize_row(&row, &mut a, top);
            assert!(a.iter().all(|&q| q <= top), "k = {k}: a level above {top}");
            #[cfg(target_arch = "x86_64")]
            if crate::simd512::available() {
                // SAFETY: AVX-512F is available.
                let got = unsafe { quantize_row_avx512(&row, &mut b, top) };
                assert_eq!((got, &b), (want, &a), "k = {k}, top {top}");
            }
            #[cfg(target_arch = "x86_64")]
            if super::super::int8_avx2::available() {
                b.fill(0);
                // SAFETY: AVX2 and FMA are available.
                let got = unsafe { quantize_row_avx2(&row, &mut b, top) };
                assert_eq!((got, &b), (want, &a), "k = {k}, top {top} (AVX2)");
            }
            let _ = &mut b;
        }
        let q = quantize_rows_u8(&[1.0, f32::NAN, 2.0, f32::INFINITY, 0.5, 0.5], 3, 2);
        assert!(q.scale[0].is_nan() && q.scale[1].is_nan() && q.scale[2].is_finite(), "{:?}", q.scale);
        // The AVX2 row: a NaN or ∞ in a whole vector or in the tail.
        #[cfg(target_arch = "x86_64")]
        if super::super::int8_avx2::available() {
            for (at, v) in [(3, f32::NAN), (5, f32::NEG_INFINITY), (9, f32::NAN), (10, f32::INFINITY)] {
                let mut row = vec![0.5f32; 11];
                row[at] = v;
                // SAFETY: AVX2 and FMA are available.
                let (s, _) = unsafe { quantize_row_avx2(&row, &mut [0u8; 11], 255) };
                assert!(s.is_nan(), "{v} at {at}: scale {s}");
            }
        }
    }

    /// Fixed parameters: every value by the same scale and zero point,
    /// saturating past the range; a non-finite row gets a NaN scale.
    #[test]
    fn static_rows_use_the_fixed_parameters() {
        let iq = InputQuant::from_range(-1.0, 1.0);
        let mut q = quantize_rows_u8(&[], 0, 0);
        quantize_rows_u8_static_into(&[0.0, 1.0, -1.0, 3.0, -5.0, 0.5, f32::NAN, 0.0, 0.0], 3, 3, iq, &mut q);
        let inv = 1.0 / iq.scale;
        let want: Vec<u8> = [0.0, 1.0, -1.0, 3.0, -5.0, 0.5].iter().map(|&v| iq.quantize(v, inv)).collect();
        assert_eq!(&q.data[..6], &want[..]);
        assert_eq!((q.data[3], q.data[4]), (255, 0), "saturated");
        assert_eq!((q.data[0] as i32, q.zero[2]), (q.zero[0], iq.zero as i32));
        assert!(q.scale[0] == iq.scale && q.scale[1] == iq.scale && q.scale[2].is_nan(), "{:?}", q.scale);
    }

    #[test]
    fn quantization_keeps_zero_and_the_range() {
        let q = quantize_rows_u8(&[0.0, 1.0, -0.5, 0.25, 0.0, 0.0], 2, 3);
        assert_eq!(q.data[0] as i32, q.zero[0]);
        // A row of no negative values starts its range at 0.
        assert_eq!((q.zero[1], &q.data[3..]), (0, &[255u8, 0, 0][..]));
        // Seven bits: the same range over 0..=127.
        let mut q = QuantizedRows::new();
        quantize_rows_u8_into(&[0.0, 1.0, -0.5, 0.25, 0.0, 0.0], 2, 3, 127, &mut q);
        assert_eq!((q.top, q.data[0] as i32, q.zero[0], q.data[1]), (127, 42, 42, 127));
        assert_eq!((q.zero[1], &q.data[3..]), (0, &[127u8, 0, 0][..]));
        let w = QuantizedWeight::from_f32(&[0.5, -1.0, 0.0, 0.0], 2, 2);
        assert_eq!(w.data, vec![64, -127, 0, 0]);
        assert_eq!(w.row_sum, vec![-63, 0]);
    }
}
