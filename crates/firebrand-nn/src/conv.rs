//! Convolution layers (`nn.Conv2d`, `nn.Conv1d`; Keras' `Conv2D`, `Conv1D`).

use crate::{Activation, Init, Module, QuantizedForm};
use firebrand_autograd::{ConvOptions, Tensor, UnaryOp};
use firebrand_ops::conv_int8::ConvGeometry;
use firebrand_ops::gemm::int8::InputQuant;
use std::sync::Arc;

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// No padding (Keras' `"valid"`, PyTorch's `padding=0`).
    Valid,
    /// `"same"` padding: the output is `⌈input / stride⌉` along each dim,
    /// the padding split with the odd one at the end (bottom, right). At
    /// stride 1 that is PyTorch's `padding="same"`; at any stride it is
    /// TensorFlow/Keras' `"SAME"`, which is asymmetric for stride 2 on even
    /// sizes. Computed from each input's size.
    Same,
    /// Explicit zero padding on both sides of (height, width).
    Explicit(usize, usize),
    /// Zero padding of each side on its own (PyTorch's `F.pad(x, (left,
    /// right, top, bottom))` before the convolution).
    Asymmetric {
        /// Rows above.
        top: usize,
        /// Rows below.
        bottom: usize,
        /// Columns on the left.
        left: usize,
        /// Columns on the right.
        right: usize,
    },
}

/// Hyper-parameters shared by [`Conv2d`] and [`Conv1d`] (PyTorch's defaults:
/// stride 1, no padding, dilation 1, one group, with bias).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConvConfig {
    /// Stride along (height, width).
    pub stride: (usize, usize),
    /// Padding.
    pub padding: Padding,
    /// Spacing between kernel taps along (height, width).
    pub dilation: (usize, usize),
    /// Channel groups (`groups == in_channels` is a depthwise convolution).
    pub groups: usize,
    /// Learn a bias per output channel.
    pub bias: bool,
    /// Weight initializer (default: PyTorch's, `U(±1/sqrt(fan_in))`).
    pub weight_init: Init,
}

impl Default for ConvConfig {
    fn default() -> Self {
        ConvConfig {
            stride: (1, 1),
            padding: Padding::Valid,
            dilation: (1, 1),
            groups: 1,
            bias: true,
            weight_init: Init::TorchDefault,
        }
    }
}

/// 2-D convolution over `(N, C, H, W)` with a weight `(Cout, C/groups, kh, kw)`
/// (PyTorch's layout, so weights load from PyTorch) and an optional bias
/// `(Cout,)`, optionally followed by a fused activation (Keras style).
///
/// ```
/// use firebrand_nn::{Conv2d, Padding, Activation, Module};
/// use firebrand_autograd::Tensor;
/// let conv = Conv2d::new(1, 32, 3).padding(Padding::Same).with_activation(Activation::Relu);
/// let y = conv.forward(&Tensor::zeros([8, 1, 28, 28])); // (N, 1, 28, 28) -> (N, 32, 28, 28)
/// assert_eq!(y.dims(), &[8, 32, 28, 28]);
/// ```
pub struct Conv2d {
    /// Weight, `(Cout, Cin/groups, kh, kw)`.
    pub weight: Tensor,
    /// Bias, `(Cout,)`, if any.
    pub bias: Option<Tensor>,
    config: ConvConfig,
    activation: Option<Activation>,
    /// The pruning mask ([`crate::prune`]).
    pub(crate) mask: crate::prune::PruneMask,
    /// The static int8 form ([`crate::quantize::convert`]), used when no
    /// gradient is recorded.
    quant: std::sync::RwLock<Option<QuantizedForm>>,
    /// The observer of static quantization's calibration.
    observer: crate::quantize::static_int8::ObserverSlot,
}

