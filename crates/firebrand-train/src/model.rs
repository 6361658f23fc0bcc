//! The Keras-like `Model`: a network, an optimizer and a loss, with `fit`,
//! `evaluate` and `predict`.

use crate::callbacks::{BatchLogs, Callback, EarlyStopping, FitError, GradientClipping, TrainContext};
use crate::checkpoint::load_state;
use crate::{ClassificationMetrics, Distributed, EpochRecord, History};
use firebrand_autograd::{DType, Tensor, manual_seed, with_no_grad};
use firebrand_data::{DataLoader, Dataset, DistributedSampler, Transform, random_split};
use firebrand_nn::loss::{Reduction, Target, binary_cross_entropy_with_logits, cross_entropy, mse_loss};
use firebrand_nn::serialize::write_atomic;
use firebrand_nn::{Module, ModuleExt, WeightsError};
use firebrand_optim::Optimizer;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// Cross-entropy from logits; targets are `i64` class indices or `f32`
    /// probabilities. Accuracy is reported.
    CrossEntropy {
        /// Label smoothing ε.
        label_smoothing: f32,
    },
    /// Mean squared error.
    Mse,
    /// Binary cross-entropy from logits.
    BinaryCrossEntropyWithLogits,
}

impl Loss {
    /// Cross-entropy without label smoothing.
    pub const CROSS_ENTROPY: Loss = Loss::CrossEntropy { label_smoothing: 0.0 };

