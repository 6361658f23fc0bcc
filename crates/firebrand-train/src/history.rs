//! Per-epoch figures of a training run, as JSON or CSV.

use serde::{Deserialize, Serialize};

/// One epoch's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, from 0.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub loss: f32,
    /// Training accuracy (classification only).
    pub accuracy: Option<f32>,
    /// Validation loss, when validating.
    pub val_loss: Option<f32>,
    /// Validation accuracy, when validating a classifier.
    pub val_accuracy: Option<f32>,
    /// Seconds spent training (forward, backward, update), without validation.
    pub train_seconds: f64,
    /// Learning rate at the end of the epoch.
    pub lr: f32,
    /// Batches skipped for a non-finite loss or gradient under
    /// [`NonFinite::SkipBatch`](crate::NonFinite::SkipBatch) (0 otherwise).
    #[serde(default)]
    pub skipped_batches: usize,
}

/// All epochs of a run (Keras' `History`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// The records, in order.
    pub epochs: Vec<EpochRecord>,
}

impl History {
    /// The records as a JSON array.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.epochs).expect("plain data serializes")
    }

    /// Parses [`History::to_json`]'s output.
    ///
    /// # Errors
    /// When the text is not such JSON.
    pub fn from_json(text: &str) -> Result<History, serde_json::Error> {
        Ok(History { epochs: serde_json::from_str(text)? })
    }

    /// Writes [`History::to_json`] (for a path ending in `.json`) or
    /// [`History::to_csv`] (anything else) to `path`, atomically.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write(&self, path: impl AsRef<std::path::Path>) -> Result<(), firebrand_nn::WeightsError> {
        let path = path.as_ref();
        let text = if path.extension().is_some_and(|e| e == "json") { self.to_json() } else { self.to_csv() };
        firebrand_nn::serialize::write_atomic(path, text.as_bytes())
    }

    /// The records as CSV with a header line (empty cells for absent figures).
    pub fn to_csv(&self) -> String {
        let opt = |v: Option<f32>| v.map(|x| x.to_string()).unwrap_or_default();
        let mut s = String::from("epoch,loss,accuracy,val_loss,val_accuracy,train_seconds,lr,skipped_batches\n");
        for r in &self.epochs {
            s.push_str(&format!(
                "{},{},{},{},{},{},{},{}\n",
                r.epoch,
                r.loss,
                opt(r.accuracy),
                opt(r.val_loss),
                opt(r.val_accuracy),
                r.train_seconds,
                r.lr,
                r.skipped_batches
            ));
        }
        s
    }
}
