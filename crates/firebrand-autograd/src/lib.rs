//! # firebrand-autograd
//!
//! The user-facing [`Tensor`] and the reverse-mode autograd engine.
//!
//! `Tensor` sits here rather than in `firebrand-tensor` because every op
//! records its backward rule beside its forward call: an op lives in one place
//! (API, shape check, kernel call into `firebrand-ops`, backward rule), under
//! [`ops`](crate#ops) by theme. The engine ([`Tensor::backward`]) walks the
//! recorded graph in reverse topological order and accumulates gradients into
//! leaves marked with [`Tensor::requires_grad_`]. [`no_grad`] turns recording
//! off; [`gradcheck`] verifies any differentiable function against finite
//! differences.
//!
//! Errors: every op has a `try_` form returning [`Result`]; the short form
//! panics with the same message, which names the op and the shapes.
//!
//! ```
//! use firebrand_autograd::{Tensor, manual_seed};
//!
//! manual_seed(0);
//! let x = Tensor::randn([4, 3], 0.0, 1.0);
//! let w = Tensor::randn([3, 2], 0.0, 0.1).requires_grad_(true);
//! let b = Tensor::zeros([2]).requires_grad_(true);
//! let target = Tensor::from_vec(vec![0i64, 1, 1, 0], [4]);
//! let logp = (x.matmul(&w) + &b).log_softmax(-1);                 // (4, 2)
//! let loss = -logp.gather(1, &target.unsqueeze(1)).mean_all();     // NLL
//! loss.backward();
//! assert_eq!(w.grad().unwrap().dims(), &[3, 2]);
//! assert_eq!(b.grad().unwrap().dims(), &[2]);
//! ```

#![warn(missing_docs)]

mod anomaly;
mod backward;
mod device;
mod display;
mod grad_mode;
mod gradcheck;
mod hooks;
mod ops;
mod random;
mod tensor;

pub use anomaly::{AnomalyGuard, detect_anomaly, is_anomaly_enabled};
pub use device::{memory_stats, reset_peak_memory, synchronize};
pub use firebrand_ops::unary::UnaryOp;
pub use firebrand_tensor::backend::MemoryStats;
pub use firebrand_tensor::op::Window2d;
pub use firebrand_tensor::{DType, Device, Element, Error, Layout, Result, Shape, bf16, f16};
pub use grad_mode::{NoGradGuard, is_grad_enabled, no_grad, with_no_grad};
pub use gradcheck::{GradcheckError, GradcheckOptions, gradcheck};
pub use hooks::{HookHandle, register_backward_end_hook};
pub use ops::{AttentionOptions, ConvOptions, IndexExpr, PadMode, TensorIndex, result_type};
pub use random::manual_seed;
pub use tensor::{Tensor, TensorId};
