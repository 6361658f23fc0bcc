//! `DistributedSampler`: each process of a data-parallel run reads its own
//! shard of every epoch (PyTorch's `torch.utils.data.DistributedSampler`).

/// Which examples rank `rank` of `world_size` processes reads in an epoch.
///
/// Every rank draws the same seeded permutation of the whole data set for
/// the epoch (the one a [`DataLoader`](crate::DataLoader) shuffled with the
/// same seed draws), then takes every `world_size`-th example from position
/// `rank`: the shards are disjoint, together cover the epoch, change every
/// epoch, and depend on `(seed, epoch, rank, world_size)` only. Batch `j` of
/// every rank together is batch `j` of one process reading batches
/// `world_size` times larger, which makes `world_size` processes at batch
/// `B` compute the same step as one at `world_size · B`.
///
/// With `pad` (the default, as PyTorch) the permutation is extended by
/// wrapping around to a multiple of `world_size`, so that every rank has
/// the same number of examples and batches (a rank with fewer batches would
/// leave the others waiting in an all-reduce); without it (for evaluation,
/// where every example must count once) the shards differ by at most one.
///
/// ```
/// use firebrand_data::DistributedSampler;
/// let s0 = DistributedSampler::new(10, 0, 4).seed(7);
/// let s1 = DistributedSampler::new(10, 1, 4).seed(7);
/// assert_eq!(s0.indices(0).len(), 3); // 10 padded to 12, 3 each
/// let (a, b) = (s0.indices(0), s1.indices(0));
/// assert!(a.iter().all(|i| !b.contains(i))); // disjoint
/// assert_ne!(s0.indices(0), s0.indices(1)); // a new shuffle every epoch
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DistributedSampler {
    len: usize,
    rank: usize,
    world_size: usize,
    seed: Option<u64>,
    pad: bool,
}

impl DistributedSampler {
    /// The shard of rank `rank` of `world_size` over `len` examples, in order
    /// (call [`DistributedSampler::seed`] to shuffle), padded.
    ///
    /// # Panics
    /// When `world_size` is 0 or `rank >= world_size`.
    pub fn new(len: usize, rank: usize, world_size: usize) -> Self {
        assert!(
            world_size > 0 && rank < world_size,
            "DistributedSampler: rank {rank} is not in a world of {world_size} processes"
        );
        DistributedSampler { len, rank, world_size, seed: None, pad: true }
    }

    /// Shuffles every epoch with `seed + epoch` (the same on every rank).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Pads (repeats examples) so that every rank reads as many (the default).
    pub fn pad(mut self, on: bool) -> Self {
        self.pad = on;
        self
    }

    /// The rank this sampler reads for.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Whether every epoch is shuffled.
    pub fn is_shuffled(&self) -> bool {
        self.seed.is_some()
    }

    /// The same sampler over a data set of `len` examples.
    pub fn with_len(mut self, len: usize) -> Self {
        self.len = len;
        self
    }

    /// The number of examples this rank reads per epoch.
    pub fn num_samples(&self) -> usize {
        if self.pad {
            self.len.div_ceil(self.world_size)
        } else {
            (self.len + self.world_size - 1 - self.rank) / self.world_size
        }
    }

    /// This rank's example indices for `epoch`, in reading order.
    pub fn indices(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len).collect();
        if let Some(seed) = self.seed {
            crate::loader::shuffle(&mut order, seed.wrapping_add(epoch as u64));
        }
        if self.pad && self.len > 0 {
            let total = self.len.div_ceil(self.world_size) * self.world_size;
            let extra: Vec<usize> = order.iter().copied().cycle().take(total - self.len).collect();
            order.extend(extra);
        }
        order.into_iter().skip(self.rank).step_by(self.world_size).collect()
    }
}

/// The number of processes an MPI launcher (`mpirun` of Open MPI or MPICH,
/// or another PMI launcher) started this one among, read from the
/// environment it sets; `None` when no launcher started it.
pub fn launched_world_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok().and_then(|v| v.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn shards_are_disjoint_cover_the_epoch_and_are_reproducible() {
        for (len, world) in [(10, 3), (7, 2), (1, 2), (12, 4), (5, 1)] {
            let shards: Vec<Vec<usize>> =
                (0..world).map(|r| DistributedSampler::new(len, r, world).seed(3).indices(2)).collect();
            let n = shards[0].len();
            assert!(shards.iter().all(|s| s.len() == n), "padded shards are equal: {shards:?}");
            let all: Vec<usize> = shards.concat();
            assert_eq!(all.iter().copied().collect::<HashSet<_>>().len(), len, "covers every example");
            assert_eq!(all.len(), len.div_ceil(world) * world);
            let unpadded: Vec<Vec<usize>> =
                (0..world).map(|r| DistributedSampler::new(len, r, world).seed(3).pad(false).indices(2)).collect();
            let mut flat = unpadded.concat();
            flat.sort();
            assert_eq!(flat, (0..len).collect::<Vec<_>>(), "disjoint and complete without padding");
            for (r, s) in unpadded.iter().enumerate() {
                assert_eq!(s.len(), DistributedSampler::new(len, r, world).pad(false).num_samples());
            }
            assert_eq!(shards[0], DistributedSampler::new(len, 0, world).seed(3).indices(2), "reproducible");
        }
    }

    #[test]
    fn one_rank_reads_what_a_shuffled_loader_reads_and_epochs_reshuffle() {
        let loader = crate::DataLoader::new(crate::digits(), 8).shuffle(5);
        let s = DistributedSampler::new(1797, 0, 1).seed(5);
        assert_eq!(s.indices(3), loader.order(3));
        assert_ne!(s.indices(3), s.indices(4));
    }

    #[test]
    #[should_panic(expected = "rank 2 is not in a world of 2")]
    fn a_rank_outside_the_world_panics() {
        let _ = DistributedSampler::new(4, 2, 2);
    }
}
