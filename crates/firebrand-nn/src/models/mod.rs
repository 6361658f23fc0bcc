//! Reference architectures rebuilt from Firebrand's layers, with the
//! parameter names of their PyTorch originals so state dicts move between
//! the two.

mod mobilenet;

pub use mobilenet::{InvertedResidual, MobileNetV2};
