//! `Dataset` and the in-memory `TensorDataset`.

use firebrand_autograd::{Error, Result, Tensor};
use std::sync::Arc;

/// Indexed examples: `len` and `get`. [`Dataset::get_batch`] assembles a
/// batch; its default stacks `get` results, and in-memory datasets override
/// it with one gather.
///
/// A data set of your own (PyTorch's map-style `Dataset`) needs only `len`
/// and `get`; `DataLoader` and `Model::fit` take it as it is:
///
/// ```
/// use firebrand_data::{DataLoader, Dataset};
/// use firebrand_autograd::Tensor;
///
/// /// `x` in [0, 1), target `2x + 1`, computed on demand.
/// struct Line(usize);
/// impl Dataset for Line {
///     fn len(&self) -> usize { self.0 }
///     fn get(&self, i: usize) -> (Tensor, Tensor) {
///         let x = i as f32 / self.0 as f32;
///         (Tensor::from_vec(vec![x], [1]), Tensor::from_vec(vec![2.0 * x + 1.0], [1]))
///     }
/// }
///
/// let loader = DataLoader::new(Line(10), 4).shuffle(0);
/// let sizes: Vec<usize> = loader.epoch(0).map(|(x, _)| x.dims()[0]).collect();
/// assert_eq!(sizes, [4, 4, 2]);
/// let (x, y) = Line(10).get_batch(&[5, 0]);
/// assert_eq!((x.dims(), y.to_vec::<f32>()), (&[2, 1][..], vec![2.0, 1.0]));
/// ```
pub trait Dataset: Send + Sync {
    /// Number of examples.
    fn len(&self) -> usize;

    /// True when empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Example `i` as `(input, target)`.
    fn get(&self, i: usize) -> (Tensor, Tensor);

    /// The examples at `indices`, stacked along a new first dim.
    fn get_batch(&self, indices: &[usize]) -> (Tensor, Tensor) {
        let (xs, ys): (Vec<Tensor>, Vec<Tensor>) = indices.iter().map(|&i| self.get(i)).unzip();
        let (xr, yr): (Vec<&Tensor>, Vec<&Tensor>) = (xs.iter().collect(), ys.iter().collect());
        (Tensor::stack(&xr, 0), Tensor::stack(&yr, 0))
    }
}

impl<D: Dataset + ?Sized> Dataset for Arc<D> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn get(&self, i: usize) -> (Tensor, Tensor) {
        (**self).get(i)
    }
    fn get_batch(&self, indices: &[usize]) -> (Tensor, Tensor) {
        (**self).get_batch(indices)
    }
}

/// The examples of a data set at chosen indices (PyTorch's `Subset`).
#[derive(Clone)]
pub struct Subset {
    dataset: Arc<dyn Dataset>,
    indices: Vec<usize>,
}

impl Subset {
    /// The examples of `dataset` at `indices`, in that order.
    ///
    /// # Panics
    /// When an index is out of range.
    pub fn new(dataset: Arc<dyn Dataset>, indices: Vec<usize>) -> Subset {
        if let Some(&bad) = indices.iter().find(|&&i| i >= dataset.len()) {
            panic!("Subset: index {bad} out of range for a data set of {} examples", dataset.len());
        }
        Subset { dataset, indices }
    }

    /// The indices into the underlying data set.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl Dataset for Subset {
    fn len(&self) -> usize {
        self.indices.len()
    }
    fn get(&self, i: usize) -> (Tensor, Tensor) {
        self.dataset.get(self.indices[i])
    }
    fn get_batch(&self, indices: &[usize]) -> (Tensor, Tensor) {
        let mapped: Vec<usize> = indices.iter().map(|&i| self.indices[i]).collect();
        self.dataset.get_batch(&mapped)
    }
}

/// Splits off the last `fraction` of the examples after a seeded shuffle:
/// `(train, validation)`, the same examples [`TensorDataset::split`] picks.
///
/// ```
/// use firebrand_data::{Dataset, TensorDataset, random_split};
/// use firebrand_autograd::Tensor;
/// use std::sync::Arc;
/// let ds = TensorDataset::new(Tensor::zeros([10, 2]), Tensor::arange_i64(0, 10)).unwrap();
/// let (train, val) = random_split(Arc::new(ds), 0.3, 0);
/// assert_eq!((train.len(), val.len()), (7, 3));
/// ```
pub fn random_split(dataset: Arc<dyn Dataset>, fraction: f32, seed: u64) -> (Subset, Subset) {
    let (train, val) = split_order(dataset.len(), fraction, seed);
    (Subset::new(Arc::clone(&dataset), train), Subset::new(dataset, val))
}

