//! The fully connected layer (PyTorch's `nn.Linear`, Keras' `Dense`).

use crate::{Activation, Init, Module};
use firebrand_autograd::Tensor;
use firebrand_ops::gemm::blocks::{BLOCK, BlockFormat, BlockWeight};
use firebrand_ops::gemm::int8::{InputQuant, QuantizedWeight};
use std::sync::{Arc, RwLock};

/// A quantized form of a layer's weight, which inference uses in place of
/// the `f32` weight ([`crate::quantize`]).
#[derive(Debug, Clone)]
pub enum QuantizedForm {
    /// Dynamic int8: the weight per output channel in `i8`, the input
    /// quantized per row to `u8` ([`crate::quantize::quantize_dynamic`]).
    Int8(Arc<QuantizedWeight>),
    /// GGUF's block formats: the weight in blocks of 32 (`Q8_0`, `Q4_0`,
    /// `Q4_1`), the input quantized on the fly per row to `i16`
    /// ([`crate::quantize::quantize_blocks`], or a GGUF file's own blocks).
    Blocks(Arc<BlockWeight>),
    /// Static int8: the weight per output channel in `i8` (a convolution's
    /// depth tap-major, `(Cout, kh·kw·Cin)`), the input quantized with the
    /// calibrated parameters ([`crate::quantize::convert`]).
    Static(Arc<QuantizedWeight>, InputQuant),
}

impl QuantizedForm {
    /// The weight's `(out, depth)`.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            QuantizedForm::Int8(q) | QuantizedForm::Static(q, _) => (q.n, q.k),
            QuantizedForm::Blocks(q) => (q.n, q.k),
        }
    }
}

/// `y = act(x Wᵀ + b)` with `W` of shape `(out, in)` (PyTorch's layout, so
/// weights load from PyTorch state dicts) and `b` of shape `(out,)`.
///
/// ```
/// use firebrand_nn::{Linear, Module, Activation};
/// use firebrand_autograd::Tensor;
/// let layer = Linear::new(4, 3).with_activation(Activation::Relu);
/// let y = layer.forward(&Tensor::ones([2, 4])); // (B, 4) -> (B, 3)
/// assert_eq!(y.dims(), &[2, 3]);
/// assert!(y.to_vec::<f32>().iter().all(|&v| v >= 0.0));
/// ```
pub struct Linear {
    /// Weight, `(out, in)`.
    pub weight: Tensor,
    /// Bias, `(out,)`, if any.
    pub bias: Option<Tensor>,
    activation: Option<Activation>,
    /// The quantized form, used when no gradient is recorded.
    quant: RwLock<Option<QuantizedForm>>,
    /// The pruning mask ([`crate::prune`]).
    pub(crate) mask: crate::prune::PruneMask,
    /// The observer of static quantization's calibration.
    observer: crate::quantize::static_int8::ObserverSlot,
}

