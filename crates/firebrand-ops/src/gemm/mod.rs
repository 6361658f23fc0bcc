//! Single-precision matrix multiply: `C = A·B` or `C += A·B`.
//!
//! On x86-64 the multiply runs on Firebrand's own blocked driver around a
//! register-blocked micro-kernel that broadcasts A's elements read in place
//! and streams B from panels packed into the core's L2; tasks own blocks of
//! C's columns (and rows, when there are fewer column blocks than threads).
//! With AVX-512F the kernel is 12x32 (24 zmm accumulators, blocks 1024 deep
//! and 128 columns wide); with AVX2 and FMA it is 6x16 (12 ymm accumulators,
//! 256 deep, 256 columns wide). See `docs/ARCHITECTURE.md` for the loop order and
//! `docs/benchmarks.md` for how each choice was measured.
//! Everywhere else `matrixmultiply` computes it. Both accept arbitrary row and
//! column strides for `A` and `B`, so transposed views multiply without a copy.
//!
//! [`set_float32_matmul_precision`]`(Medium)` lets products round their
//! operands to bf16 and run on AMX tiles where the CPU has them; [`int8`]
//! holds the quantized (`u8·i8 → i32 → f32`) product.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod amx_int8;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
#[cfg(target_arch = "x86_64")]
mod blocked;
pub mod blocks;
#[cfg(target_arch = "x86_64")]
mod blocks_avx2;
#[cfg(target_arch = "x86_64")]
mod blocks_avx512;
pub mod int8;
#[cfg(target_arch = "x86_64")]
mod int8_avx2;
#[cfg(target_arch = "x86_64")]
mod vnni;

use std::sync::atomic::{AtomicU8, Ordering};

/// How `f32` matrix products may compute: PyTorch's
/// `torch.set_float32_matmul_precision`. Set with
/// [`set_float32_matmul_precision`]; the default is `Highest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// `f32` multiplies and adds throughout.
    #[default]
    Highest,
    /// PyTorch's "high" (TF32 or bf16x3 where a device has them): no such
    /// unit on CPUs, so the same as `Highest` here.
    High,
    /// Operands rounded to `bf16` (8 bits of mantissa), products summed in
    /// `f32`: on CPUs with AMX-BF16 (Intel Sapphire Rapids and later) the
    /// product runs on the tile unit, several times faster; elsewhere as
    /// `Highest`. Relative error per product about `2⁻⁸·√k`-scaled, as
    /// PyTorch's "medium".
    Medium,
}

impl MatmulPrecision {
    /// PyTorch's name: `"highest"`, `"high"` or `"medium"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MatmulPrecision::Highest => "highest",
            MatmulPrecision::High => "high",
            MatmulPrecision::Medium => "medium",
        }
    }
}

impl std::str::FromStr for MatmulPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "highest" => Ok(MatmulPrecision::Highest),
            "high" => Ok(MatmulPrecision::High),
            "medium" => Ok(MatmulPrecision::Medium),
            _ => Err(format!("matmul precision {s:?}: expected highest, high or medium")),
        }
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// Sets how `f32` matrix products compute, for the whole process (as
/// PyTorch's `torch.set_float32_matmul_precision`). Affects [`gemm`] and
/// [`gemm_fused`] (matmul, linear layers, convolutions lowered to gemm, and
/// their gradients), not the batched small products of [`gemm_serial`].
///
/// ```
/// use firebrand_ops::gemm::{set_float32_matmul_precision, float32_matmul_precision, MatmulPrecision};
/// set_float32_matmul_precision(MatmulPrecision::Medium);
/// assert_eq!(float32_matmul_precision(), MatmulPrecision::Medium);
/// set_float32_matmul_precision(MatmulPrecision::Highest);
/// ```
pub fn set_float32_matmul_precision(p: MatmulPrecision) {
    PRECISION.store(p as u8, Ordering::Relaxed);
}

/// The precision set by [`set_float32_matmul_precision`].
pub fn float32_matmul_precision() -> MatmulPrecision {
    match PRECISION.load(Ordering::Relaxed) {
        0 => MatmulPrecision::Highest,
        1 => MatmulPrecision::High,
        _ => MatmulPrecision::Medium,
    }
}

/// Below this many multiply-adds (or with a side under 16) a bf16 product
/// stays on the f32 kernel: packing and tile set-up would cost more than
/// they save.
const AMX_MIN_MACS: usize = 1 << 16;

/// Whether a product of these sizes runs on AMX tiles in bf16 at precision `p`.
fn use_amx(p: MatmulPrecision, m: usize, k: usize, n: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        p == MatmulPrecision::Medium && m >= 16 && n >= 16 && m * n * k >= AMX_MIN_MACS && amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (p, m, k, n);
        false
    }
}

