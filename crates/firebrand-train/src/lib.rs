//! # firebrand-train
//!
//! The Keras-like loop on top of `firebrand-nn` (the network),
//! `firebrand-optim` (the update) and `firebrand-data` (the batches):
//!
//! * [`Model`] bundles a network, an optimizer and a [`Loss`];
//!   [`Model::fit`] trains with a progress bar per epoch (or quietly), seeded
//!   shuffling, validation (a split or separate data), [`EarlyStopping`]
//!   (patience, restore best) and atomic, resumable checkpoints, returning a
//!   [`History`] (JSON/CSV); [`Model::evaluate`] and [`Model::predict`].
//! * [`save_training_state`] / [`load_training_state`]: network, optimizer and
//!   step in one atomic checkpoint, for custom training loops.
//! * [`ClassificationMetrics`]: accuracy, precision, recall, F1 (per class and
//!   macro) and the confusion matrix.
//!
//! ```
//! use firebrand_train::{FitOptions, Loss, Model, Validation};
//! use firebrand_nn::{Activation, Linear, ModuleExt, Sequential};
//! use firebrand_optim::Adam;
//! use firebrand_autograd::manual_seed;
//!
//! manual_seed(0);
//! let (train, test) = firebrand_data::digits().split(0.2, 0);
//! let net = Sequential::new().add(Linear::new(64, 32).with_activation(Activation::Relu)).add(Linear::new(32, 10));
//! let opt = Adam::new(net.named_parameters(), 1e-2);
//! let mut model = Model::new(net, opt, Loss::CROSS_ENTROPY);
//! let opts = FitOptions { epochs: 3, verbose: false, validation: Validation::Split(0.1), ..Default::default() };
//! let history = model.fit(&train, &opts).unwrap();
//! assert_eq!(history.epochs.len(), 3);
//! let eval = model.evaluate(&test, 128);
//! assert!(eval.metrics.unwrap().accuracy > 0.8);
//! ```

#![warn(missing_docs)]

mod callbacks;
mod checkpoint;
mod distributed;
mod history;
mod metrics;
mod model;
mod plot;

pub use callbacks::{
    BatchLogs, Callback, CsvLogger, EarlyStopping, FitError, GradientClipping, LrScheduler, ModelCheckpoint, Monitor,
    ReduceLrOnPlateau, TrainContext,
};
pub use checkpoint::{load_training_state, save_training_state};
pub use distributed::Distributed;
pub use history::{EpochRecord, History};
pub use metrics::ClassificationMetrics;
pub use model::{Data, Evaluation, FitOptions, Loss, Model, NonFinite, Validation};
pub use plot::PlotError;
