//! An MLP on Fashion-MNIST: 784 → Dense 128 + ReLU → Dropout 0.2 → Dense 10,
//! Adam 1e-3, batch 32, cross-entropy.
//!
//! Run: `cargo run --release --example fashion_mnist_mlp -- [--data DIR] [--epochs 5] [--out DIR]`
//!
//! Writes `fashion_mnist_mlp_history.png` (loss and accuracy curves) and
//! `fashion_mnist_mlp_confusion.png` to `--out` (default `runs/fashion_mnist_mlp`).
//!
//! The data (the four `*-ubyte.gz` IDX files) is looked for in `--data DIR`,
//! then `$FIREBRAND_DATA` (and `$FIREBRAND_DATA/fashion-mnist`), then
//! `/usr/share/datasets/fashion-mnist` (Debian: `apt-get install dataset-fashion-mnist`),
//! `../shared/data/fashion-mnist` and `./data/fashion-mnist`.

use clap::Parser;
use firebrand::data::{FASHION_MNIST_CLASSES, TensorDataset, load_fashion_mnist};
use firebrand::prelude::*;
use std::path::PathBuf;

mod common;

/// An MLP on Fashion-MNIST, validated on the test set each epoch.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    fashion: common::FashionArgs,
    /// Where the plots go [default: runs/fashion_mnist_mlp].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let epochs = args.fashion.epochs;
    let (dir, train, test) = load_fashion_mnist(args.fashion.data.as_deref()).unwrap_or_else(|e| common::fail(e));
    // (N, 1, 28, 28) -> (N, 784)
    let flatten = |d: TensorDataset| TensorDataset { x: d.x.reshape([d.len(), 784]), y: d.y };
    let (train, test) = (common::limited(flatten(train), args.fashion.limit), flatten(test));
    println!("Fashion-MNIST from {}: {} training, {} test images", dir.display(), train.len(), test.len());

    manual_seed(0);
    let net = Sequential::new()
        .add(Linear::new(784, 128).with_activation(Activation::Relu))
        .add(Dropout::new(0.2))
        .add(Linear::new(128, 10));
    println!("{}", net.summary(&[784]));
    let optimizer = Adam::new(net.named_parameters(), 1e-3);
    args.fashion.device.place(&net);
    let mut model = Model::new(net, optimizer, Loss::CROSS_ENTROPY);
    let options =
        FitOptions { epochs, batch_size: 32, validation: Validation::data(test.clone()), ..Default::default() };
    let history = model.fit(&train, &options).unwrap_or_else(|e| common::fail(e));
    let per_epoch: f64 = history.epochs.iter().map(|e| e.train_seconds).sum::<f64>() / history.epochs.len() as f64;

    let eval = model.evaluate(&test, 1000);
    let metrics = eval.metrics.expect("a classifier");
    println!(
        "\ntest accuracy {:.2}%, macro F1 {:.4}, {per_epoch:.2} s of training per epoch",
        100.0 * metrics.accuracy,
        metrics.macro_f1()
    );
    println!("{metrics}");
    let out = common::out_dir(args.out.as_deref(), "fashion_mnist_mlp");
    common::plot_history(&history, &out, "fashion_mnist_mlp");
    common::plot_confusion(&metrics, &out, "fashion_mnist_mlp", &FASHION_MNIST_CLASSES);
}
