use crate::dtype::{bf16, cast, f16};
use crate::{DType, Element, Layout};

/// A CPU buffer of one of the supported element types.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum CpuStorage {
    /// `bool` elements.
    Bool(Vec<bool>),
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f16` elements.
    F16(Vec<f16>),
    /// `bf16` elements.
    BF16(Vec<bf16>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f64` elements.
    F64(Vec<f64>),
}

/// Runs `$body` with `$v` bound to the typed buffer of a [`CpuStorage`]
/// (whatever its element type), e.g. `with_cpu!(s, v => v.len())`.
#[macro_export]
macro_rules! with_cpu {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            $crate::CpuStorage::Bool($v) => $body,
            $crate::CpuStorage::U8($v) => $body,
            $crate::CpuStorage::I8($v) => $body,
            $crate::CpuStorage::I32($v) => $body,
            $crate::CpuStorage::I64($v) => $body,
            $crate::CpuStorage::F16($v) => $body,
            $crate::CpuStorage::BF16($v) => $body,
            $crate::CpuStorage::F32($v) => $body,
            $crate::CpuStorage::F64($v) => $body,
            #[allow(unreachable_patterns)]
            _ => unreachable!("every CPU storage type is handled"),
        }
    };
}

/// Builds a [`CpuStorage`] of `$dtype` from `$body`, with `$T` bound to the
/// Rust element type, e.g. `cpu_of_dtype!(dtype, T => vec![T::default(); n])`.
#[macro_export]
macro_rules! cpu_of_dtype {
    ($dtype:expr, $T:ident => $body:expr) => {
        match $dtype {
            $crate::DType::Bool => {
                type $T = bool;
                $crate::CpuStorage::Bool($body)
            }
            $crate::DType::U8 => {
                type $T = u8;
                $crate::CpuStorage::U8($body)
            }
            $crate::DType::I8 => {
                type $T = i8;
                $crate::CpuStorage::I8($body)
            }
            $crate::DType::I32 => {
                type $T = i32;
                $crate::CpuStorage::I32($body)
            }
            $crate::DType::I64 => {
                type $T = i64;
                $crate::CpuStorage::I64($body)
            }
            $crate::DType::F16 => {
                type $T = $crate::f16;
                $crate::CpuStorage::F16($body)
            }
            $crate::DType::BF16 => {
                type $T = $crate::bf16;
                $crate::CpuStorage::BF16($body)
            }
            $crate::DType::F32 => {
                type $T = f32;
                $crate::CpuStorage::F32($body)
            }
            $crate::DType::F64 => {
                type $T = f64;
                $crate::CpuStorage::F64($body)
            }
            #[allow(unreachable_patterns)]
            _ => unreachable!("every dtype is handled"),
        }
    };
}

/// The elements of `layout` in row-major order.
fn gather<S: Element, T: Element>(src: &[S], layout: &Layout) -> Vec<T> {
    match layout.contiguous_range() {
        Some(r) => src[r].iter().map(|&x| cast(x)).collect(),
        None => layout.strided_index().map(|i| cast(src[i])).collect(),
    }
}

impl CpuStorage {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::Bool(_) => DType::Bool,
            CpuStorage::U8(_) => DType::U8,
            CpuStorage::I8(_) => DType::I8,
            CpuStorage::I32(_) => DType::I32,
            CpuStorage::I64(_) => DType::I64,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::F64(_) => DType::F64,
        }
    }

    /// Number of elements in the buffer.
    pub fn len(&self) -> usize {
        with_cpu!(self, v => v.len())
    }

    /// True when the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A buffer owning `data`.
    pub fn from_vec<T: Element>(data: Vec<T>) -> CpuStorage {
        let mut data = Some(data);
        let any: &mut dyn std::any::Any = &mut data;
        macro_rules! take {
            ($t:ty, $var:ident) => {
                if let Some(v) = any.downcast_mut::<Option<Vec<$t>>>() {
                    return CpuStorage::$var(v.take().expect("taken once"));
                }
            };
        }
        take!(bool, Bool);
        take!(u8, U8);
        take!(i8, I8);
        take!(i32, I32);
        take!(i64, I64);
        take!(f16, F16);
        take!(bf16, BF16);
        take!(f32, F32);
        take!(f64, F64);
        unreachable!("every Element type has a storage variant")
    }

    /// The buffer as a slice of `T`, when `T` is its element type.
    pub fn as_slice<T: Element>(&self) -> Option<&[T]> {
        with_cpu!(self, v => (v as &dyn std::any::Any).downcast_ref::<Vec<T>>().map(|v| v.as_slice()))
    }

    /// The elements of `layout`, copied out in row-major order and converted
    /// to `T` by the [`Element`] rules.
    pub fn to_vec<T: Element>(&self, layout: &Layout) -> Vec<T> {
        if let Some(v) = self.as_slice::<T>() {
            // Same type: an exact copy.
            return match layout.contiguous_range() {
                Some(r) => v[r].to_vec(),
                None => layout.strided_index().map(|i| v[i]).collect(),
            };
        }
        with_cpu!(self, v => gather(v, layout))
    }

    /// The elements of `layout` in row-major order, converted to `dtype`.
    pub fn to_dtype(&self, layout: &Layout, dtype: DType) -> CpuStorage {
        cpu_of_dtype!(dtype, T => self.to_vec::<T>(layout))
    }
}

impl<T: Element> From<Vec<T>> for CpuStorage {
    fn from(v: Vec<T>) -> Self {
        CpuStorage::from_vec(v)
    }
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        if let CpuStorage::F32(v) = self {
            crate::pool::recycle_f32(std::mem::take(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_round_trips_through_every_other() {
        let vals = [0.0f64, 1.0, 2.0, 7.0, 100.0];
        for &a in crate::dtype::ALL_DTYPES {
            let src = CpuStorage::F64(vals.to_vec()).to_dtype(&Layout::contiguous([5]), a);
            assert_eq!(src.dtype(), a);
            for &b in crate::dtype::ALL_DTYPES {
                let back = src.to_dtype(&Layout::contiguous([5]), b).to_vec::<f64>(&Layout::contiguous([5]));
                // Every value fits every type; bool keeps only non-zero-ness.
                let want: Vec<f64> = if a == DType::Bool || b == DType::Bool {
                    vals.iter().map(|&v| (v != 0.0) as u8 as f64).collect()
                } else {
                    vals.to_vec()
                };
                assert_eq!(back, want, "{a} -> {b}");
            }
        }
    }

    #[test]
    fn strided_copy_keeps_the_type() {
        let s = CpuStorage::from_vec(vec![1i32, 2, 3, 4, 5, 6]);
        let t = Layout::contiguous([2, 3]).transpose(0, 1).unwrap();
        assert_eq!(s.to_vec::<i32>(&t), vec![1, 4, 2, 5, 3, 6]);
        assert_eq!(s.as_slice::<i32>().unwrap().len(), 6);
        assert!(s.as_slice::<i64>().is_none());
    }
}
