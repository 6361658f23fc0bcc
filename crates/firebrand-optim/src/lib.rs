//! # firebrand-optim
//!
//! Optimizers that update a model's parameters (the tensors
//! `firebrand_nn::ModuleExt::named_parameters` returns) in place from their
//! gradients, with PyTorch's update rules: [`Sgd`] (momentum, dampening,
//! Nesterov, weight decay), [`Adam`], [`AdamW`] (decoupled decay, per-parameter
//! decay filter), [`RmsProp`] (centered, momentum). Each update is one fused
//! pass over the parameter, its gradient and its state buffers (no temporary
//! tensors; the loops vectorize). State exports as named tensors
//! ([`Optimizer::state`]) for checkpoints, and [`Optimizer::load_state`]
//! resumes exactly.
//!
//! Also: gradient clipping ([`clip_grad_norm`], [`clip_grad_value`]) and
//! learning-rate schedules ([`StepLr`], [`ExponentialLr`], [`CosineWithWarmup`]).
//!
//! ```
//! use firebrand_autograd::Tensor;
//! use firebrand_optim::{AdamW, CosineWithWarmup, LrSchedule, Optimizer, clip_grad_norm, decay_matrices};
//!
//! let w = Tensor::from_vec(vec![0.5f32, -0.5, 1.0, 2.0], [2, 2]).requires_grad_(true);
//! let b = Tensor::zeros([2]).requires_grad_(true);
//! let params = vec![("w".to_string(), w.clone()), ("b".to_string(), b.clone())];
//! let mut opt = AdamW::with_options(params, 1e-2, (0.9, 0.99), 1e-8, 0.1, &decay_matrices);
//! let schedule = CosineWithWarmup { base: 1e-2, warmup: 10, total: 100, min_lr: 1e-3 };
//! for step in 0..20 {
//!     opt.set_lr(schedule.lr_at(step));
//!     let loss = (w.sum(&[1], false) + &b).square().sum_all();
//!     loss.backward();
//!     clip_grad_norm(&[w.clone(), b.clone()], 1.0);
//!     opt.step();
//!     opt.zero_grad();
//! }
//! // The loss started at 9.
//! assert!((w.sum(&[1], false) + &b).square().sum_all().item() < 8.0);
//! ```

#![warn(missing_docs)]

mod adam;
mod clip;
mod optimizer;
mod rmsprop;
mod schedule;
mod sgd;

pub use adam::{Adam, AdamW};
pub use clip::{clip_grad_norm, clip_grad_value};
pub use optimizer::{OptimError, Optimizer, decay_all, decay_matrices};
pub use rmsprop::RmsProp;
pub use schedule::{CosineWithWarmup, ExponentialLr, LrSchedule, StepLr};
pub use sgd::Sgd;
