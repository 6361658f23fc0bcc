//! Callbacks: code that [`Model::fit`](crate::Model::fit) runs at the start
//! and end of training, of every epoch and of every batch, with the network,
//! the optimizer and the figures so far (Keras' `Callback`).
//!
//! Built on it: [`LrScheduler`] (any [`LrSchedule`], per step or per epoch),
//! [`ReduceLrOnPlateau`], [`GradientClipping`], [`CsvLogger`],
//! [`ModelCheckpoint`] (best model) and [`EarlyStopping`].

use crate::{EpochRecord, History};
use firebrand_nn::{Module, ModuleExt, WeightsError};
use firebrand_optim::{LrSchedule, Optimizer, clip_grad_norm, clip_grad_value};
use std::path::PathBuf;

/// Why `fit` stopped or refused to start.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// The training data has no examples.
    #[error("Model::fit: the training data set is empty")]
    EmptyDataset,
    /// An option has a value `fit` cannot use.
    #[error("Model::fit: {option} {problem}")]
    InvalidOption {
        /// The option, e.g. `batch_size`.
        option: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
    /// Training needs an optimizer; this model was built without one.
    #[error("Model::fit: the model has no optimizer (it was built with Model::for_inference)")]
    NoOptimizer,
    /// A checkpoint or log could not be written or read.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// The model's device failed: unavailable, out of memory, or a batch
    /// that could not be moved there.
    #[error("Model::fit: {0}")]
    Device(#[from] firebrand_autograd::Error),
    /// A non-finite loss or gradient stopped training before the update it
    /// would have spoiled (under [`NonFinite::Stop`](crate::NonFinite::Stop),
    /// the default). Epoch, batch and step count from 0.
    #[error(
        "Model::fit: {what} at epoch {epoch}, batch {batch}, optimizer step {step}; training stopped before the update \
         (FitOptions::non_finite = NonFinite::SkipBatch skips such batches instead)"
    )]
    NonFinite {
        /// The epoch.
        epoch: usize,
        /// The batch within the epoch.
        batch: usize,
        /// The optimizer step that was about to be taken.
        step: usize,
        /// What was not finite: the loss, or the first parameter's gradient.
        what: String,
    },
    /// A collective across the ranks of a distributed run failed: a rank
    /// died, stalled or diverged (it is named), or MPI did not start.
    #[error("Model::fit (distributed): {0}")]
    Distributed(String),
    /// The loss refused a batch's targets: a class index out of range (the
    /// position is within the batch), targets of the wrong dtype or shape.
    #[error("Model::fit: the loss of {} batch {batch} (epoch {epoch}, from 0): {source}", stage(*validation))]
    Loss {
        /// The epoch.
        epoch: usize,
        /// The batch within the epoch (or within the validation data).
        batch: usize,
        /// Whether the batch was validation data.
        validation: bool,
        /// What the loss said.
        source: firebrand_autograd::Error,
    },
    /// The network refused a batch: a layer's input of the wrong shape (the
    /// layer and its place in the model are named), or an op's mismatch.
    #[error("Model::fit: the forward pass of {} batch {batch} (epoch {epoch}, from 0): {source}", stage(*validation))]
    Forward {
        /// The epoch.
        epoch: usize,
        /// The batch within the epoch (or within the validation data).
        batch: usize,
        /// Whether the batch was validation data.
        validation: bool,
        /// What the layer or op said.
        source: firebrand_nn::ForwardError,
    },
    /// A callback failed.
    #[error("callback {callback}: {problem}")]
    Callback {
        /// The callback's name.
        callback: &'static str,
        /// What went wrong.
        problem: String,
    },
}

fn stage(validation: bool) -> &'static str {
    if validation { "validation" } else { "training" }
}

