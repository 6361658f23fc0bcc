//! The reverse-mode engine: topological order over the recorded graph, then
//! each op's backward rule from the output towards the leaves.

use crate::grad_mode::no_grad;
use crate::tensor::{GradFn, Tensor, TensorId};
use firebrand_tensor::{Error, Result};
use std::collections::{HashMap, HashSet};

impl Tensor {
    /// Computes the gradient of this scalar with respect to every leaf that
    /// requires grad and adds it to the leaf's [`Tensor::grad`] (gradients
    /// accumulate across calls until [`Tensor::zero_grad`]).
    ///
    /// # Panics
    /// When the tensor is not a scalar (one element) or does not require grad;
    /// see [`Tensor::try_backward`].
    #[track_caller]
    pub fn backward(&self) {
        self.try_backward().unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Tensor::backward`] returning errors instead of panicking.
    ///
    /// # Errors
    /// When the tensor is not a one-element tensor or does not require grad.
    pub fn try_backward(&self) -> Result<()> {
        if self.elem_count() != 1 {
            return Err(Error::InvalidShape {
                op: "backward",
                shape: self.shape().clone(),
                msg: "implicit gradient needs a one-element output; use backward_with_grad".into(),
            });
        }
        self.try_backward_with_grad(&self.ones_like())
    }

    /// Backpropagates `grad` (of this tensor's shape) through the graph.
    ///
    /// # Panics
    /// See [`Tensor::try_backward_with_grad`].
    #[track_caller]
    pub fn backward_with_grad(&self, grad: &Tensor) {
        self.try_backward_with_grad(grad).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Backpropagates `grad` (of this tensor's shape) through the graph.
    ///
    /// # Errors
    /// When `grad`'s shape differs or this tensor does not require grad.
    pub fn try_backward_with_grad(&self, grad: &Tensor) -> Result<()> {
        if !self.requires_grad() {
            return Err(Error::msg(
                "backward",
                "tensor does not require grad (no input has requires_grad_(true), or it was computed under no_grad)",
            ));
        }
        if grad.shape() != self.shape() {
            return Err(Error::ShapeMismatch { op: "backward", lhs: self.shape().clone(), rhs: grad.shape().clone() });
        }
        let _guard = no_grad();
        let order = topo_order(self);
        // Uses of each tensor still to be back-propagated: with gradient hooks
        // registered, a leaf's gradient is accumulated (and its hooks run) as
        // soon as its last use is done, not at its place in the order, so data
        // parallelism can send the last layers' gradients while backward goes
        // on with the first. Without hooks the count is not kept.
        let mut uses: HashMap<TensorId, usize> = HashMap::new();
        if crate::hooks::any_registered() {
            for g in order.iter().filter_map(|t| t.0.grad_fn.as_ref()) {
                for inp in g.inputs.iter().filter(|i| i.requires_grad()) {
                    *uses.entry(inp.id()).or_default() += 1;
                }
            }
        }
        let mut grads: HashMap<TensorId, Tensor> = HashMap::new();
        grads.insert(self.id(), grad.detach());
        for t in order.iter().rev() {
            let Some(g) = grads.remove(&t.id()) else {
                continue;
            };
            match &t.0.grad_fn {
                None => accumulate_leaf(t, g),
                Some(GradFn { name, inputs, backward, versions, site }) => {
                    check_versions(name, inputs, t, versions)?;
                    let in_grads = backward(t, &g);
                    if site.is_some() {
                        check_gradients(name, &g, &in_grads, site)?;
                    }
                    debug_assert_eq!(
                        in_grads.len(),
                        inputs.len(),
                        "{name}: backward returned a wrong number of gradients"
                    );
                    for (inp, ig) in inputs.iter().zip(in_grads) {
                        let Some(ig) = ig else { continue };
                        if !inp.requires_grad() {
                            continue;
                        }
                        assert_eq!(
                            ig.shape(),
                            inp.shape(),
                            "{name}: backward produced a gradient of shape {:?} for an input of shape {:?}",
                            ig.shape(),
                            inp.shape()
                        );
                        let total = match grads.remove(&inp.id()) {
                            Some(prev) => prev.add(&ig),
                            None => ig,
                        };
                        let left = uses.get_mut(&inp.id()).map(|n| {
                            *n -= 1;
                            *n
                        });
                        if inp.0.grad_fn.is_none() && left == Some(0) {
                            accumulate_leaf(inp, total);
                        } else {
                            grads.insert(inp.id(), total);
                        }
                    }
                }
            }
        }
        crate::hooks::run_end_hooks()
    }
}

/// Anomaly mode: an error naming `name` and its forward call site when its
/// rule turned the gradient `g` into NaN or inf gradients for its inputs.
fn check_gradients(name: &str, g: &Tensor, in_grads: &[Option<Tensor>], site: &crate::anomaly::CallSite) -> Result<()> {
    use crate::anomaly::{describe_site, new_non_finite, non_finite};
    let from = [non_finite(g)];
    for (i, ig) in in_grads.iter().enumerate() {
        let Some(ig) = ig else { continue };
        if let Some(what) = new_non_finite(non_finite(ig), &from) {
            return Err(Error::msg(
                "backward",
                format!(
                    "detect_anomaly: the gradient of `{name}` is {what} for its input {i} of shape {:?}, from an output \
                     gradient without it; forward call site:\n{}",
                    ig.dims(),
                    describe_site(site)
                ),
            ));
        }
    }
    Ok(())
}

/// PyTorch's check that no tensor an op saved was modified in place
/// between its forward and backward passes.
fn check_versions(name: &str, inputs: &[Tensor], out: &Tensor, versions: &[u64]) -> Result<()> {
    for (i, (t, &v)) in inputs.iter().chain([out]).zip(versions).enumerate() {
        if t.version() != v {
            let what = if i == inputs.len() { "output".to_string() } else { format!("input {i}") };
            return Err(Error::msg(
                "backward",
                format!(
                    "a tensor needed for the gradient has been modified by an in-place operation: the {what} of `{name}` \
                     (shape {:?}) is at version {}; expected version {v}",
                    t.dims(),
                    t.version()
                ),
            ));
        }
    }
    Ok(())
}

fn accumulate_leaf(t: &Tensor, g: Tensor) {
    accumulate_into_slot(t, g);
    crate::hooks::run_leaf_hooks(t);
}

fn accumulate_into_slot(t: &Tensor, g: Tensor) {
    let mut slot = t.0.grad.lock().unwrap();
    *slot = Some(match slot.take() {
        Some(prev) => prev.add(&g),
        // Leaf gradients are contiguous buffers of their own (an `add` hands the
        // same gradient to both inputs): optimizers read them as slices and
        // clipping scales them in place.
        None if !g.is_contiguous() => g.contiguous(),
        None if std::sync::Arc::strong_count(&g.0) == 1 && std::sync::Arc::strong_count(&g.0.storage) == 1 => g,
        None => g.affine(1.0, 0.0),
    });
}

/// Tensors that require grad and are reachable from `root`, inputs before outputs.
fn topo_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen: HashSet<TensorId> = HashSet::new();
    // Iterative post-order DFS: (tensor, children pushed?)
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        stack.push((t.clone(), true));
        if let Some(g) = &t.0.grad_fn {
            for inp in &g.inputs {
                if inp.requires_grad() && !seen.contains(&inp.id()) {
                    stack.push((inp.clone(), false));
                }
            }
        }
    }
    order
}
