//! The primitive op set: what each elementwise and reduction op means, as
//! scalar reference functions. Every backend's kernels implement exactly these
//! semantics (`firebrand-ops` on the CPU, the wgpu crate on GPUs) and are
//! tested against them; the autograd layer takes every unary backward rule
//! from [`UnaryOp::derivative`].

/// A unary elementwise op on `f32`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UnaryOp {
    /// `-x`
    Neg,
    /// `|x|` (derivative 0 at 0, as PyTorch)
    Abs,
    /// `e^x`
    Exp,
    /// natural log
    Log,
    /// square root
    Sqrt,
    /// `1/sqrt(x)`
    Rsqrt,
    /// `1/x`
    Recip,
    /// `x*x`
    Square,
    /// hyperbolic tangent
    Tanh,
    /// logistic `1/(1+e^-x)`
    Sigmoid,
    /// `max(x, 0)` (derivative 0 at 0)
    Relu,
    /// GELU with the exact erf form, `x·Φ(x)` (PyTorch's default)
    Gelu,
    /// GELU with the tanh approximation (PyTorch's `approximate="tanh"`)
    GeluTanh,
    /// `x·sigmoid(x)` (a.k.a. swish)
    Silu,
    /// `ln(1 + e^x)`, computed stably
    Softplus,
    /// sine
    Sin,
    /// cosine
    Cos,
    /// `x^p` for a constant `p`
    Powf(f32),
    /// `x` if positive, else `slope·x`
    LeakyRelu(f32),
    /// clamps to `[lo, hi]`; derivative 1 inside (inclusive), 0 outside
    Clamp(f32, f32),
    /// `mul·x + add` (scalar arithmetic on tensors)
    Affine(f32, f32),
}

/// `sqrt(2/pi)`, the tanh-GELU constant.
pub const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh-GELU.
pub const GELU_C: f32 = 0.044_715;

/// Error function, accurate to a few 1e-7 (absolute) in f32.
pub fn erf(x: f32) -> f32 {
    let xd = x as f64;
    let a = xd.abs();
    if a < 0.5 {
        // Maclaurin series: 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1)).
        let x2 = xd * xd;
        let mut term = xd;
        let mut sum = xd;
        for n in 1..12 {
            term *= -x2 / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        return (sum * std::f64::consts::FRAC_2_SQRT_PI) as f32;
    }
    // Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7).
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let r = 1.0 - poly * (-a * a).exp();
    (if xd < 0.0 { -r } else { r }) as f32
}

fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

impl UnaryOp {
    /// The op's name, as used in error messages and graph dumps.
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Square => "square",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Relu => "relu",
            UnaryOp::Gelu => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::Silu => "silu",
            UnaryOp::Softplus => "softplus",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
            UnaryOp::Powf(_) => "powf",
            UnaryOp::LeakyRelu(_) => "leaky_relu",
            UnaryOp::Clamp(..) => "clamp",
            UnaryOp::Affine(..) => "affine",
        }
    }

    /// The scalar function: the reference every kernel is tested against.
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Recip => 1.0 / x,
            UnaryOp::Square => x * x,
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::Gelu => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
            UnaryOp::GeluTanh => 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + GELU_C * x * x * x)).tanh()),
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Powf(p) => x.powf(p),
            UnaryOp::LeakyRelu(s) => {
                if x > 0.0 {
                    x
                } else {
                    s * x
                }
            }
            UnaryOp::Clamp(lo, hi) => x.max(lo).min(hi),
            UnaryOp::Affine(m, a) => m * x + a,
        }
    }

    /// `d apply(x) / dx`, given the input `x` and the output `y = apply(x)`.
    #[inline]
    pub fn derivative(self, x: f32, y: f32) -> f32 {
        match self {
            UnaryOp::Neg => -1.0,
            UnaryOp::Abs => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            UnaryOp::Exp => y,
            UnaryOp::Log => 1.0 / x,
            UnaryOp::Sqrt => 0.5 / y,
            UnaryOp::Rsqrt => -0.5 * y / x,
            UnaryOp::Recip => -y * y,
            UnaryOp::Square => 2.0 * x,
            UnaryOp::Tanh => 1.0 - y * y,
            UnaryOp::Sigmoid => y * (1.0 - y),
            UnaryOp::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            UnaryOp::Gelu => {
                let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * x * x).exp() * 0.398_942_3;
                cdf + x * pdf
            }
            UnaryOp::GeluTanh => {
                let inner = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
                let t = inner.tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_C * x * x)
            }
            UnaryOp::Silu => {
                let s = sigmoid(x);
                s * (1.0 + x * (1.0 - s))
            }
            UnaryOp::Softplus => sigmoid(x),
            UnaryOp::Sin => x.cos(),
            UnaryOp::Cos => -x.sin(),
            UnaryOp::Powf(p) => p * x.powf(p - 1.0),
            UnaryOp::LeakyRelu(s) => {
                if x > 0.0 {
                    1.0
                } else {
                    s
                }
            }
            UnaryOp::Clamp(lo, hi) => {
                if x >= lo && x <= hi {
                    1.0
                } else {
                    0.0
                }
            }
            UnaryOp::Affine(m, _) => m,
        }
    }
}

