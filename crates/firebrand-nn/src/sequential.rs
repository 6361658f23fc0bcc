//! `Sequential` and its Keras-style `summary()`.

use crate::{Module, ModuleExt};
use firebrand_autograd::{Tensor, with_no_grad};

/// Layers applied in order (`nn.Sequential` / `keras.Sequential`). Parameter
/// names are prefixed with the layer's index (`"0.weight"`), as in PyTorch.
///
/// ```
/// use firebrand_nn::{Sequential, Linear, ReLU, Dropout, Module};
/// use firebrand_autograd::Tensor;
/// let model = Sequential::new()
///     .add(Linear::new(784, 128))
///     .add(ReLU)
///     .add(Dropout::new(0.2))
///     .add(Linear::new(128, 10));
/// println!("{}", model.summary(&[784]));
/// assert_eq!(model.forward(&Tensor::zeros([32, 784])).dims(), &[32, 10]);
/// ```
#[derive(Default)]
pub struct Sequential {
    layers: Vec<Box<dyn Module>>,
}

impl Sequential {
    /// An empty model.
    pub fn new() -> Self {
        Sequential { layers: Vec::new() }
    }

    /// Appends a layer (builder style).
    #[allow(clippy::should_implement_trait)]
    pub fn add(mut self, layer: impl Module + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// Appends a layer in place.
    pub fn push(&mut self, layer: impl Module + 'static) {
        self.layers.push(Box::new(layer));
    }

    /// The layers.
    pub fn layers(&self) -> &[Box<dyn Module>] {
        &self.layers
    }

    /// Number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// True when there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// A Keras-style table of the layers, their output shapes for an input of
    /// `input_shape` per example (the batch dim shows as `None`), their
    /// parameter counts, and totals. Runs one forward pass on zeros.
    pub fn summary(&self, input_shape: &[usize]) -> String {
        let mut dims = vec![1];
        dims.extend_from_slice(input_shape);
        self.summary_for(&Tensor::zeros(dims))
    }

    /// [`Sequential::summary`] from an example batch `x` (for inputs that are
    /// not `f32`, such as the `i64` ids an `Embedding` or `OneHot` takes).
    ///
    /// ```
    /// use firebrand_nn::{Sequential, Embedding, Flatten};
    /// use firebrand_autograd::Tensor;
    /// let model = Sequential::new().add(Embedding::new(50, 8)).add(Flatten);
    /// let s = model.summary_for(&Tensor::from_vec(vec![0i64; 10], [1, 10]));
    /// assert!(s.contains("(None, 80)"));
    /// ```
    pub fn summary_for(&self, x: &Tensor) -> String {
        let mut rows: Vec<(String, String, usize)> = Vec::new();
        with_no_grad(|| {
            let mut x = x.clone();
            for (i, layer) in self.layers.iter().enumerate() {
                x = layer.forward(&x);
                let shape = std::iter::once("None".to_string())
                    .chain(x.dims()[1..].iter().map(|d| d.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ");
                rows.push((format!("{i}: {}", layer.describe()), format!("({shape})"), layer.num_parameters()));
            }
        });
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max("Layer (type)".len());
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max("Output Shape".len());
        let w2 = rows.iter().map(|r| group(r.2).len()).max().unwrap_or(0).max("Param #".len());
        let width = w0 + w1 + w2 + 6;
        let mut out = String::new();
        out.push_str(&format!("{}\n", "=".repeat(width)));
        out.push_str(&format!("{:<w0$}   {:<w1$}   {:>w2$}\n", "Layer (type)", "Output Shape", "Param #"));
        out.push_str(&format!("{}\n", "=".repeat(width)));
        for (name, shape, n) in &rows {
            out.push_str(&format!("{name:<w0$}   {shape:<w1$}   {:>w2$}\n", group(*n)));
        }
        out.push_str(&format!("{}\n", "=".repeat(width)));
        let total = self.num_parameters();
        let trainable = self.num_trainable_parameters();
        out.push_str(&format!("Total params: {}\n", group(total)));
        out.push_str(&format!("Trainable params: {}\n", group(trainable)));
        out.push_str(&format!("Non-trainable params: {}\n", group(total - trainable)));
        out
    }
}

/// `1234567` as `1,234,567`.
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = x.clone();
        for layer in &self.layers {
            y = layer.forward(&y);
        }
        y
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit_parameters(&format!("{prefix}{i}."), f);
        }
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        for (i, layer) in self.layers.iter().enumerate() {
            layer.visit_buffers(&format!("{prefix}{i}."), f);
        }
    }

    fn set_training(&mut self, training: bool) {
        self.layers.iter_mut().for_each(|l| l.set_training(training));
    }

    fn describe(&self) -> String {
        format!("Sequential({} layers)", self.layers.len())
    }
}