/// What a callback sees: the network, its optimizer, the epochs finished so
/// far, and where training stands. Set `stop_training` to end training after
/// the current epoch (Keras' `model.stop_training = True`).
pub struct TrainContext<'a> {
    /// The network being trained.
    pub net: &'a mut dyn Module,
    /// Its optimizer (read or set the learning rate here).
    pub optimizer: &'a mut dyn Optimizer,
    /// The finished epochs, the current one included at `on_epoch_end`.
    pub history: &'a History,
    /// The current epoch, from 0.
    pub epoch: usize,
    /// The number of epochs asked for.
    pub epochs: usize,
    /// Optimizer steps taken so far in the run, counting resumed epochs.
    pub step: usize,
    /// Optimizer steps per epoch (batches divided by gradient accumulation).
    pub steps_per_epoch: usize,
    /// Whether `fit` prints progress.
    pub verbose: bool,
    /// Set to stop after this epoch.
    pub stop_training: bool,
}

/// One batch's figures, for [`Callback::on_batch_end`].
#[derive(Debug, Clone)]
pub struct BatchLogs {
    /// Batch index within the epoch.
    pub batch: usize,
    /// Examples in the batch.
    pub size: usize,
    /// The batch's mean loss, a 0-d tensor on the model's device.
    pub(crate) loss: firebrand_autograd::Tensor,
}

impl BatchLogs {
    /// The batch's mean loss. On a device this waits for the batch's work
    /// to finish (`fit` itself reads losses only when it reports them).
    pub fn loss(&self) -> f32 {
        self.loss.item()
    }
}

/// Hooks into [`Model::fit`](crate::Model::fit); every method has a default
/// that does nothing. An `Err` stops training and is what `fit` returns.
///
/// ```
/// use firebrand_train::{BatchLogs, Callback, FitError, FitOptions, Loss, Model, TrainContext};
/// use firebrand_nn::{Linear, ModuleExt};
/// use firebrand_optim::Sgd;
///
/// /// Counts batches and stops after the first epoch whose loss is under 2.
/// #[derive(Default)]
/// struct Watch { batches: usize }
/// impl Callback for Watch {
///     fn on_batch_end(&mut self, _: &BatchLogs, _: &mut TrainContext) -> Result<(), FitError> {
///         self.batches += 1;
///         Ok(())
///     }
///     fn on_epoch_end(&mut self, logs: &firebrand_train::EpochRecord, ctx: &mut TrainContext) -> Result<(), FitError> {
///         ctx.stop_training = logs.loss < 2.0;
///         Ok(())
///     }
/// }
///
/// let data = firebrand_data::digits();
/// let net = Linear::new(64, 10);
/// let opt = Sgd::new(net.named_parameters(), 0.01);
/// let mut model = Model::new(net, opt, Loss::CROSS_ENTROPY);
/// let mut watch = Watch::default();
/// let opts = FitOptions { epochs: 5, batch_size: 256, verbose: false, ..Default::default() };
/// let history = model.fit_with(&data, &opts, &mut [&mut watch]).unwrap();
/// assert_eq!(watch.batches, history.epochs.len() * 8); // 1797 examples in batches of 256
/// ```
#[allow(unused_variables)]
pub trait Callback {
    /// A short name for error messages.
    fn name(&self) -> &'static str {
        "callback"
    }
    /// Before the first epoch (after a resumed checkpoint is loaded: the
    /// history then holds the epochs already done).
    fn on_train_begin(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        Ok(())
    }
    /// At the start of every epoch.
    fn on_epoch_begin(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        Ok(())
    }
    /// Before each batch's forward pass.
    fn on_batch_begin(&mut self, batch: usize, ctx: &mut TrainContext) -> Result<(), FitError> {
        Ok(())
    }
    /// After the gradients of a step are complete, just before
    /// `optimizer.step()` (gradient clipping, per-step learning rates).
    fn on_before_step(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        Ok(())
    }
    /// After each batch.
    fn on_batch_end(&mut self, logs: &BatchLogs, ctx: &mut TrainContext) -> Result<(), FitError> {
        Ok(())
    }
    /// After each epoch, validation included; `logs` is also the last entry
    /// of `ctx.history`.
    fn on_epoch_end(&mut self, logs: &EpochRecord, ctx: &mut TrainContext) -> Result<(), FitError> {
        Ok(())
    }
    /// After the last epoch, or when training stops early.
    fn on_train_end(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        Ok(())
    }
}

