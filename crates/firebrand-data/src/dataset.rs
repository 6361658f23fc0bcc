//! `Dataset` and the in-memory `TensorDataset`.

use firebrand_autograd::{Error, Result, Tensor};

/// Indexed examples: `len` and `get`. [`Dataset::get_batch`] assembles a
/// batch; its default stacks `get` results, and in-memory datasets override
/// it with one gather.
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
        let mut order: Vec<usize> = (0..self.len()).collect();
        crate::loader::shuffle(&mut order, seed);
        let n_val = ((self.len() as f32) * fraction).round() as usize;
        let cut = self.len() - n_val.min(self.len());
        (self.subset(&order[..cut]), self.subset(&order[cut..]))
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