/// Whether this CPU and OS run [`MatmulPrecision::Medium`] products on AMX
/// tiles (else they compute as `Highest`).
pub fn amx_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A read-only strided matrix: element `(i, j)` is `data[offset + i*rs + j*cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    /// The backing buffer.
    pub data: &'a [f32],
    /// Position of element (0, 0).
    pub offset: usize,
    /// Row stride in elements.
    pub rs: usize,
    /// Column stride in elements.
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major matrix with `cols` columns starting at the buffer's start.
    pub fn row_major(data: &'a [f32], cols: usize) -> Self {
        MatRef { data, offset: 0, rs: cols, cs: 1 }
    }

    /// The same matrix transposed (a view: strides swapped).
    pub fn t(self) -> Self {
        MatRef { rs: self.cs, cs: self.rs, ..self }
    }

    fn check(&self, rows: usize, cols: usize, what: &str) {
        if rows > 0 && cols > 0 {
            let last = self.offset + (rows - 1) * self.rs + (cols - 1) * self.cs;
            assert!(
                last < self.data.len(),
                "gemm: operand {what} ({rows}x{cols}, strides {}x{}, offset {}) overruns its buffer of {}",
                self.rs,
                self.cs,
                self.offset,
                self.data.len()
            );
        }
    }
}

/// What [`gemm_fused`] applies to each element `(i, j)` of the product as
/// it stores it: `act(v·row_scale[i] + row_shift[i] + col_shift[j])` (a
/// missing scale is 1, a missing shift 0) — a pointwise convolution's bias
/// and an inference BatchNorm (per row), a linear layer's bias (per column),
/// and the activation, without another pass over the output.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Per-row factor (`m` values).
    pub row_scale: Option<&'a [f32]>,
    /// Per-row offset (`m` values).
    pub row_shift: Option<&'a [f32]>,
    /// Per-column offset (`n` values), added after the row scale and shift.
    pub col_shift: Option<&'a [f32]>,
    /// An elementwise activation applied last.
    pub act: Option<firebrand_tensor::op::UnaryOp>,
}

/// `C = epi(A·B)`: [`gemm`] (not accumulating) with the [`Epilogue`]
/// applied in the micro-kernel's store on the AVX-512 path (for activations
/// with an AVX-512 form), in one pass over `C` afterwards otherwise. Same
/// results either way.
///
/// # Panics
/// As [`gemm`], and when a row vector is shorter than `m`.
#[allow(clippy::too_many_arguments)]
pub fn gemm_fused(m: usize, k: usize, n: usize, a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, epi: &Epilogue) {
    gemm_fused_at(float32_matmul_precision(), m, k, n, a, b, c, ldc, epi)
}

/// [`gemm_fused`] at precision `p` rather than the process's.
#[allow(clippy::too_many_arguments)]
fn gemm_fused_at(
    p: MatmulPrecision,
    m: usize,
    k: usize,
    n: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) {
    assert!(
        epi.row_scale.is_none_or(|s| s.len() >= m) && epi.row_shift.is_none_or(|s| s.len() >= m),
        "gemm_fused: row vectors shorter than m = {m}"
    );
    assert!(epi.col_shift.is_none_or(|s| s.len() >= n), "gemm_fused: column shift shorter than n = {n}");
    fused_on(backend(), p, m, k, n, a, b, c, ldc, epi)
}

/// [`gemm_fused_at`] on backend `bk`.
#[allow(clippy::too_many_arguments)]
fn fused_on(
    bk: Backend,
    p: MatmulPrecision,
    m: usize,
    k: usize,
    n: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    epi: &Epilogue,
) {
    #[cfg(target_arch = "x86_64")]
    if bk != Backend::MatrixMultiply && m > 0 && n > 0 && k > 0 {
        assert!(ldc >= n && c.len() >= (m - 1) * ldc + n, "gemm_fused: output too small");
        a.check(m, k, "A");
        b.check(k, n, "B");
        if bk == Backend::Avx512 && use_amx(p, m, k, n) {
            // SAFETY: AMX was detected and granted; bounds were checked above.
            unsafe { amx::gemm(m, k, n, a, b, c, ldc, false, true, Some(epi)) };
        } else {
            // SAFETY: the backend's features were detected at run time; bounds were checked above.
            unsafe { blocked_gemm(bk, m, k, n, a, b, c, ldc, false, true, Some(epi)) };
        }
        if let Some(op) = epi.act.filter(|&op| !bk.fuses(op)) {
            (0..m).for_each(|i| crate::unary::map_in_place(op, &mut c[i * ldc..i * ldc + n]));
        }
        return;
    }
    gemm_on(bk, p, m, k, n, a, b, c, ldc, false, true);
    for i in 0..m {
        let row = &mut c[i * ldc..i * ldc + n];
        let (s, t) = (epi.row_scale.map_or(1.0, |s| s[i]), epi.row_shift.map_or(0.0, |t| t[i]));
        if epi.row_scale.is_some() || epi.row_shift.is_some() {
            row.iter_mut().for_each(|v| *v = *v * s + t);
        }
        if let Some(cs) = epi.col_shift {
            row.iter_mut().zip(cs).for_each(|(v, b)| *v += b);
        }
        if let Some(op) = epi.act {
            crate::unary::map_in_place(op, row);
        }
    }
}

/// The f32 gemm implementations, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// The blocked driver with the 12x32 AVX-512F kernel (and AMX for bf16).
    Avx512,
    /// The blocked driver with the 6x16 AVX2 + FMA kernel.
    Avx2,
    /// The `matrixmultiply` crate.
    MatrixMultiply,
}

impl Backend {
    fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Backend::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Backend::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
                }
                Backend::MatrixMultiply => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Backend::MatrixMultiply
        }
    }

    /// Whether this backend's store applies activation `op` (the AMX
    /// kernel fuses the same ones as the AVX-512 kernel).
    #[cfg(target_arch = "x86_64")]
    fn fuses(self, op: firebrand_tensor::op::UnaryOp) -> bool {
        use blocked::Kernel;
        match self {
            Backend::Avx512 => avx512::Avx512::fuses(op),
            Backend::Avx2 => avx2::Avx2::fuses(op),
            Backend::MatrixMultiply => false,
        }
    }

    /// Every backend this CPU runs (for tests).
    #[cfg(test)]
    fn all_available() -> Vec<Backend> {
        [Backend::Avx512, Backend::Avx2, Backend::MatrixMultiply].into_iter().filter(|b| b.available()).collect()
    }
}

/// The backend of this process: the fastest this CPU has, or one set lower
/// with `FIREBRAND_GEMM=avx2|matrixmultiply`.
fn backend() -> Backend {
    static BACKEND: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
    *BACKEND.get_or_init(|| {
        let cap = match std::env::var("FIREBRAND_GEMM").as_deref() {
            Ok("matrixmultiply") => Backend::MatrixMultiply,
            Ok("avx2") => Backend::Avx2,
            _ => Backend::Avx512,
        };
        [Backend::Avx512, Backend::Avx2, Backend::MatrixMultiply]
            .into_iter()
            .find(|&b| b as u8 >= cap as u8 && b.available())
            .unwrap_or(Backend::MatrixMultiply)
    })
}

/// Which gemm implementation this CPU uses: `"firebrand-avx512"`,
/// `"firebrand-avx2"` or `"matrixmultiply"`.
pub fn gemm_backend() -> &'static str {
    match backend() {
        Backend::Avx512 => "firebrand-avx512",
        Backend::Avx2 => "firebrand-avx2",
        Backend::MatrixMultiply => "matrixmultiply",
    }
}

/// The blocked driver with `bk`'s kernel.
///
/// # Safety
/// `bk` is available (not `MatrixMultiply`); bounds were checked.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn blocked_gemm(
    bk: Backend,
    m: usize,
    k: usize,
    n: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
    epi: Option<&Epilogue>,
) {
    // SAFETY: the caller's.
    unsafe {
        match bk {
            Backend::Avx512 => blocked::gemm::<avx512::Avx512>(m, k, n, a, b, c, ldc, accumulate, parallel, epi),
            Backend::Avx2 => blocked::gemm::<avx2::Avx2>(m, k, n, a, b, c, ldc, accumulate, parallel, epi),
            Backend::MatrixMultiply => unreachable!("matrixmultiply has no blocked kernel"),
        }
    }
}

/// `C = A·B` (or `C += A·B` when `accumulate`), with `A` of shape `(m, k)`,
/// `B` of shape `(k, n)` and `C` row-major `(m, n)` with row stride `ldc`.
///
/// Uses all rayon threads when the product is large enough to pay for them.
///
/// # Panics
/// When an operand's strides reach past its buffer.
///
/// ```
/// use firebrand_ops::gemm::{gemm, MatRef};
/// let a = [1.0, 2.0, 3.0, 4.0]; // 2x2
/// let b = [5.0, 6.0, 7.0, 8.0]; // 2x2
/// let mut c = [0.0; 4];
/// gemm(2, 2, 2, MatRef::row_major(&a, 2), MatRef::row_major(&b, 2), &mut c, 2, false);
/// assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gemm(m: usize, k: usize, n: usize, a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool) {
    gemm_on(backend(), float32_matmul_precision(), m, k, n, a, b, c, ldc, accumulate, true)
}

