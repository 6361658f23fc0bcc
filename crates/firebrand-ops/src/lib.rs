//! # firebrand-ops
//!
//! CPU kernels on plain slices and [`Layout`](firebrand_tensor::Layout)s.
pub mod gemm;
