//! Quickstart: an MLP on the UCI 8x8 digits embedded in Firebrand — no download.
//!
//! Builds `Dense(128, relu) → Dropout(0.2) → Dense(10)`, prints its summary,
//! trains with Adam on cross-entropy with a progress bar, and reports test
//! accuracy, per-class precision/recall/F1 and the confusion matrix. The
//! loss and accuracy curves go to `runs/quickstart/quickstart_history.png`.
//!
//! Run: `cargo run --release --example quickstart -- [--epochs 40] [--seed 42] [--out DIR] [--device cpu|wgpu]`

use clap::Parser;
use firebrand::data::digits;
use firebrand::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

mod common;

/// An MLP on the embedded UCI digits: trains in about a second.
#[derive(Parser)]
struct Args {
    /// Training epochs.
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Seeds the weights, the split and the shuffling.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where the plots go [default: runs/quickstart].
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    device: common::DeviceArg,
}

fn main() {
    let args = Args::parse();
    manual_seed(args.seed);
    // 1,797 images of 8x8 pixels, scaled to [0, 1]; 20% held out for testing.
    let (train, test) = digits().split(0.2, args.seed);
    println!("digits: {} training and {} test images of 64 pixels", train.len(), test.len());

    let net = Sequential::new()
        .add(Linear::new(64, 128).with_activation(Activation::Relu))
        .add(Dropout::new(0.2))
        .add(Linear::new(128, 10));
    println!("{}", net.summary(&[64]));

    let optimizer = Adam::new(net.named_parameters(), 1e-3);
    args.device.place(&net);
    let mut model = Model::new(net, optimizer, Loss::CROSS_ENTROPY);
    let options = FitOptions {
        epochs: args.epochs,
        batch_size: 32,
        validation: Validation::Split(0.1),
        seed: args.seed,
        ..Default::default()
    };
    let t = Instant::now();
    let history = model.fit(&train, &options).unwrap_or_else(|e| common::fail(e));
    let seconds = t.elapsed().as_secs_f64();
    let training: f64 = history.epochs.iter().map(|e| e.train_seconds).sum();

    let eval = model.evaluate(&test, 256);
    let metrics = eval.metrics.expect("a classifier");
    println!(
        "\ntest loss {:.4}, test accuracy {:.2}% (macro F1 {:.4})",
        eval.loss,
        100.0 * metrics.accuracy,
        metrics.macro_f1()
    );
    println!("{metrics}");
    println!("training took {training:.2} s ({seconds:.2} s with validation)");
    let out = common::out_dir(args.out.as_deref(), "quickstart");
    common::plot_history(&history, &out, "quickstart");
}