    /// The mean loss of `output` against `target`.
    ///
    /// # Panics
    /// When the target does not fit the output; see [`Loss::try_compute`].
    pub fn compute(&self, output: &Tensor, target: &Tensor) -> Tensor {
        self.try_compute(output, target).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Loss::compute`], returning an error instead of panicking.
    ///
    /// # Errors
    /// When the target does not fit the output (naming the shapes), or holds a
    /// class index out of range (naming the value and its position).
    pub fn try_compute(&self, output: &Tensor, target: &Tensor) -> firebrand_autograd::Result<Tensor> {
        match *self {
            Loss::CrossEntropy { label_smoothing } => {
                let t = if target.dtype() == DType::I64 { Target::Indices(target) } else { Target::Probs(target) };
                cross_entropy(output, t, label_smoothing, Reduction::Mean)
            }
            Loss::Mse => mse_loss(output, target, Reduction::Mean),
            Loss::BinaryCrossEntropyWithLogits => binary_cross_entropy_with_logits(output, target, Reduction::Mean),
        }
    }

    fn is_classification(&self) -> bool {
        matches!(self, Loss::CrossEntropy { .. })
    }
}

/// What [`Model::fit`] and [`Model::evaluate`] read: any [`Dataset`]
/// (batched by [`FitOptions`]), or a [`DataLoader`] used as it is (its
/// batch size, order and transform).
///
/// `&data` for any `Dataset + Clone` converts (a `TensorDataset`'s clone
/// shares its tensors), as do `Arc<dyn Dataset>` and a `DataLoader`.
#[derive(Clone)]
pub enum Data {
    /// A data set, batched by the options.
    Dataset(Arc<dyn Dataset>),
    /// A ready loader.
    Loader(DataLoader),
}

impl<D: Dataset + Clone + 'static> From<&D> for Data {
    fn from(d: &D) -> Data {
        Data::Dataset(Arc::new(d.clone()))
    }
}

impl From<Arc<dyn Dataset>> for Data {
    fn from(d: Arc<dyn Dataset>) -> Data {
        Data::Dataset(d)
    }
}

impl From<DataLoader> for Data {
    fn from(l: DataLoader) -> Data {
        Data::Loader(l)
    }
}

impl Data {
    fn dataset(&self) -> &Arc<dyn Dataset> {
        match self {
            Data::Dataset(d) => d,
            Data::Loader(l) => l.dataset(),
        }
    }
}

/// Where validation figures come from.
#[derive(Clone, Default)]
pub enum Validation {
    /// No validation.
    #[default]
    None,
    /// A seeded split of this fraction of the training data, in (0, 1)
    /// (Keras' `validation_split`, but shuffled). Not with a `DataLoader`:
    /// split the data set before building it.
    Split(f32),
    /// A separate data set (see [`Validation::data`]).
    Data(Arc<dyn Dataset>),
}

impl Validation {
    /// Validates on `data`.
    pub fn data(data: impl Dataset + 'static) -> Validation {
        Validation::Data(Arc::new(data))
    }
}

/// What [`Model::fit`] does when a batch's loss or gradient holds a NaN or an
/// infinity (Keras' `TerminateOnNaN`, and more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonFinite {
    /// Stop with [`FitError::NonFinite`], naming the epoch, the batch, the
    /// step, and the loss or the first parameter whose gradient is not
    /// finite. The parameters keep the values of the last good step.
    #[default]
    Stop,
    /// Skip the batch (no backward pass for a bad loss, no update for a bad
    /// gradient) and count it in [`EpochRecord::skipped_batches`].
    SkipBatch,
    /// No checks (PyTorch's behaviour): saves one read of the loss and one
    /// reduction per gradient each step, and trains on whatever comes.
    Ignore,
}

/// Options of [`Model::fit`].
#[derive(Clone)]
pub struct FitOptions {
    /// Number of epochs.
    pub epochs: usize,
    /// Examples per batch (ignored when `fit` is given a `DataLoader`).
    pub batch_size: usize,
    /// Shuffle every epoch (seeded; ignored for a `DataLoader`).
    pub shuffle: bool,
    /// Seeds shuffling, the validation split and, per epoch, the generator that
    /// dropout and initializers draw from — so a run and its resumption agree.
    pub seed: u64,
    /// Validation data.
    pub validation: Validation,
    /// Show a progress bar and per-epoch lines.
    pub verbose: bool,
    /// Early stopping (a [`EarlyStopping`] callback run after the others).
    pub early_stopping: Option<EarlyStopping>,
    /// Clip the gradients' global L2 norm to this before every step (a
    /// [`GradientClipping`] callback run after the others).
    pub clip_grad_norm: Option<f32>,
    /// Write a checkpoint (weights, optimizer state, history) here after every epoch, atomically.
    pub checkpoint: Option<PathBuf>,
    /// Continue from `checkpoint` when it exists.
    pub resume: bool,
    /// Batches assembled ahead on a background thread (ignored for a `DataLoader`).
    pub prefetch: usize,
    /// Applied to every training batch's inputs (augmentation); validation
    /// and evaluation see the data as it is. Ignored for a `DataLoader`.
    pub transform: Option<Arc<dyn Transform>>,
    /// Gradient accumulation: one optimizer step per this many batches (the
    /// losses averaged), for an effective batch `batch_size · accumulate`
    /// with the memory of one batch. 1 (the default) steps every batch.
    pub accumulate: usize,
    /// What to do with a non-finite loss or gradient: stop (the default),
    /// skip the batch, or nothing.
    pub non_finite: NonFinite,
    /// Train under [`detect_anomaly`](firebrand_autograd::detect_anomaly): the
    /// first op to produce a NaN or inf, forward or backward, is named with
    /// its call site ([`FitError::Device`] for the backward pass, a panic for
    /// the forward). Slow; for finding a NaN.
    pub detect_anomaly: bool,
    /// Data-parallel training across the processes of an MPI job: by default
    /// when launched by `mpirun` with more than one process (see
    /// [`Distributed`]). `batch_size` is then per process.
    pub distributed: Distributed,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            epochs: 1,
            batch_size: 32,
            shuffle: true,
            seed: 0,
            validation: Validation::None,
            verbose: true,
            early_stopping: None,
            clip_grad_norm: None,
            checkpoint: None,
            resume: false,
            prefetch: 2,
            transform: None,
            accumulate: 1,
            non_finite: NonFinite::Stop,
            detect_anomaly: false,
            distributed: Distributed::Auto,
        }
    }
}

/// Loss and (for classifiers) accuracy and the full metrics of an evaluation.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Mean loss.
    pub loss: f32,
    /// Classification metrics, for classifiers with index targets.
    pub metrics: Option<ClassificationMetrics>,
}

/// A network with its optimizer and loss (Keras' compiled `Model`).
pub struct Model<M: Module> {
    /// The network.
    pub net: M,
    /// The optimizer over the network's parameters; `None` for a model
    /// built only to evaluate and predict ([`Model::for_inference`]).
    pub optimizer: Option<Box<dyn Optimizer>>,
    /// The objective.
    pub loss: Loss,
}

fn bar(len: usize, verbose: bool, epoch: usize, epochs: usize) -> ProgressBar {
    if !verbose {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(format!("{}/{}", epoch + 1, epochs));
    pb
}

fn invalid(option: &'static str, problem: impl Into<String>) -> FitError {
    FitError::InvalidOption { option, problem: problem.into() }
}

impl<M: Module> Model<M> {
    /// Bundles a network, an optimizer over its parameters and a loss.
    pub fn new(net: M, optimizer: impl Optimizer + 'static, loss: Loss) -> Self {
        Model { net, optimizer: Some(Box::new(optimizer)), loss }
    }

    /// A model that only evaluates and predicts: no optimizer needed
    /// (`fit` then returns [`FitError::NoOptimizer`]).
    ///
    /// ```
    /// use firebrand_train::{Loss, Model};
    /// use firebrand_nn::Linear;
    /// use firebrand_autograd::Tensor;
    /// let mut model = Model::for_inference(Linear::new(4, 3), Loss::CROSS_ENTROPY);
    /// assert_eq!(model.predict(&Tensor::zeros([10, 4]), 4).dims(), &[10, 3]);
    /// ```
    pub fn for_inference(net: M, loss: Loss) -> Self {
        Model { net, optimizer: None, loss }
    }

    /// The optimizer, when there is one.
    pub fn optimizer_mut(&mut self) -> Option<&mut (dyn Optimizer + 'static)> {
        self.optimizer.as_deref_mut()
    }

    /// Trains for `opts.epochs` epochs and returns the per-epoch figures
    /// (Keras' `model.fit`). `data` is any [`Dataset`] (`&train`) or a
    /// [`DataLoader`]; see [`Data`].
    ///
    /// A data set of your own, a per-step learning-rate schedule and
    /// gradient clipping:
    ///
    /// ```
    /// use firebrand_train::{FitOptions, GradientClipping, Loss, LrScheduler, Model};
    /// use firebrand_optim::{CosineWithWarmup, Sgd};
    /// use firebrand_nn::{Linear, ModuleExt};
    /// use firebrand_data::Dataset;
    /// use firebrand_autograd::{Tensor, manual_seed};
    ///
    /// /// 64 points of y = 2x + 1 on [0, 1).
    /// #[derive(Clone)]
    /// struct Line;
    /// impl Dataset for Line {
    ///     fn len(&self) -> usize { 64 }
    ///     fn get(&self, i: usize) -> (Tensor, Tensor) {
    ///         let x = i as f32 / 64.0;
    ///         (Tensor::from_vec(vec![x], [1]), Tensor::from_vec(vec![2.0 * x + 1.0], [1]))
    ///     }
    /// }
    ///
    /// manual_seed(0);
    /// let net = Linear::new(1, 1);
    /// let opt = Sgd::with_options(net.named_parameters(), 0.5, 0.9, 0.0, false, 0.0);
    /// let mut model = Model::new(net, opt, Loss::Mse);
    /// let mut schedule = LrScheduler::per_step(CosineWithWarmup { base: 0.5, warmup: 10, total: 300, min_lr: 0.01 });
    /// let mut clip = GradientClipping::norm(1.0);
    /// let opts = FitOptions { epochs: 100, batch_size: 16, verbose: false, ..Default::default() };
    /// let history = model.fit_with(&Line, &opts, &mut [&mut schedule, &mut clip]).unwrap();
    /// assert!(history.epochs.last().unwrap().loss < 1e-4);
    /// assert!((model.net.weight.item() - 2.0).abs() < 0.02 && (history.epochs[99].lr - 0.01).abs() < 1e-6);
    /// ```
    ///
    /// # Errors
    /// Before training: an empty data set, a batch size of 0,
    /// `Validation::Split` outside (0, 1) or with a `DataLoader`, no
    /// optimizer. During training: a checkpoint that cannot be written or
    /// resumed from, or a failing callback.
    pub fn fit(&mut self, data: impl Into<Data>, opts: &FitOptions) -> Result<History, FitError> {
        self.fit_with(data, opts, &mut [])
    }

    /// [`Model::fit`] with callbacks, run in the order given (then the
    /// early-stopping and clipping callbacks the options ask for).
    ///
    /// # Errors
    /// As [`Model::fit`].
    pub fn fit_with(
        &mut self,
        data: impl Into<Data>,
        opts: &FitOptions,
        callbacks: &mut [&mut dyn Callback],
    ) -> Result<History, FitError> {
        let data = data.into();
        if self.optimizer.is_none() {
            return Err(FitError::NoOptimizer);
        }
        if data.dataset().is_empty() {
            return Err(FitError::EmptyDataset);
        }
        if let Validation::Split(f) = opts.validation
            && !(f > 0.0 && f < 1.0)
        {
            return Err(invalid("validation", format!("Validation::Split({f}) must be a fraction in (0, 1)")));
        }
        let (train, val): (DataLoader, Option<Arc<dyn Dataset>>) = match data {
            Data::Loader(l) => {
                let val = match &opts.validation {
                    Validation::None => None,
                    Validation::Split(_) => {
                        return Err(invalid(
                            "validation",
                            "Validation::Split cannot split a DataLoader; split the data set (random_split) before building the loader",
                        ));
                    }
                    Validation::Data(v) => Some(Arc::clone(v)),
                };
                (l, val)
            }
            Data::Dataset(ds) => {
                if opts.batch_size == 0 {
                    return Err(invalid("batch_size", "must be at least 1, got 0"));
                }
                let (train, val): (Arc<dyn Dataset>, _) = match &opts.validation {
                    Validation::None => (ds, None),
                    Validation::Split(f) => {
                        let (t, v) = random_split(ds, *f, opts.seed);
                        (Arc::new(t), Some(Arc::new(v) as Arc<dyn Dataset>))
                    }
                    Validation::Data(v) => (ds, Some(Arc::clone(v))),
                };
                if train.is_empty() {
                    return Err(FitError::EmptyDataset);
                }
                let mut loader = DataLoader::new_shared(train, opts.batch_size).prefetch(opts.prefetch);
                if opts.shuffle {
                    loader = loader.shuffle(opts.seed);
                }
                if let Some(t) = &opts.transform {
                    loader = loader.transform_shared(Arc::clone(t));
                }
                (loader, val)
            }
        };
        let mut dist = opts.distributed.resolve()?;
        let train = match &dist {
            Some(d) if train.distributed_sampler().is_none() => {
                train.sampler(DistributedSampler::new(0, d.rank(), d.world_size()))
            }
            _ => train,
        };
        let val_batch = train.batch_size();
        let mut history = History::default();
        let mut start = 0;
        if let (Some(path), true) = (&opts.checkpoint, opts.resume)
            && path.exists()
        {
            // Every rank reads the checkpoint rank 0 wrote (a shared file system).
            history = self.load_checkpoint(path)?;
            start = history.epochs.len();
        }
        let is_main = dist.as_ref().is_none_or(|d| d.rank() == 0);
        // Only rank 0 reports.
        let verbose = opts.verbose && is_main;
        if let Some(d) = &mut dist {
            d.attach(&self.net)?;
        }

        let mut own: Vec<Box<dyn Callback>> = Vec::new();
        if let Some(es) = &opts.early_stopping {
            own.push(Box::new(es.clone()));
        }
        if let Some(max) = opts.clip_grad_norm {
            own.push(Box::new(GradientClipping::norm(max)));
        }
        let mut cbs: Vec<&mut dyn Callback> = callbacks.iter_mut().map(|c| &mut **c).collect();
        cbs.extend(own.iter_mut().map(|c| &mut **c as &mut dyn Callback));

        let (accum, n_batches) = (opts.accumulate.max(1), train.num_batches());
        let steps_per_epoch = n_batches.div_ceil(accum);
        let Model { net, optimizer, loss: objective } = self;
        let opt = optimizer.as_deref_mut().expect("checked above");
        // Training runs where the network's parameters are (Model::to_device).
        let device = net.device();
        let (mut step, mut stop, mut epoch) = (start * steps_per_epoch, false, start);
        // Calls one hook on every callback with a fresh view of the state.
        macro_rules! hook {
            ($method:ident ( $($arg:expr),* )) => {{
                let mut ctx = TrainContext {
                    net: &mut *net,
                    optimizer: &mut *opt,
                    history: &history,
                    epoch,
                    epochs: opts.epochs,
                    step,
                    steps_per_epoch,
                    verbose,
                    stop_training: stop,
                };
                for cb in cbs.iter_mut() {
                    cb.$method($($arg,)* &mut ctx)?;
                }
                #[allow(unused_assignments)]
                {
                    stop = ctx.stop_training;
                }
            }};
        }
        let _anomaly = opts.detect_anomaly.then(firebrand_autograd::detect_anomaly);
        hook!(on_train_begin());
        while epoch < opts.epochs && !stop {
            // Dropout masks and anything else drawn from the generator depend on
            // (seed, epoch) only, so resuming at an epoch boundary is exact.
            manual_seed(opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch as u64));
            net.train();
            hook!(on_epoch_begin());
            let pb = bar(n_batches, verbose, epoch, opts.epochs);
            let t0 = Instant::now();
            let (mut totals, mut seen, mut classify) = (Totals::new(device), 0usize, false);
            // Batches skipped this epoch, and those whose gradients the pending step holds.
            let (mut skipped, mut pending) = (0usize, 0usize);
            let check = opts.non_finite != NonFinite::Ignore;
            for (i, (x, y)) in train.epoch(epoch).enumerate() {
                hook!(on_batch_begin(i));
                // Batches come from the host; the model's device gets them.
                let (x, y) = (x.to_device(device)?, y.to_device(device)?);
                let out = net.try_forward(&x).map_err(|source| FitError::Forward {
                    epoch,
                    batch: i,
                    validation: false,
                    source,
                })?;
                let loss = objective.try_compute(&out, &y).map_err(|source| FitError::Loss {
                    epoch,
                    batch: i,
                    validation: false,
                    source,
                })?;
                if i % accum == 0 {
                    opt.zero_grad();
                    pending = 0;
                }
                // Read once here: the epoch's host totals take it too.
                let loss_value = check.then(|| loss.to_dtype(DType::F32).item());
                let bad_loss = loss_value.filter(|v| !v.is_finite());
                let last_micro = (i + 1) % accum == 0 || i + 1 == n_batches;
                if let Some(d) = &dist {
                    // Gradients are averaged on the step's last micro-batch only.
                    d.set_sync(last_micro);
                }
                // Distributed, every rank runs every backward (the all-reduces
                // must match); a bad loss then shows in the averaged gradients.
                if let Some(v) = bad_loss.filter(|_| dist.is_none()) {
                    if opts.non_finite == NonFinite::Stop {
                        return Err(FitError::NonFinite {
                            epoch,
                            batch: i,
                            step,
                            what: format!("non-finite loss ({v})"),
                        });
                    }
                    skipped += 1;
                } else {
                    // Mean over the accumulated batches (equal-sized ones give the
                    // gradient of one batch `accum` times larger).
                    let scaled = if accum > 1 { loss.affine(1.0 / accum as f32, 0.0) } else { loss.clone() };
                    scaled.try_backward()?;
                    pending += 1;
                }
                if last_micro {
                    let bad_grad = if check && pending > 0 { first_non_finite_grad(&*net) } else { None };
                    match bad_grad {
                        Some((name, v)) if opts.non_finite == NonFinite::Stop => {
                            return Err(FitError::NonFinite {
                                epoch,
                                batch: i,
                                step,
                                what: match (&dist, bad_loss) {
                                    (None, _) => format!("non-finite gradient ({v}) in parameter `{name}`"),
                                    (Some(d), l) => format!(
                                        "non-finite gradient ({v}) in parameter `{name}` (averaged over {} ranks{})",
                                        d.world_size(),
                                        l.map(|l| format!("; this rank's loss was {l}")).unwrap_or_default()
                                    ),
                                },
                            });
                        }
                        Some(_) => {
                            skipped += pending;
                            opt.zero_grad();
                        }
                        None if pending > 0 => {
                            hook!(on_before_step());
                            opt.step();
                        }
                        None => {}
                    }
                    // The step's slot is used even when skipped, so a resumed
                    // run's step count (and learning-rate schedule) agrees.
                    step += 1;
                }
                pb.inc(1);
                if bad_loss.is_some() {
                    continue;
                }
                let n = x.dims()[0];
                let loss = loss.detach();
                seen += n;
                let labels = objective.is_classification() && y.dtype() == DType::I64;
                classify |= labels;
                totals.add(&loss, loss_value, n, labels.then_some((&out, &y)));
                hook!(on_batch_end(&BatchLogs { batch: i, size: n, loss: loss.clone() }));
                if opts.verbose && pb.position().is_multiple_of(20) {
                    pb.set_message(format!("loss {:.4}", totals.loss_sum() / seen as f64));
                }
            }
            let train_seconds = t0.elapsed().as_secs_f64();
            pb.finish_and_clear();
            // Summed over the ranks when distributed.
            let mut sums = [totals.loss_sum(), seen as f64, totals.correct() as f64, skipped as f64];
            if let Some(d) = &dist {
                d.sum(&mut sums)?;
                d.sync_buffers(&*net)?;
            }
            let [loss_sum, seen, correct, skipped] = sums;
            let mut record = EpochRecord {
                epoch,
                loss: (loss_sum / seen.max(1.0)) as f32,
                accuracy: classify.then(|| (correct / seen.max(1.0)) as f32),
                val_loss: None,
                val_accuracy: None,
                train_seconds,
                lr: opt.lr(),
                skipped_batches: skipped as usize,
            };
            if let Some(v) = &val {
                let mut loader = DataLoader::new_shared(Arc::clone(v), val_batch);
                if let Some(d) = &dist {
                    // Each rank evaluates its part; every example counts once.
                    loader = loader.sampler(DistributedSampler::new(0, d.rank(), d.world_size()).pad(false));
                }
                let e = evaluate_loader(net, *objective, &loader).map_err(|(batch, f)| match f {
                    BatchFailure::Forward(source) => FitError::Forward { epoch, batch, validation: true, source },
                    BatchFailure::Loss(source) => FitError::Loss { epoch, batch, validation: true, source },
                })?;
                let n = loader.distributed_sampler().map_or(v.len(), |s| s.num_samples()) as f64;
                let mut sums = [e.loss as f64 * n, n, e.metrics.as_ref().map_or(0.0, |m| m.accuracy as f64 * n)];
                if let Some(d) = &dist {
                    d.sum(&mut sums)?;
                }
                record.val_loss = Some((sums[0] / sums[1].max(1.0)) as f32);
                record.val_accuracy = e.metrics.map(|_| (sums[2] / sums[1].max(1.0)) as f32);
            }
            if verbose {
                println!("{}", format_record(&record, opts.epochs));
            }
            history.epochs.push(record.clone());
            if let Some(path) = &opts.checkpoint {
                if is_main {
                    write_checkpoint(path, &*net, &*opt, &history)?;
                }
                if let Some(d) = &dist {
                    // No rank runs ahead of a checkpoint it might resume from.
                    d.barrier()?;
                }
            }
            hook!(on_epoch_end(&record));
            epoch += 1;
        }
        hook!(on_train_end());
        Ok(history)
    }