impl Linear {
    /// A layer with PyTorch's default initialization
    /// (`U(-1/sqrt(in), 1/sqrt(in))` for weight and bias).
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Linear::with_init(in_features, out_features, Init::TorchDefault, Some(Init::TorchDefault))
    }

    /// A layer with chosen initializers (`bias: None` for no bias).
    pub fn with_init(in_features: usize, out_features: usize, weight: Init, bias: Option<Init>) -> Self {
        let w = weight.tensor([out_features, in_features], in_features, out_features).requires_grad_(true);
        let b = bias.map(|i| i.tensor([out_features], in_features, out_features).requires_grad_(true));
        Linear::from_parts(w, b)
    }

    /// Adds a fused activation (Keras' `Dense(units, activation=...)`).
    pub fn with_activation(mut self, act: Activation) -> Self {
        self.activation = Some(act);
        self
    }

    /// A layer from given tensors: `weight` `(out, in)`, `bias` `(out,)`, no activation.
    ///
    /// # Panics
    /// When the weight is not 2-D or the bias does not match it.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        assert_eq!(weight.rank(), 2, "Linear::from_parts: weight must be (out, in), got {:?}", weight.dims());
        if let Some(b) = &bias {
            assert_eq!(
                b.dims(),
                &weight.dims()[..1],
                "Linear::from_parts: bias {:?} for weight {:?}",
                b.dims(),
                weight.dims()
            );
        }
        Linear {
            weight,
            bias,
            activation: None,
            quant: RwLock::new(None),
            mask: Default::default(),
            observer: Default::default(),
        }
    }

    /// The fused activation, if any.
    pub fn activation(&self) -> Option<Activation> {
        self.activation
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.dims()[1]
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.dims()[0]
    }

    /// The quantized form, if one is on.
    pub fn quantized(&self) -> Option<QuantizedForm> {
        self.quant.read().expect("not poisoned").clone()
    }

    /// Whether the dynamic int8 form is on ([`crate::quantize::quantize_dynamic`]).
    pub fn is_int8(&self) -> bool {
        self.int8_weight().is_some()
    }

    /// The int8 weight, when the dynamic int8 form is on.
    pub fn int8_weight(&self) -> Option<Arc<QuantizedWeight>> {
        match self.quantized()? {
            QuantizedForm::Int8(q) => Some(q),
            _ => None,
        }
    }

    /// The block weight, when a block form is on.
    pub fn block_weight(&self) -> Option<Arc<BlockWeight>> {
        match self.quantized()? {
            QuantizedForm::Blocks(q) => Some(q),
            _ => None,
        }
    }

    /// Puts a block form on (a GGUF file's own blocks, say), or takes any
    /// quantized form off with `None`. The `f32` weight stays as it is.
    ///
    /// # Panics
    /// When the block weight's shape is not the layer's `(out, in)`.
    pub fn set_block_weight(&self, w: Option<Arc<BlockWeight>>) {
        let Some(q) = w else {
            *self.quant.write().expect("not poisoned") = None;
            return;
        };
        let (format, n, k) = (q.format, q.n, q.k);
        assert!(
            Module::set_quantized_form(self, QuantizedForm::Blocks(q)),
            "Linear::set_block_weight: a {format:?} weight ({n}, {k}) for a layer ({}, {})",
            self.out_features(),
            self.in_features()
        );
    }

    /// The weight as quantizing sees it: masked.
    fn weight_for_quantizing(&self) -> Tensor {
        firebrand_autograd::with_no_grad(|| crate::prune::masked_weight(self))
    }

    /// A layer of the outputs `idx` only (rows of the weight and the bias),
    /// with the same activation and no mask (masked weights taken as
    /// masked): structural pruning ([`crate::prune::shrink`]).
    ///
    /// # Panics
    /// When an index is out of range.
    pub fn select_outputs(&self, idx: &[usize]) -> Linear {
        let w = crate::prune::select(&firebrand_autograd::with_no_grad(|| crate::prune::masked_weight(self)), 0, idx);
        let b = self.bias.as_ref().map(|b| crate::prune::select(b, 0, idx));
        Linear { activation: self.activation, ..Linear::from_parts(w.requires_grad_(self.weight.requires_grad()), b) }
    }

    /// A layer of the inputs `idx` only (columns of the weight), with the
    /// same activation and bias and no mask.
    ///
    /// # Panics
    /// When an index is out of range.
    pub fn select_inputs(&self, idx: &[usize]) -> Linear {
        let w = crate::prune::select(&firebrand_autograd::with_no_grad(|| crate::prune::masked_weight(self)), 1, idx);
        let b = self.bias.as_ref().map(|b| crate::prune::select(b, 0, &(0..self.out_features()).collect::<Vec<_>>()));
        Linear { activation: self.activation, ..Linear::from_parts(w.requires_grad_(self.weight.requires_grad()), b) }
    }

    /// The quantized form, when one is on and this call may use it: no
    /// gradient recorded, an `f32` input on the CPU.
    /// This layer's parts as the head of the int8 chain, when its static
    /// form may serve a call on `x`, its input width is `width` and its
    /// activation (if any) is elementwise-fusable.
    pub(crate) fn static_head(&self, x: &Tensor, width: usize) -> Option<crate::quantize::static_int8::StaticHead> {
        let QuantizedForm::Static(weight, input) = self.quantized_for(x)? else {
            return None;
        };
        let act = match self.activation {
            None => None,
            Some(a) => Some(a.as_unary()?),
        };
        (weight.k == width).then(|| crate::quantize::static_int8::StaticHead {
            weight,
            input,
            bias: self.bias.as_ref().map(|b| b.to_vec::<f32>()),
            act,
        })
    }

    fn quantized_for(&self, x: &Tensor) -> Option<QuantizedForm> {
        let q = self.quantized()?;
        let params: Vec<&Tensor> = std::iter::once(&self.weight).chain(&self.bias).collect();
        crate::quantize::may_compute_quantized(x, &params).then_some(q)
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            // x: (…, in)
            let k = self.in_features();
            if x.rank() == 0 || x.size(-1) != k {
                crate::module::input_error(self, &format!("(…, {k})"), x.dims());
            }
            self.observer.observe(x);
            if let Some(q) = self.quantized_for(x) {
                let unary = self.activation.and_then(|a| a.as_unary());
                let y = match q {
                    QuantizedForm::Int8(q) => crate::quantize::linear_int8(x, &q, self.bias.as_ref(), unary),
                    QuantizedForm::Blocks(q) => crate::quantize::linear_blocks(x, &q, self.bias.as_ref(), unary),
                    QuantizedForm::Static(q, iq) => {
                        crate::quantize::linear_static(x, &q, iq, self.bias.as_ref(), unary)
                    }
                };
                return match self.activation {
                    Some(a) if unary.is_none() => a.apply(&y),
                    _ => y,
                };
            }
            // (…, in) → (…, out): the bias, and an elementwise activation when
            // no gradient is recorded, in the product's store.
            let w = crate::prune::masked_weight(self);
            match self.activation.map(|a| (a, a.as_unary())) {
                Some((_, Some(op))) => x.linear(&w, self.bias.as_ref(), Some(op)),
                Some((a, None)) => a.apply(&x.linear(&w, self.bias.as_ref(), None)),
                None => x.linear(&w, self.bias.as_ref(), None),
            }
        })
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&format!("{prefix}bias"), b);
        }
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        if let Some(m) = self.mask.get() {
            f(&format!("{prefix}weight_mask"), &m);
        }
    }

    fn set_dynamic_int8(&self, on: bool) -> bool {
        let q =
            on.then(|| QuantizedForm::Int8(Arc::new(crate::quantize::quantize_per_row(&self.weight_for_quantizing()))));
        *self.quant.write().expect("not poisoned") = q;
        true
    }

    fn quantized_form(&self) -> Option<QuantizedForm> {
        self.quantized()
    }

    fn set_quantized_form(&self, form: QuantizedForm) -> bool {
        if form.shape() != (self.out_features(), self.in_features()) {
            return false;
        }
        *self.quant.write().expect("not poisoned") = Some(form);
        true
    }

    fn set_observer(&self, kind: Option<crate::quantize::ObserverKind>) -> bool {
        self.observer.set(kind);
        true
    }

    fn observer(&self) -> Option<crate::quantize::Observer> {
        self.observer.get()
    }

    fn convert_static(&self, input: InputQuant) -> bool {
        let q = crate::quantize::quantize_per_row(&self.weight_for_quantizing());
        *self.quant.write().expect("not poisoned") = Some(QuantizedForm::Static(Arc::new(q), input));
        true
    }

    fn set_block_quant(&self, format: Option<BlockFormat>) -> bool {
        let (n, k) = (self.out_features(), self.in_features());
        if format.is_some() && !k.is_multiple_of(BLOCK) {
            return false;
        }
        let q = format.map(|f| {
            let w = self.weight_for_quantizing();
            Arc::new(w.with_f32_slice(|v| BlockWeight::quantize(v, n, k, f)).expect("an f32 weight"))
        });
        self.set_block_weight(q);
        true
    }

    fn describe(&self) -> String {
        match self.activation {
            Some(a) => format!("Linear({} -> {}, {})", self.in_features(), self.out_features(), a.name()),
            None => format!("Linear({} -> {})", self.in_features(), self.out_features()),
        }
    }
}