impl Conv2d {
    /// A `k x k` convolution from `in_channels` to `out_channels` with PyTorch's
    /// defaults (stride 1, no padding, bias, PyTorch's initialization).
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Conv2d::with_config(in_channels, out_channels, (kernel, kernel), ConvConfig::default())
    }

    /// A convolution with a `(kh, kw)` kernel and every option.
    ///
    /// # Panics
    /// When `groups` does not divide both channel counts or a size is zero.
    pub fn with_config(in_channels: usize, out_channels: usize, kernel: (usize, usize), config: ConvConfig) -> Self {
        let g = config.groups;
        assert!(
            g > 0 && in_channels.is_multiple_of(g) && out_channels.is_multiple_of(g),
            "Conv2d: groups {g} must divide in_channels {in_channels} and out_channels {out_channels}"
        );
        assert!(kernel.0 > 0 && kernel.1 > 0, "Conv2d: kernel {kernel:?} must be positive");
        let fan_in = in_channels / g * kernel.0 * kernel.1;
        let fan_out = out_channels / g * kernel.0 * kernel.1;
        let weight = config
            .weight_init
            .tensor([out_channels, in_channels / g, kernel.0, kernel.1], fan_in, fan_out)
            .requires_grad_(true);
        let bias = config.bias.then(|| Init::TorchDefault.tensor([out_channels], fan_in, fan_out).requires_grad_(true));
        Conv2d::from_parts(weight, bias, config)
    }

    /// Sets the padding (builder style).
    pub fn padding(mut self, padding: Padding) -> Self {
        self.config.padding = padding;
        self
    }

    /// Sets the stride (builder style).
    pub fn stride(mut self, stride: usize) -> Self {
        self.config.stride = (stride, stride);
        self
    }

    /// Adds a fused activation (Keras' `Conv2D(..., activation=...)`).
    pub fn with_activation(mut self, act: Activation) -> Self {
        self.activation = Some(act);
        self
    }

    /// The options.
    pub fn config(&self) -> &ConvConfig {
        &self.config
    }

    /// The fused activation, if any.
    pub fn activation(&self) -> Option<Activation> {
        self.activation
    }

    /// A convolution from given tensors: `weight` `(Cout, Cin/groups, kh,
    /// kw)`, `bias` `(Cout,)` (loaded or folded weights), no activation.
    ///
    /// # Panics
    /// When the weight is not 4-D or the bias does not match its output channels.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>, config: ConvConfig) -> Self {
        assert_eq!(
            weight.rank(),
            4,
            "Conv2d::from_parts: weight must be (Cout, Cin/groups, kh, kw), got {:?}",
            weight.dims()
        );
        if let Some(b) = &bias {
            assert_eq!(
                b.dims(),
                &weight.dims()[..1],
                "Conv2d::from_parts: bias {:?} for weight {:?}",
                b.dims(),
                weight.dims()
            );
        }
        let config = ConvConfig { bias: bias.is_some(), ..config };
        Conv2d {
            weight,
            bias,
            config,
            activation: None,
            mask: Default::default(),
            quant: Default::default(),
            observer: Default::default(),
        }
    }

    /// A convolution of the output channels `idx` only (and their biases),
    /// with the same config and activation and no mask (masked weights
    /// taken as masked): structural pruning ([`crate::prune::shrink`]).
    ///
    /// # Panics
    /// When an index is out of range or the convolution is grouped.
    pub fn select_out_channels(&self, idx: &[usize]) -> Conv2d {
        assert_eq!(self.config.groups, 1, "Conv2d::select_out_channels: a grouped convolution");
        let w = crate::prune::select(&firebrand_autograd::with_no_grad(|| crate::prune::masked_weight(self)), 0, idx);
        let b = self.bias.as_ref().map(|b| crate::prune::select(b, 0, idx));
        let mut c = Conv2d::from_parts(w.requires_grad_(self.weight.requires_grad()), b, self.config);
        c.activation = self.activation;
        c
    }

    /// A convolution of the input channels `idx` only, with the same
    /// outputs, config and activation and no mask.
    ///
    /// # Panics
    /// When an index is out of range or the convolution is grouped.
    pub fn select_in_channels(&self, idx: &[usize]) -> Conv2d {
        assert_eq!(self.config.groups, 1, "Conv2d::select_in_channels: a grouped convolution");
        let w = crate::prune::select(&firebrand_autograd::with_no_grad(|| crate::prune::masked_weight(self)), 1, idx);
        let all: Vec<usize> = (0..self.weight.dims()[0]).collect();
        let b = self.bias.as_ref().map(|b| crate::prune::select(b, 0, &all));
        let mut c = Conv2d::from_parts(w.requires_grad_(self.weight.requires_grad()), b, self.config);
        c.activation = self.activation;
        c
    }

    /// The static int8 form, when one is on and this call may use it.
    fn static_for(&self, x: &Tensor) -> Option<(Arc<firebrand_ops::gemm::int8::QuantizedWeight>, InputQuant)> {
        let Some(QuantizedForm::Static(w, iq)) = self.quant.read().expect("not poisoned").clone() else {
            return None;
        };
        let params: Vec<&Tensor> = std::iter::once(&self.weight).chain(&self.bias).collect();
        crate::quantize::may_compute_quantized(x, &params).then_some((w, iq))
    }

    /// This layer's parts for the int8 chain, when its static form may
    /// serve a call on `x` and its input is `(c, h, w)`: its activation
    /// fused, or else `next`, the elementwise layer after it. `None` when it
    /// cannot join a chain (then it runs alone).
    pub(crate) fn static_stage(
        &self,
        x: &Tensor,
        (c, h, w): (usize, usize, usize),
        next: Option<UnaryOp>,
    ) -> Option<crate::quantize::static_int8::StaticStage> {
        let (weight, input) = self.static_for(x)?;
        let (_, cin, _, _) = self.geometry();
        let (act, fused_next) = match self.activation {
            None => (next, next.is_some()),
            Some(a) => (Some(a.as_unary()?), false),
        };
        (cin == c).then(|| crate::quantize::static_int8::StaticStage {
            weight,
            input,
            geo: self.window((h, w)),
            bias: self.bias.as_ref().map(|b| b.to_vec::<f32>()),
            act,
            fused_next,
        })
    }

    /// The window for an input of `(h, w)`, padding resolved.
    fn window(&self, (h, w): (usize, usize)) -> ConvGeometry {
        let d = self.weight.dims();
        let c = &self.config;
        ConvGeometry {
            kernel: (d[2], d[3]),
            stride: c.stride,
            dilation: c.dilation,
            pad: resolve_padding(c, (d[2], d[3]), (h, w)),
        }
    }

    /// `(out_channels, in_channels, kh, kw)`.
    fn geometry(&self) -> (usize, usize, usize, usize) {
        let d = self.weight.dims();
        (d[0], d[1] * self.config.groups, d[2], d[3])
    }
}