/// [`gemm`] on the calling thread only (for callers that parallelize outside,
/// such as batched matmul over many small matrices).
#[allow(clippy::too_many_arguments)]
pub fn gemm_serial(m: usize, k: usize, n: usize, a: MatRef, b: MatRef, c: &mut [f32], ldc: usize, accumulate: bool) {
    gemm_on(backend(), MatmulPrecision::Highest, m, k, n, a, b, c, ldc, accumulate, false)
}

/// The product on backend `bk`, at precision `p`, on all threads or on the
/// calling one only.
#[allow(clippy::too_many_arguments)]
fn gemm_on(
    bk: Backend,
    p: MatmulPrecision,
    m: usize,
    k: usize,
    n: usize,
    a: MatRef,
    b: MatRef,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldc >= n, "gemm: ldc {ldc} < n {n}");
    assert!(c.len() >= (m - 1) * ldc + n, "gemm: output buffer of {} too small for {m}x{n}", c.len());
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                c[i * ldc..i * ldc + n].fill(0.0);
            }
        }
        return;
    }
    a.check(m, k, "A");
    b.check(k, n, "B");
    #[cfg(target_arch = "x86_64")]
    if bk == Backend::Avx512 && use_amx(p, m, k, n) {
        // SAFETY: AMX was detected and granted; bounds were checked above.
        unsafe { amx::gemm(m, k, n, a, b, c, ldc, accumulate, parallel, None) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if bk != Backend::MatrixMultiply {
        // SAFETY: the backend's features were detected at run time; bounds were checked above.
        unsafe { blocked_gemm(bk, m, k, n, a, b, c, ldc, accumulate, parallel, None) };
        return;
    }
    let _ = parallel;
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: bounds were checked above; matrixmultiply reads only the described elements.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr().add(a.offset),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr().add(b.offset),
            b.rs as isize,
            b.cs as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        )
    }
}