/// The figure a callback watches, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Monitor {
    /// Validation loss, or the training loss when there is no validation (lower is better).
    #[default]
    ValLoss,
    /// Training loss (lower is better).
    Loss,
    /// Validation accuracy (higher is better).
    ValAccuracy,
    /// Training accuracy (higher is better).
    Accuracy,
}

impl Monitor {
    /// The watched figure of an epoch, signed so that lower is better.
    fn score(self, r: &EpochRecord) -> Option<f32> {
        match self {
            Monitor::ValLoss => Some(r.val_loss.unwrap_or(r.loss)),
            Monitor::Loss => Some(r.loss),
            Monitor::ValAccuracy => r.val_accuracy.map(|a| -a),
            Monitor::Accuracy => r.accuracy.map(|a| -a),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::Loss => "loss",
            Monitor::ValAccuracy => "val_accuracy",
            Monitor::Accuracy => "accuracy",
        }
    }

    /// The epoch's score, or an error naming the missing figure.
    fn require(self, r: &EpochRecord, callback: &'static str) -> Result<f32, FitError> {
        self.score(r).ok_or_else(|| FitError::Callback {
            callback,
            problem: format!(
                "monitors {} but epoch {} has none (no validation, or not a classifier)",
                self.name(),
                r.epoch
            ),
        })
    }
}

/// Tracks the best score and the epochs since it, for the plateau-watching callbacks.
#[derive(Debug, Clone, Default)]
struct Plateau {
    best: Option<f32>,
    wait: usize,
}

impl Plateau {
    /// Takes an epoch's score; true when it improves on the best by more than `min_delta`.
    fn update(&mut self, score: f32, min_delta: f32) -> bool {
        let improved = self.best.is_none_or(|b| score < b - min_delta);
        if improved {
            self.best = Some(score);
            self.wait = 0;
        } else {
            self.wait += 1;
        }
        improved
    }
}

/// Sets the learning rate from an [`LrSchedule`] before every optimizer step
/// (`per_step`, the step counted over the whole run) or at the start of every
/// epoch (`per_epoch`). Resumed runs get the same rates.
///
/// ```
/// use firebrand_train::{FitOptions, Loss, LrScheduler, Model};
/// use firebrand_optim::{Sgd, StepLr, Optimizer};
/// use firebrand_nn::{Linear, ModuleExt};
/// let net = Linear::new(64, 10);
/// let opt = Sgd::new(net.named_parameters(), 0.1);
/// let mut model = Model::new(net, opt, Loss::CROSS_ENTROPY);
/// let mut sched = LrScheduler::per_epoch(StepLr { base: 0.1, step_size: 1, gamma: 0.5 });
/// let opts = FitOptions { epochs: 3, batch_size: 512, verbose: false, ..Default::default() };
/// let h = model.fit_with(&firebrand_data::digits(), &opts, &mut [&mut sched]).unwrap();
/// let lrs: Vec<f32> = h.epochs.iter().map(|e| e.lr).collect();
/// assert_eq!(lrs, [0.1, 0.05, 0.025]);
/// ```
pub struct LrScheduler {
    schedule: Box<dyn LrSchedule>,
    per_step: bool,
}

impl LrScheduler {
    /// The rate of optimizer step `t` is `schedule.lr_at(t)`.
    pub fn per_step(schedule: impl LrSchedule + 'static) -> Self {
        LrScheduler { schedule: Box::new(schedule), per_step: true }
    }

    /// The rate of epoch `e` is `schedule.lr_at(e)`.
    pub fn per_epoch(schedule: impl LrSchedule + 'static) -> Self {
        LrScheduler { schedule: Box::new(schedule), per_step: false }
    }
}