/// `(before, after)` padding of one dim of size `n` for "same": the output
/// is `⌈n / stride⌉` (TensorFlow's rule; PyTorch's at stride 1).
fn same_padding(n: usize, kernel: usize, dilation: usize, stride: usize) -> (usize, usize) {
    let span = dilation * (kernel - 1) + 1;
    let out = n.div_ceil(stride.max(1));
    let total = ((out.max(1) - 1) * stride + span).saturating_sub(n);
    (total / 2, total - total / 2)
}

/// `[top, bottom, left, right]` for an input of `(h, w)`.
fn resolve_padding(c: &ConvConfig, kernel: (usize, usize), (h, w): (usize, usize)) -> [usize; 4] {
    match c.padding {
        Padding::Valid => [0; 4],
        Padding::Explicit(ph, pw) => [ph, ph, pw, pw],
        Padding::Asymmetric { top, bottom, left, right } => [top, bottom, left, right],
        Padding::Same => {
            let (t, b) = same_padding(h, kernel.0, c.dilation.0, c.stride.0);
            let (l, r) = same_padding(w, kernel.1, c.dilation.1, c.stride.1);
            [t, b, l, r]
        }
    }
}

/// Runs a convolution with its `Padding` resolved for this input.
/// Symmetric padding goes to the convolution itself. Uneven padding at stride
/// 1 pads the larger side on both and drops the extra output rows/columns
/// (no copy of the input); at other strides the input is padded first.
fn conv_forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, c: &ConvConfig, act: Option<Activation>) -> Tensor {
    // Elementwise activations are fused into the convolution's output pass.
    let fused = act.and_then(Activation::as_unary);
    let y = conv_forward_op(x, weight, bias, c, fused);
    match act {
        Some(a) if fused.is_none() => a.apply(&y),
        _ => y,
    }
}

