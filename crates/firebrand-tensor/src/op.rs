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
    /// clamps to `[lo, hi]` with PyTorch's `hardtanh` gradient: 1 strictly
    /// inside, 0 at and beyond the bounds (`ReLU6` is `Hardtanh(0, 6)`)
    Hardtanh(f32, f32),
    /// `x · clamp(x + 3, 0, 6) / 6` (MobileNetV3's hard swish)
    Hardswish,
    /// `clamp(x + 3, 0, 6) / 6`
    Hardsigmoid,
    /// `mul·x + add` (scalar arithmetic on tensors)
    Affine(f32, f32),
}

/// `x` clamped into `[lo, hi]`, a NaN kept (not `max`/`min`, which drop it).
#[inline]
fn clamp<F: Real>(x: F, lo: F, hi: F) -> F {
    if x < lo {
        lo
    } else if x > hi {
        hi
    } else {
        x
    }
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

/// The float types the unary table is evaluated in: `f32` (the kernels'
/// reference) and `f64` (tensors of dtype `F64`).
pub trait Real: num_traits::Float + Send + Sync + 'static {
    /// The error function.
    fn erf(self) -> Self;
    /// A constant given in `f64`.
    fn c(v: f64) -> Self;
}

impl Real for f32 {
    fn erf(self) -> f32 {
        erf(self)
    }
    #[inline(always)]
    fn c(v: f64) -> f32 {
        v as f32
    }
}

impl Real for f64 {
    fn erf(self) -> f64 {
        libm::erf(self)
    }
    #[inline(always)]
    fn c(v: f64) -> f64 {
        v
    }
}

