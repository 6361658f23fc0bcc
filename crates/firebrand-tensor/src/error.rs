use crate::{DType, Device, Shape};

/// Result alias used across Firebrand.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a tensor operation.
///
/// Every variant names the operation that failed, so a message read far from
/// its cause still says where it came from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two shapes that had to agree (or broadcast) did not.
    #[error("{op}: shape mismatch between {lhs:?} and {rhs:?}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// First shape.
        lhs: Shape,
        /// Second shape.
        rhs: Shape,
    },
    /// A shape was invalid for the operation, with an explanation.
    #[error("{op}: invalid shape {shape:?}: {msg}")]
    InvalidShape {
        /// The operation.
        op: &'static str,
        /// The offending shape.
        shape: Shape,
        /// What was wrong.
        msg: String,
    },
    /// A dimension index out of range for a tensor's rank.
    #[error("{op}: dimension {dim} out of range for a tensor of shape {shape:?}")]
    DimOutOfRange {
        /// The operation.
        op: &'static str,
        /// The dimension asked for (possibly negative).
        dim: isize,
        /// The tensor's shape.
        shape: Shape,
    },
    /// An element type that the operation does not accept.
    #[error("{op}: unsupported dtype {got:?} (expected {expected})")]
    DType {
        /// The operation.
        op: &'static str,
        /// The dtype given.
        got: DType,
        /// A description of the accepted dtypes.
        expected: &'static str,
    },
    /// Inputs living on different devices.
    #[error("{op}: tensors on different devices ({lhs:?} and {rhs:?})")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
        /// First device.
        lhs: Device,
        /// Second device.
        rhs: Device,
    },
    /// A device that this build cannot use.
    #[error("{op}: device {device:?} is not available: {msg}")]
    DeviceUnavailable {
        /// The operation.
        op: &'static str,
        /// The device asked for.
        device: Device,
        /// Why.
        msg: String,
    },
    /// An index value outside the valid range.
    #[error("{op}: index {index} out of range for size {size}")]
    IndexOutOfRange {
        /// The operation.
        op: &'static str,
        /// The offending index.
        index: i64,
        /// The size of the indexed dimension.
        size: usize,
    },
    /// A class-index target outside `0..classes` (and not the ignore index).
    #[error("{op}: target {value} at sample {position:?} is out of bounds for {classes} classes (valid: 0..{classes}{ignore})", ignore = match ignore_index { Some(i) => format!(", or the ignore_index {i}"), None => String::new() })]
    TargetOutOfRange {
        /// The loss.
        op: &'static str,
        /// The offending class index.
        value: i64,
        /// Where it sits in the target tensor (one index per dimension).
        position: Vec<usize>,
        /// The number of classes (the logits' last dimension).
        classes: usize,
        /// The index the loss skips, if any.
        ignore_index: Option<i64>,
    },
    /// Anything else, with a message.
    #[error("{op}: {msg}")]
    Msg {
        /// The operation.
        op: &'static str,
        /// What went wrong.
        msg: String,
    },
}

impl Error {
    /// Convenience constructor for [`Error::Msg`].
    pub fn msg(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Msg { op, msg: msg.into() }
    }
}
