//! Position encodings: fixed sinusoidal, learned (GPT-2 style) and rotary (RoPE).

use crate::{Init, Module};
use firebrand_autograd::Tensor;

/// Adds the fixed sinusoidal position encoding of "Attention Is All You
/// Need" to `(B, T, E)`: `PE[t, 2i] = sin(t / 10000^(2i/E))`,
/// `PE[t, 2i+1] = cos(…)`.
#[derive(Debug, Clone, Copy)]
pub struct SinusoidalPositionalEncoding;

impl SinusoidalPositionalEncoding {
    /// The table `(T, E)`.
    pub fn table(t: usize, e: usize) -> Tensor {
        let mut v = vec![0.0f32; t * e];
        for p in 0..t {
            for i in 0..e {
                let freq = 1.0 / 10000f64.powf((2 * (i / 2)) as f64 / e as f64);
                let a = p as f64 * freq;
                v[p * e + i] = if i % 2 == 0 { a.sin() } else { a.cos() } as f32;
            }
        }
        Tensor::from_vec(v, [t, e])
    }
}

impl Module for SinusoidalPositionalEncoding {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            if x.rank() < 2 {
                crate::module::input_error(self, "(…, T, E)", x.dims());
            }
            let (t, e) = (x.dims()[x.rank() - 2], x.dims()[x.rank() - 1]);
            x.add(&SinusoidalPositionalEncoding::table(t, e).to_device(x.device()).expect("the input's device"))
        })
    }

    fn describe(&self) -> String {
        "SinusoidalPositionalEncoding".into()
    }
}

/// A learned position embedding added to `(B, T, E)` (GPT-2 style): a
/// parameter `(max_len, E)` drawn from `N(0, 0.02)`.
pub struct LearnedPositionalEncoding {
    /// The table, `(max_len, E)`.
    pub weight: Tensor,
}

impl LearnedPositionalEncoding {
    /// Up to `max_len` positions of `dim` values.
    pub fn new(max_len: usize, dim: usize) -> Self {
        LearnedPositionalEncoding {
            weight: Init::Normal(0.0, 0.02).tensor([max_len, dim], dim, dim).requires_grad_(true),
        }
    }
}

impl Module for LearnedPositionalEncoding {
    fn forward(&self, x: &Tensor) -> Tensor {
        crate::module::traced(self, || {
            let &[max, e] = self.weight.dims() else { unreachable!("a (max_len, E) table") };
            if x.rank() < 2 || x.dims()[x.rank() - 2] > max || x.dims()[x.rank() - 1] != e {
                crate::module::input_error(self, &format!("(…, T ≤ {max}, {e})"), x.dims());
            }
            let t = x.dims()[x.rank() - 2];
            x.add(&self.weight.narrow(0, 0, t))
        })
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}weight"), &self.weight);
    }

    fn describe(&self) -> String {
        format!("LearnedPositionalEncoding({}, {})", self.weight.dims()[0], self.weight.dims()[1])
    }
}

/// Rotary position embedding (RoPE, GPT-NeoX layout): rotates each pair of
/// features `(x[i], x[i + d/2])` of a `(…, T, d)` tensor at position
/// `offset + t` by the angle `(offset + t) · 10000^(−2i/d)`, so that the dot
/// product of a rotated query and key depends only on their distance.
/// Differentiable (a composite of multiplies and a concatenation).
///
/// ```
/// use firebrand_nn::rotary;
/// use firebrand_autograd::Tensor;
/// let q = Tensor::randn([1, 2, 5, 8], 0.0, 1.0); // (B, heads, T, d)
/// assert_eq!(rotary(&q, 0).dims(), &[1, 2, 5, 8]);
/// ```
///
/// # Panics
/// When the last dim is odd or the tensor has fewer than 2 dims.
pub fn rotary(x: &Tensor, offset: usize) -> Tensor {
    let r = x.rank();
    assert!(r >= 2 && x.dims()[r - 1].is_multiple_of(2), "rotary: expected (…, T, d) with even d, got {:?}", x.dims());
    let (t, d) = (x.dims()[r - 2], x.dims()[r - 1]);
    let half = d / 2;
    let (mut cos, mut sin) = (vec![0.0f32; t * d], vec![0.0f32; t * d]);
    for p in 0..t {
        for i in 0..half {
            let a = (offset + p) as f64 * 10000f64.powf(-2.0 * i as f64 / d as f64);
            for j in [i, i + half] {
                cos[p * d + j] = a.cos() as f32;
                sin[p * d + j] = a.sin() as f32;
            }
        }
    }
    let (cos, sin) = (Tensor::from_vec(cos, [t, d]), Tensor::from_vec(sin, [t, d]));
    // rotate_half(x) = [-x2, x1]
    let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
    let rotated = Tensor::cat(&[&x2.neg(), &x1], -1);
    x.mul(&cos).add(&rotated.mul(&sin))
}
