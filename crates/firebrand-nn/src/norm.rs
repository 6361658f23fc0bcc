//! Batch normalization (`nn.BatchNorm1d`, `nn.BatchNorm2d`).

use crate::Module;
use firebrand_autograd::{Tensor, UnaryOp, with_no_grad};

/// The state and forward pass behind [`BatchNorm1d`] and [`BatchNorm2d`]
/// (reachable through their `Deref`): normalizes each channel (dim 1) over the batch and every other dim:
/// `y = (x - mean) / sqrt(var + eps) * weight + bias`.
///
/// In training mode it uses the batch's statistics (biased variance) and
/// updates the running ones (`running = (1 - momentum) · running + momentum ·
/// batch`, the running variance from the unbiased estimate), as PyTorch does;
/// in evaluation mode it uses the running statistics. Parameters `weight`
/// (γ) and `bias` (β) are `(C,)`; the buffers `running_mean`, `running_var`
/// and `num_batches_tracked` are saved with the weights under PyTorch's names.
/// Written from primitive ops, so its gradient comes from theirs.
///
/// ```
/// use firebrand_nn::{BatchNorm2d, Module, ModuleExt};
/// use firebrand_autograd::Tensor;
/// let mut bn = BatchNorm2d::new(3);
/// let x = Tensor::randn([4, 3, 5, 5], 2.0, 3.0);
/// let y = bn.forward(&x); // (N, C, H, W), each channel now mean 0, variance 1
/// assert!(y.mean(&[0, 2, 3], false).to_vec::<f32>().iter().all(|m| m.abs() < 1e-5));
/// bn.eval(); // now normalizes with the running statistics
/// assert_eq!(bn.named_buffers().len(), 3);
/// ```
pub struct BatchNorm {
    /// Scale γ, `(C,)`, if affine.
    pub weight: Option<Tensor>,
    /// Shift β, `(C,)`, if affine.
    pub bias: Option<Tensor>,
    /// Running mean, `(C,)`.
    pub running_mean: Tensor,
    /// Running (unbiased) variance, `(C,)`.
    pub running_var: Tensor,
    /// Training batches seen (an `i64` scalar, as PyTorch).
    pub num_batches_tracked: Tensor,
    eps: f32,
    momentum: f32,
    training: bool,
    /// Accepted input ranks (2 and 3 for 1-D, 4 for 2-D).
    ranks: &'static [usize],
    name: &'static str,
}

