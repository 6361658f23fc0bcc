//! Stochastic gradient descent with momentum, dampening, Nesterov and weight
//! decay, following `torch.optim.SGD`'s update rule.

use crate::optimizer::{Optimizer, Params, decay_all, shared_optimizer_methods};
use firebrand_autograd::Tensor;

/// SGD (`torch.optim.SGD`):
/// `g = grad + wd·p; buf = momentum·buf + (1 − dampening)·g` (`buf = g` on the
/// first step); `g = g + momentum·buf` with Nesterov, else `g = buf`; `p −= lr·g`.
///
/// ```
/// use firebrand_optim::{Optimizer, Sgd};
/// use firebrand_autograd::Tensor;
/// let w = Tensor::from_vec(vec![1.0f32, -2.0], [2]).requires_grad_(true);
/// let mut opt = Sgd::new(vec![("w".into(), w.clone())], 0.1);
/// w.square().sum_all().backward();
/// opt.step();
/// assert_eq!(w.to_vec::<f32>(), vec![0.8, -1.6]);
/// ```
pub struct Sgd {
    params: Params,
    lr: f32,
    momentum: f32,
    dampening: f32,
    nesterov: bool,
}

impl Sgd {
    /// Plain SGD with learning rate `lr`.
    pub fn new(params: Vec<(String, Tensor)>, lr: f32) -> Self {
        Sgd::with_options(params, lr, 0.0, 0.0, false, 0.0)
    }

    /// SGD with every option.
    ///
    /// # Panics
    /// When Nesterov is asked for without momentum or with dampening (as PyTorch).
    pub fn with_options(
        params: Vec<(String, Tensor)>,
        lr: f32,
        momentum: f32,
        dampening: f32,
        nesterov: bool,
        weight_decay: f32,
    ) -> Self {
        assert!(
            !nesterov || (momentum > 0.0 && dampening == 0.0),
            "Sgd: Nesterov momentum requires momentum > 0 and zero dampening"
        );
        let bufs: &[&'static str] = if momentum != 0.0 { &["momentum_buffer"] } else { &[] };
        Sgd { params: Params::new(params, weight_decay, &decay_all, bufs), lr, momentum, dampening, nesterov }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self) {
        let (lr, mom, damp, nesterov) = (self.lr, self.momentum, self.dampening, self.nesterov);
        let first = self.params.step == 0;
        self.params.for_each(
            |p, g, wd, bufs| {
                if mom == 0.0 {
                    p.iter_mut().zip(g).for_each(|(p, &g)| *p -= lr * (g + wd * *p));
                    return;
                }
                let buf = &mut bufs[0].1;
                for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
                    let g = g + wd * *p;
                    *b = if first { g } else { mom * *b + (1.0 - damp) * g };
                    let d = if nesterov { g + mom * *b } else { *b };
                    *p -= lr * d;
                }
            },
            // The same rule in tensor ops, for a parameter on a device.
            |p, g, wd, st| {
                let g = if wd != 0.0 { g + &(p * wd) } else { g.clone() };
                if mom == 0.0 {
                    return p - &(&g * lr);
                }
                let b = if first { g.clone() } else { &(&st[0] * mom) + &(&g * (1.0 - damp)) };
                let d = if nesterov { &g + &(&b * mom) } else { b.clone() };
                st[0] = b;
                p - &(&d * lr)
            },
        );
        self.params.step += 1;
    }

    shared_optimizer_methods!();
}
