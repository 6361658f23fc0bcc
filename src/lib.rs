//! placeholder
pub use firebrand_ops as ops;
