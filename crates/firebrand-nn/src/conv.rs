//! Convolution layers (`nn.Conv2d`, `nn.Conv1d`; Keras' `Conv2D`, `Conv1D`).

use crate::{Activation, Init, Module};
use firebrand_autograd::{ConvOptions, Tensor};

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// No padding (Keras' `"valid"`, PyTorch's `padding=0`).
    Valid,
    /// Output the size of the input (Keras' and PyTorch's `"same"`; stride 1
    /// only, as in PyTorch). An even kernel puts the extra row/column of
    /// padding at the end, as PyTorch does.
    Same,
    /// Explicit zero padding on both sides of (height, width).
    Explicit(usize, usize),
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
    /// When `groups` does not divide both channel counts, a size is zero, or
    /// `Padding::Same` is asked for with a stride other than 1.
    pub fn with_config(in_channels: usize, out_channels: usize, kernel: (usize, usize), config: ConvConfig) -> Self {
        let g = config.groups;
        assert!(
            g > 0 && in_channels.is_multiple_of(g) && out_channels.is_multiple_of(g),
            "Conv2d: groups {g} must divide in_channels {in_channels} and out_channels {out_channels}"
        );
        assert!(kernel.0 > 0 && kernel.1 > 0, "Conv2d: kernel {kernel:?} must be positive");
        assert!(
            config.padding != Padding::Same || config.stride == (1, 1),
            "Conv2d: padding \"same\" needs stride 1, got {:?}",
            config.stride
        );
        let fan_in = in_channels / g * kernel.0 * kernel.1;
        let fan_out = out_channels / g * kernel.0 * kernel.1;
        let weight = config
            .weight_init
            .tensor([out_channels, in_channels / g, kernel.0, kernel.1], fan_in, fan_out)
            .requires_grad_(true);
        let bias = config.bias.then(|| Init::TorchDefault.tensor([out_channels], fan_in, fan_out).requires_grad_(true));
        Conv2d { weight, bias, config, activation: None }
    }

    /// Sets the padding (builder style).
    ///
    /// # Panics
    /// On `Padding::Same` with a stride other than 1.
    pub fn padding(mut self, padding: Padding) -> Self {
        assert!(padding != Padding::Same || self.config.stride == (1, 1), "Conv2d: padding \"same\" needs stride 1");
        self.config.padding = padding;
        self
    }

    /// Sets the stride (builder style).
    ///
    /// # Panics
    /// With `Padding::Same` and a stride other than 1.
    pub fn stride(mut self, stride: usize) -> Self {
        assert!(self.config.padding != Padding::Same || stride == 1, "Conv2d: padding \"same\" needs stride 1");
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
        Conv2d { weight, bias, config, activation: None }
    }

    /// `(out_channels, in_channels, kh, kw)`.
    fn geometry(&self) -> (usize, usize, usize, usize) {
        let d = self.weight.dims();
        (d[0], d[1] * self.config.groups, d[2], d[3])
    }
}

/// The symmetric padding to run with and how many leading output rows/columns
/// to drop afterwards (1 where "same" needs one more at the end than at the
/// start, i.e. an even effective kernel).
fn resolve_padding(
    padding: Padding,
    kernel: (usize, usize),
    dilation: (usize, usize),
) -> ((usize, usize), (usize, usize)) {
    match padding {
        Padding::Valid => ((0, 0), (0, 0)),
        Padding::Explicit(h, w) => ((h, w), (0, 0)),
        Padding::Same => {
            let total = |k: usize, d: usize| d * (k - 1);
            let (th, tw) = (total(kernel.0, dilation.0), total(kernel.1, dilation.1));
            ((th.div_ceil(2), tw.div_ceil(2)), (th % 2, tw % 2))
        }
    }
}

/// Runs a convolution with `Padding` resolved; the crop handles "same" with an
/// even kernel (PyTorch pads `total/2` before and the rest after).
fn conv_forward(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, c: &ConvConfig, act: Option<Activation>) -> Tensor {
    let k = weight.dims();
    let (kh, kw) = (k[2], k[3]);
    let (padding, crop) = resolve_padding(c.padding, (kh, kw), c.dilation);
    let opts = ConvOptions { stride: c.stride, padding, dilation: c.dilation, groups: c.groups };
    // ReLU is fused into the convolution's output pass; other activations follow it.
    let fused = act == Some(Activation::Relu);
    let mut y = if fused {
        x.try_conv2d_relu(weight, bias, opts).unwrap_or_else(|e| panic!("{e}"))
    } else {
        x.conv2d(weight, bias, opts)
    }; // (N, Cout, Ho, Wo)
    if crop != (0, 0) {
        let (h, w) = (y.dims()[2] - crop.0, y.dims()[3] - crop.1);
        y = y.narrow(2, crop.0, h).narrow(3, crop.1, w);
    }
    match act {
        Some(a) if !fused => a.apply(&y),
        _ => y,
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            // x: (N, Cin, H, W)
            conv_forward(x, &self.weight, self.bias.as_ref(), &self.config, self.activation)
        })
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}weight"), &self.weight);
        if let Some(b) = &self.bias {
            f(&format!("{prefix}bias"), b);
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
            padding: match config.padding {
                Padding::Explicit(_, w) => Padding::Explicit(0, w),
                p => p,
            },
            ..config
        };
        let c = Conv2d::with_config(in_channels, out_channels, (1, kernel), config);
        let weight =
            c.weight.detach().reshape([out_channels, in_channels / config.groups, kernel]).requires_grad_(true);
        Conv1d { weight, bias: c.bias, config: c.config, activation: None }
    }

    /// Sets the padding (builder style); `Explicit(_, p)` pads `p` on both ends.
    ///
    /// # Panics
    /// On `Padding::Same` with a stride other than 1.
    pub fn padding(mut self, padding: Padding) -> Self {
        assert!(padding != Padding::Same || self.config.stride == (1, 1), "Conv1d: padding \"same\" needs stride 1");
        self.config.padding = match padding {
            Padding::Explicit(_, w) => Padding::Explicit(0, w),
            p => p,
        };
        self
    }

    /// Sets the stride (builder style).
    ///
    /// # Panics
    /// With `Padding::Same` and a stride other than 1.
    pub fn stride(mut self, stride: usize) -> Self {
        assert!(self.config.padding != Padding::Same || stride == 1, "Conv1d: padding \"same\" needs stride 1");
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
            let (n, c, l) = match x.dims() {
                &[n, c, l] => (n, c, l),
                d => panic!("Conv1d: expected input (N, C, L), got {d:?}"),
            };
            let wd = self.weight.dims();
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
