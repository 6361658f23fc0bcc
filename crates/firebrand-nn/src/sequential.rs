//! `Sequential` and its Keras-style `summary()`.

use crate::Module;
use firebrand_autograd::Tensor;

/// Layers applied in order (`nn.Sequential` / `keras.Sequential`). Parameter
/// names are prefixed with the layer's index (`"0.weight"`), as in PyTorch.
///
/// ```
/// use firebrand_nn::{Sequential, Linear, ReLU, Dropout, Module, ModuleExt};
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
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mut y = x.clone();
        for layer in &self.layers {
            y = layer.forward(&y);
        }
        crate::record_output(self, &y);
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

    fn visit_children<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a dyn Module)) {
        for (i, layer) in self.layers.iter().enumerate() {
            f(&format!("{prefix}{i}"), layer.as_ref());
        }
    }

    fn describe(&self) -> String {
        format!("Sequential({} layers)", self.layers.len())
    }
}
