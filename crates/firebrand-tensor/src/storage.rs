use crate::{DType, Element, Layout};

/// A CPU buffer of one of the supported element types.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum CpuStorage {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `i64` elements.
    I64(Vec<i64>),
}

impl CpuStorage {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::I64(_) => DType::I64,
        }
    }

    /// Number of elements in the buffer.
    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::I64(v) => v.len(),
        }
    }

    /// True when the buffer has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements of `layout`, copied out in row-major order and converted to `T`.
    pub fn to_vec<T: Element>(&self, layout: &Layout) -> Vec<T> {
        fn gather<S: Element, T: Element>(src: &[S], layout: &Layout) -> Vec<T> {
            if let Some(r) = layout.contiguous_range() {
                return src[r].iter().map(|&x| T::from_f64(x.to_f64())).collect();
            }
            layout.strided_index().map(|i| T::from_f64(src[i].to_f64())).collect()
        }
        match self {
            CpuStorage::F32(v) => {
                if T::DTYPE == DType::F32 {
                    // Exact copy, no round trip through f64.
                    let out: Vec<f32> = match layout.contiguous_range() {
                        Some(r) => v[r].to_vec(),
                        None => layout.strided_index().map(|i| v[i]).collect(),
                    };
                    // SAFETY-free cast via Any: T is f32 here.
                    let boxed: Box<dyn std::any::Any> = Box::new(out);
                    return *boxed.downcast::<Vec<T>>().expect("T is f32");
                }
                gather(v, layout)
            }
            CpuStorage::I64(v) => gather(v, layout),
        }
    }
}

impl From<Vec<f32>> for CpuStorage {
    fn from(v: Vec<f32>) -> Self {
        CpuStorage::F32(v)
    }
}

impl From<Vec<i64>> for CpuStorage {
    fn from(v: Vec<i64>) -> Self {
        CpuStorage::I64(v)
    }
}

impl Drop for CpuStorage {
    fn drop(&mut self) {
        if let CpuStorage::F32(v) = self {
            crate::pool::recycle_f32(std::mem::take(v));
        }
    }
}
