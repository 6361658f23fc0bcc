//! # firebrand-tensor
//!
//! The bottom layer of Firebrand: the plain data that every other crate shares.
//!
//! * [`Shape`] — a runtime list of dimension sizes, with NumPy broadcasting rules.
//! * [`Layout`] — a shape plus strides and an offset into a buffer, so that views
//!   (transpose, narrow, broadcast, ...) never copy.
//! * [`DType`] — the element types (bool, u8, i8, i32, i64, f16, bf16, f32, f64),
//!   their conversions and PyTorch's type-promotion rules ([`DType::promote`]).
//! * [`Device`] — where a tensor's storage lives (`Device::Cpu` today; an optional
//!   GPU crate adds a device without changing user code).
//! * [`CpuStorage`] — the CPU buffers.
//! * [`Error`] — the error type every fallible op returns.
//! * [`backend`] — the [`Backend`](backend::Backend) trait: the primitive op set a device implements.
//! * [`op`] — the primitive op set's scalar semantics (unary table with
//!   derivatives, binary ops, reductions), shared by every backend.
//! * [`pool`] — a cache of large `f32` buffers, so hot loops do not page-fault.
//!
//! `firebrand-ops` runs kernels over `(&[T], &Layout)` pairs from this crate, and
//! `firebrand-autograd` builds the user-facing `Tensor` on top of both.
//!
//! ```
//! use firebrand_tensor::{Layout, Shape};
//!
//! let layout = Layout::contiguous(Shape::from([2, 3]));
//! let t = layout.transpose(0, 1).unwrap();
//! assert_eq!(t.shape().dims(), &[3, 2]);
//! assert_eq!(t.strides(), &[1, 3]);
//! assert!(!t.is_contiguous());
//! ```

#![warn(missing_docs)]

pub mod backend;
mod device;
pub mod dtype;
mod error;
mod layout;
pub mod op;
pub mod pool;
mod shape;
mod storage;

pub use device::Device;
pub use dtype::{ALL_DTYPES, DType, Element, bf16, cast, f16};
pub use error::{Error, Result};
pub use layout::{Layout, StridedIndex};
pub use shape::{Shape, normalize_dim};
pub use storage::CpuStorage;
