//! The `Module` trait: a forward pass, a visitor over named parameters, and
//! train/eval mode.

use firebrand_autograd::Tensor;

/// A layer or a model: anything with a forward pass and named parameters.
///
/// Implementors provide [`Module::forward`] and, when they hold parameters,
/// [`Module::visit_parameters`]; containers pass a dotted prefix down so names
/// match PyTorch's `state_dict` (`"0.weight"`, `"encoder.1.bias"`). Everything
/// else (listing, counting, zeroing gradients, saving, loading) comes from
/// [`ModuleExt`].
pub trait Module: Send + Sync {
    /// Applies the module to a batch.
    ///
    /// # Panics
    /// On a shape mismatch, with a message naming the op and the shapes.
    fn forward(&self, x: &Tensor) -> Tensor;

    /// Calls `f(name, parameter)` for every parameter, names prefixed by `prefix`.
    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        let _ = (prefix, f);
    }

    /// Calls `f(name, buffer)` for every buffer: state that is saved with the
    /// weights but not trained (BatchNorm's running statistics).
    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        let _ = (prefix, f);
    }

    /// Switches between training (dropout active, ...) and evaluation mode.
    fn set_training(&mut self, training: bool) {
        let _ = training;
    }

    /// A short description for `summary()`, e.g. `Linear(784 -> 128, relu)`.
    fn describe(&self) -> String;
}

/// Conveniences every [`Module`] gets.
pub trait ModuleExt: Module {
    /// Buffers (non-trained state such as running statistics) with their dotted names.
    fn named_buffers(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit_buffers("", &mut |name, t| out.push((name.to_string(), t.clone())));
        out
    }

    /// Everything saved with the model: parameters, then buffers (PyTorch's
    /// `state_dict`). A tensor shared by several layers (tied weights) is
    /// listed under each of its names, as PyTorch does.
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.visit_parameters("", &mut |name, t| out.push((name.to_string(), t.clone())));
        out.extend(self.named_buffers());
        out
    }

    /// Parameters with their dotted names, in definition order. A tensor
    /// shared by several layers (tied weights) appears once, under its first
    /// name, so optimizers update it once (PyTorch's `named_parameters`).
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        self.visit_parameters("", &mut |name, t| {
            if seen.insert(t.id()) {
                out.push((name.to_string(), t.clone()));
            }
        });
        out
    }

    /// The parameters, in definition order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters().into_iter().map(|(_, t)| t).collect()
    }

    /// Total number of parameter elements (shared tensors counted once).
    fn num_parameters(&self) -> usize {
        self.named_parameters().iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// Number of parameter elements that require grad (are trained).
    fn num_trainable_parameters(&self) -> usize {
        self.named_parameters().iter().filter(|(_, t)| t.requires_grad()).map(|(_, t)| t.elem_count()).sum()
    }

    /// Stops training every parameter (Keras' `trainable = False`): backward
    /// passes leave them without a gradient, so optimizers leave them as they
    /// are (no update, no weight decay). Clears their gradients.
    ///
    /// ```
    /// use firebrand_nn::{Linear, Module, ModuleExt, Sequential};
    /// use firebrand_autograd::Tensor;
    /// let body = Linear::new(4, 3);
    /// body.freeze();
    /// let net = Sequential::new().add(body).add(Linear::new(3, 2));
    /// assert_eq!(net.num_trainable_parameters(), 3 * 2 + 2);
    /// net.forward(&Tensor::ones([1, 4])).sum_all().backward();
    /// assert!(net.parameters()[0].grad().is_none() && net.parameters()[2].grad().is_some());
    /// net.unfreeze();
    /// assert_eq!(net.num_trainable_parameters(), net.num_parameters());
    /// ```
    fn freeze(&self) {
        self.visit_parameters("", &mut |_, t| {
            t.zero_grad();
            let _ = t.clone().requires_grad_(false);
        });
    }

    /// Trains every parameter again (undoes [`ModuleExt::freeze`]).
    fn unfreeze(&self) {
        self.visit_parameters("", &mut |_, t| {
            let _ = t.clone().requires_grad_(true);
        });
    }

    /// Clears every parameter's gradient.
    fn zero_grad(&self) {
        self.visit_parameters("", &mut |_, t| t.zero_grad());
    }

    /// Training mode (PyTorch's `model.train()`).
    fn train(&mut self) {
        self.set_training(true);
    }

    /// Evaluation mode (PyTorch's `model.eval()`).
    fn eval(&mut self) {
        self.set_training(false);
    }
}

impl<M: Module + ?Sized> ModuleExt for M {}

impl<M: Module + ?Sized> Module for Box<M> {
    fn forward(&self, x: &Tensor) -> Tensor {
        (**self).forward(x)
    }
    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        (**self).visit_parameters(prefix, f)
    }
    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        (**self).visit_buffers(prefix, f)
    }
    fn set_training(&mut self, training: bool) {
        (**self).set_training(training)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// For a newtype layer `$name($inner)` (`BatchNorm2d(BatchNorm)`, `LSTM(Recurrent)`):
/// `Deref` to the inner type and a `Module` impl that forwards every method to it.
macro_rules! delegate_module {
    ($name:ident, $inner:ty) => {
        impl std::ops::Deref for $name {
            type Target = $inner;
            fn deref(&self) -> &$inner {
                &self.0
            }
        }

        impl Module for $name {
            fn forward(&self, x: &Tensor) -> Tensor {
                self.0.forward(x)
            }
            fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
                self.0.visit_parameters(prefix, f)
            }
            fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
                self.0.visit_buffers(prefix, f)
            }
            fn set_training(&mut self, training: bool) {
                self.0.set_training(training)
            }
            fn describe(&self) -> String {
                self.0.describe()
            }
        }
    };
}
pub(crate) use delegate_module;