/// Every op in the table, with a representative parameter (for tests).
pub const ALL_UNARY_OPS: &[UnaryOp] = &[
    UnaryOp::Neg,
    UnaryOp::Abs,
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Recip,
    UnaryOp::Square,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Relu,
    UnaryOp::Gelu,
    UnaryOp::GeluTanh,
    UnaryOp::Silu,
    UnaryOp::Softplus,
    UnaryOp::Sin,
    UnaryOp::Cos,
    UnaryOp::Powf(2.5),
    UnaryOp::LeakyRelu(0.1),
    UnaryOp::Clamp(-0.5, 0.7),
    UnaryOp::Affine(-1.5, 0.25),
];

/// True for ops defined only for positive inputs.
pub fn needs_positive_input(op: UnaryOp) -> bool {
    matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Powf(_))
}

/// A binary elementwise op on `f32`. Comparisons yield 1.0 for true, 0.0 for false.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `a.powf(b)`
    Pow,
    /// Larger of the two (NaN if either is NaN).
    Maximum,
    /// Smaller of the two (NaN if either is NaN).
    Minimum,
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
}

impl BinaryOp {
    /// The op's name, as used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Pow => "pow",
            BinaryOp::Maximum => "maximum",
            BinaryOp::Minimum => "minimum",
            BinaryOp::Eq => "eq",
            BinaryOp::Ne => "ne",
            BinaryOp::Lt => "lt",
            BinaryOp::Le => "le",
            BinaryOp::Gt => "gt",
            BinaryOp::Ge => "ge",
        }
    }

    /// The scalar function (the reference for every kernel).
    #[inline(always)]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        let t = |c: bool| if c { 1.0 } else { 0.0 };
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
            BinaryOp::Pow => a.powf(b),
            BinaryOp::Maximum => {
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else {
                    a.max(b)
                }
            }
            BinaryOp::Minimum => {
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else {
                    a.min(b)
                }
            }
            BinaryOp::Eq => t(a == b),
            BinaryOp::Ne => t(a != b),
            BinaryOp::Lt => t(a < b),
            BinaryOp::Le => t(a <= b),
            BinaryOp::Gt => t(a > b),
            BinaryOp::Ge => t(a >= b),
        }
    }
}

/// A reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Sum of the elements.
    Sum,
    /// Largest element (NaN if any is NaN).
    Max,
    /// Smallest element (NaN if any is NaN).
    Min,
    /// Index of the first largest element (of the first NaN, if any).
    ArgMax,
    /// Index of the first smallest element (of the first NaN, if any).
    ArgMin,
}

impl ReduceOp {
    /// The op's name.
    pub fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Max => "max",
            ReduceOp::Min => "min",
            ReduceOp::ArgMax => "argmax",
            ReduceOp::ArgMin => "argmin",
        }
    }
}

/// The geometry of a 2-D sliding window over `(H, W)` planes: kernel size,
/// stride, zero padding and dilation (convolution and pooling).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window2d {
    /// Kernel height and width.
    pub kernel: (usize, usize),
    /// Stride along height and width.
    pub stride: (usize, usize),
    /// Zero padding added on both sides of height and width.
    pub padding: (usize, usize),
    /// Spacing between kernel taps (1 = dense).
    pub dilation: (usize, usize),
}

impl Window2d {
    /// A dense window with the given kernel, stride and padding.
    pub fn new(kernel: (usize, usize), stride: (usize, usize), padding: (usize, usize)) -> Self {
        Window2d { kernel, stride, padding, dilation: (1, 1) }
    }

    /// Output height and width for an input of `(h, w)`, or `None` when the
    /// (dilated) kernel does not fit in the padded input or a stride is 0.
    pub fn output_size(&self, h: usize, w: usize) -> Option<(usize, usize)> {
        let one = |len: usize, k: usize, s: usize, p: usize, d: usize| -> Option<usize> {
            let span = d * (k.checked_sub(1)?) + 1;
            let padded = len + 2 * p;
            (s > 0 && padded >= span).then(|| (padded - span) / s + 1)
        };
        Some((
            one(h, self.kernel.0, self.stride.0, self.padding.0, self.dilation.0)?,
            one(w, self.kernel.1, self.stride.1, self.padding.1, self.dilation.1)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_central_differences() {
        for &op in ALL_UNARY_OPS {
            for &x0 in &[-2.3f32, -0.6, 0.31, 0.9, 1.7] {
                let x = if needs_positive_input(op) { x0.abs() } else { x0 };
                let h = 1e-3f64;
                let f = |v: f64| op.apply(v as f32) as f64;
                let num = (f(x as f64 + h) - f(x as f64 - h)) / (2.0 * h);
                let ana = op.derivative(x, op.apply(x)) as f64;
                assert!((num - ana).abs() < 2e-2 * (1.0 + ana.abs()), "{op:?} at {x}: {ana} vs {num}");
            }
        }
    }

    #[test]
    #[allow(clippy::excessive_precision)]
    fn erf_accuracy() {
        // Reference values of erf from high-precision tables.
        for (x, want) in [
            (0.1f32, 0.112_462_916f32),
            (0.5, 0.520_499_876),
            (1.0, 0.842_700_79),
            (2.0, 0.995_322_27),
            (-1.5, -0.966_105_146),
        ] {
            assert!((erf(x) - want).abs() < 3e-7, "erf({x}) = {}", erf(x));
        }
    }
}