    /// Mean loss and, for classifiers, the metrics over `data` (evaluation
    /// mode, no gradients; Keras' `model.evaluate`). `data` is any
    /// [`Dataset`] or a [`DataLoader`] (whose batch size is then used).
    ///
    /// ```
    /// use firebrand_train::{Loss, Model};
    /// use firebrand_nn::Linear;
    /// let mut model = Model::for_inference(Linear::new(64, 10), Loss::CROSS_ENTROPY);
    /// let e = model.evaluate(&firebrand_data::digits(), 512);
    /// let m = e.metrics.unwrap(); // an untrained classifier: near chance
    /// assert!(e.loss > 1.0 && m.accuracy < 0.5);
    /// assert_eq!(m.confusion.iter().flatten().sum::<usize>(), 1797);
    /// ```
    ///
    /// # Panics
    /// When `batch_size` is 0 for a data set, and when the network or the
    /// loss refuses a batch (the message names the batch, then the layer or
    /// the loss and the shapes or the target).
    pub fn evaluate(&mut self, data: impl Into<Data>, batch_size: usize) -> Evaluation {
        let loader = match data.into() {
            Data::Dataset(d) => DataLoader::new_shared(d, batch_size),
            Data::Loader(l) => l,
        };
        evaluate_loader(&mut self.net, self.loss, &loader).unwrap_or_else(|(batch, f)| match f {
            BatchFailure::Forward(e) => panic!("Model::evaluate: the forward pass of batch {batch}: {e}"),
            BatchFailure::Loss(e) => panic!("Model::evaluate: the loss of batch {batch}: {e}"),
        })
    }

