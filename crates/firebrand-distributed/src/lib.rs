//! # firebrand-distributed
//!
//! Data-parallel training across processes and machines, on MPI (the `mpi`
//! crate on the system's Open MPI or MPICH), behind the facade's `mpi`
//! feature. It hangs off the stack beside the device crates: it uses
//! `firebrand-autograd`'s gradient hooks, `firebrand-nn`'s `Module` and
//! `firebrand-data`'s `DistributedSampler`; `firebrand-train`'s `Model::fit`
//! uses it when launched under `mpirun` (its `mpi` feature).
//!
//! * [`ProcessGroup`]: this rank among the job's, collectives on tensors
//!   (all-reduce, broadcast, barrier), run on a communication thread, each
//!   with a timeout that names a rank that died or stalls.
//! * [`GradReducer`]: gradients averaged in ~25 MB buckets, in reverse
//!   parameter order, each all-reduced as soon as backward has produced it
//!   and overlapped with the rest of backward; optionally sent as bf16.
//! * [`DistributedDataParallel`]: a module wrapper (PyTorch's DDP) that
//!   broadcasts rank 0's parameters, reduces through a `GradReducer`, and
//!   has `no_sync()` for gradient accumulation.
//!
//! Launch: `mpirun -np 2 target/release/examples/fashion_mnist_cnn
//! --distributed`; on several machines `mpirun -np 8 --hostfile hosts …`
//! (see `docs/distributed.md`).

#![warn(missing_docs)]

mod comm;
mod ddp;
mod error;
mod group;
mod reducer;

pub use comm::eprint_line;
pub use ddp::{DistributedDataParallel, NoSyncGuard, sync_buffers, sync_module};
pub use error::{DistributedError, Result};
pub use firebrand_data::{DistributedSampler, launched_world_size};
pub use group::{DEFAULT_TIMEOUT, ProcessGroup, ReduceOp};
pub use reducer::{DdpOptions, Event, GradReducer};
