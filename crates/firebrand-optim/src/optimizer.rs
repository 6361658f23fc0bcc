//! The `Optimizer` trait and the pieces every optimizer shares: named
//! parameters, per-parameter state buffers, and state export/import.

use firebrand_autograd::{DType, Tensor};
use std::collections::BTreeMap;

/// Why optimizer state could not be restored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OptimError {
    /// A state tensor the optimizer needs is absent.
    #[error("optimizer state: missing {0:?}")]
    Missing(String),
    /// A state tensor has the wrong shape or dtype.
    #[error("optimizer state: {name:?} has shape {found:?} ({dtype}), expected {expected:?}")]
    Shape {
        /// State tensor name.
        name: String,
        /// Its shape.
        found: Vec<usize>,
        /// Its dtype.
        dtype: String,
        /// The shape needed.
        expected: Vec<usize>,
    },
}

/// Updates parameters from their gradients.
///
/// Parameters are the tensors a model's `named_parameters()` returns; `step`
/// changes them in place (every view and the model see the update).
pub trait Optimizer {
    /// One update from the current gradients (parameters without a gradient are skipped).
    fn step(&mut self);
    /// Clears every parameter's gradient.
    fn zero_grad(&self);
    /// The learning rate.
    fn lr(&self) -> f32;
    /// Sets the learning rate (schedulers call this).
    fn set_lr(&mut self, lr: f32);
    /// The optimizer's state as named tensors (step count, moment buffers), for checkpoints.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores state written by [`Optimizer::state`]; resuming then continues
    /// exactly as an uninterrupted run would.
    ///
    /// # Errors
    /// When a needed tensor is missing or has the wrong shape.
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), OptimError>;
}

