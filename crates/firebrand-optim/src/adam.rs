//! Adam and AdamW, following `torch.optim.Adam` / `torch.optim.AdamW`.

use crate::optimizer::{Optimizer, Params, decay_all, shared_optimizer_methods};
use firebrand_autograd::Tensor;

/// Adam (`torch.optim.Adam`, L2 weight decay added to the gradient) and AdamW
/// (`torch.optim.AdamW`, decoupled decay `p −= lr·wd·p` before the update).
///
/// Update, with step `t`: `m = β1·m + (1−β1)·g`, `v = β2·v + (1−β2)·g²`,
/// `p −= (lr / (1−β1ᵗ)) · m / (sqrt(v) / sqrt(1−β2ᵗ) + ε)` — PyTorch's
/// arithmetic, so results agree to rounding.
///
/// ```
/// use firebrand_optim::{Adam, Optimizer};
/// use firebrand_autograd::Tensor;
/// let w = Tensor::from_vec(vec![1.0f32], [1]).requires_grad_(true);
/// let mut opt = Adam::new(vec![("w".into(), w.clone())], 0.1);
/// w.square().sum_all().backward();
/// opt.step();
/// assert!((w.item() - 0.9).abs() < 1e-6); // the first Adam step moves by lr
/// ```
pub struct Adam {
    params: Params,
    lr: f32,
    betas: (f32, f32),
    eps: f32,
    decoupled: bool,
}

impl Adam {
    /// Adam with PyTorch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay).
    pub fn new(params: Vec<(String, Tensor)>, lr: f32) -> Self {
        Adam::with_options(params, lr, (0.9, 0.999), 1e-8, 0.0)
    }

    /// Adam with L2 weight decay (added to the gradient).
    pub fn with_options(
        params: Vec<(String, Tensor)>,
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
    ) -> Self {
        Adam {
            params: Params::new(params, weight_decay, &decay_all, &["exp_avg", "exp_avg_sq"]),
            lr,
            betas,
            eps,
            decoupled: false,
        }
    }
}

/// AdamW: Adam with decoupled weight decay (`torch.optim.AdamW`).
///
/// ```
/// use firebrand_optim::{AdamW, Optimizer, decay_matrices};
/// use firebrand_nn::{Linear, Module, ModuleExt};
/// use firebrand_autograd::Tensor;
/// let layer = Linear::new(3, 1);
/// // Decay the weight matrix only, not the bias (GPT-style).
/// let mut opt = AdamW::with_options(layer.named_parameters(), 1e-2, (0.9, 0.95), 1e-8, 0.1, &decay_matrices);
/// for _ in 0..3 {
///     opt.zero_grad();
///     layer.forward(&Tensor::ones([4, 3])).square().mean_all().backward();
///     opt.step();
/// }
/// assert_eq!(opt.state().iter().find(|(n, _)| n == "step").unwrap().1.to_vec::<f32>(), vec![3.0]);
/// ```
pub struct AdamW;

impl AdamW {
    /// AdamW with PyTorch's defaults (betas 0.9/0.999, eps 1e-8, weight decay 0.01).
    #[allow(clippy::new_ret_no_self)]
    pub fn new(params: Vec<(String, Tensor)>, lr: f32) -> Adam {
        AdamW::with_options(params, lr, (0.9, 0.999), 1e-8, 0.01, &decay_all)
    }

    /// AdamW with every option; `decay(name, param)` chooses which parameters
    /// decay (e.g. [`decay_matrices`](crate::decay_matrices): not biases and norms).
    pub fn with_options(
        params: Vec<(String, Tensor)>,
        lr: f32,
        betas: (f32, f32),
        eps: f32,
        weight_decay: f32,
        decay: &dyn Fn(&str, &Tensor) -> bool,
    ) -> Adam {
        Adam {
            params: Params::new(params, weight_decay, decay, &["exp_avg", "exp_avg_sq"]),
            lr,
            betas,
            eps,
            decoupled: true,
        }
    }
}

#[derive(Clone, Copy)]
struct AdamConsts {
    b1: f32,
    b2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
    decay: f32,
    l2: f32,
}

/// One fused pass over a parameter, its gradient and both moments.
#[inline(always)]
fn adam_loop(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamConsts) {
    // Equal-length slices and plain indexing: the loop vectorizes.
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        let gi = g[i] + k.l2 * p[i];
        let pi = p[i] * k.decay;
        m[i] = k.b1 * m[i] + (1.0 - k.b1) * gi;
        v[i] = k.b2 * v[i] + (1.0 - k.b2) * gi * gi;
        let denom = v[i].sqrt() / k.bc2_sqrt + k.eps;
        p[i] = pi - k.step_size * m[i] / denom;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn adam_loop_avx512(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamConsts) {
    adam_loop(p, g, m, v, k)
}

/// The same loop compiled for AVX-512 when the CPU has it (sqrt and division
/// dominate; 16 lanes instead of SSE2's 4).
fn adam_update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: AdamConsts) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected at run time.
        return unsafe { adam_loop_avx512(p, g, m, v, k) };
    }
    adam_loop(p, g, m, v, k)
}

impl Optimizer for Adam {
    fn step(&mut self) {
        self.params.step += 1;
        let t = self.params.step as i32;
        let (lr, (b1, b2), eps, decoupled) = (self.lr, self.betas, self.eps, self.decoupled);
        let bc1 = 1.0 - b1.powi(t);
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt();
        let step_size = lr / bc1;
        self.params.for_each(
            |p, g, wd, bufs| {
                let (m_buf, rest) = bufs.split_at_mut(1);
                let (decay, l2) = if decoupled { (1.0 - lr * wd, 0.0) } else { (1.0, wd) };
                let k = AdamConsts { b1, b2, eps, step_size, bc2_sqrt, decay, l2 };
                adam_update(p, g, &mut m_buf[0].1, &mut rest[0].1, k);
            },
            // The same rule in tensor ops, for a parameter on a device.
            |p, g, wd, st| {
                let (decay, l2) = if decoupled { (1.0 - lr * wd, 0.0) } else { (1.0, wd) };
                let g = if l2 != 0.0 { g + &(p * l2) } else { g.clone() };
                let pd = if decay != 1.0 { p * decay } else { p.clone() };
                let m = &(&st[0] * b1) + &(&g * (1.0 - b1));
                let v = &(&st[1] * b2) + &(g.square() * (1.0 - b2));
                let denom = v.sqrt() * (1.0 / bc2_sqrt) + eps;
                let new = pd - &(&(&m * step_size) / &denom);
                st[0] = m;
                st[1] = v;
                new
            },
        );
    }

    shared_optimizer_methods!();
}
