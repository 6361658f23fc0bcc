//! The Keras-like `Model`: a network, an optimizer and a loss, with `fit`,
//! `evaluate` and `predict`.

use crate::checkpoint::{load_training_state, save_training_state};
use crate::{ClassificationMetrics, EpochRecord, History};
use firebrand_autograd::{DType, Tensor, manual_seed, with_no_grad};
use firebrand_data::{DataLoader, TensorDataset, Transform};
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
    /// When the target does not fit the output (naming the shapes).
    pub fn compute(&self, output: &Tensor, target: &Tensor) -> Tensor {
        let r = match *self {
            Loss::CrossEntropy { label_smoothing } => {
                let t = if target.dtype() == DType::I64 { Target::Indices(target) } else { Target::Probs(target) };
                cross_entropy(output, t, label_smoothing, Reduction::Mean)
            }
            Loss::Mse => mse_loss(output, target, Reduction::Mean),
            Loss::BinaryCrossEntropyWithLogits => binary_cross_entropy_with_logits(output, target, Reduction::Mean),
        };
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    fn is_classification(&self) -> bool {
        matches!(self, Loss::CrossEntropy { .. })
    }
}

/// Where validation figures come from.
#[derive(Clone, Default)]
pub enum Validation {
    /// No validation.
    #[default]
    None,
    /// A seeded split of this fraction of the training data (Keras' `validation_split`).
    Split(f32),
    /// A separate data set.
    Data(TensorDataset),
}

/// Stops training when the monitored figure (validation loss, else training
/// loss) has not improved by `min_delta` for `patience` epochs; with
/// `restore_best`, the best epoch's weights are put back.
#[derive(Debug, Clone, Copy)]
pub struct EarlyStopping {
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Smallest decrease that counts as an improvement.
    pub min_delta: f32,
    /// Restore the best weights at the end.
    pub restore_best: bool,
}

/// Options of [`Model::fit`].
#[derive(Clone)]
pub struct FitOptions {
    /// Number of epochs.
    pub epochs: usize,
    /// Examples per batch.
    pub batch_size: usize,
    /// Shuffle every epoch (seeded).
    pub shuffle: bool,
    /// Seeds shuffling, the validation split and, per epoch, the generator that
    /// dropout and initializers draw from — so a run and its resumption agree.
    pub seed: u64,
    /// Validation data.
    pub validation: Validation,
    /// Show a progress bar and per-epoch lines.
    pub verbose: bool,
    /// Early stopping.
    pub early_stopping: Option<EarlyStopping>,
    /// Write a checkpoint (weights, optimizer state, history) here after every epoch, atomically.
    pub checkpoint: Option<PathBuf>,
    /// Continue from `checkpoint` when it exists.
    pub resume: bool,
    /// Batches assembled ahead on a background thread.
    pub prefetch: usize,
    /// Applied to every training batch's inputs (augmentation); validation
    /// and evaluation see the data as it is.
    pub transform: Option<Arc<dyn Transform>>,
    /// Gradient accumulation: one optimizer step per this many batches (the
    /// losses averaged), for an effective batch `batch_size · accumulate`
    /// with the memory of one batch. 1 (the default) steps every batch.
    pub accumulate: usize,
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
            checkpoint: None,
            resume: false,
            prefetch: 2,
            transform: None,
            accumulate: 1,
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
    /// The optimizer over the network's parameters.
    pub optimizer: Box<dyn Optimizer>,
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

impl<M: Module> Model<M> {
    /// Bundles a network, an optimizer over its parameters and a loss.
    pub fn new(net: M, optimizer: impl Optimizer + 'static, loss: Loss) -> Self {
        Model { net, optimizer: Box::new(optimizer), loss }
    }

