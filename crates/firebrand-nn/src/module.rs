//! The `Module` trait: a forward pass, a visitor over named parameters, and
//! train/eval mode.

use firebrand_autograd::Tensor;

/// A layer or a model: anything with a forward pass and named parameters.
///
/// Write your own with `#[derive(Module)]` (the derive macro has the same
/// name and path as this trait): it visits the struct's fields — layers,
/// tensors, `Vec`s and `Option`s of them — so names match PyTorch's
/// `state_dict` (`blocks.0.conv.weight`), BatchNorm buffers are saved, and
/// `train()`/`eval()` reach every layer. You write the forward pass:
///
/// ```
/// use firebrand_nn::{BatchNorm2d, Conv2d, GlobalAvgPool, Linear, Module, ModuleExt, Padding};
/// use firebrand_autograd::Tensor;
///
/// #[derive(Module)]
/// struct Block {
///     conv: Conv2d,
///     bn: BatchNorm2d,
/// }
///
/// impl Block {
///     fn forward(&self, x: &Tensor) -> Tensor {
///         self.bn.forward(&self.conv.forward(x)).relu()
///     }
/// }
///
/// #[derive(Module)]
/// struct Net {
///     blocks: Vec<Block>,
///     pool: GlobalAvgPool,
///     head: Linear,
///     #[module(skip)]
///     label: String,
/// }
///
/// impl Net {
///     fn forward(&self, x: &Tensor) -> Tensor {
///         // x: (N, 1, H, W) -> logits (N, 10)
///         let h = self.blocks.iter().fold(x.clone(), |h, b| b.forward(&h));
///         self.head.forward(&self.pool.forward(&h))
///     }
/// }
///
/// let block = |cin, cout| Block { conv: Conv2d::new(cin, cout, 3).padding(Padding::Same), bn: BatchNorm2d::new(cout) };
/// let mut net = Net { blocks: vec![block(1, 8), block(8, 16)], pool: GlobalAvgPool, head: Linear::new(16, 10), label: "demo".into() };
/// let names: Vec<String> = net.state_dict().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names[..2], ["blocks.0.conv.weight", "blocks.0.conv.bias"]);
/// assert!(names.contains(&"blocks.1.bn.running_var".to_string()));
/// net.eval(); // reaches both BatchNorms
/// assert_eq!(net.forward(&Tensor::zeros([2, 1, 12, 12])).dims(), &[2, 10]);
/// println!("{}", net.summary(&[1, 12, 12])); // nested layers, output shapes, counts
/// ```
///
/// By hand, implementors provide [`Module::forward`] and, when they hold
/// parameters, [`Module::visit_parameters`]; containers pass a dotted prefix
/// down. Everything else (listing, counting, zeroing gradients, saving,
/// loading, `summary()`) comes from [`ModuleExt`].
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

    /// Calls `f(name, child)` for every direct sub-module, names prefixed by
    /// `prefix` (`"0"`, `"encoder.layers.1"`); leaves have none. `summary()`
    /// and [`ModuleExt::named_modules`] walk the tree through it.
    fn visit_children<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a dyn Module)) {
        let _ = (prefix, f);
    }

    /// A short description for `summary()`, e.g. `Linear(784 -> 128, relu)`.
    fn describe(&self) -> String;

    /// The concrete type's name (through `dyn Module` too).
    fn type_name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }

    /// Switches this layer's own dynamic int8 form on (quantizing its
    /// weights now) or off; `true` when the layer has one (`Linear`). Walked
    /// by [`quantize_dynamic`](crate::quantize::quantize_dynamic); other
    /// layers keep `f32`.
    fn set_dynamic_int8(&self, on: bool) -> bool {
        let _ = on;
        false
    }

    /// Turns this layer's block-quantized form on (the weights quantized
    /// now into `format`'s blocks of 32) or, with `None`, any quantized form
    /// off; `true` when the layer took it (`Linear`, when its input width is
    /// a multiple of 32). Walked by
    /// [`quantize_blocks`](crate::quantize::quantize_blocks).
    fn set_block_quant(&self, format: Option<firebrand_ops::gemm::blocks::BlockFormat>) -> bool {
        let _ = format;
        false
    }

    /// This layer's quantized form, if one is on (`Linear`); saved by
    /// [`save_quantized`](crate::quantize::save_quantized).
    fn quantized_form(&self) -> Option<crate::QuantizedForm> {
        None
    }

    /// Puts a quantized form on as it is (loaded by
    /// [`load_quantized`](crate::quantize::load_quantized)); `true` when the
    /// layer took it.
    fn set_quantized_form(&self, form: crate::QuantizedForm) -> bool {
        let _ = form;
        false
    }

    /// Static quantization: attaches a fresh observer of this layer's input
    /// (or removes it, with `None`); `true` when the layer can compute in
    /// static int8 (`Linear`, `Conv2d` with one group). Walked by
    /// [`prepare`](crate::quantize::prepare).
    fn set_observer(&self, kind: Option<crate::quantize::ObserverKind>) -> bool {
        let _ = kind;
        false
    }

    /// A copy of this layer's observer, if one is attached.
    fn observer(&self) -> Option<crate::quantize::Observer> {
        None
    }

    /// Puts this layer into static int8 with its input quantized by `input`
    /// (its weight quantized now, per output channel); `true` when it took
    /// it. Walked by [`convert`](crate::quantize::convert).
    fn convert_static(&self, input: firebrand_ops::gemm::int8::InputQuant) -> bool {
        let _ = input;
        false
    }

    /// The elementwise op this layer computes, if it is one (the activation
    /// layers: `ReLU`, `ReLU6`, `SiLU`, …), so that `Sequential` can fuse it
    /// into the layer before it at inference. `None` for everything else.
    fn elementwise_op(&self) -> Option<firebrand_autograd::UnaryOp> {
        None
    }
}