macro_rules! batch_norm_layer {
    ($(#[$m:meta])* $name:ident, $ranks:expr) => {
        $(#[$m])*
        pub struct $name(BatchNorm);

        impl $name {
            /// With PyTorch's defaults (eps 1e-5, momentum 0.1, learnable γ and β).
            pub fn new(channels: usize) -> Self {
                $name(BatchNorm::make(channels, $ranks, stringify!($name)))
            }

            /// Sets ε added to the variance (builder style; read it back with [`BatchNorm::eps`]).
            pub fn with_eps(mut self, eps: f32) -> Self {
                self.0.eps = eps;
                self
            }

            /// Sets the running-statistics momentum (PyTorch's convention: the
            /// weight of the new batch; read it back with [`BatchNorm::momentum`]).
            pub fn with_momentum(mut self, momentum: f32) -> Self {
                self.0.momentum = momentum;
                self
            }

            /// Without learnable γ and β (`affine=False`).
            pub fn without_affine(mut self) -> Self {
                self.0.weight = None;
                self.0.bias = None;
                self
            }
        }

        impl $name {
            /// The same normalization over the channels `idx` only (see
            /// [`BatchNorm::select_channels`]).
            ///
            /// # Panics
            /// When an index is out of range.
            pub fn select_channels(&self, idx: &[usize]) -> Self {
                $name(self.0.select_channels(idx))
            }
        }

        crate::module::delegate_module!($name, BatchNorm);
    };
}

batch_norm_layer!(
    /// Batch normalization over `(N, C)` or `(N, C, L)` (`nn.BatchNorm1d`); see [`BatchNorm`].
    ///
    /// ```
    /// use firebrand_nn::{BatchNorm1d, Module};
    /// use firebrand_autograd::Tensor;
    /// let bn = BatchNorm1d::new(4);
    /// assert_eq!(bn.forward(&Tensor::randn([8, 4], 0.0, 1.0)).dims(), &[8, 4]);
    /// ```
    BatchNorm1d,
    &[2, 3]
);

batch_norm_layer!(
    /// Batch normalization over `(N, C, H, W)` (`nn.BatchNorm2d`); see [`BatchNorm`].
    BatchNorm2d,
    &[4]
);

impl BatchNorm {
    fn make(channels: usize, ranks: &'static [usize], name: &'static str) -> Self {
        BatchNorm {
            weight: Some(Tensor::ones([channels]).requires_grad_(true)),
            bias: Some(Tensor::zeros([channels]).requires_grad_(true)),
            running_mean: Tensor::zeros([channels]),
            running_var: Tensor::ones([channels]),
            num_batches_tracked: Tensor::from_vec(vec![0i64], Vec::<usize>::new()),
            eps: 1e-5,
            momentum: 0.1,
            training: true,
            ranks,
            name,
        }
    }

    /// Number of channels.
    pub fn num_features(&self) -> usize {
        self.running_mean.dims()[0]
    }

    /// The same normalization over the channels `idx` only: their γ, β and
    /// running statistics (structural pruning, [`crate::prune::shrink`]).
    ///
    /// # Panics
    /// When an index is out of range.
    pub fn select_channels(&self, idx: &[usize]) -> BatchNorm {
        let sel = |t: &Tensor| crate::prune::select(t, 0, idx);
        BatchNorm {
            weight: self.weight.as_ref().map(sel),
            bias: self.bias.as_ref().map(sel),
            running_mean: sel(&self.running_mean),
            running_var: sel(&self.running_var),
            num_batches_tracked: self.num_batches_tracked.detach().contiguous(),
            ..*self
        }
    }

    /// ε added to the variance.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// The running-statistics momentum (the weight of each new batch).
    pub fn momentum(&self) -> f32 {
        self.momentum
    }

    /// True in training mode (batch statistics), false in evaluation mode.
    pub fn is_training(&self) -> bool {
        self.training
    }

    /// The eval-mode transform as a per-channel scale and shift, `(C,)` each:
    /// `y = x·scale + shift` with `scale = γ / sqrt(running_var + ε)` and
    /// `shift = β − running_mean·scale` (what folding into a layer uses).
    pub fn eval_scale_shift(&self) -> (Tensor, Tensor) {
        firebrand_autograd::with_no_grad(|| self.eval_scale_shift_graph())
    }

    /// [`BatchNorm::eval_scale_shift`], recorded: gradients reach γ and β.
    fn eval_scale_shift_graph(&self) -> (Tensor, Tensor) {
        let scale = self.running_var.affine(1.0, self.eps).rsqrt();
        let scale = match &self.weight {
            Some(w) => scale.mul(w),
            None => scale,
        };
        let shift = self.running_mean.mul(&scale).neg();
        let shift = match &self.bias {
            Some(b) => shift.add(b),
            None => shift,
        };
        (scale, shift)
    }

    fn update_running(&self, mean: &Tensor, var: &Tensor, count: usize) {
        let m = self.momentum;
        let unbias = count as f32 / (count.max(2) - 1) as f32;
        if !self.running_mean.device().is_cpu() {
            // On a device: the same update in tensor ops, taken in place,
            // with nothing read back (the count is added to where it lives).
            with_no_grad(|| {
                let (rm, rv) = (&self.running_mean, &self.running_var);
                rm.set_data_(rm + &(&(&mean.detach() - rm) * m)).expect("a whole buffer");
                rv.set_data_(rv + &(&(&(&var.detach() * unbias) - rv) * m)).expect("a whole buffer");
                let one = Tensor::from_vec(vec![1i64], Vec::<usize>::new());
                let nbt = &self.num_batches_tracked;
                nbt.set_data_(nbt.add(&one)).expect("a whole buffer");
            });
            return;
        }
        let n = self.num_batches_tracked.to_vec::<i64>()[0] + 1;
        let tracked = Tensor::from_vec(vec![n], Vec::<usize>::new());
        let (mean, var) = (mean.to_vec::<f32>(), var.to_vec::<f32>());
        self.running_mean
            .update_f32("BatchNorm running_mean", |r| r.iter_mut().zip(&mean).for_each(|(r, b)| *r += m * (b - *r)))
            .expect("running_mean is a contiguous f32 CPU tensor");
        self.running_var
            .update_f32("BatchNorm running_var", |r| {
                r.iter_mut().zip(&var).for_each(|(r, b)| *r += m * (b * unbias - *r))
            })
            .expect("running_var is a contiguous f32 CPU tensor");
        self.num_batches_tracked.copy_(&tracked).expect("same shape");
    }
}

impl BatchNorm {
    /// The forward pass followed by the elementwise `act`, fused in training
    /// mode ([`Tensor::try_batch_norm_act`]: the activation and its
    /// derivative ride on the normalization's passes); `Sequential` runs
    /// `BatchNorm → ReLU6` (or ReLU, hardtanh) this way. The same values as
    /// the layer and then the activation.
    pub fn forward_activated(&self, x: &Tensor, act: Option<UnaryOp>) -> Tensor {
        crate::module::traced(self, || {
            // x: (N, C, *)
            let c = self.num_features();
            if !(self.ranks.contains(&x.rank()) && x.dims()[1] == c) {
                let rest = if self.ranks == [4] { ", H, W" } else { "[, L]" };
                crate::module::input_error(self, &format!("(N, {c}{rest})"), x.dims());
            }
            if !self.training {
                // Evaluation: one per-channel scale and shift, `x·scale + shift`
                // in one pass (γ and β still get their gradients).
                let (scale, shift) = self.eval_scale_shift_graph();
                return x.try_channel_affine(Some(&scale), Some(&shift), act).unwrap_or_else(|e| panic!("{e}"));
            }
            let count = x.elem_count() / c;
            assert!(
                count > 1,
                "{}: training needs more than one value per channel, got input {:?}",
                self.name,
                x.dims()
            );
            // One fused op: the batch statistics, the normalization and its backward.
            let (y, mean, var) =
                x.try_batch_norm_act(self.weight.as_ref(), self.bias.as_ref(), self.eps, act).unwrap_or_else(|e| {
                    panic!("{}: {e}", self.name);
                });
            with_no_grad(|| self.update_running(&mean, &var, count));
            y
        })
    }
}

impl Module for BatchNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_activated(x, None)
    }

    fn visit_parameters(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        if let Some(w) = &self.weight {
            f(&format!("{prefix}weight"), w);
        }
        if let Some(b) = &self.bias {
            f(&format!("{prefix}bias"), b);
        }
    }

    fn visit_buffers(&self, prefix: &str, f: &mut dyn FnMut(&str, &Tensor)) {
        f(&format!("{prefix}running_mean"), &self.running_mean);
        f(&format!("{prefix}running_var"), &self.running_var);
        f(&format!("{prefix}num_batches_tracked"), &self.num_batches_tracked);
    }

    fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    fn describe(&self) -> String {
        format!("{}({})", self.name, self.num_features())
    }
}
