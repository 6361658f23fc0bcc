//! Learning-rate schedules as pure functions of the step (or epoch) number,
//! so a resumed run gets the same rate as an uninterrupted one:
//! `opt.set_lr(schedule.lr_at(step))`.

/// A learning rate for every step. In `Model::fit`, give one to the
/// `LrScheduler` callback (per step or per epoch); in a loop of your own,
/// set it before each step:
///
/// ```
/// use firebrand_optim::{LrSchedule, Optimizer, Sgd, StepLr};
/// use firebrand_autograd::Tensor;
/// let w = Tensor::zeros([1]).requires_grad_(true);
/// let mut opt = Sgd::new(vec![("w".into(), w.clone())], 0.1);
/// let schedule = StepLr { base: 0.1, step_size: 10, gamma: 0.5 };
/// for step in 0..30 {
///     opt.set_lr(schedule.lr_at(step));
///     // ... forward, backward, opt.step() ...
/// }
/// assert_eq!(opt.lr(), 0.025);
/// ```
pub trait LrSchedule {
    /// The rate for step (or epoch) `t`, counting from 0.
    fn lr_at(&self, t: usize) -> f32;
}

/// `base · γ^⌊t / step_size⌋` (`StepLR`).
///
/// ```
/// use firebrand_optim::{LrSchedule, StepLr};
/// let s = StepLr { base: 1.0, step_size: 2, gamma: 0.5 };
/// assert_eq!((0..5).map(|t| s.lr_at(t)).collect::<Vec<_>>(), [1.0, 1.0, 0.5, 0.5, 0.25]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct StepLr {
    /// Initial rate.
    pub base: f32,
    /// Steps between decays.
    pub step_size: usize,
    /// Decay factor.
    pub gamma: f32,
}

impl LrSchedule for StepLr {
    fn lr_at(&self, t: usize) -> f32 {
        self.base * self.gamma.powi((t / self.step_size.max(1)) as i32)
    }
}

/// `base · γ^t` (`ExponentialLR`).
///
/// ```
/// use firebrand_optim::{ExponentialLr, LrSchedule};
/// assert_eq!(ExponentialLr { base: 2.0, gamma: 0.5 }.lr_at(3), 0.25);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ExponentialLr {
    /// Initial rate.
    pub base: f32,
    /// Decay factor per step.
    pub gamma: f32,
}

impl LrSchedule for ExponentialLr {
    fn lr_at(&self, t: usize) -> f32 {
        self.base * self.gamma.powi(t as i32)
    }
}

/// Linear warm-up from `base / warmup` to `base` over `warmup` steps, then
/// cosine decay to `min_lr` at step `total`, constant after.
///
/// ```
/// use firebrand_optim::{CosineWithWarmup, LrSchedule};
/// let s = CosineWithWarmup { base: 1e-3, warmup: 100, total: 2000, min_lr: 1e-4 };
/// assert!((s.lr_at(0) - 1e-5).abs() < 1e-9); // warm-up from base / warmup
/// assert!((s.lr_at(99) - 1e-3).abs() < 1e-9); // the peak
/// assert!((s.lr_at(1050) - 5.5e-4).abs() < 1e-7); // halfway down
/// assert_eq!(s.lr_at(5000), 1e-4);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CosineWithWarmup {
    /// Peak rate.
    pub base: f32,
    /// Warm-up steps.
    pub warmup: usize,
    /// Step at which the decay ends.
    pub total: usize,
    /// Final rate.
    pub min_lr: f32,
}

impl LrSchedule for CosineWithWarmup {
    fn lr_at(&self, t: usize) -> f32 {
        if t < self.warmup {
            return self.base * (t + 1) as f32 / self.warmup as f32;
        }
        if t >= self.total {
            return self.min_lr;
        }
        let progress = (t - self.warmup) as f32 / (self.total - self.warmup).max(1) as f32;
        self.min_lr + 0.5 * (self.base - self.min_lr) * (1.0 + (std::f32::consts::PI * progress).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let s = StepLr { base: 1.0, step_size: 2, gamma: 0.5 };
        assert_eq!((0..5).map(|t| s.lr_at(t)).collect::<Vec<_>>(), vec![1.0, 1.0, 0.5, 0.5, 0.25]);
        let e = ExponentialLr { base: 2.0, gamma: 0.5 };
        assert_eq!(e.lr_at(3), 0.25);
        let c = CosineWithWarmup { base: 1e-3, warmup: 100, total: 2000, min_lr: 1e-4 };
        assert!((c.lr_at(0) - 1e-5).abs() < 1e-9);
        assert!((c.lr_at(99) - 1e-3).abs() < 1e-9);
        assert!((c.lr_at(100) - 1e-3).abs() < 1e-9);
        assert!((c.lr_at(1050) - 5.5e-4).abs() < 1e-7, "halfway: {}", c.lr_at(1050));
        assert!((c.lr_at(2000) - 1e-4).abs() < 1e-9 && (c.lr_at(5000) - 1e-4).abs() < 1e-9);
        let mut prev = f32::INFINITY;
        for t in 100..2000 {
            assert!(c.lr_at(t) <= prev);
            prev = c.lr_at(t);
        }
    }
}