    /// The network's outputs for `x` `(N, …)`, in batches of `batch_size`,
    /// in evaluation mode without gradients (Keras' `model.predict`). The
    /// network is back in training mode afterwards.
    ///
    /// ```
    /// use firebrand_train::{Loss, Model};
    /// use firebrand_nn::{Dropout, Linear, Module, Sequential};
    /// use firebrand_autograd::Tensor;
    /// let net = Sequential::new().add(Linear::new(4, 8)).add(Dropout::new(0.5)).add(Linear::new(8, 3));
    /// let mut model = Model::for_inference(net, Loss::CROSS_ENTROPY);
    /// let x = Tensor::randn([10, 4], 0.0, 1.0);
    /// let (a, b) = (model.predict(&x, 4), model.predict(&x, 10));
    /// assert_eq!(a.dims(), &[10, 3]);
    /// assert_eq!(a.to_vec::<f32>(), b.to_vec::<f32>()); // dropout is off, batching changes nothing
    /// let classes = a.argmax(-1, false); // (10,) i64
    /// # let _ = classes;
    /// ```
    ///
    /// # Panics
    /// When `batch_size` is 0.
    pub fn predict(&mut self, x: &Tensor, batch_size: usize) -> Tensor {
        assert!(batch_size > 0, "Model::predict: batch_size must be positive");
        self.net.eval();
        let device = self.net.device();
        let out = with_no_grad(|| {
            let n = x.dims()[0];
            let batch = |s: usize| x.narrow(0, s, batch_size.min(n - s)).to_device(device).expect("the model's device");
            let parts: Vec<Tensor> = (0..n).step_by(batch_size).map(|s| self.net.forward(&batch(s))).collect();
            let refs: Vec<&Tensor> = parts.iter().collect();
            Tensor::cat(&refs, 0)
        });
        self.net.train();
        out
    }

