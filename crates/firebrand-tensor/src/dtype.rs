/// Element type of a tensor.
///
/// `F32` is the first-class type: every differentiable op computes in it.
/// `I64` holds indices, class labels and the results of `argmax`.
/// The enum is non-exhaustive: half precision (`f16`, `bf16`) and `i8` for
/// quantized weights will be added as variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 64-bit signed integer.
    I64,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(&self) -> usize {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
        }
    }

    /// True for floating-point types.
    pub fn is_float(&self) -> bool {
        matches!(self, DType::F32)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DType::F32 => write!(f, "f32"),
            DType::I64 => write!(f, "i64"),
        }
    }
}

/// A Rust scalar type that a tensor can hold.
pub trait Element: Copy + Send + Sync + PartialOrd + std::fmt::Debug + Default + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Conversion to `f64` (for display and tests).
    fn to_f64(self) -> f64;
    /// Conversion from `f64` (truncating for integers).
    fn from_f64(v: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for i64 {
    const DTYPE: DType = DType::I64;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as i64
    }
}
