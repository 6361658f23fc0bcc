//! How `Model::fit` runs across the processes of an MPI job.

use crate::callbacks::FitError;
use firebrand_data::launched_world_size;
use firebrand_nn::Module;

/// Whether [`Model::fit`](crate::Model::fit) trains data-parallel across
/// the processes of an MPI job ([`FitOptions::distributed`](crate::FitOptions::distributed)).
///
/// Distributed, every rank reads its own shard of each epoch
/// ([`DistributedSampler`](firebrand_data::DistributedSampler), padded so
/// that all ranks take as many steps), at `batch_size` per rank (a global
/// batch of `batch_size × world size`); rank 0's initial weights are
/// broadcast; gradients are averaged in buckets overlapped with backward
/// (`firebrand_distributed::GradReducer`; under `accumulate`, only on the
/// last micro-batch); epoch losses, accuracies and the validation figures
/// (each rank evaluates a shard) are reduced over all ranks, so every rank
/// returns the same history; only rank 0 prints and writes the checkpoint,
/// and every rank resumes from it, at any world size.
#[derive(Clone, Default)]
pub enum Distributed {
    /// Distributed when launched by `mpirun` with more than one process
    /// (and built with the `mpi` feature: without it, such a launch is an
    /// error rather than N processes training alone).
    #[default]
    Auto,
    /// One process, whatever launched it.
    Off,
    /// Over this process group.
    #[cfg(feature = "mpi")]
    Group(firebrand_distributed::ProcessGroup),
}

/// The process group of a distributed `fit`, with its gradient reducer.
pub(crate) struct Ctx {
    #[cfg(feature = "mpi")]
    group: firebrand_distributed::ProcessGroup,
    #[cfg(feature = "mpi")]
    reducer: Option<firebrand_distributed::GradReducer>,
}

#[cfg(feature = "mpi")]
fn fail(e: impl std::fmt::Display) -> FitError {
    FitError::Distributed(e.to_string())
}

impl Distributed {
    /// The context to train in, or `None` for one process.
    pub(crate) fn resolve(&self) -> Result<Option<Ctx>, FitError> {
        let launched = launched_world_size().filter(|&n| n > 1);
        match self {
            Distributed::Off => Ok(None),
            #[cfg(feature = "mpi")]
            Distributed::Group(g) => Ok((g.world_size() > 1).then(|| Ctx { group: g.clone(), reducer: None })),
            Distributed::Auto => match launched {
                None => Ok(None),
                #[cfg(feature = "mpi")]
                Some(_) => {
                    let group = firebrand_distributed::ProcessGroup::world().map_err(fail)?;
                    Ok((group.world_size() > 1).then_some(Ctx { group, reducer: None }))
                }
                #[cfg(not(feature = "mpi"))]
                Some(n) => Err(FitError::InvalidOption {
                    option: "distributed",
                    problem: format!(
                        "is Auto and this process is one of {n} started by an MPI launcher, but firebrand was built \
                         without the `mpi` feature: each process would train alone. Build with `--features mpi`, \
                         or set Distributed::Off"
                    ),
                }),
            },
        }
    }
}

#[cfg(feature = "mpi")]
impl Ctx {
    pub(crate) fn rank(&self) -> usize {
        self.group.rank()
    }
    pub(crate) fn world_size(&self) -> usize {
        self.group.world_size()
    }
    /// Broadcasts rank 0's weights and attaches the gradient reducer.
    pub(crate) fn attach(&mut self, net: &(impl Module + ?Sized)) -> Result<(), FitError> {
        use firebrand_nn::ModuleExt;
        firebrand_distributed::sync_module(&self.group, net).map_err(fail)?;
        let opts = firebrand_distributed::DdpOptions::default();
        self.reducer =
            Some(firebrand_distributed::GradReducer::new(&self.group, net.named_parameters(), &opts).map_err(fail)?);
        Ok(())
    }
    /// Averages gradients in the next backward (`false`: accumulate locally).
    pub(crate) fn set_sync(&self, on: bool) {
        if let Some(r) = &self.reducer {
            r.set_sync(on);
        }
    }
    /// Sums `v` over the ranks.
    pub(crate) fn sum(&self, v: &mut [f64]) -> Result<(), FitError> {
        self.group.all_reduce_f64(v).map_err(fail)
    }
    /// Rank 0's buffers (BatchNorm statistics) to every rank.
    pub(crate) fn sync_buffers(&self, net: &(impl Module + ?Sized)) -> Result<(), FitError> {
        firebrand_distributed::sync_buffers(&self.group, net).map_err(fail)
    }
    pub(crate) fn barrier(&self) -> Result<(), FitError> {
        self.group.barrier().map_err(fail)
    }
}

/// Without the `mpi` feature no context is ever made (`resolve` returns
/// `None` or an error); these are never called.
#[cfg(not(feature = "mpi"))]
impl Ctx {
    pub(crate) fn rank(&self) -> usize {
        0
    }
    pub(crate) fn world_size(&self) -> usize {
        1
    }
    pub(crate) fn attach(&mut self, _: &(impl Module + ?Sized)) -> Result<(), FitError> {
        Ok(())
    }
    pub(crate) fn set_sync(&self, _: bool) {}
    pub(crate) fn sum(&self, _: &mut [f64]) -> Result<(), FitError> {
        Ok(())
    }
    pub(crate) fn sync_buffers(&self, _: &(impl Module + ?Sized)) -> Result<(), FitError> {
        Ok(())
    }
    pub(crate) fn barrier(&self) -> Result<(), FitError> {
        Ok(())
    }
}