    /// Moves the network's parameters and buffers to `device` (PyTorch's
    /// `model.to(device)`): `fit`, `evaluate` and `predict` then move each
    /// batch there, and the optimizer's state follows the parameters at its
    /// next step. `predict` returns its output on the device.
    ///
    /// # Errors
    /// When the device is unavailable or out of memory.
    pub fn to_device(&mut self, device: firebrand_autograd::Device) -> Result<(), FitError> {
        Ok(self.net.to_device(device)?)
    }

    /// Writes weights (`model.*`), optimizer state (`optim.*`) and the history
    /// (in the file's metadata) to one checkpoint, atomically, with its format
    /// version and checksum; a copy of the history goes beside it as
    /// `<path>.history.json` for reading.
    ///
    /// # Errors
    /// When a file cannot be written, or the model has no optimizer.
    pub fn save_checkpoint(&self, path: &Path, history: &History) -> Result<(), FitError> {
        let opt = self.optimizer.as_deref().ok_or(FitError::NoOptimizer)?;
        write_checkpoint(path, &self.net, opt, history)
    }

    /// Restores a checkpoint written by [`Model::save_checkpoint`] and returns its history.
    ///
    /// # Errors
    /// When a file is missing or malformed, or does not fit this model and
    /// optimizer, or the model has no optimizer.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<History, FitError> {
        let opt = self.optimizer.as_deref_mut().ok_or(FitError::NoOptimizer)?;
        // Checked before anything changes: the history must be there and parse.
        let format = |msg: String| WeightsError::Format { path: path.to_path_buf(), msg };
        let (_, history) = load_state(path, &self.net, opt, |meta| {
            let text = meta
                .get("history")
                .ok_or_else(|| format("no `history` in its metadata: not a Model checkpoint".into()))?;
            History::from_json(text).map_err(|e| format(format!("its history: {e}")))
        })?;
        Ok(history)
    }
}

