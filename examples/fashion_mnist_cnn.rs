//! A CNN on Fashion-MNIST: Conv2D(32, 3x3, same) + ReLU → MaxPool 2 →
//! Conv2D(64, 3x3, same) + ReLU → MaxPool 2 → Flatten → Dense 10; Adam 1e-3,
//! batch 32, 5 epochs, cross-entropy. Prints the model summary, a progress bar
//! and validation figures per epoch, then test metrics with a confusion
//! matrix, and saves the weights.
//!
//! Run: `cargo run --release --example fashion_mnist_cnn -- [--data DIR] [--epochs 5] [--augment] [--save FILE]`
//!
//! `--augment` trains on randomly shifted (up to 2 pixels) and mirrored
//! images. 10% of the training set is held out for validation. The data (the
//! four `*-ubyte.gz` IDX files) is looked for in `--data DIR`, then
//! `$FIREBRAND_DATA` (and `$FIREBRAND_DATA/fashion-mnist`), then
//! `/usr/share/datasets/fashion-mnist` (Debian: `apt-get install dataset-fashion-mnist`),
//! `../shared/data/fashion-mnist` and `./data/fashion-mnist`.
//!
//! A run (5 epochs, 2 threads; `python3 benches/compare.py cnn` compares the
//! same network with PyTorch): about 91% test accuracy.

use firebrand::data::{Compose, RandomCrop, RandomHorizontalFlip, load_fashion_mnist};
use firebrand::nn::save_weights;
use firebrand::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;

mod common;
use common::arg;

fn main() {
    let epochs: usize = arg("--epochs").map(|e| e.parse().expect("--epochs N")).unwrap_or(5);
    let augment = std::env::args().any(|a| a == "--augment");
    let save = PathBuf::from(arg("--save").unwrap_or_else(|| "fashion_mnist_cnn.safetensors".into()));
    let explicit = arg("--data").map(PathBuf::from);
    let (dir, train, test) = load_fashion_mnist(explicit.as_deref()).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(2);
    });
    println!("Fashion-MNIST from {}: {} training, {} test images", dir.display(), train.len(), test.len());

    manual_seed(0);
    let net = Sequential::new()
        .add(Conv2d::new(1, 32, 3).padding(Padding::Same).with_activation(Activation::Relu)) // (N, 32, 28, 28)
        .add(MaxPool2d::new(2)) // (N, 32, 14, 14)
        .add(Conv2d::new(32, 64, 3).padding(Padding::Same).with_activation(Activation::Relu)) // (N, 64, 14, 14)
        .add(MaxPool2d::new(2)) // (N, 64, 7, 7)
        .add(Flatten) // (N, 3136)
        .add(Linear::new(3136, 10));
    println!("{}", net.summary(&[1, 28, 28]));
    let optimizer = Adam::new(net.named_parameters(), 1e-3);
    let mut model = Model::new(net, optimizer, Loss::CROSS_ENTROPY);
    let transform: Option<Arc<dyn firebrand::data::Transform>> = augment
        .then(|| Arc::new(Compose(vec![Box::new(RandomCrop::new(2)), Box::new(RandomHorizontalFlip::default())])) as _);
    let options =
        FitOptions { epochs, batch_size: 32, validation: Validation::Split(0.1), transform, ..Default::default() };
    let history = model.fit(&train, &options).expect("no checkpoint is written");
    let per_epoch: f64 = history.epochs.iter().map(|e| e.train_seconds).sum::<f64>() / history.epochs.len() as f64;

    let eval = model.evaluate(&test, 1000);
    let metrics = eval.metrics.expect("a classifier");
    println!(
        "\ntest loss {:.4}, accuracy {:.2}%, macro F1 {:.4}; {per_epoch:.2} s of training per epoch",
        eval.loss,
        100.0 * metrics.accuracy,
        metrics.macro_f1()
    );
    println!("{metrics}");
    match save_weights(&model.net, &save) {
        Ok(()) => println!("weights saved to {}", save.display()),
        Err(e) => eprintln!("could not save the weights: {e}"),
    }
}