/// A seeded shuffle of `0..n` cut into `(train, validation)` index lists.
fn split_order(n: usize, fraction: f32, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    crate::loader::shuffle(&mut order, seed);
    let n_val = ((n as f32) * fraction).round() as usize;
    let val = order.split_off(n - n_val.min(n));
    (order, val)
}

/// Inputs and targets held as two tensors whose first dims are the examples
/// (PyTorch's `TensorDataset`).
///
/// ```
/// use firebrand_data::{Dataset, TensorDataset};
/// use firebrand_autograd::Tensor;
/// let ds = TensorDataset::new(Tensor::zeros([10, 3]), Tensor::arange_i64(0, 10)).unwrap();
/// let (x, y) = ds.get_batch(&[2, 7]);
/// assert_eq!(x.dims(), &[2, 3]);
/// assert_eq!(y.to_vec::<i64>(), vec![2, 7]);
/// ```
#[derive(Clone)]
pub struct TensorDataset {
    /// Inputs, `(N, …)`.
    pub x: Tensor,
    /// Targets, `(N, …)`.
    pub y: Tensor,
}

impl TensorDataset {
    /// Pairs inputs and targets.
    ///
    /// # Errors
    /// When their first dims differ or either is 0-dimensional.
    pub fn new(x: Tensor, y: Tensor) -> Result<Self> {
        if x.rank() == 0 || y.rank() == 0 || x.dims()[0] != y.dims()[0] {
            return Err(Error::ShapeMismatch { op: "TensorDataset", lhs: x.shape().clone(), rhs: y.shape().clone() });
        }
        Ok(TensorDataset { x, y })
    }

    /// The examples at `indices` as a new dataset.
    pub fn subset(&self, indices: &[usize]) -> TensorDataset {
        let idx = Tensor::from_vec(indices.iter().map(|&i| i as i64).collect::<Vec<i64>>(), [indices.len()]);
        TensorDataset { x: self.x.index_select(0, &idx), y: self.y.index_select(0, &idx) }
    }

    /// Splits off the last `fraction` of the examples, after a seeded shuffle:
    /// `(train, validation)` (Keras' `validation_split`, but shuffled).
    pub fn split(&self, fraction: f32, seed: u64) -> (TensorDataset, TensorDataset) {
        let (train, val) = split_order(self.len(), fraction, seed);
        (self.subset(&train), self.subset(&val))
    }
}

impl Dataset for TensorDataset {
    fn len(&self) -> usize {
        self.x.dims()[0]
    }

    fn get(&self, i: usize) -> (Tensor, Tensor) {
        (self.x.select(0, i), self.y.select(0, i))
    }

    fn get_batch(&self, indices: &[usize]) -> (Tensor, Tensor) {
        let idx = Tensor::from_vec(indices.iter().map(|&i| i as i64).collect::<Vec<i64>>(), [indices.len()]);
        (self.x.index_select(0, &idx), self.y.index_select(0, &idx))
    }
}

/// Per-feature standardization `(x - mean) / std`, fitted on training data
/// (`sklearn.preprocessing.StandardScaler`; features are the dims after the first).
#[derive(Clone, Debug)]
pub struct Standardize {
    /// Per-feature mean.
    pub mean: Tensor,
    /// Per-feature standard deviation (zero spreads replaced by 1).
    pub std: Tensor,
}

impl Standardize {
    /// Mean and (population) standard deviation of every feature of `x` `(N, …)`.
    pub fn fit(x: &Tensor) -> Standardize {
        let mean = x.mean(&[0], false);
        let std = x.std(&[0], 0, false);
        let std = std.lt(&Tensor::scalar(1e-7)).where_cond(&Tensor::scalar(1.0), &std);
        Standardize { mean, std }
    }

    /// Applies the transform.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        (x - &self.mean) / &self.std
    }
}