/// Why a batch could not be evaluated.
enum BatchFailure {
    Forward(firebrand_nn::ForwardError),
    Loss(firebrand_autograd::Error),
}

/// Mean loss and metrics of `net` over `loader`, in evaluation mode; or the
/// first batch (its index) that the network or the loss refused.
fn evaluate_loader<N: Module + ?Sized>(
    net: &mut N,
    objective: Loss,
    loader: &DataLoader,
) -> Result<Evaluation, (usize, BatchFailure)> {
    net.set_training(false);
    let device = net.device();
    let (mut loss_sum, mut seen, mut classify) = (0.0f64, 0usize, false);
    let (mut preds, mut truth) = (Vec::new(), Vec::new());
    let mut classes = 0;
    // On a device the per-batch losses and predictions stay there and are
    // read back once, at the end.
    let on_device = !device.is_cpu();
    let (mut dev_loss, mut dev_preds): (Option<Tensor>, Vec<Tensor>) = (None, Vec::new());
    let failed = with_no_grad(|| {
        for (i, (x, y)) in loader.epoch(0).enumerate() {
            let n = x.dims()[0];
            let labels = (objective.is_classification() && y.dtype() == DType::I64).then(|| y.to_vec::<i64>());
            let (x, y) =
                (x.to_device(device).expect("the model's device"), y.to_device(device).expect("the model's device"));
            let out = match net.try_forward(&x) {
                Ok(out) => out,
                Err(e) => return Some((i, BatchFailure::Forward(e))),
            };
            let loss = match objective.try_compute(&out, &y) {
                Ok(loss) => loss,
                Err(e) => return Some((i, BatchFailure::Loss(e))),
            };
            if on_device {
                let weighted = loss.to_dtype(DType::F32).affine(n as f32, 0.0);
                dev_loss = Some(dev_loss.take().map_or(weighted.clone(), |t| t.add(&weighted)));
            } else {
                loss_sum += loss.item() as f64 * n as f64;
            }
            seen += n;
            if let Some(labels) = labels {
                classify = true;
                classes = out.size(-1);
                let pred = out.argmax(-1, false);
                if on_device {
                    dev_preds.push(pred)
                } else {
                    preds.extend(pred.to_vec::<i64>())
                }
                truth.extend(labels);
            }
        }
        if let Some(l) = dev_loss {
            loss_sum = l.item() as f64;
        }
        if !dev_preds.is_empty() {
            preds = Tensor::cat(&dev_preds.iter().collect::<Vec<_>>(), 0).to_vec::<i64>();
        }
        None
    });
    net.set_training(true);
    if let Some(failure) = failed {
        return Err(failure);
    }
    Ok(Evaluation {
        loss: (loss_sum / seen.max(1) as f64) as f32,
        metrics: classify.then(|| ClassificationMetrics::new(&preds, &truth, classes)),
    })
}