/// [`conv_forward_op`] followed by a per-channel scale and shift and an
/// activation, all in the convolution's kernels where it can
/// ([`Tensor::try_conv2d_affine`]): an inference BatchNorm fused in.
pub(crate) fn conv_forward_affine(
    x: &Tensor,
    weight: &Tensor,
    c: &ConvConfig,
    scale: &Tensor,
    shift: &Tensor,
    act: Option<UnaryOp>,
) -> Tensor {
    let (h, w) = match x.dims() {
        &[_, _, h, w] => (h, w),
        d => panic!("Conv2d: expected input (N, C, H, W), got {d:?}"),
    };
    let k = weight.dims();
    let [top, bottom, left, right] = resolve_padding(c, (k[2], k[3]), (h, w));
    if top != bottom || left != right {
        // Uneven padding: the plain convolution, then the affine pass.
        return conv_forward_op(x, weight, None, c, None)
            .try_channel_affine(Some(scale), Some(shift), act)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let opts = ConvOptions { stride: c.stride, padding: (top, left), dilation: c.dilation, groups: c.groups };
    x.try_conv2d_affine(weight, opts, Some(scale), Some(shift), act).unwrap_or_else(|e| panic!("{e}"))
}

/// [`conv_forward`] with an elementwise activation fused into the kernel.
pub(crate) fn conv_forward_op(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    c: &ConvConfig,
    fused: Option<UnaryOp>,
) -> Tensor {
    let k = weight.dims();
    let (kh, kw) = (k[2], k[3]);
    let (h, w) = match x.dims() {
        &[_, _, h, w] => (h, w),
        d => panic!("Conv2d: expected input (N, C, H, W), got {d:?}"),
    };
    let [top, bottom, left, right] = resolve_padding(c, (kh, kw), (h, w));
    let (mut x, mut padding, mut crop) = (x.clone(), (top, left), [0usize; 4]);
    if top != bottom || left != right {
        if c.stride == (1, 1) {
            let (ph, pw) = (top.max(bottom), left.max(right));
            padding = (ph, pw);
            crop = [ph - top, ph - bottom, pw - left, pw - right];
        } else {
            x = x.pad(&[left, right, top, bottom], 0.0);
            padding = (0, 0);
        }
    }
    let opts = ConvOptions { stride: c.stride, padding, dilation: c.dilation, groups: c.groups };
    let mut y = x.try_conv2d_act(weight, bias, opts, fused).unwrap_or_else(|e| panic!("{e}")); // (N, Cout, Ho, Wo)
    if crop != [0; 4] {
        let (ho, wo) = (y.dims()[2] - crop[0] - crop[1], y.dims()[3] - crop[2] - crop[3]);
        y = y.narrow(2, crop[0], ho).narrow(3, crop[2], wo);
    }
    y
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            // x: (N, Cin, H, W)
            let cin = self.geometry().1;
            let &[_, c, h, w] = x.dims() else {
                crate::module::input_error(self, &format!("(N, {cin}, H, W)"), x.dims())
            };
            if c != cin {
                crate::module::input_error(self, &format!("(N, {cin}, H, W)"), x.dims());
            }
            self.observer.observe(x);
            if let Some((q, iq)) = self.static_for(x) {
                let unary = self.activation.and_then(Activation::as_unary);
                let y = crate::quantize::conv2d_static(x, &q, iq, self.bias.as_ref(), &self.window((h, w)), unary);
                return match self.activation {
                    Some(a) if unary.is_none() => a.apply(&y),
                    _ => y,
                };
            }
            let w = crate::prune::masked_weight(self);
            conv_forward(x, &w, self.bias.as_ref(), &self.config, self.activation)
        })
    }

    fn set_dynamic_int8(&self, on: bool) -> bool {
        // No dynamic form; `false` turns the static one off.
        if !on {
            *self.quant.write().expect("not poisoned") = None;
        }
        !on
    }

    fn quantized_form(&self) -> Option<QuantizedForm> {
        self.quant.read().expect("not poisoned").clone()
    }

    fn set_quantized_form(&self, form: QuantizedForm) -> bool {
        let (cout, cin, kh, kw) = self.geometry();
        let fits = matches!(&form, QuantizedForm::Static(..)) && self.config.groups == 1;
        if !fits || form.shape() != (cout, cin * kh * kw) {
            return false;
        }
        *self.quant.write().expect("not poisoned") = Some(form);
        true
    }

    fn set_observer(&self, kind: Option<crate::quantize::ObserverKind>) -> bool {
        if self.config.groups != 1 {
            return false;
        }
        self.observer.set(kind);
        true
    }

    fn observer(&self) -> Option<crate::quantize::Observer> {
        self.observer.get()
    }

    fn convert_static(&self, input: InputQuant) -> bool {
        if self.config.groups != 1 {
            return false;
        }
        let (cout, cin, kh, kw) = self.geometry();
        let w = firebrand_autograd::with_no_grad(|| crate::prune::masked_weight(self));
        let q =
            crate::quantize::with_cpu_f32(&w, |v| firebrand_ops::conv_int8::quantize_conv_weight(v, cout, cin, kh, kw));
        *self.quant.write().expect("not poisoned") = Some(QuantizedForm::Static(Arc::new(q), input));
        true
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

    fn describe(&self) -> String {
        let (cout, cin, kh, kw) = self.geometry();
        describe("Conv2d", cin, cout, &format!("{kh}x{kw}"), &self.config, self.activation)
    }
}