/// Slow, exact reference: f64 accumulation. For tests.
#[allow(clippy::too_many_arguments)]
pub fn gemm_reference(m: usize, k: usize, n: usize, a: MatRef, b: MatRef) -> Vec<f32> {
    let mut c = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for p in 0..k {
                s += a.data[a.offset + i * a.rs + p * a.cs] as f64 * b.data[b.offset + p * b.rs + j * b.cs] as f64;
            }
            c[i * n + j] = s as f32;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::uniform as data;

    /// The fused epilogue equals the product followed by the row affine map
    /// and the activation, on edge tiles (m, n not multiples of 12 and 32),
    /// with more than one depth block (k > 1024: only the last applies it),
    /// and for an activation without an AVX-512 form (softplus).
    #[test]
    fn fused_epilogue_equals_the_plain_product_then_the_epilogue() {
        use firebrand_tensor::op::UnaryOp;
        for (m, k, n) in [(1, 1, 1), (13, 7, 33), (37, 1100, 45), (24, 64, 200)] {
            let (av, bv) = (data(m * k, 3), data(k * n, 4));
            let (s, t) = (data(m, 5), data(m, 6));
            let (a, b) = (MatRef::row_major(&av, k), MatRef::row_major(&bv, n));
            for act in [None, Some(UnaryOp::Hardtanh(-0.2, 0.3)), Some(UnaryOp::Silu), Some(UnaryOp::Softplus)] {
                let cb = data(n, 7);
                let variants = [
                    (Some(&s[..]), Some(&t[..]), None),
                    (None, Some(&t[..]), None),
                    (None, None, None),
                    (None, None, Some(&cb[..])),
                    (Some(&s[..]), Some(&t[..]), Some(&cb[..])),
                ];
                for (rs, rt, cs) in variants {
                    let epi = Epilogue { row_scale: rs, row_shift: rt, col_shift: cs, act };
                    for (p, bk) in [MatmulPrecision::Highest, MatmulPrecision::Medium]
                        .into_iter()
                        .flat_map(|p| Backend::all_available().into_iter().map(move |bk| (p, bk)))
                    {
                        let mut got = vec![f32::NAN; m * n];
                        fused_on(bk, p, m, k, n, a, b, &mut got, n, &epi);
                        let mut want = vec![0.0; m * n];
                        gemm_on(bk, p, m, k, n, a, b, &mut want, n, false, true);
                        for (i, v) in want.iter_mut().enumerate() {
                            let z = *v * rs.map_or(1.0, |s| s[i / n])
                                + rt.map_or(0.0, |t| t[i / n])
                                + cs.map_or(0.0, |c| c[i % n]);
                            *v = act.map_or(z, |op| op.apply(z));
                        }
                        for (g, w) in got.iter().zip(&want) {
                            assert!(
                                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                                "{m}x{k}x{n} {act:?} {p:?} {bk:?}: {g} vs {w}"
                            );
                        }
                    }
                }
            }
        }
    }

    fn check(m: usize, k: usize, n: usize, ta: bool, tb: bool, acc: bool) {
        let av = data(m * k + 3, 1);
        let bv = data(k * n + 5, 2);
        // Offsets of 3 and 5 test non-zero starting positions.
        let a = if ta {
            MatRef { data: &av, offset: 3, rs: 1, cs: m }
        } else {
            MatRef { data: &av, offset: 3, rs: k, cs: 1 }
        };
        let b = if tb {
            MatRef { data: &bv, offset: 5, rs: 1, cs: k }
        } else {
            MatRef { data: &bv, offset: 5, rs: n, cs: 1 }
        };
        let want = gemm_reference(m, k, n, a, b);
        let ldc = n + 2;
        let init = data(m * ldc, 3);
        for bk in Backend::all_available() {
            let mut c = init.clone();
            gemm_on(bk, MatmulPrecision::Highest, m, k, n, a, b, &mut c, ldc, acc, true);
            check_against(&c, &init, &want, (m, k, n, ldc), (ta, tb, acc), bk);
        }
    }

    fn check_against(
        c: &[f32],
        init: &[f32],
        want: &[f32],
        (m, k, n, ldc): (usize, usize, usize, usize),
        (ta, tb, acc): (bool, bool, bool),
        bk: Backend,
    ) {
        for i in 0..m {
            for j in 0..n {
                let w = want[i * n + j] + if acc { init[i * ldc + j] } else { 0.0 };
                let g = c[i * ldc + j];
                let tol = 1e-5 * (k as f32).sqrt() * 4.0 + 1e-5;
                assert!(
                    (g - w).abs() <= tol * (1.0 + w.abs()),
                    "({m},{k},{n}) ta={ta} tb={tb} {bk:?} at ({i},{j}): {g} vs {w}"
                );
            }
            // Padding columns untouched.
            for j in n..ldc {
                assert_eq!(c[i * ldc + j], init[i * ldc + j]);
            }
        }
    }

    #[test]
    fn awkward_shapes_against_reference() {
        let sizes = [
            (1, 1, 1),
            (1, 7, 1),
            (3, 5, 7),
            (13, 1, 33),
            (12, 32, 32),
            (25, 17, 65),
            (1, 300, 1),
            (37, 259, 70),
            (130, 70, 2),
            // The AVX2 kernel's tile (6x16), its edges and a depth past its
            // 256-deep block.
            (6, 16, 16),
            (7, 9, 17),
            (2, 520, 9),
            (11, 24, 40),
        ];
        for &(m, k, n) in &sizes {
            for ta in [false, true] {
                for tb in [false, true] {
                    for acc in [false, true] {
                        check(m, k, n, ta, tb, acc);
                    }
                }
            }
        }
    }

    #[test]
    fn large_parallel_against_reference() {
        check(300, 520, 270, false, false, false);
        check(64, 1000, 700, true, false, true);
        check(700, 300, 64, false, true, false);
        // Depth beyond one KC block: partial sums accumulate across blocks.
        check(100, 2500, 70, false, false, false);
        check(30, 2100, 45, true, true, true);
    }

    #[test]
    fn zero_k_overwrites_or_keeps() {
        let mut c = vec![5.0; 4];
        gemm(2, 0, 2, MatRef::row_major(&[], 0), MatRef::row_major(&[], 2), &mut c, 2, false);
        assert_eq!(c, vec![0.0; 4]);
        let mut c = vec![5.0; 4];
        gemm(2, 0, 2, MatRef::row_major(&[], 0), MatRef::row_major(&[], 2), &mut c, 2, true);
        assert_eq!(c, vec![5.0; 4]);
    }

    #[test]
    #[should_panic(expected = "overruns its buffer")]
    fn overrun_panics() {
        let a = [0.0; 3];
        let mut c = [0.0; 4];
        gemm(2, 2, 2, MatRef::row_major(&a, 2), MatRef::row_major(&a, 2), &mut c, 2, false);
    }
}