/// The checkpoint layout of [`Model::save_checkpoint`]: the history beside
/// the training state, each written atomically.
fn write_checkpoint(
    path: &Path,
    net: &(impl Module + ?Sized),
    opt: &(impl Optimizer + ?Sized),
    history: &History,
) -> Result<(), FitError> {
    let tensors = crate::checkpoint::training_tensors(net, opt, history.epochs.len() as u64);
    let json = history.to_json();
    // A copy to read beside the checkpoint; the checkpoint holds the one resuming uses.
    write_atomic(&history_path(path), json.as_bytes())?;
    firebrand_nn::serialize::save_checkpoint(path, &tensors, &[("history", json)])?;
    Ok(())
}

fn history_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".history.json");
    PathBuf::from(s)
}

/// The first parameter (in `named_parameters` order) whose gradient holds a
/// NaN or an infinity, with that value.
fn first_non_finite_grad(net: &(impl Module + ?Sized)) -> Option<(String, f32)> {
    let grads: Vec<(String, Tensor)> =
        net.named_parameters().into_iter().filter_map(|(n, p)| p.grad().map(|g| (n, g))).collect();
    let bad: Vec<bool> = if grads.iter().all(|(_, g)| g.device().is_cpu() && g.dtype() == DType::F32) {
        // On the host: one vectorized pass over each gradient's own buffer.
        grads.iter().map(|(_, g)| g.with_f32_slice(any_non_finite).expect("f32")).collect()
    } else {
        // On a device: one reduction per gradient there and a single read
        // back. `Σ x·0` is 0 when every x is finite and NaN otherwise (no
        // overflow, unlike `Σ x`); the device's `Affine(0, _)` keeps IEEE's
        // NaN for a non-finite x, which shader compilers would fold away.
        let sums: Vec<Tensor> =
            grads.iter().map(|(_, g)| g.to_dtype(DType::F32).affine(0.0, 0.0).sum_all().reshape([1])).collect();
        Tensor::cat(&sums.iter().collect::<Vec<_>>(), 0).to_vec::<f32>().iter().map(|s| s.is_nan()).collect()
    };
    grads.iter().zip(bad).filter(|(_, b)| *b).find_map(|((name, g), _)| {
        g.to_dtype(DType::F32).to_vec::<f32>().into_iter().find(|v| !v.is_finite()).map(|v| (name.clone(), v))
    })
}

