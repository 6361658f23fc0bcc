//! `DistributedDataParallel`: a module whose gradients are averaged over the
//! ranks in every backward pass.

use crate::error::Result;
use crate::{DdpOptions, Event, GradReducer, ProcessGroup};
use firebrand_autograd::Tensor;
use firebrand_nn::{Module, ModuleExt};

/// Wraps a module for data-parallel training (PyTorch's
/// `DistributedDataParallel`): construction broadcasts rank 0's parameters
/// and buffers to every rank, and every backward pass through the wrapped
/// module averages the gradients over the ranks, bucket by bucket while
/// backward runs ([`GradReducer`]). Each rank feeds it its own shard of the
/// data ([`DistributedSampler`](firebrand_data::DistributedSampler)); the
/// optimizer steps as usual, the same on every rank.
///
/// Parameter names are the wrapped module's (no `module.` prefix), so a
/// state saved from the wrapper loads into the bare module.
///
/// ```no_run
/// use firebrand_distributed::{DistributedDataParallel, ProcessGroup};
/// use firebrand_nn::{Linear, Module, ModuleExt};
/// use firebrand_optim::{Optimizer, Sgd};
/// use firebrand_autograd::Tensor;
/// let group = ProcessGroup::world().unwrap();
/// let ddp = DistributedDataParallel::new(Linear::new(4, 1), &group).unwrap();
/// let mut opt = Sgd::new(ddp.named_parameters(), 0.1);
/// let (x, y) = (Tensor::randn([8, 4], 0.0, 1.0), Tensor::zeros([8, 1])); // this rank's batch
/// let loss = ddp.forward(&x).sub(&y).square().mean_all();
/// opt.zero_grad();
/// loss.backward(); // gradients are now the mean over the ranks
/// opt.step();
/// ```
pub struct DistributedDataParallel<M: Module> {
    module: M,
    reducer: GradReducer,
    opts: DdpOptions,
    buffers: Vec<Tensor>,
    training: bool,
}

/// Gradient averaging is off while this lives
/// ([`DistributedDataParallel::no_sync`]).
pub struct NoSyncGuard<'a> {
    reducer: &'a GradReducer,
    before: bool,
}

impl Drop for NoSyncGuard<'_> {
    fn drop(&mut self) {
        self.reducer.set_sync(self.before);
    }
}

/// Broadcasts rank 0's parameters and buffers of `module` to every rank.
///
/// # Errors
/// A [`DistributedError`](crate::DistributedError) naming the rank at fault.
pub fn sync_module(group: &ProcessGroup, module: &(impl Module + ?Sized)) -> Result<()> {
    let mut ts: Vec<Tensor> = module.named_parameters().into_iter().map(|(_, t)| t).collect();
    ts.extend(module.named_buffers().into_iter().map(|(_, t)| t));
    group.broadcast_(&ts, 0, "the parameters and buffers")
}

/// Broadcasts rank 0's buffers (BatchNorm's running statistics) of `module`
/// to every rank; nothing when it has none.
///
/// # Errors
/// A [`DistributedError`](crate::DistributedError) naming the rank at fault.
pub fn sync_buffers(group: &ProcessGroup, module: &(impl Module + ?Sized)) -> Result<()> {
    let buffers: Vec<Tensor> = module.named_buffers().into_iter().map(|(_, t)| t).collect();
    broadcast_buffers(group, &buffers)
}

fn broadcast_buffers(group: &ProcessGroup, buffers: &[Tensor]) -> Result<()> {
    if buffers.is_empty() { Ok(()) } else { group.broadcast_(buffers, 0, "the buffers") }
}

impl<M: Module> DistributedDataParallel<M> {
    /// Wraps `module` with the default options (25 MB buckets, f32).
    ///
    /// # Errors
    /// When broadcasting the parameters fails (a rank is named).
    pub fn new(module: M, group: &ProcessGroup) -> Result<Self> {
        Self::with_options(module, group, DdpOptions::default())
    }

    /// Wraps `module` with `opts`.
    ///
    /// # Errors
    /// When broadcasting the parameters fails (a rank is named).
    pub fn with_options(module: M, group: &ProcessGroup, opts: DdpOptions) -> Result<Self> {
        sync_module(group, &module)?;
        let reducer = GradReducer::new(group, module.named_parameters(), &opts)?;
        let buffers = module.named_buffers().into_iter().map(|(_, t)| t).collect();
        Ok(DistributedDataParallel { module, reducer, opts, buffers, training: true })
    }

    /// Gradients accumulate locally while the guard lives (PyTorch's
    /// `no_sync()`): for gradient accumulation, run the first micro-batches'
    /// backward under it and the last without; that backward averages the
    /// accumulated sum.
    pub fn no_sync(&self) -> NoSyncGuard<'_> {
        let before = self.reducer.is_sync();
        self.reducer.set_sync(false);
        NoSyncGuard { reducer: &self.reducer, before }
    }

    /// The wrapped module.
    pub fn module(&self) -> &M {
        &self.module
    }

    /// The wrapped module, mutably.
    pub fn module_mut(&mut self) -> &mut M {
        &mut self.module
    }

    /// The wrapped module (the hooks are removed).
    pub fn into_inner(self) -> M {
        self.module
    }

    /// The reducer (buckets, recorded events).
    pub fn reducer(&self) -> &GradReducer {
        &self.reducer
    }

    /// The events recorded since the last call (with
    /// [`DdpOptions::record_events`]).
    pub fn take_events(&self) -> Vec<Event> {
        self.reducer.take_events()
    }
}

impl<M: Module> Module for DistributedDataParallel<M> {
    /// The module's forward; in training mode rank 0's buffers are
    /// broadcast first ([`DdpOptions::broadcast_buffers`]).
    ///
    /// # Panics
    /// When the broadcast fails (naming the rank), and as the module's.
    fn forward(&self, x: &Tensor) -> Tensor {
        if self.training && self.opts.broadcast_buffers {
            broadcast_buffers(self.reducer.group(), &self.buffers)
                .unwrap_or_else(|e| panic!("DistributedDataParallel: {e}"));
        }
        self.module.forward(x)
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.module.visit_parameters(prefix, f)
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.module.visit_buffers(prefix, f)
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
        self.module.set_training(training)
    }

    fn visit_children<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a dyn Module)) {
        self.module.visit_children(prefix, f)
    }

    fn describe(&self) -> String {
        format!(
            "DistributedDataParallel(rank {} of {}, {} buckets): {}",
            self.reducer.group().rank(),
            self.reducer.group().world_size(),
            self.reducer.buckets().len(),
            self.module.describe()
        )
    }
}
