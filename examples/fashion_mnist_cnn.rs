//! A CNN on Fashion-MNIST: Conv2D(32, 3x3, same) + ReLU → MaxPool 2 →
//! Conv2D(64, 3x3, same) + ReLU → MaxPool 2 → Flatten → Dense 10; Adam 1e-3,
//! batch 32, 5 epochs, cross-entropy. Prints the model summary, a progress bar
//! and validation figures per epoch, then test metrics with a confusion
//! matrix, and saves the weights.
//!
//! Run: `cargo run --release --example fashion_mnist_cnn -- [--data DIR] [--epochs 5] [--augment] [--out DIR]`
//!
//! Writes the weights (`fashion_mnist_cnn.safetensors`), the loss and
//! accuracy curves (`fashion_mnist_cnn_history.png`) and the test confusion
//! matrix (`fashion_mnist_cnn_confusion.png`) to `--out` (default
//! `runs/fashion_mnist_cnn`).
//!
//! `--augment` trains on randomly shifted (up to 2 pixels) and mirrored
//! images. 10% of the training set is held out for validation. The data (the
//! four `*-ubyte.gz` IDX files) is looked for in `--data DIR`, then
//! `$FIREBRAND_DATA` (and `$FIREBRAND_DATA/fashion-mnist`), then
//! `/usr/share/datasets/fashion-mnist` (Debian: `apt-get install dataset-fashion-mnist`),
//! `../shared/data/fashion-mnist` and `./data/fashion-mnist`.
//!
//! Data-parallel: `cargo build --release --features mpi --example
//! fashion_mnist_cnn`, then `mpirun -np 2 target/release/examples/fashion_mnist_cnn
//! --distributed` (batch 32 per process; see `docs/distributed.md`).
//!
//! A run (5 epochs, 2 threads; `python3 benches/compare.py cnn` compares the
//! same network with PyTorch): about 91% test accuracy.

use clap::Parser;
use firebrand::data::{Compose, FASHION_MNIST_CLASSES, RandomCrop, RandomHorizontalFlip, load_fashion_mnist};
use firebrand::nn::save_weights;
use firebrand::prelude::*;
use firebrand::train::Distributed;
use std::path::PathBuf;
use std::sync::Arc;

mod common;

/// A CNN on Fashion-MNIST, 10% of the training set held out for validation.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    fashion: common::FashionArgs,
    /// Train on randomly shifted (up to 2 pixels) and mirrored images.
    #[arg(long)]
    augment: bool,
    /// Where the weights and plots go [default: runs/fashion_mnist_cnn].
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    distributed: common::DistributedArg,
}

fn main() {
    let args = Args::parse();
    // Under --distributed only rank 0 reports and saves.
    let (rank, world) = common::distributed_rank(&args.distributed);
    let (epochs, augment) = (args.fashion.epochs, args.augment);
    let (dir, train, test) = load_fashion_mnist(args.fashion.data.as_deref()).unwrap_or_else(|e| common::fail(e));
    let train = common::limited(train, args.fashion.limit);
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
    args.fashion.device.place(&net);
    let mut model = Model::new(net, optimizer, Loss::CROSS_ENTROPY);
    let transform: Option<Arc<dyn firebrand::data::Transform>> = augment
        .then(|| Arc::new(Compose(vec![Box::new(RandomCrop::new(2)), Box::new(RandomHorizontalFlip::default())])) as _);
    let distributed = if args.distributed.distributed { Distributed::Auto } else { Distributed::Off };
    let options = FitOptions {
        epochs,
        batch_size: 32,
        validation: Validation::Split(0.1),
        transform,
        distributed,
        ..Default::default()
    };
    if world > 1 && rank == 0 {
        println!("data-parallel on {world} processes: batch 32 each, {} in all", 32 * world);
    }
    let history = model.fit(&train, &options).unwrap_or_else(|e| common::fail(e));
    if rank != 0 {
        return;
    }
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
    let out = common::out_dir(args.out.as_deref(), "fashion_mnist_cnn");
    common::plot_history(&history, &out, "fashion_mnist_cnn");
    common::plot_confusion(&metrics, &out, "fashion_mnist_cnn", &FASHION_MNIST_CLASSES);
    let save = out.join("fashion_mnist_cnn.safetensors");
    match save_weights(&model.net, &save) {
        Ok(()) => println!("weights saved to {}", save.display()),
        Err(e) => eprintln!("could not save the weights: {e}"),
    }
}