/// True when `v` holds a NaN or an infinity: 16 lanes of `x·0` summed.
fn any_non_finite(v: &[f32]) -> bool {
    let mut acc = [0.0f32; 16];
    let chunks = v.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(0.0f32, |a, x| a + x * 0.0);
    for c in chunks {
        for (a, x) in acc.iter_mut().zip(c) {
            *a += x * 0.0;
        }
    }
    (acc.iter().sum::<f32>() + tail).is_nan()
}

/// An epoch's loss and correct-prediction totals: added up on the host for
/// a CPU model, and on the device for a model there, so that nothing is read
/// back until it is reported (the progress bar, the epoch's record).
enum Totals {
    Host { loss: f64, correct: usize },
    Device { loss: Option<Tensor>, correct: Option<Tensor> },
}

impl Totals {
    fn new(device: firebrand_autograd::Device) -> Totals {
        if device.is_cpu() {
            Totals::Host { loss: 0.0, correct: 0 }
        } else {
            Totals::Device { loss: None, correct: None }
        }
    }

    /// Adds a batch of `n` with mean `loss` (whose value, when already read
    /// back, is `value`), and its hits when `labels` are given.
    fn add(&mut self, loss: &Tensor, value: Option<f32>, n: usize, labels: Option<(&Tensor, &Tensor)>) {
        match self {
            Totals::Host { loss: l, correct } => {
                *l += value.unwrap_or_else(|| loss.item()) as f64 * n as f64;
                if let Some((out, y)) = labels {
                    *correct += count_correct(out, y);
                }
            }
            Totals::Device { loss: l, correct } => {
                let add = |acc: &mut Option<Tensor>, v: Tensor| {
                    *acc = Some(match acc.take() {
                        Some(a) => a.add(&v),
                        None => v,
                    })
                };
                add(l, loss.to_dtype(DType::F32).affine(n as f32, 0.0));
                if let Some((out, y)) = labels {
                    // Compared as f32 (exact below 2^24 classes): device kernels compare floats.
                    let hits = out.detach().argmax(-1, false).to_dtype(DType::F32).eq(&y.to_dtype(DType::F32));
                    add(correct, hits.to_dtype(DType::F32).sum_all());
                }
            }
        }
    }

    fn loss_sum(&self) -> f64 {
        match self {
            Totals::Host { loss, .. } => *loss,
            Totals::Device { loss, .. } => loss.as_ref().map_or(0.0, |t| t.item() as f64),
        }
    }

    fn correct(&self) -> usize {
        match self {
            Totals::Host { correct, .. } => *correct,
            Totals::Device { correct, .. } => correct.as_ref().map_or(0, |t| t.item() as usize),
        }
    }
}

fn count_correct(out: &Tensor, y: &Tensor) -> usize {
    let pred = out.argmax(-1, false).to_vec::<i64>();
    pred.iter().zip(y.to_vec::<i64>()).filter(|(p, t)| **p == *t).count()
}

fn format_record(r: &EpochRecord, epochs: usize) -> String {
    let mut s = format!("epoch {}/{}: loss {:.4}", r.epoch + 1, epochs, r.loss);
    if let Some(a) = r.accuracy {
        s.push_str(&format!(", accuracy {a:.4}"));
    }
    if let Some(v) = r.val_loss {
        s.push_str(&format!(", val_loss {v:.4}"));
    }
    if let Some(a) = r.val_accuracy {
        s.push_str(&format!(", val_accuracy {a:.4}"));
    }
    s.push_str(&format!(" ({:.2} s)", r.train_seconds));
    s
}
