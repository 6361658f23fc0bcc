//! `DataLoader`: batches with seeded shuffling, `drop_last`, and prefetch on a
//! background thread.

use crate::Dataset;
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
}

impl DataLoader {
    /// Batches of `batch_size` in order, no prefetch.
    ///
    /// # Panics
    /// When `batch_size` is 0.
    pub fn new(dataset: impl Dataset + 'static, batch_size: usize) -> Self {
        assert!(batch_size > 0, "DataLoader: batch_size must be positive");
        DataLoader { dataset: Arc::new(dataset), batch_size, shuffle_seed: None, drop_last: false, prefetch: 0 }
    }

    /// Shuffles every epoch with `seed + epoch`.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle_seed = Some(seed);
        self
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
        let n = self.dataset.len();
        if self.drop_last { n / self.batch_size } else { n.div_ceil(self.batch_size) }
    }

    /// The example order of `epoch`.
    pub fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.dataset.len()).collect();
        if let Some(seed) = self.shuffle_seed {
            shuffle(&mut order, seed.wrapping_add(epoch as u64));
        }
        order
    }

    /// The batches of `epoch` as `(inputs, targets)`.
    pub fn epoch(&self, epoch: usize) -> Batches {
        let order = self.order(epoch);
        let bs = self.batch_size;
        let n_batches = self.num_batches();
        let chunks: Vec<Vec<usize>> = order.chunks(bs).take(n_batches).map(|c| c.to_vec()).collect();
        if self.prefetch == 0 {
            return Batches { inner: BatchesInner::Direct { dataset: Arc::clone(&self.dataset), chunks, next: 0 } };
        }
        let (tx, rx) = sync_channel(self.prefetch);
        let ds = Arc::clone(&self.dataset);
        std::thread::spawn(move || {
            for c in chunks {
                if tx.send(ds.get_batch(&c)).is_err() {
                    break; // the consumer stopped early
                }
            }
        });
        Batches { inner: BatchesInner::Prefetched(rx) }
    }
}

enum BatchesInner {
    Direct { dataset: Arc<dyn Dataset>, chunks: Vec<Vec<usize>>, next: usize },
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
            BatchesInner::Direct { dataset, chunks, next } => {
                let c = chunks.get(*next)?;
                *next += 1;
                Some(dataset.get_batch(c))
            }
            BatchesInner::Prefetched(rx) => rx.recv().ok(),
        }
    }
}
