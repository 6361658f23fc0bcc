//! MobileNetV2 (Sandler et al. 2018) as torchvision builds it
//! (`torchvision.models.mobilenet_v2`, width 1.0): the same layers, order and
//! `state_dict` names (`features.1.conv.0.0.weight`, `classifier.1.bias`).

use crate::{BatchNorm2d, Conv2d, ConvConfig, Dropout, GlobalAvgPool, Linear, Module, Padding, ReLU6, Sequential};
use firebrand_autograd::Tensor;

/// Convolution (no bias) → BatchNorm → optional ReLU6: torchvision's
/// `Conv2dNormActivation`, named `0`, `1`, `2`.
fn conv_bn(cin: usize, cout: usize, kernel: usize, stride: usize, groups: usize, relu6: bool) -> Sequential {
    let p = (kernel - 1) / 2;
    let config = ConvConfig {
        stride: (stride, stride),
        padding: Padding::Explicit(p, p),
        groups,
        bias: false,
        ..Default::default()
    };
    let block =
        Sequential::new().add(Conv2d::with_config(cin, cout, (kernel, kernel), config)).add(BatchNorm2d::new(cout));
    if relu6 { block.add(ReLU6) } else { block }
}

/// MobileNetV2's inverted residual block: a 1x1 expansion (when
/// `expand_ratio > 1`), a 3x3 depthwise convolution, a linear 1x1
/// projection, and a skip connection when the shape is kept.
#[derive(Module)]
#[module(forward = block, describe = description)]
pub struct InvertedResidual {
    /// The layers, as torchvision's `conv` Sequential.
    pub conv: Sequential,
    #[module(skip)]
    residual: bool,
    #[module(skip)]
    shape: (usize, usize, usize, usize),
}

impl InvertedResidual {
    /// `inp → oup` channels at `stride`, expanding by `expand_ratio` inside.
    pub fn new(inp: usize, oup: usize, stride: usize, expand_ratio: usize) -> Self {
        let hidden = inp * expand_ratio;
        let mut conv = Sequential::new();
        if expand_ratio != 1 {
            conv.push(conv_bn(inp, hidden, 1, 1, 1, true)); // pointwise expansion
        }
        conv.push(conv_bn(hidden, hidden, 3, stride, hidden, true)); // depthwise
        let project = ConvConfig { bias: false, ..Default::default() };
        conv.push(Conv2d::with_config(hidden, oup, (1, 1), project)); // linear projection
        conv.push(BatchNorm2d::new(oup));
        InvertedResidual { conv, residual: stride == 1 && inp == oup, shape: (inp, oup, stride, expand_ratio) }
    }

    fn block(&self, x: &Tensor) -> Tensor {
        // x: (N, inp, H, W) -> (N, oup, H / stride, W / stride)
        let y = self.conv.forward(x);
        if self.residual { x.add(&y) } else { y }
    }

    fn description(&self) -> String {
        let (i, o, s, t) = self.shape;
        format!("InvertedResidual({i} -> {o}, stride {s}, expand {t}{})", if self.residual { ", residual" } else { "" })
    }
}

/// MobileNetV2 for `(N, 3, H, W)` images (224x224 in the paper) to
/// `num_classes` logits: torchvision's `mobilenet_v2(weights=None)`, width
/// 1.0, same parameter names, so its `state_dict` loads by name.
///
/// ```
/// use firebrand_nn::{Module, ModuleExt, models::MobileNetV2};
/// use firebrand_autograd::Tensor;
/// let mut net = MobileNetV2::new(10);
/// assert_eq!(net.num_parameters(), 2_236_682); // torchvision's count for 10 classes
/// net.eval();
/// assert_eq!(net.forward(&Tensor::zeros([1, 3, 64, 64])).dims(), &[1, 10]);
/// ```
#[derive(Module)]
#[module(forward = logits, describe = "MobileNetV2")]
pub struct MobileNetV2 {
    /// The stem, seventeen inverted residual blocks and the last 1x1 convolution.
    pub features: Sequential,
    /// Dropout 0.2 and the linear classifier.
    pub classifier: Sequential,
    pool: GlobalAvgPool,
}

impl MobileNetV2 {
    /// The network with torchvision's block settings and PyTorch's default initialization.
    pub fn new(num_classes: usize) -> Self {
        // (expansion t, channels c, repeats n, first stride s), as in the paper's Table 2.
        const SETTINGS: [(usize, usize, usize, usize); 7] =
            [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];
        let mut features = Sequential::new().add(conv_bn(3, 32, 3, 2, 1, true));
        let mut cin = 32;
        for (t, c, n, s) in SETTINGS {
            for i in 0..n {
                features.push(InvertedResidual::new(cin, c, if i == 0 { s } else { 1 }, t));
                cin = c;
            }
        }
        features.push(conv_bn(cin, 1280, 1, 1, 1, true));
        let classifier = Sequential::new().add(Dropout::new(0.2)).add(Linear::new(1280, num_classes));
        MobileNetV2 { features, classifier, pool: GlobalAvgPool }
    }

    fn logits(&self, x: &Tensor) -> Tensor {
        // x: (N, 3, H, W) -> (N, 1280, H/32, W/32) -> (N, 1280) -> (N, classes)
        let n = x.dims().first().copied().unwrap_or(0);
        if n > 1 && self.is_inference() {
            // Inference runs the features one image at a time: each image's
            // activations (4.8 MB at 112x112x96) stay in the core's caches,
            // where a batch of 16 streams 77 MB through memory per layer
            // (batch 16: 106 -> 112-115 images/s, so images/s no longer fall
            // below batch 1's). The same outputs: nothing in evaluation mixes
            // the images of a batch.
            let pooled: Vec<Tensor> =
                (0..n).map(|i| self.pool.forward(&self.features.forward(&x.narrow(0, i, 1)))).collect();
            return self.classifier.forward(&Tensor::cat(&pooled.iter().collect::<Vec<_>>(), 0));
        }
        self.classifier.forward(&self.pool.forward(&self.features.forward(x)))
    }

    /// Evaluation mode with no graph recorded (the stem's BatchNorm tells the mode).
    fn is_inference(&self) -> bool {
        let stem_bn = self.features.get::<Sequential>(0).and_then(|s| s.get::<BatchNorm2d>(1));
        !firebrand_autograd::is_grad_enabled() && stem_bn.is_some_and(|bn| !bn.is_training())
    }
}
