//! Gradient hooks: code that runs inside [`Tensor::backward`] as each leaf's
//! gradient is accumulated ([`Tensor::register_post_accumulate_grad_hook`],
//! PyTorch's hook of the same name) and once at the end of every backward
//! pass ([`register_backward_end_hook`], PyTorch's engine callback). Data
//! parallelism is built on them: a gradient bucket is sent as soon as its
//! last leaf is ready, and the end hook waits for every bucket.
//!
//! With no hook registered the engine pays one atomic load per leaf.

use crate::tensor::{Tensor, TensorId};
use firebrand_tensor::{Error, Result};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

type LeafHook = Arc<dyn Fn(&Tensor) + Send + Sync>;
type EndHook = Arc<dyn Fn() -> Result<()> + Send + Sync>;

static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);
/// Registered hooks of both kinds (the engine's fast path when 0).
static COUNT: AtomicUsize = AtomicUsize::new(0);
/// Each leaf's hooks, with their handles' ids.
type LeafMap = HashMap<TensorId, Vec<(u64, LeafHook)>>;
static LEAF_HOOKS: RwLock<Option<LeafMap>> = RwLock::new(None);
static END_HOOKS: RwLock<Vec<(u64, EndHook)>> = RwLock::new(Vec::new());

/// Keeps a hook registered; dropping it removes the hook.
#[must_use = "the hook is removed when its handle is dropped"]
pub struct HookHandle {
    id: u64,
    leaf: Option<TensorId>,
}

impl HookHandle {
    fn new(leaf: Option<TensorId>) -> HookHandle {
        COUNT.fetch_add(1, Ordering::SeqCst);
        HookHandle { id: NEXT_HANDLE.fetch_add(1, Ordering::Relaxed), leaf }
    }

    /// Removes the hook now (as dropping the handle does).
    pub fn remove(self) {}
}

