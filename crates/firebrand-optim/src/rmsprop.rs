//! RMSprop, following `torch.optim.RMSprop`.

use crate::optimizer::{Optimizer, Params, decay_all, shared_optimizer_methods};
use firebrand_autograd::Tensor;

/// RMSprop (`torch.optim.RMSprop`): `g = grad + wd·p`,
/// `sq = α·sq + (1−α)·g²`; centered: `ga = α·ga + (1−α)·g`, `avg = sqrt(sq − ga²) + ε`,
/// else `avg = sqrt(sq) + ε`; with momentum `buf = μ·buf + g/avg; p −= lr·buf`,
/// else `p −= lr·g/avg`.
///
/// ```
/// use firebrand_optim::{Optimizer, RmsProp};
/// use firebrand_autograd::Tensor;
/// let w = Tensor::from_vec(vec![1.0f32], [1]).requires_grad_(true);
/// let mut opt = RmsProp::new(vec![("w".into(), w.clone())], 0.01);
/// w.square().sum_all().backward(); // gradient 2
/// opt.step();
/// // sq = 0.01·4, so the step is lr·2/sqrt(0.04) = 10·lr
/// assert!((w.item() - 0.9).abs() < 1e-5);
/// ```
pub struct RmsProp {
    params: Params,
    lr: f32,
    alpha: f32,
    eps: f32,
    momentum: f32,
    centered: bool,
}

impl RmsProp {
    /// RMSprop with PyTorch's defaults (alpha 0.99, eps 1e-8).
    pub fn new(params: Vec<(String, Tensor)>, lr: f32) -> Self {
        RmsProp::with_options(params, lr, 0.99, 1e-8, 0.0, false, 0.0)
    }

    /// RMSprop with every option.
    pub fn with_options(
        params: Vec<(String, Tensor)>,
        lr: f32,
        alpha: f32,
        eps: f32,
        momentum: f32,
        centered: bool,
        weight_decay: f32,
    ) -> Self {
        let mut bufs: Vec<&'static str> = vec!["square_avg"];
        if momentum > 0.0 {
            bufs.push("momentum_buffer");
        }
        if centered {
            bufs.push("grad_avg");
        }
        RmsProp { params: Params::new(params, weight_decay, &decay_all, &bufs), lr, alpha, eps, momentum, centered }
    }
}

impl Optimizer for RmsProp {
    fn step(&mut self) {
        let (lr, alpha, eps, mom, centered) = (self.lr, self.alpha, self.eps, self.momentum, self.centered);
        self.params.for_each(
            |p, g, wd, bufs| {
                let n = p.len();
                let mut sq = std::mem::take(&mut bufs[0].1);
                let mut mb = if mom > 0.0 { std::mem::take(&mut bufs[1].1) } else { Vec::new() };
                let gi = if mom > 0.0 { 2 } else { 1 };
                let mut ga = if centered { std::mem::take(&mut bufs[gi].1) } else { Vec::new() };
                for i in 0..n {
                    let g = g[i] + wd * p[i];
                    sq[i] = alpha * sq[i] + (1.0 - alpha) * g * g;
                    let avg = if centered {
                        ga[i] = alpha * ga[i] + (1.0 - alpha) * g;
                        (sq[i] - ga[i] * ga[i]).sqrt() + eps
                    } else {
                        sq[i].sqrt() + eps
                    };
                    if mom > 0.0 {
                        mb[i] = mom * mb[i] + g / avg;
                        p[i] -= lr * mb[i];
                    } else {
                        p[i] -= lr * g / avg;
                    }
                }
                bufs[0].1 = sq;
                if mom > 0.0 {
                    bufs[1].1 = mb;
                }
                if centered {
                    bufs[gi].1 = ga;
                }
            },
            // The same rule in tensor ops, for a parameter on a device.
            |p, g, wd, st| {
                let g = if wd != 0.0 { g + &(p * wd) } else { g.clone() };
                st[0] = &(&st[0] * alpha) + &(g.square() * (1.0 - alpha));
                let gi = if mom > 0.0 { 2 } else { 1 };
                let avg = if centered {
                    st[gi] = &(&st[gi] * alpha) + &(&g * (1.0 - alpha));
                    (&st[0] - &st[gi].square()).sqrt() + eps
                } else {
                    st[0].sqrt() + eps
                };
                if mom > 0.0 {
                    st[1] = &(&st[1] * mom) + &(&g / &avg);
                    p - &(&st[1] * lr)
                } else {
                    p - &(&(&g * lr) / &avg)
                }
            },
        );
        self.params.step += 1;
    }

    shared_optimizer_methods!();
}