    /// Trains for `opts.epochs` epochs and returns the per-epoch figures.
    ///
    /// # Errors
    /// When a checkpoint cannot be written or resumed from.
    pub fn fit(&mut self, data: &TensorDataset, opts: &FitOptions) -> Result<History, WeightsError> {
        let (train, val) = match &opts.validation {
            Validation::None => (data.clone(), None),
            Validation::Split(f) => {
                let (t, v) = data.split(*f, opts.seed);
                (t, Some(v))
            }
            Validation::Data(v) => (data.clone(), Some(v.clone())),
        };
        let mut loader = DataLoader::new(train, opts.batch_size).prefetch(opts.prefetch);
        if opts.shuffle {
            loader = loader.shuffle(opts.seed);
        }
        if let Some(t) = &opts.transform {
            loader = loader.transform_shared(Arc::clone(t));
        }
        let mut history = History::default();
        let mut start = 0;
        if let (Some(path), true) = (&opts.checkpoint, opts.resume)
            && path.exists()
        {
            history = self.load_checkpoint(path)?;
            start = history.epochs.len();
        }
        let mut best: Option<(f32, usize, Vec<Tensor>)> = None;
        for epoch in start..opts.epochs {
            // Dropout masks and anything else drawn from the generator depend on
            // (seed, epoch) only, so resuming at an epoch boundary is exact.
            manual_seed(opts.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(epoch as u64));
            self.net.train();
            let pb = bar(loader.num_batches(), opts.verbose, epoch, opts.epochs);
            let t0 = Instant::now();
            let (mut loss_sum, mut seen, mut correct) = (0.0f64, 0usize, 0usize);
            let (accum, n_batches) = (opts.accumulate.max(1), loader.num_batches());
            for (i, (x, y)) in loader.epoch(epoch).enumerate() {
                let out = self.net.forward(&x);
                let loss = self.loss.compute(&out, &y);
                if i % accum == 0 {
                    self.optimizer.zero_grad();
                }
                if accum > 1 {
                    // Mean over the accumulated batches (equal-sized ones give the
                    // gradient of one batch `accum` times larger).
                    loss.affine(1.0 / accum as f32, 0.0).backward();
                } else {
                    loss.backward();
                }
                if (i + 1) % accum == 0 || i + 1 == n_batches {
                    self.optimizer.step();
                }
                let n = x.dims()[0];
                loss_sum += loss.item() as f64 * n as f64;
                seen += n;
                if self.loss.is_classification() && y.dtype() == DType::I64 {
                    correct += count_correct(&out, &y);
                }
                pb.inc(1);
                if pb.position().is_multiple_of(20) {
                    pb.set_message(format!("loss {:.4}", loss_sum / seen as f64));
                }
            }
            let train_seconds = t0.elapsed().as_secs_f64();
            pb.finish_and_clear();
            let classify = self.loss.is_classification() && data.y.dtype() == DType::I64;
            let mut record = EpochRecord {
                epoch,
                loss: (loss_sum / seen.max(1) as f64) as f32,
                accuracy: classify.then(|| correct as f32 / seen.max(1) as f32),
                val_loss: None,
                val_accuracy: None,
                train_seconds,
                lr: self.optimizer.lr(),
            };
            if let Some(v) = &val {
                let e = self.evaluate(v, opts.batch_size);
                record.val_loss = Some(e.loss);
                record.val_accuracy = e.metrics.map(|m| m.accuracy);
            }
            if opts.verbose {
                println!("{}", format_record(&record, opts.epochs));
            }
            history.epochs.push(record.clone());
            if let Some(path) = &opts.checkpoint {
                self.save_checkpoint(path, &history)?;
            }
            if let Some(es) = opts.early_stopping {
                let monitored = record.val_loss.unwrap_or(record.loss);
                match &best {
                    Some((b, _, _)) if monitored > b - es.min_delta => {
                        if epoch - best.as_ref().expect("set").1 >= es.patience {
                            if opts.verbose {
                                println!("early stopping after epoch {}", epoch + 1);
                            }
                            break;
                        }
                    }
                    _ => {
                        let snapshot = if es.restore_best {
                            self.net.state_dict().iter().map(|(_, p)| p.detach().affine(1.0, 0.0)).collect()
                        } else {
                            Vec::new()
                        };
                        best = Some((monitored, epoch, snapshot));
                    }
                }
            }
        }
        if let (Some(es), Some((_, _, snapshot))) = (opts.early_stopping, &best)
            && es.restore_best
        {
            for ((_, p), s) in self.net.state_dict().iter().zip(snapshot) {
                p.copy_(s).expect("same shapes");
            }
        }
        Ok(history)
    }

    /// Mean loss and, for classifiers, the metrics over a data set (evaluation
    /// mode, no gradients).
    pub fn evaluate(&mut self, data: &TensorDataset, batch_size: usize) -> Evaluation {
        self.net.eval();
        let loader = DataLoader::new(data.clone(), batch_size);
        let classify = self.loss.is_classification() && data.y.dtype() == DType::I64;
        let (mut loss_sum, mut seen) = (0.0f64, 0usize);
        let (mut preds, mut truth) = (Vec::new(), Vec::new());
        let mut classes = 0;
        with_no_grad(|| {
            for (x, y) in loader.epoch(0) {
                let out = self.net.forward(&x);
                let n = x.dims()[0];
                loss_sum += self.loss.compute(&out, &y).item() as f64 * n as f64;
                seen += n;
                if classify {
                    classes = out.size(-1);
                    preds.extend(out.argmax(-1, false).to_vec::<i64>());
                    truth.extend(y.to_vec::<i64>());
                }
            }
        });
        self.net.train();
        Evaluation {
            loss: (loss_sum / seen.max(1) as f64) as f32,
            metrics: classify.then(|| ClassificationMetrics::new(&preds, &truth, classes)),
        }
    }

    /// The network's outputs for `x` `(N, …)`, in batches, in evaluation mode.
    pub fn predict(&mut self, x: &Tensor, batch_size: usize) -> Tensor {
        self.net.eval();
        let out = with_no_grad(|| {
            let n = x.dims()[0];
            let parts: Vec<Tensor> = (0..n)
                .step_by(batch_size.max(1))
                .map(|s| self.net.forward(&x.narrow(0, s, batch_size.min(n - s))))
                .collect();
            let refs: Vec<&Tensor> = parts.iter().collect();
            Tensor::cat(&refs, 0)
        });
        self.net.train();
        out
    }

    /// Writes weights (`model.*`), optimizer state (`optim.*`) and the history
    /// (beside it, `<path>.history.json`), each atomically.
    ///
    /// # Errors
    /// When a file cannot be written.
    pub fn save_checkpoint(&self, path: &Path, history: &History) -> Result<(), WeightsError> {
        write_atomic(&history_path(path), history.to_json().as_bytes())?;
        save_training_state(path, &self.net, &*self.optimizer, history.epochs.len() as u64)
    }

    /// Restores a checkpoint written by [`Model::save_checkpoint`] and returns its history.
    ///
    /// # Errors
    /// When a file is missing or malformed, or does not fit this model and optimizer.
    pub fn load_checkpoint(&mut self, path: &Path) -> Result<History, WeightsError> {
        load_training_state(path, &self.net, &mut *self.optimizer)?;
        let hp = history_path(path);
        let text = std::fs::read_to_string(&hp).map_err(|source| WeightsError::Io { path: hp.clone(), source })?;
        History::from_json(&text).map_err(|e| WeightsError::Format { path: hp, msg: e.to_string() })
    }
}

fn history_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".history.json");
    PathBuf::from(s)
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