impl Callback for LrScheduler {
    fn name(&self) -> &'static str {
        "LrScheduler"
    }
    fn on_epoch_begin(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        if !self.per_step {
            ctx.optimizer.set_lr(self.schedule.lr_at(ctx.epoch));
        }
        Ok(())
    }
    fn on_before_step(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        if self.per_step {
            ctx.optimizer.set_lr(self.schedule.lr_at(ctx.step));
        }
        Ok(())
    }
}

/// Multiplies the learning rate by `factor` when the monitored figure has
/// not improved for `patience` epochs, then waits `cooldown` epochs before
/// watching again; never below `min_lr` (Keras' `ReduceLROnPlateau`,
/// PyTorch's `ReduceLROnPlateau`). On a resumed run it replays the history,
/// so the rate and the count of epochs without improvement carry on.
#[derive(Debug, Clone)]
pub struct ReduceLrOnPlateau {
    /// The watched figure.
    pub monitor: Monitor,
    /// Factor applied to the rate (0 < factor < 1).
    pub factor: f32,
    /// Epochs without improvement before reducing.
    pub patience: usize,
    /// Smallest change that counts as an improvement.
    pub min_delta: f32,
    /// Epochs to wait after a reduction.
    pub cooldown: usize,
    /// Lower bound on the rate.
    pub min_lr: f32,
    state: Plateau,
    cooldown_left: usize,
}

impl ReduceLrOnPlateau {
    /// Halves the rate after `patience` epochs without improvement of the validation loss.
    pub fn new(patience: usize) -> Self {
        ReduceLrOnPlateau {
            monitor: Monitor::ValLoss,
            factor: 0.5,
            patience,
            min_delta: 0.0,
            cooldown: 0,
            min_lr: 0.0,
            state: Plateau::default(),
            cooldown_left: 0,
        }
    }

    /// The factor (builder style).
    pub fn factor(mut self, factor: f32) -> Self {
        self.factor = factor;
        self
    }

    /// The watched figure (builder style).
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = monitor;
        self
    }

    /// The lower bound (builder style).
    pub fn min_lr(mut self, min_lr: f32) -> Self {
        self.min_lr = min_lr;
        self
    }

    /// The cooldown (builder style).
    pub fn cooldown(mut self, epochs: usize) -> Self {
        self.cooldown = epochs;
        self
    }

    /// One epoch's score; `Some(new_lr)` when the rate drops.
    fn observe(&mut self, score: f32, lr: f32) -> Option<f32> {
        let improved = self.state.update(score, self.min_delta);
        if self.cooldown_left > 0 {
            self.cooldown_left -= 1;
            self.state.wait = 0;
            return None;
        }
        if !improved && self.state.wait >= self.patience {
            self.state.wait = 0;
            self.cooldown_left = self.cooldown;
            let new = (lr * self.factor).max(self.min_lr);
            return (new < lr).then_some(new);
        }
        None
    }
}

impl Callback for ReduceLrOnPlateau {
    fn name(&self) -> &'static str {
        "ReduceLrOnPlateau"
    }
    fn on_train_begin(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        if !(self.factor > 0.0 && self.factor < 1.0) {
            return Err(FitError::Callback {
                callback: self.name(),
                problem: format!("factor must be in (0, 1), got {}", self.factor),
            });
        }
        (self.state, self.cooldown_left) = (Plateau::default(), 0);
        let mut lr = None;
        for r in &ctx.history.epochs {
            let score = self.monitor.require(r, "ReduceLrOnPlateau")?;
            lr = Some(self.observe(score, r.lr).unwrap_or(r.lr));
        }
        if let Some(lr) = lr {
            ctx.optimizer.set_lr(lr);
        }
        Ok(())
    }
    fn on_epoch_end(&mut self, logs: &EpochRecord, ctx: &mut TrainContext) -> Result<(), FitError> {
        let score = self.monitor.require(logs, self.name())?;
        if let Some(lr) = self.observe(score, ctx.optimizer.lr()) {
            if ctx.verbose {
                println!("ReduceLrOnPlateau: learning rate {} -> {lr}", ctx.optimizer.lr());
            }
            ctx.optimizer.set_lr(lr);
        }
        Ok(())
    }
}

