//! `DataLoader`: batches with seeded shuffling, `drop_last`, and prefetch on a
//! background thread.

use crate::{Dataset, DistributedSampler, Transform};
use firebrand_autograd::Tensor;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};

/// Fisher–Yates with a seeded generator: the same seed gives the same order.
pub(crate) fn shuffle(v: &mut [usize], seed: u64) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    for i in (1..v.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Iterates a dataset in batches (PyTorch's `DataLoader`).
///
/// Each epoch's order is a seeded shuffle (`seed + epoch`), so a run and its
/// resumption see the same batches. With `prefetch > 0` batches are assembled
/// on a background thread while the caller trains on the previous ones.
///
/// ```
/// use firebrand_data::{DataLoader, TensorDataset};
/// use firebrand_autograd::Tensor;
/// let ds = TensorDataset::new(Tensor::zeros([10, 2]), Tensor::arange_i64(0, 10)).unwrap();
/// let loader = DataLoader::new(ds, 4).shuffle(7).drop_last(true);
/// let batches: Vec<_> = loader.epoch(0).collect();
/// assert_eq!(batches.len(), 2);
/// assert_eq!(batches[0].0.dims(), &[4, 2]);
/// ```
#[derive(Clone)]
pub struct DataLoader {
    dataset: Arc<dyn Dataset>,
    batch_size: usize,
    shuffle_seed: Option<u64>,
    drop_last: bool,
    prefetch: usize,
    transform: Option<Arc<dyn Transform>>,
    sampler: Option<DistributedSampler>,
}

impl DataLoader {
    /// Batches of `batch_size` in order, no prefetch.
    ///
    /// # Panics
    /// When `batch_size` is 0.
    pub fn new(dataset: impl Dataset + 'static, batch_size: usize) -> Self {
        Self::new_shared(Arc::new(dataset), batch_size)
    }

    /// As [`DataLoader::new`], for a data set already shared.
    ///
    /// # Panics
    /// When `batch_size` is 0.
    pub fn new_shared(dataset: Arc<dyn Dataset>, batch_size: usize) -> Self {
        assert!(batch_size > 0, "DataLoader: batch_size must be positive");
        DataLoader {
            dataset,
            batch_size,
            shuffle_seed: None,
            drop_last: false,
            prefetch: 0,
            transform: None,
            sampler: None,
        }
    }

    /// Applies `transform` to every batch's inputs (on the prefetch thread
    /// when there is one). Its random draws are seeded from the shuffle seed
    /// (0 without shuffling), the epoch and the batch's index.
    ///
    /// ```
    /// use firebrand_data::{DataLoader, RandomHorizontalFlip, TensorDataset};
    /// use firebrand_autograd::Tensor;
    /// let x = Tensor::arange(0.0, 8.0, 1.0).reshape([2, 1, 2, 2]);
    /// let ds = TensorDataset::new(x, Tensor::arange_i64(0, 2)).unwrap();
    /// let loader = DataLoader::new(ds, 2).transform(RandomHorizontalFlip::new(1.0));
    /// let (xb, _) = loader.epoch(0).next().unwrap();
    /// assert_eq!(xb.to_vec::<f32>(), vec![1.0, 0.0, 3.0, 2.0, 5.0, 4.0, 7.0, 6.0]);
    /// ```
    pub fn transform(mut self, transform: impl Transform + 'static) -> Self {
        self.transform = Some(Arc::new(transform));
        self
    }

    /// As [`DataLoader::transform`], for a shared transform.
    pub fn transform_shared(mut self, transform: Arc<dyn Transform>) -> Self {
        self.transform = Some(transform);
        self
    }

    /// Shuffles every epoch with `seed + epoch`.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle_seed = Some(seed);
        self
    }

    /// Reads only this process's shard of every epoch (PyTorch's
    /// `DataLoader(sampler=DistributedSampler(...))`): the sampler's length
    /// is set to the data set's, and a shuffle seed given to the loader is
    /// used when the sampler has none.
    ///
    /// ```
    /// use firebrand_data::{DataLoader, DistributedSampler, TensorDataset};
    /// use firebrand_autograd::Tensor;
    /// let ds = TensorDataset::new(Tensor::zeros([10, 2]), Tensor::arange_i64(0, 10)).unwrap();
    /// let rank1 = DataLoader::new(ds, 2).shuffle(0).sampler(DistributedSampler::new(0, 1, 2));
    /// assert_eq!(rank1.num_batches(), 3); // 5 of the 10 examples
    /// ```
    pub fn sampler(mut self, sampler: DistributedSampler) -> Self {
        self.sampler = Some(sampler.with_len(self.dataset.len()));
        self
    }

    /// The distributed sampler, when the loader reads one shard.
    pub fn distributed_sampler(&self) -> Option<&DistributedSampler> {
        self.sampler.as_ref()
    }

    /// Drops a last, smaller batch.
    pub fn drop_last(mut self, on: bool) -> Self {
        self.drop_last = on;
        self
    }

    /// Assembles up to `n` batches ahead on a background thread.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<dyn Dataset> {
        &self.dataset
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Number of batches per epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.sampler.map_or(self.dataset.len(), |s| s.num_samples());
        if self.drop_last { n / self.batch_size } else { n.div_ceil(self.batch_size) }
    }

    /// The example order of `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        if let Some(s) = self.sampler {
            let s = match (s.is_shuffled(), self.shuffle_seed) {
                (false, Some(seed)) => s.seed(seed),
                _ => s,
            };
            return s.indices(epoch);
        }
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if let Some(seed) = self.shuffle_seed {
            shuffle(&mut order, seed.wrapping_add(epoch as u64));
        }
        order
    }

    /// The generator the transform of batch `batch` of `epoch` draws from.
    fn transform_rng(seed: u64, epoch: usize, batch: usize) -> Xoshiro256PlusPlus {
        let mix = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add((epoch as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9))
            .wrapping_add(batch as u64);
        Xoshiro256PlusPlus::seed_from_u64(mix)
    }

    /// The batches of `epoch` as `(inputs, targets)`.
    pub fn epoch(&self, epoch: usize) -> Batches {
        let order = self.order(epoch);
        let bs = self.batch_size;
        let n_batches = self.num_batches();
        let chunks: Vec<Vec<usize>> = order.chunks(bs).take(n_batches).map(|c| c.to_vec()).collect();
        let source = BatchSource {
            dataset: Arc::clone(&self.dataset),
            transform: self.transform.clone(),
            seed: self.shuffle_seed.unwrap_or(0),
            epoch,
        };
        if self.prefetch == 0 {
            return Batches { inner: BatchesInner::Direct { source, chunks, next: 0 } };
        }
        let (tx, rx) = sync_channel(self.prefetch);
        std::thread::spawn(move || {
            for (i, c) in chunks.iter().enumerate() {
                if tx.send(source.batch(i, c)).is_err() {
                    break; // the consumer stopped early
                }
            }
        });
        Batches { inner: BatchesInner::Prefetched(rx) }
    }
}

