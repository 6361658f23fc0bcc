//! Errors of the distributed crate.

use std::time::Duration;

/// What went wrong in a collective or at start-up. Every variant names the
/// operation and, where it can be known, the rank at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DistributedError {
    /// MPI did not start, or the ranks could not reach each other.
    #[error("distributed start-up: {0}")]
    Startup(String),
    /// Peers did not arrive at a collective within the timeout: they died,
    /// stalled, or run code that issues different collectives.
    #[error(
        "rank {rank}: {} did not reach {what} (collective #{seq}) within {timeout:?}: {}",
        ranks_list(missing),
        if missing.len() == 1 { "it has died, stalled or is running different code" } else { "they have died, stalled or are running different code" }
    )]
    Timeout {
        /// This process's rank.
        rank: usize,
        /// The ranks that did not arrive.
        missing: Vec<usize>,
        /// The collective, e.g. `all-reduce of gradient bucket 0 (1.2 MB)`.
        what: String,
        /// Its sequence number (the same on every rank).
        seq: u64,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// Every rank arrived but the collective did not complete in time.
    #[error(
        "rank {rank}: {what}{} did not complete within {timeout:?} though every rank reached it",
        seq.map(|s| format!(" (collective #{s})")).unwrap_or_default()
    )]
    Stalled {
        /// This process's rank.
        rank: usize,
        /// The collective.
        what: String,
        /// Its sequence number, when the communication thread reports it
        /// (the waiting thread does not know it).
        seq: Option<u64>,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// The ranks issued different collectives at the same point.
    #[error("rank {rank}: collective #{seq} is {what} here but {theirs} on rank {other}: the ranks diverged")]
    Mismatch {
        /// This process's rank.
        rank: usize,
        /// The other rank.
        other: usize,
        /// The collective here.
        what: String,
        /// What the other rank announced.
        theirs: String,
        /// The sequence number.
        seq: u64,
    },
    /// MPI returned an error code.
    #[error("rank {rank}: MPI error in {what}: {message}")]
    Mpi {
        /// This process's rank.
        rank: usize,
        /// The call.
        what: String,
        /// MPI's error string.
        message: String,
    },
    /// An earlier collective failed; the process group cannot be used.
    #[error("the process group is broken by an earlier error: {0}")]
    Broken(String),
    /// Tensors or options that do not fit (shapes, dtypes).
    #[error("{0}")]
    Invalid(String),
}

fn ranks_list(r: &[usize]) -> String {
    match r {
        [one] => format!("rank {one}"),
        _ => format!("ranks {}", r.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

impl From<DistributedError> for firebrand_autograd::Error {
    fn from(e: DistributedError) -> Self {
        firebrand_autograd::Error::msg("distributed", e.to_string())
    }
}

/// The crate's result type.
pub type Result<T, E = DistributedError> = std::result::Result<T, E>;
