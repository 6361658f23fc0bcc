//! Switching gradient recording on and off (`torch.no_grad()`).

use std::cell::Cell;

thread_local! {
    static GRAD_ENABLED: Cell<bool> = const { Cell::new(true) };
}

/// True when ops on this thread record the graph for `backward`.
pub fn is_grad_enabled() -> bool {
    GRAD_ENABLED.with(|g| g.get())
}

/// Turns gradient recording off on this thread until the guard is dropped
/// (PyTorch's `with torch.no_grad():`). Guards nest.
///
/// ```
/// use firebrand_autograd::{Tensor, no_grad};
/// let w = Tensor::ones([2]).requires_grad_(true);
/// {
///     let _guard = no_grad();
///     let y = &w * 2.0;
///     assert!(!y.requires_grad());
/// }
/// assert!((&w * 2.0).requires_grad());
/// ```
#[must_use = "gradients are off only while the guard lives"]
pub fn no_grad() -> NoGradGuard {
    NoGradGuard { prev: GRAD_ENABLED.with(|g| g.replace(false)) }
}

/// Runs `f` with gradient recording off.
pub fn with_no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = no_grad();
    f()
}

/// Restores the previous gradient mode when dropped. See [`no_grad`].
pub struct NoGradGuard {
    prev: bool,
}

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        GRAD_ENABLED.with(|g| g.set(self.prev));
    }
}
