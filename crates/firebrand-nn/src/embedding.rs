//! `Embedding`: a lookup table of vectors (`nn.Embedding`).

use crate::{Init, Module};
use firebrand_autograd::{DType, Tensor};

/// Maps `i64` token ids `(…)` to vectors `(…, dim)` by row lookup in a weight
/// `(num_embeddings, dim)` (PyTorch's layout and `N(0, 1)` initialization).
/// With a padding index, that row starts at zero and gets no gradient.
///
/// ```
/// use firebrand_nn::{Embedding, Module};
/// use firebrand_autograd::Tensor;
/// let emb = Embedding::new(100, 16).padding_idx(0);
/// let ids = Tensor::from_vec(vec![3i64, 0, 7, 7], [2, 2]); // (B, T)
/// let v = emb.forward(&ids); // (B, T, 16)
/// assert_eq!(v.dims(), &[2, 2, 16]);
/// assert!(v.select(0, 0).select(0, 1).to_vec::<f32>().iter().all(|x| *x == 0.0));
/// ```
pub struct Embedding {
    /// Weight, `(num_embeddings, dim)`.
    pub weight: Tensor,
    padding_idx: Option<usize>,
}

impl Embedding {
    /// `num_embeddings` vectors of `dim` values, drawn from `N(0, 1)`.
    pub fn new(num_embeddings: usize, dim: usize) -> Self {
        Embedding::with_init(num_embeddings, dim, Init::Normal(0.0, 1.0))
    }

    /// Vectors drawn from `init` (e.g. BERT's and GPT-2's `N(0, 0.02)`, which
    /// keeps tokens on the scale of learned position embeddings).
    pub fn with_init(num_embeddings: usize, dim: usize, init: Init) -> Self {
        let weight = init.tensor([num_embeddings, dim], dim, num_embeddings).requires_grad_(true);
        Embedding { weight, padding_idx: None }
    }

    /// Marks `idx` as padding: its row is zeroed and never receives gradient.
    ///
    /// # Panics
    /// When `idx` is out of range.
    pub fn padding_idx(mut self, idx: usize) -> Self {
        let (n, dim) = (self.weight.dims()[0], self.weight.dims()[1]);
        assert!(idx < n, "Embedding: padding_idx {idx} out of range for {n} embeddings");
        self.weight.update_f32("Embedding", |w| w[idx * dim..(idx + 1) * dim].fill(0.0)).expect("a CPU f32 weight");
        self.padding_idx = Some(idx);
        self
    }

    /// Number of vectors.
    pub fn num_embeddings(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Vector size.
    pub fn embedding_dim(&self) -> usize {
        self.weight.dims()[1]
    }
}

/// Panics, naming `layer` and its place in the model, unless `ids` are `i64`
/// in `0..n`; an id out of range is named with its flat position.
fn check_ids<M: Module>(layer: &M, ids: &Tensor, n: usize) {
    if ids.dtype() != DType::I64 {
        crate::module::input_error(layer, &format!("i64 ids below {n}, not {:?},", ids.dtype()), ids.dims());
    }
    let flat = ids.reshape([ids.elem_count()]).to_vec::<i64>();
    if let Some((i, v)) = flat.into_iter().enumerate().find(|&(_, v)| v < 0 || v as usize >= n) {
        let msg = crate::module::layer_input_message(layer, &format!("ids in 0..{n}"), ids.dims());
        panic!("{msg}: id {v} at flat position {i} is out of range");
    }
}

impl Module for Embedding {
    fn forward(&self, ids: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            check_ids(self, ids, self.num_embeddings());
            let flat = ids.reshape([ids.elem_count()]);
            let rows = match self.padding_idx {
                // Detach the padding row's contribution: multiply its lookups by 0 in the
                // gradient path by masking the gathered rows.
                Some(p) => {
                    let keep: Vec<f32> =
                        flat.to_vec::<i64>().iter().map(|&i| if i as usize == p { 0.0 } else { 1.0 }).collect();
                    let mask = Tensor::from_vec(keep, [flat.elem_count(), 1])
                        .to_device(ids.device())
                        .expect("the ids' device");
                    self.weight.index_select(0, &flat).mul(&mask)
                }
                None => self.weight.index_select(0, &flat),
            };
            let mut dims = ids.dims().to_vec();
            dims.push(self.embedding_dim());
            rows.reshape(dims)
        })
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}weight"), &self.weight);
    }

    fn describe(&self) -> String {
        format!("Embedding({}, {})", self.num_embeddings(), self.embedding_dim())
    }
}

/// `i64` ids `(…)` to one-hot `f32` vectors `(…, classes)` (PyTorch's
/// `F.one_hot(x, classes).float()` as a layer; Keras' `CategoryEncoding`).
///
/// ```
/// use firebrand_nn::{OneHot, Module};
/// use firebrand_autograd::Tensor;
/// let y = OneHot(4).forward(&Tensor::from_vec(vec![2i64, 0], [2]));
/// assert_eq!(y.to_vec::<f32>(), vec![0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct OneHot(pub usize);

impl Module for OneHot {
    fn forward(&self, ids: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            check_ids(self, ids, self.0);
            ids.one_hot(self.0)
        })
    }

    fn describe(&self) -> String {
        format!("OneHot({})", self.0)
    }
}
