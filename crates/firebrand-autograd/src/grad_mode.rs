//! Switching gradient recording on and off (`torch.no_grad()`).

use std::cell::Cell;
use std::thread::LocalKey;

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
    NoGradGuard(FlagGuard::set(&GRAD_ENABLED, false))
}

/// Runs `f` with gradient recording off.
pub fn with_no_grad<R>(f: impl FnOnce() -> R) -> R {
    let _g = no_grad();
    f()
}

/// Restores the previous gradient mode when dropped. See [`no_grad`].
pub struct NoGradGuard(#[allow(dead_code)] FlagGuard);

/// Sets a thread-local flag, and puts its previous value back when dropped
/// (the mode guards: [`no_grad`], [`detect_anomaly`](crate::detect_anomaly)).
pub(crate) struct FlagGuard {
    key: &'static LocalKey<Cell<bool>>,
    prev: bool,
}

impl FlagGuard {
    pub(crate) fn set(key: &'static LocalKey<Cell<bool>>, value: bool) -> FlagGuard {
        FlagGuard { key, prev: key.with(|f| f.replace(value)) }
    }
}

impl Drop for FlagGuard {
    fn drop(&mut self) {
        self.key.with(|f| f.set(self.prev));
    }
}