/// Clips the gradients before every optimizer step: their global L2 norm to
/// at most `max_norm` (`torch.nn.utils.clip_grad_norm_`), or every element
/// into `[-v, v]` (`clip_grad_value_`). `FitOptions::clip_grad_norm` installs one.
#[derive(Debug, Clone, Copy)]
pub struct GradientClipping {
    by_norm: bool,
    limit: f32,
    last_norm: Option<f32>,
}

impl GradientClipping {
    /// Clip the global norm to `max_norm`.
    pub fn norm(max_norm: f32) -> Self {
        GradientClipping { by_norm: true, limit: max_norm, last_norm: None }
    }

    /// Clamp each element into `[-value, value]`.
    pub fn value(value: f32) -> Self {
        GradientClipping { by_norm: false, limit: value, last_norm: None }
    }

    /// The global norm before the last clip by norm.
    pub fn last_norm(&self) -> Option<f32> {
        self.last_norm
    }
}

impl Callback for GradientClipping {
    fn name(&self) -> &'static str {
        "GradientClipping"
    }
    fn on_train_begin(&mut self, _: &mut TrainContext) -> Result<(), FitError> {
        if self.limit.is_nan() || self.limit <= 0.0 {
            return Err(FitError::Callback {
                callback: self.name(),
                problem: format!("limit must be positive, got {}", self.limit),
            });
        }
        Ok(())
    }
    fn on_before_step(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        let params = ctx.net.parameters();
        if self.by_norm {
            self.last_norm = Some(clip_grad_norm(&params, self.limit));
        } else {
            clip_grad_value(&params, self.limit);
        }
        Ok(())
    }
}

/// Writes the history as CSV after every epoch, atomically (Keras' `CSVLogger`).
/// A resumed run rewrites the whole file, so it always matches the history.
#[derive(Debug, Clone)]
pub struct CsvLogger {
    path: PathBuf,
}

impl CsvLogger {
    /// Logs to `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CsvLogger { path: path.into() }
    }
}

impl Callback for CsvLogger {
    fn name(&self) -> &'static str {
        "CsvLogger"
    }
    fn on_epoch_end(&mut self, _: &EpochRecord, ctx: &mut TrainContext) -> Result<(), FitError> {
        let text = ctx.history.to_csv();
        firebrand_nn::serialize::write_atomic(&self.path, text.as_bytes())?;
        Ok(())
    }
}

/// Saves the network's weights (safetensors, atomically) after every epoch,
/// or only when the monitored figure improves (`save_best_only`, the
/// default): the best model so far is always on disk (Keras' `ModelCheckpoint`).
#[derive(Debug, Clone)]
pub struct ModelCheckpoint {
    path: PathBuf,
    monitor: Monitor,
    best_only: bool,
    state: Plateau,
    best_epoch: Option<usize>,
}

impl ModelCheckpoint {
    /// Saves the best model by validation loss to `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ModelCheckpoint {
            path: path.into(),
            monitor: Monitor::ValLoss,
            best_only: true,
            state: Plateau::default(),
            best_epoch: None,
        }
    }

    /// The watched figure (builder style).
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = monitor;
        self
    }

    /// Save every epoch (`false`) or only improvements (`true`).
    pub fn save_best_only(mut self, on: bool) -> Self {
        self.best_only = on;
        self
    }

    /// The epoch whose weights were saved last.
    pub fn best_epoch(&self) -> Option<usize> {
        self.best_epoch
    }
}

