//! # firebrand-ops
//!
//! Firebrand's CPU kernels. They work on plain slices plus
//! [`Layout`](firebrand_tensor::Layout)s from `firebrand-tensor` and know
//! nothing of autograd: `firebrand-autograd` calls them from its `Tensor` ops
//! and records the backward rules.
//!
//! * [`gemm`] — single-precision matrix multiply: one blocked driver of our
//!   own with an AVX-512 (12x32) or an AVX2 + FMA (6x16) micro-kernel,
//!   `matrixmultiply` elsewhere; strided operands, rayon over blocks;
//!   at [`gemm::MatmulPrecision::Medium`], bf16 products on AMX tiles; and
//!   [`gemm::int8`], `u8·i8` products on AMX-INT8 tiles for quantized layers.
//! * [`binary`] / [`unary`] — elementwise maps with broadcasting; the unary
//!   table gives each op's value and derivative.
//! * [`reduce`] — sum, max, min, argmax, argmin over any axes.
//! * [`softmax`] — stable softmax and log-softmax rows with their backward rules.
//! * [`index`] — gather, scatter-add, index_select, concat, one-hot, where.
//! * [`attention`] — fused scaled-dot-product attention (masks computed in
//!   place, log-sum-exp kept for the backward pass).
//! * [`norm`] — fused layer normalization and its backward pass.
//! * [`batch_norm`] — training-mode batch normalization's statistics and
//!   backward pass, fused.
//! * [`conv`] — im2col/col2im (convolution is im2col + one gemm), max and
//!   average pooling with their backward passes, the fused convolution
//!   epilogue (bias + activation + layout).
//! * [`conv_int8`] — static-int8 convolution (calibrated `u8` input, per-channel
//!   `i8` weight, the int8 gemm with bias and activation in its store).
//! * [`depthwise`] — direct depthwise convolution (`groups == C`, any channel
//!   multiplier) and both of its gradients, no im2col.
//!
//! [`CpuBackend`] implements the primitive op set
//! ([`Backend`](firebrand_tensor::backend::Backend)) on these kernels; the
//! autograd layer reaches them only through that trait.
//!
//! Small inputs run on the calling thread; above [`parallel::PAR_MIN_ELEMS`]
//! elements the work is split between the caller and helper threads
//! ([`parallel::par_for`]).
//!
//! ```
//! use firebrand_ops::{binary::{binary_map, BinaryOp}, reduce::{reduce, ReduceOp, Reduced}};
//! use firebrand_tensor::{Layout, Shape};
//!
//! let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]; // (2, 3)
//! let b = [10.0, 20.0, 30.0];            // (3,), broadcast over rows
//! let la = Layout::contiguous([2, 3]);
//! let lb = Layout::contiguous([3]).broadcast_as(&Shape::from([2, 3])).unwrap();
//! let c = binary_map(BinaryOp::Add, &a, &la, &b, &lb);
//! assert_eq!(c, vec![11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
//! let s = reduce(ReduceOp::Sum, &c, &la, &[true, false]);
//! assert_eq!(s, Reduced::Values(vec![25.0, 47.0, 69.0]));
//! ```

#![warn(missing_docs)]

pub mod attention;
pub mod batch_norm;
pub mod binary;
pub mod conv;
pub mod conv_int8;
mod cpu_backend;
pub mod depthwise;
pub mod elem;
pub mod gemm;
pub mod generic;
pub mod index;
pub mod norm;
pub mod parallel;
pub mod recurrent;
pub mod reduce;
#[cfg(target_arch = "x86_64")]
pub mod simd256;
#[cfg(target_arch = "x86_64")]
pub mod simd512;
pub mod softmax;
mod strided;
#[cfg(test)]
mod test_data;
pub mod unary;

pub use cpu_backend::{CPU, CpuBackend, batched_gemm, f32s, i64s};
pub use strided::{contiguous, contiguous_f32, contiguous_into};