/// What assembling batch `i` of an epoch needs, on whichever thread does it.
struct BatchSource {
    dataset: Arc<dyn Dataset>,
    transform: Option<Arc<dyn Transform>>,
    seed: u64,
    epoch: usize,
}

impl BatchSource {
    fn batch(&self, i: usize, indices: &[usize]) -> (Tensor, Tensor) {
        let (x, y) = self.dataset.get_batch(indices);
        match &self.transform {
            Some(t) => (t.apply(&x, &mut DataLoader::transform_rng(self.seed, self.epoch, i)), y),
            None => (x, y),
        }
    }
}

enum BatchesInner {
    Direct { source: BatchSource, chunks: Vec<Vec<usize>>, next: usize },
    Prefetched(Receiver<(Tensor, Tensor)>),
}

/// The batches of one epoch (see [`DataLoader::epoch`]).
pub struct Batches {
    inner: BatchesInner,
}

impl Iterator for Batches {
    type Item = (Tensor, Tensor);

    fn next(&mut self) -> Option<(Tensor, Tensor)> {
        match &mut self.inner {
            BatchesInner::Direct { source, chunks, next } => {
                let c = chunks.get(*next)?;
                *next += 1;
                Some(source.batch(*next - 1, c))
            }
            BatchesInner::Prefetched(rx) => rx.recv().ok(),
        }
    }
}
