//! Compression on the seed models: the Fashion-MNIST MLP and CNN trained,
//! then quantized, pruned and shrunk, with a report per variant: file
//! size, parameters (and how many are non-zero), sparsity per layer, test
//! accuracy and inference latency.
//!
//! * MLP: dense; dynamic int8 (`quantize_dynamic`, saved with
//!   `save_quantized`); pruned to 90% by global magnitude over 3 gradual
//!   steps with an epoch of fine-tuning after each; pruned and int8.
//! * CNN: dense; static int8 (`prepare`, `calibrate` on 1000 training
//!   images, `convert`: both convolutions with their ReLU and max pool, and
//!   the head, in integers); half the channels of both convolutions removed
//!   (`prune::shrink`) and fine-tuned; shrunk and then static int8.
//! * The MiniLM classifier (all-MiniLM-L6-v2 fine-tuned on BBC News for an
//!   epoch, as the `text_classifier` example does), when the checkpoint
//!   and the data are found: `f32`; dynamic int8; every projection in
//!   `Q8_0` blocks. `--skip-minilm` leaves it out.
//!
//! Run: `cargo run --release --example compress -- [--data DIR] [--epochs 5] [--out DIR]`
//!
//! The files go to `--out` (default `runs/compress`). The data is found as
//! the `fashion_mnist_mlp` example finds it.

use clap::Parser;
use firebrand::data::{TensorDataset, load_fashion_mnist};
use firebrand::nn::prune;
use firebrand::nn::quantize::{self, load_quantized, quantize_dynamic, save_quantized};
use firebrand::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod common;

/// Trains the seed MLP and CNN, compresses them, and prints the report.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    fashion: common::FashionArgs,
    /// Where the weight files go [default: runs/compress].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Leave the MiniLM classifier out.
    #[arg(long)]
    skip_minilm: bool,
    /// The MiniLM checkpoint folder [default: all-MiniLM-L6-v2 in $FIREBRAND_MODELS or the standard places].
    #[arg(long)]
    minilm_model: Option<PathBuf>,
    /// The class folders to fine-tune it on [default: bbcnews/data under $FIREBRAND_MODELS or ~/.cache/firebrand/models].
    #[arg(long)]
    minilm_data: Option<PathBuf>,
    /// Fine-tune MiniLM on the first N training documents only [default: all].
    #[arg(long)]
    minilm_limit: Option<usize>,
}

/// One line of the report.
struct Row {
    model: &'static str,
    variant: &'static str,
    file_bytes: u64,
    params: usize,
    nonzero: usize,
    sparsity: Vec<f64>,
    accuracy: f64,
    ms_per_1000: f64,
}

fn accuracy(model: &mut Model<Sequential>, test: &TensorDataset) -> f64 {
    model.evaluate(test, 1000).metrics.expect("a classifier").accuracy as f64
}