/// A struct field that `#[derive(Module)]` visits: a module (any
/// [`Module`]), a parameter ([`Tensor`]), or a `Vec` or `Option` of them.
/// Plain settings (numbers, `bool`, `String`) are visited as nothing; any
/// other type needs `#[module(skip)]`.
///
/// `path` is the field's full dotted name (`"encoder.layers.0"`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a module, a tensor, or a Vec/Option of them",
    label = "derive(Module) does not know what this field holds",
    note = "mark the field `#[module(skip)]` if it holds no parameters, buffers or layers"
)]
pub trait ModuleField {
    /// Parameters under `path`.
    fn visit_parameters(&self, path: &str, f: &mut dyn FnMut(&str, &Tensor));
    /// Buffers under `path`.
    fn visit_buffers(&self, path: &str, f: &mut dyn FnMut(&str, &Tensor));
    /// Propagates train/eval mode.
    fn set_training(&mut self, training: bool);
    /// The modules held, each under its own path.
    fn visit_children<'a>(&'a self, path: &str, f: &mut dyn FnMut(&str, &'a dyn Module));
}

impl<M: Module> ModuleField for M {
    fn visit_parameters(&self, path: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        Module::visit_parameters(self, &format!("{path}."), f)
    }
    fn visit_buffers(&self, path: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        Module::visit_buffers(self, &format!("{path}."), f)
    }
    fn set_training(&mut self, training: bool) {
        Module::set_training(self, training)
    }
    fn visit_children<'a>(&'a self, path: &str, f: &mut dyn FnMut(&str, &'a dyn Module)) {
        f(path, self)
    }
}

/// A tensor field is a parameter (a buffer under `#[module(buffer)]`).
impl ModuleField for Tensor {
    fn visit_parameters(&self, path: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(path, self)
    }
    fn visit_buffers(&self, _: &str, _: &mut dyn FnMut(&str, &Tensor)) {}
    fn set_training(&mut self, _: bool) {}
    fn visit_children<'a>(&'a self, _: &str, _: &mut dyn FnMut(&str, &'a dyn Module)) {}
}

/// Items are named by their index: `layers.0`, `layers.1`, ...
impl<T: ModuleField> ModuleField for Vec<T> {
    fn visit_parameters(&self, path: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.iter().enumerate().for_each(|(i, t)| t.visit_parameters(&format!("{path}.{i}"), f))
    }
    fn visit_buffers(&self, path: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        self.iter().enumerate().for_each(|(i, t)| t.visit_buffers(&format!("{path}.{i}"), f))
    }
    fn set_training(&mut self, training: bool) {
        self.iter_mut().for_each(|t| t.set_training(training))
    }
    fn visit_children<'a>(&'a self, path: &str, f: &mut dyn FnMut(&str, &'a dyn Module)) {
        self.iter().enumerate().for_each(|(i, t)| t.visit_children(&format!("{path}.{i}"), f))
    }
}

/// `None` holds nothing; `Some(x)` is `x` under the same name.
impl<T: ModuleField> ModuleField for Option<T> {
    fn visit_parameters(&self, path: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        if let Some(t) = self {
            t.visit_parameters(path, f)
        }
    }
    fn visit_buffers(&self, path: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        if let Some(t) = self {
            t.visit_buffers(path, f)
        }
    }
    fn set_training(&mut self, training: bool) {
        if let Some(t) = self {
            t.set_training(training)
        }
    }
    fn visit_children<'a>(&'a self, path: &str, f: &mut dyn FnMut(&str, &'a dyn Module)) {
        if let Some(t) = self {
            t.visit_children(path, f)
        }
    }
}

/// Settings a module keeps beside its layers hold no tensors.
macro_rules! plain_fields {
    ($($t:ty),*) => {$(
        impl ModuleField for $t {
            fn visit_parameters(&self, _: &str, _: &mut dyn FnMut(&str, &Tensor)) {}
            fn visit_buffers(&self, _: &str, _: &mut dyn FnMut(&str, &Tensor)) {}
            fn set_training(&mut self, _: bool) {}
            fn visit_children<'a>(&'a self, _: &str, _: &mut dyn FnMut(&str, &'a dyn Module)) {}
        }
    )*};
}
plain_fields!(bool, u8, u16, u32, u64, usize, i8, i16, i32, i64, isize, f32, f64, String, &'static str);

static RECORDING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    static OUTPUTS: std::cell::RefCell<Vec<(usize, &'static str, Vec<usize>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Notes `module`'s output shape while a `summary()` runs on this thread; a
/// no-op (one atomic load) otherwise. Every layer's `forward` calls it, and
/// `#[derive(Module)]`'s does; a hand-written `Module` may, to show its shape.
pub fn record_output<M: Module + ?Sized>(module: &M, output: &Tensor) {
    if RECORDING.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return;
    }
    let key = (module as *const M).cast::<()>() as usize;
    OUTPUTS.with(|o| o.borrow_mut().push((key, module.type_name(), output.dims().to_vec())));
}

/// True while a `summary()` records output shapes (run-time fusion then
/// steps aside, so every layer reports its own output).
pub(crate) fn recording_active() -> bool {
    RECORDING.load(std::sync::atomic::Ordering::Relaxed) != 0
}

/// Runs `f` with output recording on for this thread and returns what each
/// module produced, keyed by (address, type name).
pub(crate) fn recording_outputs(f: impl FnOnce()) -> Vec<(usize, &'static str, Vec<usize>)> {
    struct Guard;
    impl Drop for Guard {
        fn drop(&mut self) {
            RECORDING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    OUTPUTS.with(|o| o.borrow_mut().clear());
    RECORDING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let guard = Guard;
    f();
    drop(guard);
    OUTPUTS.with(|o| std::mem::take(&mut *o.borrow_mut()))
}

/// Conveniences every [`Module`] gets.
pub trait ModuleExt: Module {
    /// [`Module::forward`], returning a bad input's message as an error
    /// instead of panicking: the layer and its place in the model, the shape
    /// it expects and the one it got (or the op and its shapes). Use it where
    /// a panic must not end the program; [`Model::fit`] does.
    ///
    /// [`Model::fit`]: https://docs.rs/firebrand-train
    ///
    /// ```
    /// use firebrand_nn::{Linear, ModuleExt, Sequential};
    /// use firebrand_autograd::Tensor;
    ///
    /// let net = Sequential::new().add(Linear::new(10, 3));
    /// let e = net.try_forward(&Tensor::zeros([2, 7])).unwrap_err();
    /// assert_eq!(e.to_string(), "Sequential[0] Linear(10 -> 3): expected input (…, 10), got [2, 7]");
    /// assert_eq!(net.try_forward(&Tensor::zeros([2, 10])).unwrap().dims(), &[2, 3]);
    /// ```
    fn try_forward(&self, x: &Tensor) -> Result<Tensor, crate::ForwardError> {
        crate::catch_forward(|| self.forward(x))
    }

    /// Every sub-module, depth first, with its dotted name (PyTorch's
    /// `named_modules()` without the root).
    fn named_modules(&self) -> Vec<(String, &dyn Module)> {
        fn walk<'a>(m: &'a dyn Module, prefix: &str, out: &mut Vec<(String, &'a dyn Module)>) {
            let mut kids = Vec::new();
            m.visit_children(prefix, &mut |name, c| kids.push((name.to_string(), c)));
            for (name, c) in kids {
                out.push((name.clone(), c));
                walk(c, &format!("{name}."), out);
            }
        }
        let mut out = Vec::new();
        let mut kids = Vec::new();
        self.visit_children("", &mut |name, c| kids.push((name.to_string(), c)));
        for (name, c) in kids {
            out.push((name.clone(), c));
            walk(c, &format!("{name}."), &mut out);
        }
        out
    }

    /// A Keras-style table of the module's layers (nested ones indented),
    /// their output shapes for an input of `input_shape` per example (the
    /// batch dim shows as `None`), their parameter counts, and totals. Runs
    /// one forward pass on zeros, without gradients.
    fn summary(&self, input_shape: &[usize]) -> String {
        let mut dims = vec![1];
        dims.extend_from_slice(input_shape);
        self.summary_for(&Tensor::zeros(dims))
    }

    /// [`ModuleExt::summary`] from an example batch `x` (for inputs that are
    /// not `f32`, such as the `i64` ids an `Embedding` takes).
    fn summary_for(&self, x: &Tensor) -> String {
        crate::summary::table(self, x)
    }

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

    /// Moves every parameter and buffer to `device` in place (PyTorch's
    /// `module.to(device)`): the module and every handle on its tensors (an
    /// optimizer built before the move) then compute there. Tied weights
    /// stay tied. Inputs must be moved by the caller.
    ///
    /// ```
    /// use firebrand_nn::{Linear, ModuleExt};
    /// use firebrand_autograd::Device;
    /// let layer = Linear::new(4, 3);
    /// layer.to_device(Device::Cpu).unwrap();
    /// assert!(layer.parameters().iter().all(|p| p.device() == Device::Cpu));
    /// ```
    ///
    /// # Errors
    /// When the device is unavailable or out of memory; tensors moved
    /// before the failure stay moved.
    fn to_device(&self, device: firebrand_autograd::Device) -> firebrand_autograd::Result<()> {
        let mut seen = std::collections::HashSet::new();
        for (_, t) in self.state_dict() {
            if seen.insert(t.id()) && t.device() != device {
                t.set_data_(t.detach().to_device(device)?)?;
            }
        }
        Ok(())
    }

    /// The device of the first parameter (the CPU for a module without any).
    fn device(&self) -> firebrand_autograd::Device {
        self.parameters().first().map(|p| p.device()).unwrap_or_default()
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
    fn visit_children<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a dyn Module)) {
        (**self).visit_children(prefix, f)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn type_name(&self) -> &'static str {
        (**self).type_name()
    }
    fn elementwise_op(&self) -> Option<firebrand_autograd::UnaryOp> {
        (**self).elementwise_op()
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
                let y = self.0.forward(x);
                $crate::module::record_output(self, &y);
                y
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
            fn visit_children<'a>(&'a self, prefix: &str, f: &mut dyn FnMut(&str, &'a dyn Module)) {
                self.0.visit_children(prefix, f)
            }
            fn describe(&self) -> String {
                self.0.describe()
            }
            fn elementwise_op(&self) -> Option<firebrand_autograd::UnaryOp> {
                self.0.elementwise_op()
            }
            fn set_dynamic_int8(&self, on: bool) -> bool {
                self.0.set_dynamic_int8(on)
            }
        }
    };
}
pub(crate) use delegate_module;

/// Runs a layer's forward body and records its output for `summary()`.
#[inline]
pub(crate) fn traced<M: Module + ?Sized>(module: &M, body: impl FnOnce() -> Tensor) -> Tensor {
    let y = body();
    record_output(module, &y);
    y
}

thread_local! {
    static IN_FORWARD: std::cell::Cell<(usize, &'static str)> = const { std::cell::Cell::new((0, "")) };
    /// The containers whose forward passes are running on this thread, outermost first.
    static SCOPE: std::cell::RefCell<Vec<ScopeFrame>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One step of the path to the running layer: a container (by address) and,
/// for a list of layers, the position in it.
#[derive(Clone, Copy)]
struct ScopeFrame {
    owner: usize,
    name: &'static str,
    index: Option<usize>,
}

/// Leaves a scope entered with [`enter_scope`] when dropped (also while a
/// panic unwinds).
pub(crate) struct ScopeGuard(());

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        SCOPE.with(|s| s.borrow_mut().pop());
    }
}

fn address<M: ?Sized>(m: &M) -> usize {
    (m as *const M).cast::<()>() as usize
}

/// Marks `owner`'s forward pass as running `name[index]` (or `name`) until the
/// guard drops, so that a layer's input error can name its place in the model.
pub(crate) fn enter_scope<M: ?Sized>(owner: &M, name: &'static str, index: Option<usize>) -> ScopeGuard {
    SCOPE.with(|s| s.borrow_mut().push(ScopeFrame { owner: address(owner), name, index }));
    ScopeGuard(())
}

/// Where the layer running on this thread sits in the model: the containers
/// around it, outermost first, e.g. `Sequential[0]` or
/// `Net > Sequential[2] > layers[1]`. Empty at the top level.
pub fn module_path() -> String {
    path_excluding(0)
}

fn path_excluding(layer: usize) -> String {
    SCOPE.with(|s| {
        let s = s.borrow();
        // A derived layer's own frame is not part of the path to it.
        let frames = match s.last() {
            Some(f) if f.owner == layer && f.index.is_none() => &s[..s.len() - 1],
            _ => &s[..],
        };
        let piece = |f: &ScopeFrame| match f.index {
            Some(i) => format!("{}[{i}]", f.name),
            None => f.name.to_string(),
        };
        frames.iter().map(piece).collect::<Vec<_>>().join(" > ")
    })
}

/// The message of a layer refusing its input: the layer's place in the
/// model, its description, what it expects and what it got, e.g.
/// `Sequential[0] Linear(10 -> 3): expected input (…, 10), got [2, 7]`.
pub fn layer_input_message<M: Module + ?Sized>(layer: &M, expected: &str, got: &[usize]) -> String {
    let path = path_excluding(address(layer));
    let sep = if path.is_empty() { "" } else { " " };
    format!("{path}{sep}{}: expected input {expected}, got {got:?}", layer.describe())
}

/// Panics with [`layer_input_message`].
#[track_caller]
pub(crate) fn input_error<M: Module + ?Sized>(layer: &M, expected: &str, got: &[usize]) -> ! {
    panic!("{}", layer_input_message(layer, expected, got))
}

/// Marks a derived module's `Module::forward` as running on this thread and
/// catches it calling itself (no inherent `forward` method to call).
#[doc(hidden)]
pub struct ForwardGuard {
    previous: (usize, &'static str),
}

impl ForwardGuard {
    /// Enters `module`'s forward pass.
    ///
    /// # Panics
    /// When that same module's forward pass is already the innermost one running.
    pub fn enter<M: Module + ?Sized>(module: &M, method: &str) -> ForwardGuard {
        let me = ((module as *const M).cast::<()>() as usize, module.type_name());
        let previous = IN_FORWARD.with(|c| c.replace(me));
        if previous == me {
            IN_FORWARD.with(|c| c.set((0, "")));
            panic!(
                "derive(Module) on {}: no inherent method `fn {method}(&self, x: &Tensor) -> Tensor` to run; \
                 write one in `impl {}`, or name another with #[module(forward = name)]",
                me.1, me.1
            );
        }
        // `firebrand_nn::…::TransformerEncoder` names itself `TransformerEncoder`.
        let short = me.1.split('<').next().unwrap_or(me.1).rsplit("::").next().unwrap_or(me.1);
        SCOPE.with(|s| s.borrow_mut().push(ScopeFrame { owner: me.0, name: short, index: None }));
        ForwardGuard { previous }
    }
}

impl Drop for ForwardGuard {
    fn drop(&mut self) {
        SCOPE.with(|s| s.borrow_mut().pop());
        IN_FORWARD.with(|c| c.set(self.previous));
    }
}