impl Drop for HookHandle {
    fn drop(&mut self) {
        match self.leaf {
            Some(t) => {
                let mut map = LEAF_HOOKS.write().unwrap_or_else(|e| e.into_inner());
                if let Some(hooks) = map.as_mut().and_then(|m| m.get_mut(&t)) {
                    hooks.retain(|(id, _)| *id != self.id);
                    if hooks.is_empty() {
                        map.as_mut().expect("present").remove(&t);
                    }
                }
            }
            None => END_HOOKS.write().unwrap_or_else(|e| e.into_inner()).retain(|(id, _)| *id != self.id),
        }
        COUNT.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Tensor {
    /// Runs `hook(leaf)` every time a backward pass has accumulated this
    /// leaf's gradient into [`Tensor::grad`] (PyTorch's
    /// `register_post_accumulate_grad_hook`). The hook runs on the thread
    /// running backward, with gradient recording off; keep it short.
    ///
    /// ```
    /// use firebrand_autograd::Tensor;
    /// use std::sync::{Arc, Mutex};
    /// let w = Tensor::ones([3]).requires_grad_(true);
    /// let seen = Arc::new(Mutex::new(Vec::new()));
    /// let s = Arc::clone(&seen);
    /// let handle = w.register_post_accumulate_grad_hook(move |t| s.lock().unwrap().push(t.grad().unwrap().to_vec::<f32>()));
    /// w.affine(2.0, 0.0).sum_all().backward();
    /// assert_eq!(*seen.lock().unwrap(), vec![vec![2.0, 2.0, 2.0]]);
    /// drop(handle); // removed: the next backward runs no hook
    /// w.sum_all().backward();
    /// assert_eq!(seen.lock().unwrap().len(), 1);
    /// ```
    ///
    /// # Panics
    /// When this tensor is not a leaf that requires grad; see
    /// [`Tensor::try_register_post_accumulate_grad_hook`].
    #[track_caller]
    pub fn register_post_accumulate_grad_hook(&self, hook: impl Fn(&Tensor) + Send + Sync + 'static) -> HookHandle {
        self.try_register_post_accumulate_grad_hook(hook).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Tensor::register_post_accumulate_grad_hook`], returning an error
    /// instead of panicking.
    ///
    /// # Errors
    /// When this tensor is not a leaf, or does not require grad: its
    /// gradient is never accumulated.
    pub fn try_register_post_accumulate_grad_hook(
        &self,
        hook: impl Fn(&Tensor) + Send + Sync + 'static,
    ) -> Result<HookHandle> {
        if self.0.grad_fn.is_some() || !self.requires_grad() {
            return Err(Error::msg(
                "register_post_accumulate_grad_hook",
                format!(
                    "the tensor of shape {:?} is not a leaf that requires grad; only leaves accumulate gradients",
                    self.dims()
                ),
            ));
        }
        let handle = HookHandle::new(Some(self.id()));
        let mut map = LEAF_HOOKS.write().unwrap_or_else(|e| e.into_inner());
        map.get_or_insert_with(HashMap::new).entry(self.id()).or_default().push((handle.id, Arc::new(hook)));
        Ok(handle)
    }
}

/// Runs `hook()` at the end of every successful backward pass, on any
/// thread, after all leaf gradients are accumulated; an error it returns is
/// the error of [`Tensor::try_backward`] (and the panic of
/// [`Tensor::backward`]).
///
/// ```
/// use firebrand_autograd::{Tensor, register_backward_end_hook};
/// let w = Tensor::ones([2]).requires_grad_(true);
/// let _h = register_backward_end_hook(|| Err(firebrand_autograd::Error::msg("sync", "peer gone")));
/// let err = w.sum_all().try_backward().unwrap_err();
/// assert!(err.to_string().contains("peer gone"));
/// ```
pub fn register_backward_end_hook(hook: impl Fn() -> Result<()> + Send + Sync + 'static) -> HookHandle {
    let handle = HookHandle::new(None);
    END_HOOKS.write().unwrap_or_else(|e| e.into_inner()).push((handle.id, Arc::new(hook)));
    handle
}

/// Whether any hook is registered (the engine then tracks uses to run
/// leaf hooks early).
pub(crate) fn any_registered() -> bool {
    COUNT.load(Ordering::Relaxed) != 0
}

/// The engine's call once `leaf`'s gradient is accumulated.
pub(crate) fn run_leaf_hooks(leaf: &Tensor) {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return;
    }
    // Cloned out of the lock: a hook may register or drop hooks.
    let hooks: Vec<LeafHook> = {
        let map = LEAF_HOOKS.read().unwrap_or_else(|e| e.into_inner());
        match map.as_ref().and_then(|m| m.get(&leaf.id())) {
            Some(h) => h.iter().map(|(_, f)| Arc::clone(f)).collect(),
            None => return,
        }
    };
    for h in hooks {
        h(leaf);
    }
}

/// The engine's call at the end of a backward pass.
pub(crate) fn run_end_hooks() -> Result<()> {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return Ok(());
    }
    let hooks: Vec<EndHook> =
        END_HOOKS.read().unwrap_or_else(|e| e.into_inner()).iter().map(|(_, f)| Arc::clone(f)).collect();
    for h in hooks {
        h()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn leaf_hooks_fire_once_per_backward_in_reverse_order_and_end_hooks_after() {
        let a = Tensor::ones([2, 3]).requires_grad_(true);
        let b = Tensor::ones([3, 1]).requires_grad_(true);
        let log = Arc::new(Mutex::new(Vec::<String>::new()));
        let (l1, l2, l3) = (Arc::clone(&log), Arc::clone(&log), Arc::clone(&log));
        let _ha = a.register_post_accumulate_grad_hook(move |t| l1.lock().unwrap().push(format!("a{:?}", t.dims())));
        let _hb = b.register_post_accumulate_grad_hook(move |_| l2.lock().unwrap().push("b".into()));
        let _he = register_backward_end_hook(move || {
            l3.lock().unwrap().push("end".into());
            Ok(())
        });
        // a used twice: its gradient is still accumulated (and hooked) once.
        let y = a.matmul(&b).sum_all().add(&a.sum_all());
        y.backward();
        // (The end hook is global: other tests' backward passes may log "end" too.)
        let got = log.lock().unwrap().clone();
        let leaves: Vec<&String> = got.iter().filter(|s| *s != "end").collect();
        assert_eq!(leaves, ["b", "a[2, 3]"], "{got:?}");
        let last_leaf = got.iter().rposition(|s| s != "end").unwrap();
        assert!(got[last_leaf..].iter().any(|s| s == "end"), "{got:?}");
        assert_eq!(a.grad().unwrap().to_vec::<f32>(), vec![2.0; 6]);
    }

    #[test]
    fn a_non_leaf_or_frozen_tensor_refuses_a_hook() {
        let x = Tensor::ones([2]).requires_grad_(true);
        let err = x.affine(2.0, 0.0).try_register_post_accumulate_grad_hook(|_| {}).err().unwrap();
        assert!(err.to_string().contains("not a leaf"), "{err}");
        assert!(Tensor::ones([2]).try_register_post_accumulate_grad_hook(|_| {}).is_err());
    }
}