fn describe(name: &str, cin: usize, cout: usize, k: &str, c: &ConvConfig, act: Option<Activation>) -> String {
    let mut s = format!("{name}({cin} -> {cout}, {k}");
    match c.padding {
        Padding::Valid => {}
        Padding::Same => s.push_str(", same"),
        Padding::Explicit(h, w) => s.push_str(&format!(", pad {h}x{w}")),
        Padding::Asymmetric { top, bottom, left, right } => {
            s.push_str(&format!(", pad t{top} b{bottom} l{left} r{right}"))
        }
    }
    if c.stride != (1, 1) {
        s.push_str(&format!(", stride {}x{}", c.stride.0, c.stride.1));
    }
    if c.groups != 1 {
        s.push_str(&format!(", groups {}", c.groups));
    }
    if let Some(a) = act {
        s.push_str(&format!(", {}", a.name()));
    }
    s.push(')');
    s
}

/// A 1-D convolution's padding as the 2-D one over a height of 1.
fn width_only(p: Padding) -> Padding {
    match p {
        Padding::Explicit(_, w) => Padding::Explicit(0, w),
        Padding::Asymmetric { left, right, .. } => Padding::Asymmetric { top: 0, bottom: 0, left, right },
        p => p,
    }
}

/// 1-D convolution over `(N, C, L)` with a weight `(Cout, C/groups, k)`
/// (PyTorch's layout). The width element of each [`ConvConfig`] pair applies
/// (`stride: (1, s)`, `Padding::Explicit(0, p)`); [`Conv1d::new`] and the
/// builders set it for you.
///
/// ```
/// use firebrand_nn::{Conv1d, Padding, Module};
/// use firebrand_autograd::Tensor;
/// let conv = Conv1d::new(4, 8, 5).padding(Padding::Same);
/// assert_eq!(conv.forward(&Tensor::zeros([2, 4, 50])).dims(), &[2, 8, 50]);
/// ```
pub struct Conv1d {
    /// Weight, `(Cout, Cin/groups, k)`.
    pub weight: Tensor,
    /// Bias, `(Cout,)`, if any.
    pub bias: Option<Tensor>,
    config: ConvConfig,
    activation: Option<Activation>,
}

impl Conv1d {
    /// A width-`kernel` convolution with PyTorch's defaults.
    pub fn new(in_channels: usize, out_channels: usize, kernel: usize) -> Self {
        Conv1d::with_config(in_channels, out_channels, kernel, ConvConfig::default())
    }

    /// A convolution with every option (the width element of each pair applies).
    ///
    /// # Panics
    /// As [`Conv2d::with_config`].
    pub fn with_config(in_channels: usize, out_channels: usize, kernel: usize, config: ConvConfig) -> Self {
        let config = ConvConfig {
            stride: (1, config.stride.1),
            dilation: (1, config.dilation.1),
            padding: width_only(config.padding),
            ..config
        };
        let c = Conv2d::with_config(in_channels, out_channels, (1, kernel), config);
        let weight =
            c.weight.detach().reshape([out_channels, in_channels / config.groups, kernel]).requires_grad_(true);
        Conv1d { weight, bias: c.bias, config: c.config, activation: None }
    }

    /// Sets the padding (builder style); `Explicit(_, p)` pads `p` on both
    /// ends, `Asymmetric` uses its `left` and `right`.
    pub fn padding(mut self, padding: Padding) -> Self {
        self.config.padding = width_only(padding);
        self
    }

    /// Sets the stride (builder style).
    pub fn stride(mut self, stride: usize) -> Self {
        self.config.stride = (1, stride);
        self
    }

    /// Adds a fused activation.
    pub fn with_activation(mut self, act: Activation) -> Self {
        self.activation = Some(act);
        self
    }
}

impl Module for Conv1d {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            // x: (N, Cin, L) -> (N, Cin, 1, L); weight (Cout, Cin/g, k) -> (Cout, Cin/g, 1, k)
            let wd = self.weight.dims();
            let cin = wd[1] * self.config.groups;
            let (n, c, l) = match *x.dims() {
                [n, c, l] if c == cin => (n, c, l),
                _ => crate::module::input_error(self, &format!("(N, {cin}, L)"), x.dims()),
            };
            let w4 = self.weight.reshape([wd[0], wd[1], 1, wd[2]]);
            let y = conv_forward(&x.reshape([n, c, 1, l]), &w4, self.bias.as_ref(), &self.config, self.activation);
            let lo = y.dims()[3];
            y.reshape([n, wd[0], lo])
        })
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&format!("{prefix}bias"), b);
        }
    }

    fn describe(&self) -> String {
        let d = self.weight.dims();
        describe("Conv1d", d[1] * self.config.groups, d[0], &d[2].to_string(), &self.config, self.activation)
    }
}