/// Whether the host loops (`Tensor::update_f32`) can change `t` in place: a
/// contiguous `f32` CPU tensor. Any other runs its update in tensor ops.
pub(crate) fn on_host(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// A parameter with its per-parameter state buffers.
pub(crate) struct Slot {
    pub name: String,
    pub param: Tensor,
    /// Weight decay for this parameter (0 to exempt it).
    pub weight_decay: f32,
    /// Named buffers of the parameter's length (created zeroed on first use).
    pub buffers: Vec<(&'static str, Vec<f32>)>,
    /// The same buffers as tensors beside the parameter, for a parameter
    /// updated by tensor ops (on a device, or not `f32`); while non-empty
    /// they, not `buffers`, hold the state.
    pub tensors: Vec<Tensor>,
}

impl Slot {
    pub fn new(name: String, param: Tensor, weight_decay: f32, buffers: &[&'static str]) -> Self {
        let n = param.elem_count();
        let buffers = buffers.iter().map(|&b| (b, vec![0.0; n])).collect();
        Slot { name, param, weight_decay, buffers, tensors: Vec::new() }
    }

    /// Whether the host loop can update the parameter in place.
    fn on_host(&self) -> bool {
        on_host(&self.param)
    }

    /// Brings the state to where the parameter is updated: the host buffers
    /// back from tensors, or tensors made from the host buffers beside the
    /// parameter (its device and dtype). The state follows a parameter that
    /// moved.
    fn place_state(&mut self) {
        let host = self.on_host();
        if host && !self.tensors.is_empty() {
            for ((_, b), t) in self.buffers.iter_mut().zip(std::mem::take(&mut self.tensors)) {
                *b = t.to_dtype(DType::F32).to_vec::<f32>();
            }
        }
        let (dev, dt) = (self.param.device(), self.param.dtype());
        if !host && self.tensors.first().is_none_or(|t| t.device() != dev || t.dtype() != dt) {
            let shape = self.param.shape().clone();
            self.tensors = self
                .host_buffers()
                .into_iter()
                .map(|b| {
                    Tensor::from_vec(b, shape.clone()).to_dtype(dt).to_device(dev).expect("the parameter's device")
                })
                .collect();
        }
    }

    /// The buffers' current values on the host.
    fn host_buffers(&self) -> Vec<Vec<f32>> {
        match self.tensors.is_empty() {
            true => self.buffers.iter().map(|(_, b)| b.clone()).collect(),
            false => self.tensors.iter().map(|t| t.to_dtype(DType::F32).to_vec::<f32>()).collect(),
        }
    }
}

/// Parameters in a fixed order with their state; `step` counts updates.
pub(crate) struct Params {
    pub slots: Vec<Slot>,
    pub step: u64,
}

impl Params {
    pub fn new(
        params: Vec<(String, Tensor)>,
        weight_decay: f32,
        decay_filter: &dyn Fn(&str, &Tensor) -> bool,
        buffers: &[&'static str],
    ) -> Self {
        let slots = params
            .into_iter()
            .map(|(name, p)| {
                let wd = if decay_filter(&name, &p) { weight_decay } else { 0.0 };
                Slot::new(name, p, wd, buffers)
            })
            .collect();
        Params { slots, step: 0 }
    }

    pub fn zero_grad(&self) {
        self.slots.iter().for_each(|s| s.param.zero_grad());
    }

    /// Updates every parameter with a gradient: a contiguous `f32` CPU
    /// parameter in place by `host(param, grad, weight_decay, buffers)`,
    /// any other (on a device, or another dtype) by the same rule written
    /// in tensor ops, `tensor(param, grad, weight_decay, state)`, which
    /// returns the new parameter and updates `state` (run without
    /// recording; the parameter then takes the new values in place).
    pub fn for_each(
        &mut self,
        mut host: impl FnMut(&mut [f32], &[f32], f32, &mut [(&'static str, Vec<f32>)]),
        mut tensor: impl FnMut(&Tensor, &Tensor, f32, &mut [Tensor]) -> Tensor,
    ) {
        for slot in &mut self.slots {
            let Some(g) = slot.param.grad() else { continue };
            slot.place_state();
            let wd = slot.weight_decay;
            if slot.on_host() {
                let bufs = &mut slot.buffers;
                g.with_f32_slice(|g| {
                    slot.param
                        .update_f32("optimizer step", |p| host(p, g, wd, bufs))
                        .expect("parameters are contiguous f32 CPU tensors")
                })
                .expect("gradients are f32");
                continue;
            }
            let p = slot.param.detach();
            let new = firebrand_autograd::with_no_grad(|| {
                let g = g.detach().to_dtype(p.dtype()).to_device(p.device()).expect("the parameter's device");
                tensor(&p, &g, wd, &mut slot.tensors)
            });
            slot.param.set_data_(new).expect("the update has the parameter's shape");
        }
    }

    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("step".to_string(), Tensor::from_vec(vec![self.step as i64], [1]))];
        for s in &self.slots {
            for ((b, _), v) in s.buffers.iter().zip(s.host_buffers()) {
                out.push((format!("{}.{b}", s.name), Tensor::from_vec(v, s.param.shape().clone())));
            }
        }
        out
    }

    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), OptimError> {
        let step = state.get("step").ok_or_else(|| OptimError::Missing("step".into()))?;
        if step.dtype() != DType::I64 || step.elem_count() != 1 {
            return Err(OptimError::Shape {
                name: "step".into(),
                found: step.dims().to_vec(),
                dtype: step.dtype().to_string(),
                expected: vec![1],
            });
        }
        // Check everything before changing anything.
        let mut loaded = Vec::new();
        for s in &self.slots {
            for (b, _) in &s.buffers {
                let name = format!("{}.{b}", s.name);
                let t = state.get(&name).ok_or_else(|| OptimError::Missing(name.clone()))?;
                if t.dims() != s.param.dims() || t.dtype() != DType::F32 {
                    return Err(OptimError::Shape {
                        name,
                        found: t.dims().to_vec(),
                        dtype: t.dtype().to_string(),
                        expected: s.param.dims().to_vec(),
                    });
                }
                loaded.push(t.to_vec::<f32>());
            }
        }
        let mut it = loaded.into_iter();
        for s in &mut self.slots {
            for (_, v) in &mut s.buffers {
                *v = it.next().expect("one per buffer");
            }
            // Made again from the loaded buffers at the next step.
            s.tensors.clear();
        }
        self.step = step.to_vec::<i64>()[0] as u64;
        Ok(())
    }
}

/// Decays every parameter (the default filter).
pub fn decay_all(_: &str, _: &Tensor) -> bool {
    true
}

/// Decays only matrices and higher-rank weights, not biases and norm scales
/// (the usual choice for AdamW in transformers).
pub fn decay_matrices(_: &str, t: &Tensor) -> bool {
    t.rank() >= 2
}

/// The `Optimizer` methods every optimizer here shares (they keep their
/// parameters in a `params: Params` field and the rate in `lr`).
macro_rules! shared_optimizer_methods {
    () => {
        fn zero_grad(&self) {
            self.params.zero_grad()
        }

        fn lr(&self) -> f32 {
            self.lr
        }

        fn set_lr(&mut self, lr: f32) {
            self.lr = lr;
        }

        fn state(&self) -> Vec<(String, firebrand_autograd::Tensor)> {
            self.params.state()
        }

        fn load_state(
            &mut self,
            state: &std::collections::BTreeMap<String, firebrand_autograd::Tensor>,
        ) -> Result<(), crate::OptimError> {
            self.params.load_state(state)
        }
    };
}
pub(crate) use shared_optimizer_methods;
