//! Element types, their Rust scalars, and PyTorch's type-promotion rules.

pub use half::{bf16, f16};

/// Element type of a tensor.
///
/// | dtype | Rust type | PyTorch |
/// |---|---|---|
/// | `Bool` | `bool` | `torch.bool` |
/// | `U8` | `u8` | `torch.uint8` |
/// | `I8` | `i8` | `torch.int8` |
/// | `I32` | `i32` | `torch.int32` |
/// | `I64` | `i64` | `torch.int64` (indices, labels, `argmax`) |
/// | `F16` | [`half::f16`] | `torch.float16` |
/// | `BF16` | [`bf16`] | `torch.bfloat16` |
/// | `F32` | `f32` | `torch.float32` (the default float; fast kernels) |
/// | `F64` | `f64` | `torch.float64` |
///
/// `F16` and `BF16` are stored in half precision and compute by widening
/// to `f32` inside each kernel. See [`DType::promote`] for the rule that
/// picks the result type of an op on mixed dtypes.
///
/// ```
/// use firebrand_tensor::DType;
/// assert_eq!(DType::promote(DType::I64, DType::F16), DType::F16);
/// assert_eq!(DType::promote(DType::F16, DType::BF16), DType::F32);
/// assert_eq!(DType::promote(DType::Bool, DType::U8), DType::U8);
/// assert!(DType::BF16.is_float() && !DType::I32.is_float());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DType {
    /// Booleans (masks; the result of comparisons).
    Bool,
    /// 8-bit unsigned integer.
    U8,
    /// 8-bit signed integer.
    I8,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// IEEE half precision.
    F16,
    /// bfloat16 (8-bit exponent, 7-bit mantissa).
    BF16,
    /// 32-bit IEEE float.
    F32,
    /// 64-bit IEEE float.
    F64,
}

/// Every dtype, in promotion order within each kind.
pub const ALL_DTYPES: &[DType] =
    &[DType::Bool, DType::U8, DType::I8, DType::I32, DType::I64, DType::F16, DType::BF16, DType::F32, DType::F64];

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(&self) -> usize {
        match self {
            DType::Bool | DType::U8 | DType::I8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::F32 => 4,
            DType::I64 | DType::F64 => 8,
        }
    }

    /// True for floating-point types (the ones autograd works on).
    pub fn is_float(&self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// True for the integer types (`Bool` excluded).
    pub fn is_int(&self) -> bool {
        matches!(self, DType::U8 | DType::I8 | DType::I32 | DType::I64)
    }

    /// The dtype's category in promotion: 0 for bool, 1 for integers, 2 for floats.
    pub fn category(self) -> u8 {
        match self {
            DType::Bool => 0,
            d if d.is_int() => 1,
            _ => 2,
        }
    }

    /// The result type of a binary op on two tensors, PyTorch's
    /// `torch.promote_types`: a float beats an integer, an integer beats
    /// bool, and within a kind the wider type wins.
    ///
    /// | | result |
    /// |---|---|
    /// | same dtype | that dtype |
    /// | `Bool` with anything | the other |
    /// | `U8` with `I8` | `I32` (PyTorch: `int16`, which Firebrand lacks) |
    /// | two integers otherwise | the wider |
    /// | integer with a float | the float |
    /// | `F16` with `BF16` | `F32` |
    /// | two floats otherwise | the wider |
    pub fn promote(a: DType, b: DType) -> DType {
        use DType::*;
        if a == b {
            return a;
        }
        match (a.category(), b.category()) {
            (0, _) => b,
            (_, 0) => a,
            (1, 2) => b,
            (2, 1) => a,
            (1, 1) => match (a, b) {
                (U8, I8) | (I8, U8) => I32,
                _ => a.max(b),
            },
            _ => match (a, b) {
                (F16, BF16) | (BF16, F16) => F32,
                _ => a.max(b),
            },
        }
    }

    /// The result type of `tensor op scalar` for a Rust scalar (PyTorch's
    /// rule for Python numbers): the tensor's dtype, unless the scalar is of a
    /// higher kind (a non-integral value on an integer or bool tensor gives
    /// the default float, `F32`; an integral one on a bool tensor gives `I64`).
    pub fn promote_scalar(self, integral: bool) -> DType {
        match (self.category(), integral) {
            (2, _) => self,
            (_, false) => DType::F32,
            (0, true) => DType::I64,
            _ => self,
        }
    }

    /// The dtype a float-only op (`exp`, `sqrt`, true division, `mean`, ...)
    /// computes in: itself for floats, the default `F32` for integers and bool.
    pub fn to_float(self) -> DType {
        if self.is_float() { self } else { DType::F32 }
    }

    /// The lower-case name (`"f32"`, `"bool"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust scalar type that a tensor can hold.
///
/// Conversions follow PyTorch's `to(dtype)`: float to integer truncates
/// toward zero (saturating at the type's range; NaN becomes 0), anything to
/// `bool` tests for non-zero, `bool` to a number gives 0 or 1. Integers
/// convert among themselves through `i64` (exact), everything else through `f64`.
pub trait Element: Copy + Send + Sync + PartialOrd + std::fmt::Debug + Default + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Conversion to `f64`.
    fn to_f64(self) -> f64;
    /// Conversion from `f64` (truncating toward zero for integers).
    fn from_f64(v: f64) -> Self;
    /// Conversion to `i64` (exact for integers; truncating for floats).
    fn to_i64(self) -> i64 {
        self.to_f64() as i64
    }
    /// Conversion from `i64` (wrapping for narrower integers, as PyTorch).
    fn from_i64(v: i64) -> Self {
        Self::from_f64(v as f64)
    }
}

