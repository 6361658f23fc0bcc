//! `Sequential` and its Keras-style `summary()`.

use crate::Module;
use firebrand_autograd::Tensor;
use std::any::Any;

/// A module that can be recovered as its concrete type (what `Sequential`
/// stores, for [`Sequential::get`] and [`Sequential::get_mut`]).
pub trait AnyModule: Module {
    /// As `&dyn Any`, for downcasting.
    fn as_any(&self) -> &dyn Any;
    /// As `&mut dyn Any`, for downcasting.
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// As a plain module.
    fn as_module(&self) -> &dyn Module;
}

// Call these through `&dyn AnyModule` (`(**boxed).as_any()`): a `Box` is a
// module too, and would answer for itself.
impl<M: Module + 'static> AnyModule for M {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn as_module(&self) -> &dyn Module {
        self
    }
}

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
    pub(crate) layers: Vec<Box<dyn AnyModule>>,
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

    /// The layers, in order.
    pub fn layers(&self) -> impl Iterator<Item = &dyn Module> {
        self.layers.iter().map(|l| (**l).as_module())
    }

    /// Layer `i` as its concrete type, or `None` when it is another type or
    /// out of range.
    ///
    /// ```
    /// use firebrand_nn::{BatchNorm2d, Conv2d, Linear, Sequential};
    /// let mut net = Sequential::new().add(Conv2d::new(1, 4, 3)).add(BatchNorm2d::new(4));
    /// assert_eq!(net.get::<BatchNorm2d>(1).unwrap().eps(), 1e-5);
    /// assert!(net.get::<Linear>(0).is_none());
    /// // A loaded model can be changed in place: a new head, a different layer.
    /// net.get_mut::<Conv2d>(0).unwrap().bias = None;
    /// net.set(1, Linear::new(4, 2));
    /// assert!(net.get::<Linear>(1).is_some());
    /// ```
    pub fn get<T: Module + 'static>(&self, i: usize) -> Option<&T> {
        (**self.layers.get(i)?).as_any().downcast_ref()
    }

    /// Layer `i` as its concrete type, mutably (see [`Sequential::get`]).
    pub fn get_mut<T: Module + 'static>(&mut self, i: usize) -> Option<&mut T> {
        (**self.layers.get_mut(i)?).as_any_mut().downcast_mut()
    }

    /// Replaces layer `i` and returns the old one.
    ///
    /// # Panics
    /// When `i` is out of range.
    pub fn set(&mut self, i: usize, layer: impl Module + 'static) -> Box<dyn AnyModule> {
        let n = self.layers.len();
        assert!(i < n, "Sequential::set: index {i} out of range for {n} layers");
        std::mem::replace(&mut self.layers[i], Box::new(layer))
    }

    /// Removes and returns layer `i`.
    ///
    /// # Panics
    /// When `i` is out of range.
    pub fn remove(&mut self, i: usize) -> Box<dyn AnyModule> {
        let n = self.layers.len();
        assert!(i < n, "Sequential::remove: index {i} out of range for {n} layers");
        self.layers.remove(i)
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
        let mut i = 0;
        while i < self.layers.len() {
            // Names this position in a layer's input error: `Sequential[i] Linear(…)`.
            let _scope = crate::module::enter_scope(self, "Sequential", Some(i));
            // Inference: static-int8 convolutions [→ activation] [→ MaxPool2d]
            // [→ Flatten → Linear] as one chain, u8 between the layers.
            if let Some((out, used)) = crate::fuse::static_chain(&self.layers[i..], &y) {
                (y, i) = (out, i + used);
                continue;
            }
            // Inference: Conv2d → BatchNorm2d [→ activation] as one convolution.
            if let Some((out, used)) = crate::fuse::conv_bn_act_eval(&self.layers[i..], &y) {
                (y, i) = (out, i + used);
                continue;
            }
            // Training: BatchNorm → ReLU/ReLU6 with the activation inside the normalization.
            if let Some((out, used)) = crate::fuse::bn_act_train(&self.layers[i..], &y) {
                (y, i) = (out, i + used);
                continue;
            }
            // One-hot ids into a recurrent layer: its input projection as a row gather.
            if let Some((out, used)) = crate::fuse::one_hot_recurrent(&self.layers[i..], &y) {
                (y, i) = (out, i + used);
                continue;
            }
            y = self.layers[i].forward(&y);
            i += 1;
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
            f(&format!("{prefix}{i}"), (**layer).as_module());
        }
    }

    fn describe(&self) -> String {
        format!("Sequential({} layers)", self.layers.len())
    }
}