/// Milliseconds per 1000 test images at batch 1000, the best of 3 after a warm-up.
fn latency(model: &mut Model<Sequential>, test: &TensorDataset) -> f64 {
    let _ = model.predict(&test.x, 1000);
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let _ = model.predict(&test.x, 1000);
            t.elapsed().as_secs_f64() * 1000.0 * 1000.0 / test.len() as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Sparsity of every prunable layer, in order.
fn layer_sparsity(net: &Sequential) -> Vec<f64> {
    (0..net.len())
        .filter_map(|i| {
            net.get::<Linear>(i)
                .map(|l| prune::sparsity(l))
                .or_else(|| net.get::<Conv2d>(i).map(|c| prune::sparsity(c)))
        })
        .collect()
}

fn row(
    model: &'static str,
    variant: &'static str,
    m: &mut Model<Sequential>,
    test: &TensorDataset,
    file: &Path,
    quantized: bool,
) -> Row {
    if quantized {
        save_quantized(&m.net, file).unwrap_or_else(|e| common::fail(e));
        // The file loads back into the same architecture.
        load_quantized(&m.net, file).unwrap_or_else(|e| common::fail(e));
    } else {
        firebrand::nn::save_weights(&m.net, file).unwrap_or_else(|e| common::fail(e));
    }
    let params = m.net.parameters();
    let nonzero = params.iter().map(|p| p.to_vec::<f32>().iter().filter(|v| **v != 0.0).count()).sum::<usize>();
    Row {
        model,
        variant,
        file_bytes: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
        params: params.iter().map(|p| p.elem_count()).sum(),
        nonzero,
        sparsity: layer_sparsity(&m.net),
        accuracy: accuracy(m, test),
        ms_per_1000: latency(m, test),
    }
}

/// The MiniLM classifier's rows, or none (with a message) when the
/// checkpoint or the data is not found.
fn minilm_rows(args: &Args, out: &Path) -> Vec<Row> {
    use firebrand::nn::quantize::quantize_blocks;
    use firebrand::ops::gemm::blocks::BlockFormat;
    use firebrand::pretrained::bert::BertForSequenceClassification;
    use firebrand::pretrained::hub::{find_model, resolve};
    use firebrand::pretrained::tokenizer::Tokenizer;
    let found = match &args.minilm_model {
        Some(m) => resolve(m).map_err(|e| e.to_string()),
        None => find_model("all-MiniLM-L6-v2").map_err(|e| e.to_string()),
    }
    .and_then(|dir| common::text::bbc_dir(args.minilm_data.clone()).map(|data| (dir, data)));
    let (dir, data_dir) = match found {
        Ok(f) => f,
        Err(e) => {
            println!("MiniLM: skipped ({e})");
            return Vec::new();
        }
    };
    let data = firebrand::data::text_dataset_from_directory(data_dir).unwrap_or_else(|e| common::fail(e));
    let (mut train, test) = data.split(0.2, 0);
    if let Some(n) = args.minilm_limit {
        train.truncate(n);
    }
    manual_seed(0);
    let classes = data.class_names.len();
    let (mut model, _) =
        BertForSequenceClassification::from_pretrained(&dir, classes).unwrap_or_else(|e| common::fail(e));
    let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap_or_else(|e| common::fail(e));
    println!("fine-tuning MiniLM on {} documents for an epoch", train.len());
    let ft = common::text::FineTune { epochs: 1, max_len: 128, batch: 16, lr: 5e-5, seed: 0, device: Device::Cpu };
    common::text::fine_tune(&mut model, &tok, &data, &mut train, &ft);
    let mut rows = Vec::new();
    for (variant, file) in [
        ("f32", "minilm.safetensors"),
        ("int8 dynamic", "minilm_int8.safetensors"),
        ("Q8_0 blocks", "minilm_q8_0.safetensors"),
    ] {
        if variant != "f32" {
            // Each variant starts from the fine-tuned f32 weights.
            firebrand::nn::quantize::dequantize(&model);
            firebrand::nn::load_weights(&model, out.join("minilm.safetensors"), true)
                .unwrap_or_else(|e| common::fail(e));
        }
        match variant {
            "int8 dynamic" => {
                quantize_dynamic(&model);
            }
            "Q8_0 blocks" => {
                quantize_blocks(&model, BlockFormat::Q8_0);
            }
            _ => {}
        }
        let path = out.join(file);
        if variant == "f32" {
            firebrand::nn::save_weights(&model, &path).unwrap_or_else(|e| common::fail(e));
        } else {
            save_quantized(&model, &path).unwrap_or_else(|e| common::fail(e));
            load_quantized(&model, &path).unwrap_or_else(|e| common::fail(e));
        }
        let params = model.parameters();
        let t = Instant::now();
        let m = common::text::evaluate(&mut model, &tok, &data, &test, 128);
        let ms = t.elapsed().as_secs_f64() * 1000.0 * 1000.0 / test.len() as f64;
        rows.push(Row {
            model: "minilm",
            variant,
            file_bytes: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
            params: params.iter().map(|p| p.elem_count()).sum(),
            nonzero: params.iter().map(|p| p.to_vec::<f32>().iter().filter(|v| **v != 0.0).count()).sum(),
            sparsity: Vec::new(),
            accuracy: m.accuracy as f64,
            ms_per_1000: ms,
        });
    }
    rows
}

/// Static int8: observers, calibration on the first 1000 training images, convert.
fn static_int8(net: &mut Sequential, train: &TensorDataset) {
    quantize::prepare(net, quantize::ObserverKind::Histogram);
    let calib: Vec<Tensor> = (0..10).map(|i| train.x.narrow(0, 100 * i, 100)).collect();
    quantize::calibrate(net, &calib);
    quantize::convert(net).unwrap_or_else(|e| common::fail(e));
}

fn fit(m: &mut Model<Sequential>, train: &TensorDataset, epochs: usize, seed: u64) {
    let opts = FitOptions { epochs, batch_size: 32, seed, ..Default::default() };
    m.fit(train, &opts).unwrap_or_else(|e| common::fail(e));
}

fn main() {
    let args = Args::parse();
    let epochs = args.fashion.epochs;
    let (dir, train, test) = load_fashion_mnist(args.fashion.data.as_deref()).unwrap_or_else(|e| common::fail(e));
    let train = common::limited(train, args.fashion.limit);
    println!("Fashion-MNIST from {}: {} training, {} test images", dir.display(), train.len(), test.len());
    let out = common::out_dir(args.out.as_deref(), "compress");
    let flatten = |d: &TensorDataset| TensorDataset { x: d.x.reshape([d.len(), 784]), y: d.y.clone() };
    let (ftrain, ftest) = (flatten(&train), flatten(&test));
    let mut rows = Vec::new();

    // The MLP: int8, then unstructured pruning.
    manual_seed(0);
    let net = Sequential::new()
        .add(Linear::new(784, 128).with_activation(Activation::Relu))
        .add(Dropout::new(0.2))
        .add(Linear::new(128, 10));
    let adam = Adam::new(net.named_parameters(), 1e-3);
    let mut mlp = Model::new(net, adam, Loss::CROSS_ENTROPY);
    println!("training the MLP ({epochs} epochs)");
    fit(&mut mlp, &ftrain, epochs, 0);
    rows.push(row("mlp", "dense f32", &mut mlp, &ftest, &out.join("mlp.safetensors"), false));
    quantize_dynamic(&mlp.net);
    rows.push(row("mlp", "int8 dynamic", &mut mlp, &ftest, &out.join("mlp_int8.safetensors"), true));
    firebrand::nn::quantize::dequantize(&mlp.net);
    println!("pruning the MLP to 90% in 3 steps, an epoch of fine-tuning after each");
    for t in 1..=3 {
        let s = prune::gradual_sparsity(t, 3, 0.0, 0.9);
        let (a, b) = (mlp.net.get::<Linear>(0).expect("linear"), mlp.net.get::<Linear>(2).expect("linear"));
        prune::global_unstructured_to(&[a, b], s);
        fit(&mut mlp, &ftrain, 1, 100 + t as u64);
    }
    for i in [0, 2] {
        prune::remove(mlp.net.get::<Linear>(i).expect("linear"));
    }
    rows.push(row("mlp", "pruned 90%", &mut mlp, &ftest, &out.join("mlp_pruned.safetensors"), false));
    quantize_dynamic(&mlp.net);
    rows.push(row("mlp", "pruned 90% + int8", &mut mlp, &ftest, &out.join("mlp_pruned_int8.safetensors"), true));

    // The CNN: channels removed, then the head in int8.
    manual_seed(0);
    let net = Sequential::new()
        .add(Conv2d::new(1, 32, 3).padding(Padding::Same).with_activation(Activation::Relu))
        .add(MaxPool2d::new(2))
        .add(Conv2d::new(32, 64, 3).padding(Padding::Same).with_activation(Activation::Relu))
        .add(MaxPool2d::new(2))
        .add(Flatten)
        .add(Linear::new(3136, 10));
    let adam = Adam::new(net.named_parameters(), 1e-3);
    let mut cnn = Model::new(net, adam, Loss::CROSS_ENTROPY);
    println!("training the CNN ({epochs} epochs)");
    fit(&mut cnn, &train, epochs, 0);
    rows.push(row("cnn", "dense f32", &mut cnn, &test, &out.join("cnn.safetensors"), false));
    static_int8(&mut cnn.net, &train);
    rows.push(row("cnn", "static int8", &mut cnn, &test, &out.join("cnn_int8.safetensors"), true));
    // Back to f32, with the trained weights (the reload above put the dequantized ones in).
    quantize::dequantize(&cnn.net);
    firebrand::nn::load_weights(&cnn.net, out.join("cnn.safetensors"), true).unwrap_or_else(|e| common::fail(e));
    println!("removing half the channels of both convolutions, then {epochs} epochs of fine-tuning");
    let mut net = cnn.net;
    prune::shrink(&mut net, 0, 0.5, 1.0).unwrap_or_else(|e| common::fail(e));
    prune::shrink(&mut net, 2, 0.5, 1.0).unwrap_or_else(|e| common::fail(e));
    let adam = Adam::new(net.named_parameters(), 1e-3);
    let mut small = Model::new(net, adam, Loss::CROSS_ENTROPY);
    fit(&mut small, &train, epochs, 7);
    rows.push(row("cnn", "half the channels", &mut small, &test, &out.join("cnn_shrunk.safetensors"), false));
    static_int8(&mut small.net, &train);
    rows.push(row(
        "cnn",
        "half the channels + static int8",
        &mut small,
        &test,
        &out.join("cnn_shrunk_int8.safetensors"),
        true,
    ));

    if args.skip_minilm {
        println!("MiniLM: skipped (--skip-minilm)");
    } else {
        rows.extend(minilm_rows(&args, &out));
    }

    println!(
        "\n{:<6} {:<30} {:>9} {:>8} {:>8} {:>22} {:>9} {:>12}",
        "model", "variant", "file KB", "params", "nonzero", "sparsity per layer", "accuracy", "ms/1000 ex."
    );
    for r in &rows {
        let sp = if r.sparsity.len() > 4 {
            format!("{} layers, max {:.2}", r.sparsity.len(), r.sparsity.iter().fold(0.0f64, |m, s| m.max(*s)))
        } else {
            r.sparsity.iter().map(|s| format!("{:.2}", s)).collect::<Vec<_>>().join(" ")
        };
        println!(
            "{:<6} {:<30} {:>9.1} {:>8} {:>8} {:>22} {:>8.2}% {:>12.2}",
            r.model,
            r.variant,
            r.file_bytes as f64 / 1024.0,
            r.params,
            r.nonzero,
            sp,
            100.0 * r.accuracy,
            r.ms_per_1000
        );
    }
    println!("\nfiles in {}", out.display());
}
