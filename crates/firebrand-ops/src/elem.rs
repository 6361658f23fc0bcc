//! The element types (`f32`, `f64`) that the generic direct kernels
//! (depthwise convolution, the per-channel affine epilogue) run on: `f32` for
//! speed, `f64` for the finite-difference gradient checks, one code path.

use firebrand_tensor::op::UnaryOp;
use std::ops::{Add, Mul};

/// The element types the kernels run on.
pub trait KernelElem: Copy + Default + Send + Sync + Add<Output = Self> + Mul<Output = Self> + 'static {
    /// `a·b + c`, fused (one rounding) when `FMA`.
    fn madd<const FMA: bool>(a: Self, b: Self, c: Self) -> Self;
    /// A buffer of `len` elements (contents unspecified).
    fn buffer(len: usize) -> Vec<Self>;
    /// Gives a scratch buffer back.
    fn give_back(v: Vec<Self>);
    /// Applies an activation in place.
    fn activate(op: UnaryOp, v: &mut [Self]);
    /// `g · op'(x)` where the output `y = op(x)` determines the derivative
    /// (see [`output_determines_grad`]).
    fn act_backward(op: UnaryOp, y: &[Self], g: &[Self]) -> Vec<Self>;
    /// [`KernelElem::act_backward`] over one row into `d` (all of one length).
    fn act_backward_row(op: UnaryOp, y: &[Self], g: &[Self], d: &mut [Self]);
    /// Widened for accumulation.
    fn to_f64(self) -> f64;
    /// Narrowed back.
    fn from_f64(v: f64) -> Self;
    /// `dst[i] = src[i]·s + t` (a multiply and an add).
    fn affine_row(src: &[Self], s: Self, t: Self, dst: &mut [Self]) {
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v * s + t);
    }
}

/// True for the activations whose derivative can be read off the output
/// alone, so a fused kernel need not keep its input: ReLU (`y > 0`) and
/// hardtanh/ReLU6 (`lo < y < hi`, PyTorch's rule, which lets NaN through).
pub fn output_determines_grad(op: UnaryOp) -> bool {
    matches!(op, UnaryOp::Relu | UnaryOp::Hardtanh(..))
}

impl KernelElem for f32 {
    #[inline(always)]
    fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
        if FMA { a.mul_add(b, c) } else { a * b + c }
    }
    fn buffer(len: usize) -> Vec<f32> {
        firebrand_tensor::pool::take_f32(len)
    }
    fn give_back(v: Vec<f32>) {
        firebrand_tensor::pool::recycle_f32(v)
    }
    fn activate(op: UnaryOp, v: &mut [f32]) {
        crate::unary::map_in_place(op, v)
    }
    fn act_backward(op: UnaryOp, y: &[f32], g: &[f32]) -> Vec<f32> {
        crate::unary::unary_backward(op, y, y, g)
    }
    fn act_backward_row(op: UnaryOp, y: &[f32], g: &[f32], d: &mut [f32]) {
        crate::unary::backward_rows(op, y, y, g, d)
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
    fn affine_row(src: &[f32], s: f32, t: f32, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if crate::simd512::available() {
            // SAFETY: AVX-512F was detected at run time.
            unsafe { crate::simd512::affine(src, s, t, dst) };
            return;
        }
        dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v * s + t);
    }
}

impl KernelElem for f64 {
    #[inline(always)]
    fn madd<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
        if FMA { a.mul_add(b, c) } else { a * b + c }
    }
    fn buffer(len: usize) -> Vec<f64> {
        vec![0.0; len]
    }
    fn give_back(_: Vec<f64>) {}
    fn activate(op: UnaryOp, v: &mut [f64]) {
        v.iter_mut().for_each(|x| *x = op.eval(*x))
    }
    fn act_backward(op: UnaryOp, y: &[f64], g: &[f64]) -> Vec<f64> {
        crate::generic::unary_backward_f64(op, y, y, g)
    }
    fn act_backward_row(op: UnaryOp, y: &[f64], g: &[f64], d: &mut [f64]) {
        d.iter_mut().zip(y).zip(g).for_each(|((d, &y), &g)| *d = g * op.derivative_of(y, y));
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> f64 {
        v
    }
}

/// True when `T` is `f32` and this CPU runs the AVX-512 + FMA build.
#[cfg(target_arch = "x86_64")]
pub(crate) fn is_f32_with_avx512<T: 'static>() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && *FLAG.get_or_init(|| crate::simd512::available() && std::arch::is_x86_feature_detected!("fma"))
}

/// True when `T` is `f32` and this CPU has AVX2 and FMA but not AVX-512
/// (AMD Zen 1–3, Intel client cores): the middle build of the kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) fn is_f32_with_avx2<T: 'static>() -> bool {
    static FLAG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && *FLAG
            .get_or_init(|| std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"))
}

/// Defines `fn $name<T: KernelElem>(…)` that runs `$generic::<T, true>`
/// compiled with AVX-512 and FMA when `T` is `f32` and this CPU has them
/// (else with AVX2 and FMA, where it has those), and `$generic::<T, false>`
/// (portable, no fused multiply-add) otherwise: one generic kernel body,
/// three builds, chosen at run time.
macro_rules! fma_dispatch {
    ($(#[$m:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $generic:ident) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        fn $name<T: $crate::elem::KernelElem>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            if $crate::elem::is_f32_with_avx512::<T>() {
                #[target_feature(enable = "avx512f,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast<T: $crate::elem::KernelElem>($($arg: $ty),*) $(-> $ret)? {
                    $generic::<T, true>($($arg),*)
                }
                // SAFETY: AVX-512F and FMA were detected at run time.
                return unsafe { fast::<T>($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::elem::is_f32_with_avx2::<T>() {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2<T: $crate::elem::KernelElem>($($arg: $ty),*) $(-> $ret)? {
                    $generic::<T, true>($($arg),*)
                }
                // SAFETY: AVX2 and FMA were detected at run time.
                return unsafe { avx2::<T>($($arg),*) };
            }
            $generic::<T, false>($($arg),*)
        }
    };
}
pub(crate) use fma_dispatch;

/// Defines an `f32` kernel `fn $name(…) $body` whose body runs compiled with
/// AVX-512 and FMA when this CPU has them, with AVX2 and FMA when it has
/// those, portable otherwise: for plain
/// elementwise loops the compiler vectorizes (built for the baseline target
/// they get SSE2 only). Rust does not contract `a * b + c` into an FMA on its
/// own, so both builds give the same bits.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            if crate::elem::is_f32_with_avx512::<f32>() {
                #[target_feature(enable = "avx512f,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn fast($($arg: $ty),*) {
                    body($($arg),*)
                }
                // SAFETY: AVX-512F and FMA were detected at run time.
                return unsafe { fast($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if crate::elem::is_f32_with_avx2::<f32>() {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                // SAFETY: AVX2 and FMA were detected at run time.
                return unsafe { avx2($($arg),*) };
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_fn;