impl Callback for ModelCheckpoint {
    fn name(&self) -> &'static str {
        "ModelCheckpoint"
    }
    fn on_train_begin(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        self.state = Plateau::default();
        for r in &ctx.history.epochs {
            if self.state.update(self.monitor.require(r, "ModelCheckpoint")?, 0.0) {
                self.best_epoch = Some(r.epoch);
            }
        }
        Ok(())
    }
    fn on_epoch_end(&mut self, logs: &EpochRecord, ctx: &mut TrainContext) -> Result<(), FitError> {
        let improved = self.state.update(self.monitor.require(logs, self.name())?, 0.0);
        if improved || !self.best_only {
            firebrand_nn::save_weights(&*ctx.net, &self.path)?;
            self.best_epoch = Some(logs.epoch);
        }
        Ok(())
    }
}

/// Stops training when the monitored figure (by default the validation
/// loss, else the training loss) has not improved by more than `min_delta`
/// for `patience` epochs; with `restore_best`, the best epoch's weights and
/// buffers are put back at the end (Keras' `EarlyStopping`).
///
/// On a resumed run the count of epochs without improvement carries on from
/// the history; the best weights can be restored only if that epoch ran in
/// this call (pair it with [`ModelCheckpoint`] to keep them on disk).
#[derive(Debug, Clone)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Smallest change that counts as an improvement.
    pub min_delta: f32,
    /// Restore the best weights at the end.
    pub restore_best: bool,
    /// The watched figure.
    pub monitor: Monitor,
    state: Plateau,
    snapshot: Option<Vec<firebrand_autograd::Tensor>>,
    stopped_at: Option<usize>,
}

impl EarlyStopping {
    /// Stops after `patience` epochs without improvement of the validation loss.
    pub fn new(patience: usize) -> Self {
        EarlyStopping {
            patience,
            min_delta: 0.0,
            restore_best: false,
            monitor: Monitor::ValLoss,
            state: Plateau::default(),
            snapshot: None,
            stopped_at: None,
        }
    }

    /// The smallest improvement (builder style).
    pub fn min_delta(mut self, d: f32) -> Self {
        self.min_delta = d;
        self
    }

    /// Restore the best weights at the end (builder style).
    pub fn restore_best(mut self, on: bool) -> Self {
        self.restore_best = on;
        self
    }

    /// The watched figure (builder style).
    pub fn monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = monitor;
        self
    }

    /// The epoch after which training stopped, if it stopped early.
    pub fn stopped_at(&self) -> Option<usize> {
        self.stopped_at
    }
}

impl Callback for EarlyStopping {
    fn name(&self) -> &'static str {
        "EarlyStopping"
    }
    fn on_train_begin(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        (self.state, self.snapshot, self.stopped_at) = (Plateau::default(), None, None);
        for r in &ctx.history.epochs {
            self.state.update(self.monitor.require(r, "EarlyStopping")?, self.min_delta);
        }
        Ok(())
    }
    fn on_epoch_end(&mut self, logs: &EpochRecord, ctx: &mut TrainContext) -> Result<(), FitError> {
        if self.state.update(self.monitor.require(logs, self.name())?, self.min_delta) {
            if self.restore_best {
                self.snapshot = Some(ctx.net.state_dict().iter().map(|(_, t)| t.detach_copy()).collect());
            }
        } else if self.state.wait >= self.patience {
            if ctx.verbose {
                println!("early stopping after epoch {}", logs.epoch + 1);
            }
            self.stopped_at = Some(logs.epoch);
            ctx.stop_training = true;
        }
        Ok(())
    }
    fn on_train_end(&mut self, ctx: &mut TrainContext) -> Result<(), FitError> {
        if let Some(snapshot) = self.snapshot.take() {
            for ((name, t), s) in ctx.net.state_dict().iter().zip(&snapshot) {
                t.copy_(s).map_err(|e| FitError::Callback {
                    callback: "EarlyStopping",
                    problem: format!("restoring {name}: {e}"),
                })?;
            }
        }
        Ok(())
    }
}