#[inline(always)]
fn sigmoid<F: Real>(x: F) -> F {
    if x >= F::zero() {
        F::one() / (F::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (F::one() + e)
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
            UnaryOp::Hardtanh(..) => "hardtanh",
            UnaryOp::Hardswish => "hardswish",
            UnaryOp::Hardsigmoid => "hardsigmoid",
            UnaryOp::Affine(..) => "affine",
        }
    }

    /// True for the ops that map integers to integers (`neg`, `abs`,
    /// `square`, `relu`, and `clamp`/`affine` with integral constants); the
    /// others compute in a float type.
    pub fn keeps_integers(self) -> bool {
        let int = |v: f32| v.fract() == 0.0;
        match self {
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Square | UnaryOp::Relu => true,
            UnaryOp::Clamp(lo, hi) | UnaryOp::Hardtanh(lo, hi) => int(lo) && int(hi),
            UnaryOp::Affine(m, a) => int(m) && int(a),
            _ => false,
        }
    }

    /// The scalar function: the reference every kernel is tested against.
    /// NaN propagates through every op (`relu(NaN)` and `clamp(NaN)` are NaN,
    /// as in PyTorch).
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        self.eval(x)
    }

    /// [`UnaryOp::apply`] in any [`Real`] type (`f64` for `F64` tensors).
    #[inline]
    pub fn eval<F: Real>(self, x: F) -> F {
        let (zero, one, half) = (F::zero(), F::one(), F::c(0.5));
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => one / x.sqrt(),
            UnaryOp::Recip => one / x,
            UnaryOp::Square => x * x,
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid(x),
            // `x < 0 ? 0 : x`, not `max(x, 0)`, which drops a NaN.
            UnaryOp::Relu => {
                if x < zero {
                    zero
                } else {
                    x
                }
            }
            UnaryOp::Gelu => half * x * (one + (x * F::c(std::f64::consts::FRAC_1_SQRT_2)).erf()),
            UnaryOp::GeluTanh => {
                let (k, c) = (F::c(SQRT_2_OVER_PI as f64), F::c(GELU_C as f64));
                half * x * (one + (k * (x + c * x * x * x)).tanh())
            }
            UnaryOp::Silu => x * sigmoid(x),
            UnaryOp::Softplus => {
                let m = if x < zero { zero } else { x };
                m + (-x.abs()).exp().ln_1p()
            }
            UnaryOp::Sin => x.sin(),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Powf(p) => x.powf(F::c(p as f64)),
            UnaryOp::LeakyRelu(s) => {
                if x > zero {
                    x
                } else {
                    F::c(s as f64) * x
                }
            }
            UnaryOp::Clamp(lo, hi) | UnaryOp::Hardtanh(lo, hi) => clamp(x, F::c(lo as f64), F::c(hi as f64)),
            UnaryOp::Hardswish => x * clamp(x + F::c(3.0), zero, F::c(6.0)) / F::c(6.0),
            UnaryOp::Hardsigmoid => clamp(x + F::c(3.0), zero, F::c(6.0)) / F::c(6.0),
            UnaryOp::Affine(m, a) => F::c(m as f64) * x + F::c(a as f64),
        }
    }

    /// `d apply(x) / dx`, given the input `x` and the output `y = apply(x)`.
    #[inline]
    pub fn derivative(self, x: f32, y: f32) -> f32 {
        self.derivative_of(x, y)
    }

    /// [`UnaryOp::derivative`] in any [`Real`] type.
    #[inline]
    pub fn derivative_of<F: Real>(self, x: F, y: F) -> F {
        let (zero, one, half) = (F::zero(), F::one(), F::c(0.5));
        match self {
            UnaryOp::Neg => -one,
            UnaryOp::Abs => {
                if x.is_nan() {
                    x
                } else if x > zero {
                    one
                } else if x < zero {
                    -one
                } else {
                    zero
                }
            }
            UnaryOp::Exp => y,
            UnaryOp::Log => one / x,
            UnaryOp::Sqrt => half / y,
            UnaryOp::Rsqrt => -half * y / x,
            UnaryOp::Recip => -y * y,
            UnaryOp::Square => F::c(2.0) * x,
            UnaryOp::Tanh => one - y * y,
            UnaryOp::Sigmoid => y * (one - y),
            // PyTorch's masks: a NaN input passes no gradient through relu or clamp.
            UnaryOp::Relu => {
                if x > zero {
                    one
                } else {
                    zero
                }
            }
            UnaryOp::Gelu => {
                let cdf = half * (one + (x * F::c(std::f64::consts::FRAC_1_SQRT_2)).erf());
                let pdf = (-half * x * x).exp() * F::c(0.398_942_280_401_432_7);
                cdf + x * pdf
            }
            UnaryOp::GeluTanh => {
                let (k, c) = (F::c(SQRT_2_OVER_PI as f64), F::c(GELU_C as f64));
                let inner = k * (x + c * x * x * x);
                let t = inner.tanh();
                half * (one + t) + half * x * (one - t * t) * k * (one + F::c(3.0) * c * x * x)
            }
            UnaryOp::Silu => {
                let s = sigmoid(x);
                s * (one + x * (one - s))
            }
            UnaryOp::Softplus => sigmoid(x),
            UnaryOp::Sin => x.cos(),
            UnaryOp::Cos => -x.sin(),
            UnaryOp::Powf(p) => {
                let p = F::c(p as f64);
                p * x.powf(p - one)
            }
            UnaryOp::LeakyRelu(s) => {
                if x > zero {
                    one
                } else {
                    F::c(s as f64)
                }
            }
            UnaryOp::Clamp(lo, hi) => {
                if x >= F::c(lo as f64) && x <= F::c(hi as f64) {
                    one
                } else {
                    zero
                }
            }
            // PyTorch's hardtanh_backward: zero at or beyond a bound (a NaN passes).
            UnaryOp::Hardtanh(lo, hi) => {
                if x <= F::c(lo as f64) || x >= F::c(hi as f64) {
                    zero
                } else {
                    one
                }
            }
            // PyTorch's hardswish_backward: 0 up to -3, x/3 + 1/2 below 3, 1 from 3.
            UnaryOp::Hardswish => {
                if x <= F::c(-3.0) {
                    zero
                } else if x < F::c(3.0) {
                    x / F::c(3.0) + half
                } else {
                    one
                }
            }
            UnaryOp::Hardsigmoid => {
                if x > F::c(-3.0) && x < F::c(3.0) {
                    one / F::c(6.0)
                } else {
                    zero
                }
            }
            UnaryOp::Affine(m, _) => F::c(m as f64),
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
    UnaryOp::Hardtanh(-0.5, 0.7),
    UnaryOp::Hardswish,
    UnaryOp::Hardsigmoid,
    UnaryOp::Affine(-1.5, 0.25),
];

/// True for ops defined only for positive inputs.
pub fn needs_positive_input(op: UnaryOp) -> bool {
    matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt | UnaryOp::Powf(_))
}

/// A binary elementwise op. Comparisons yield `bool` tensors ([`BinaryOp::apply`],
/// the `f32` reference, gives 1.0 for true and 0.0 for false).
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
    /// True for the comparisons (`eq` .. `ge`), whose result is `bool`.
    pub fn is_comparison(self) -> bool {
        matches!(self, BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge)
    }

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
    /// Product of the elements.
    Prod,
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
            ReduceOp::Prod => "prod",
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