/// Converts one element to another element type by the [`Element`] rules.
#[inline]
pub fn cast<S: Element, T: Element>(x: S) -> T {
    let int_like = |d: DType| d.is_int() || d == DType::Bool;
    if int_like(S::DTYPE) && int_like(T::DTYPE) { T::from_i64(x.to_i64()) } else { T::from_f64(x.to_f64()) }
}

macro_rules! float_element {
    ($t:ty, $d:ident, $to:expr, $from:expr) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            #[inline]
            fn to_f64(self) -> f64 {
                $to(self)
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                $from(v)
            }
        }
    };
}

float_element!(f32, F32, |x: f32| x as f64, |v: f64| v as f32);
float_element!(f64, F64, |x: f64| x, |v: f64| v);
float_element!(f16, F16, |x: f16| x.to_f64(), f16::from_f64);
float_element!(bf16, BF16, |x: bf16| x.to_f64(), bf16::from_f64);

macro_rules! int_element {
    ($t:ty, $d:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            #[inline]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline]
            fn to_i64(self) -> i64 {
                self as i64
            }
            #[inline]
            fn from_i64(v: i64) -> Self {
                v as $t
            }
        }
    };
}

int_element!(u8, U8);
int_element!(i8, I8);
int_element!(i32, I32);
int_element!(i64, I64);

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    #[inline]
    fn to_f64(self) -> f64 {
        self as u8 as f64
    }
    #[inline]
    fn from_f64(v: f64) -> Self {
        v != 0.0
    }
    #[inline]
    fn to_i64(self) -> i64 {
        self as i64
    }
    #[inline]
    fn from_i64(v: i64) -> Self {
        v != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotion_table_matches_pytorch() {
        use DType::*;
        // torch.promote_types for every pair (int16 replaced by I32).
        let rows: &[(DType, DType, DType)] = &[
            (Bool, Bool, Bool),
            (Bool, U8, U8),
            (Bool, F16, F16),
            (U8, I8, I32),
            (U8, I32, I32),
            (I8, I64, I64),
            (I32, I64, I64),
            (I64, F16, F16),
            (I64, BF16, BF16),
            (U8, F32, F32),
            (F16, BF16, F32),
            (F16, F32, F32),
            (BF16, F64, F64),
            (F32, F64, F64),
        ];
        for &(a, b, want) in rows {
            assert_eq!(DType::promote(a, b), want, "{a} with {b}");
            assert_eq!(DType::promote(b, a), want, "{b} with {a}");
        }
        for &a in ALL_DTYPES {
            for &b in ALL_DTYPES {
                let p = DType::promote(a, b);
                assert_eq!(p, DType::promote(b, a));
                assert!(p.category() >= a.category().max(b.category()), "{a} {b} -> {p}");
            }
        }
        assert_eq!(I32.promote_scalar(true), I32);
        assert_eq!(I32.promote_scalar(false), F32);
        assert_eq!(Bool.promote_scalar(true), I64);
        assert_eq!(F16.promote_scalar(false), F16);
    }

    #[test]
    fn casts_follow_pytorch() {
        assert_eq!(cast::<f32, i64>(-2.7), -2);
        assert_eq!(cast::<f32, i64>(2.7), 2);
        assert_eq!(cast::<f64, u8>(300.0), 255);
        assert_eq!(cast::<f32, i32>(f32::NAN), 0);
        assert!(cast::<f32, bool>(0.1));
        assert!(!cast::<f32, bool>(0.0));
        assert_eq!(cast::<bool, f32>(true), 1.0);
        assert_eq!(cast::<i64, i64>(i64::MAX), i64::MAX);
        assert_eq!(cast::<i64, i8>(300), 44);
        assert_eq!(cast::<f32, f16>(1.5).to_f32(), 1.5);
        assert_eq!(cast::<f32, bf16>(3.0).to_f32(), 3.0);
    }
}
