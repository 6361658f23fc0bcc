//! The compression workloads (issue 15): `prune` and `cnn_int8`.

use firebrand::prelude::*;
use std::time::Instant;

/// Inference images/s over the test set (batches of 1000, no gradients),
/// the best of three passes after a warm-up.
fn images_per_s<M: Module>(model: &mut Model<M>, test: &firebrand::data::TensorDataset) -> f64 {
    let n = test.x.dims()[0];
    let _ = model.predict(&test.x, 1000);
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let _ = model.predict(&test.x, 1000);
            n as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn fit<M: Module>(model: &mut Model<M>, train: &firebrand::data::TensorDataset, epochs: usize, seed: u64) {
    let opts = FitOptions { epochs, batch_size: 32, verbose: false, seed, ..Default::default() };
    model.fit(train, &opts).expect("no checkpoint");
}

fn accuracy<M: Module>(model: &mut Model<M>, test: &firebrand::data::TensorDataset) -> f64 {
    model.evaluate(test, 1000).metrics.expect("classifier").accuracy as f64
}

fn line(model: &str, sparsity: f64, structured: bool, acc: f64, dense: f64, speedup: f64, extra: serde_json::Value) {
    let mut j = serde_json::json!({
        "workload": "prune", "lib": "firebrand", "model": model,
        "sparsity": (sparsity * 1e4).round() / 1e4, "structured": structured,
        "accuracy": (acc * 1e4).round() / 1e4, "dense_accuracy": (dense * 1e4).round() / 1e4,
        "speedup": (speedup * 100.0).round() / 100.0,
    });
    j.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
    println!("{j}");
}

/// `prune`: the seed MLP and CNN on Fashion-MNIST, trained `epochs` (Adam
/// 1e-3, batch 32), then
/// * the MLP pruned by global magnitude to 90% over 3 gradual steps
///   (Zhu & Gupta's schedule), one epoch of fine-tuning after each, the
///   masks then made permanent;
/// * the CNN with half the channels of both convolutions removed
///   structurally (smallest L1 norms, with the next layer's inputs), then
///   fine-tuned `epochs`.
///
/// One JSON line each: `model`, `sparsity` (of the weights: zeros for the
/// MLP, parameters removed for the CNN), `structured`, `accuracy`,
/// `dense_accuracy`, `speedup` (test-set inference images/s against the
/// dense model's).
pub fn workload_prune(
    train: &firebrand::data::TensorDataset,
    test: &firebrand::data::TensorDataset,
    flat: (&firebrand::data::TensorDataset, &firebrand::data::TensorDataset),
    epochs: usize,
    seed: u64,
) {
    use firebrand::nn::prune;
    // MLP, unstructured.
    let (ftrain, ftest) = flat;
    manual_seed(seed);
    let net = crate::common::fashion_mlp();
    let adam = Adam::new(net.named_parameters(), 1e-3);
    let mut mlp = Model::new(net, adam, Loss::CROSS_ENTROPY);
    fit(&mut mlp, ftrain, epochs, seed);
    let dense = accuracy(&mut mlp, ftest);
    let dense_speed = images_per_s(&mut mlp, ftest);
    let steps = 3;
    for t in 1..=steps {
        let s = prune::gradual_sparsity(t, steps, 0.0, 0.9);
        {
            let (a, b) = (mlp.net.get::<Linear>(0).expect("linear"), mlp.net.get::<Linear>(2).expect("linear"));
            prune::global_unstructured_to(&[a, b], s);
        }
        fit(&mut mlp, ftrain, 1, seed + 100 + t as u64);
    }
    let pruned_acc = accuracy(&mut mlp, ftest);
    let (a, b) = (mlp.net.get::<Linear>(0).expect("linear"), mlp.net.get::<Linear>(2).expect("linear"));
    let per_layer = [prune::sparsity(a), prune::sparsity(b)];
    let zeros = per_layer[0] * 784.0 * 128.0 + per_layer[1] * 1280.0;
    prune::remove(a);
    prune::remove(b);
    let speed = images_per_s(&mut mlp, ftest);
    line(
        "mlp",
        zeros / (784.0 * 128.0 + 1280.0),
        false,
        pruned_acc,
        dense,
        speed / dense_speed,
        serde_json::json!({ "layer_sparsity": per_layer.map(|s| (s * 1e4).round() / 1e4), "fine_tune_epochs": steps }),
    );

    // CNN, structured.
    manual_seed(seed);
    let net = crate::common::fashion_cnn();
    let adam = Adam::new(net.named_parameters(), 1e-3);
    let mut cnn = Model::new(net, adam, Loss::CROSS_ENTROPY);
    fit(&mut cnn, train, epochs, seed);
    let dense = accuracy(&mut cnn, test);
    let dense_speed = images_per_s(&mut cnn, test);
    let count = |m: &Sequential| m.parameters().iter().map(|p| p.elem_count()).sum::<usize>();
    let before = count(&cnn.net);
    let mut net = cnn.net;
    prune::shrink(&mut net, 0, 0.5, 1.0).expect("conv 1");
    prune::shrink(&mut net, 2, 0.5, 1.0).expect("conv 2");
    let after = count(&net);
    let shrunk_acc_before_tuning = {
        let mut m = Model::for_inference(net, Loss::CROSS_ENTROPY);
        let a = accuracy(&mut m, test);
        net = m.net;
        a
    };
    let adam = Adam::new(net.named_parameters(), 1e-3);
    let mut small = Model::new(net, adam, Loss::CROSS_ENTROPY);
    fit(&mut small, train, epochs, seed + 7);
    let acc = accuracy(&mut small, test);
    let speed = images_per_s(&mut small, test);
    line(
        "cnn",
        1.0 - after as f64 / before as f64,
        true,
        acc,
        dense,
        speed / dense_speed,
        serde_json::json!({
            "channels": [16, 32], "dense_channels": [32, 64], "parameters": after, "dense_parameters": before,
            "accuracy_before_fine_tuning": (shrunk_acc_before_tuning * 1e4).round() / 1e4,
            "images_per_s": speed.round(), "dense_images_per_s": dense_speed.round(), "fine_tune_epochs": epochs,
        }),
    );
}

/// File size in bytes.
fn file_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `cnn_int8`: the seed CNN trained `epochs` (Adam 1e-3, batch 32), then
/// statically quantized: `prepare` with `observer`, `calibrate` on the
/// first `calib` training images (batches of 100), `convert`. Both convs
/// (with their fused ReLU) and the Linear compute in int8. One JSON line:
/// `fp32_accuracy`, `int8_accuracy`, `fp32_images_per_s`,
/// `int8_images_per_s` (test set, batches of 1000, best of 3), and
/// `fp32_bytes` / `int8_bytes`: the files `save_weights` and
/// `save_quantized` write.
pub fn workload_cnn_int8(
    train: &firebrand::data::TensorDataset,
    test: &firebrand::data::TensorDataset,
    epochs: usize,
    seed: u64,
    observer: firebrand::nn::quantize::ObserverKind,
    calib: usize,
) {
    use firebrand::nn::quantize;
    manual_seed(seed);
    let net = crate::common::fashion_cnn();
    let adam = Adam::new(net.named_parameters(), 1e-3);
    let mut cnn = Model::new(net, adam, Loss::CROSS_ENTROPY);
    fit(&mut cnn, train, epochs, seed);
    let fp32_acc = accuracy(&mut cnn, test);
    let fp32_speed = images_per_s(&mut cnn, test);
    let dir = std::env::temp_dir().join(format!("fb-cnn-int8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let (f32_file, int8_file) = (dir.join("cnn.safetensors"), dir.join("cnn-int8.safetensors"));
    firebrand::nn::save_weights(&cnn.net, &f32_file).expect("saved");

    let t = Instant::now();
    let layers = quantize::prepare(&cnn.net, observer);
    let calib = calib.min(train.x.dims()[0]);
    let batches: Vec<Tensor> = (0..calib).step_by(100).map(|i| train.x.narrow(0, i, 100.min(calib - i))).collect();
    quantize::calibrate(&mut cnn.net, &batches);
    let converted = quantize::convert(&cnn.net).expect("calibrated");
    let quantize_seconds = t.elapsed().as_secs_f64();
    assert_eq!(layers, converted);
    let int8_acc = accuracy(&mut cnn, test);
    let int8_speed = images_per_s(&mut cnn, test);
    quantize::save_quantized(&cnn.net, &int8_file).expect("saved");
    let (fp32_bytes, int8_bytes) = (file_bytes(&f32_file), file_bytes(&int8_file));
    std::fs::remove_dir_all(&dir).ok();
    let r4 = |v: f64| (v * 1e4).round() / 1e4;
    println!(
        "{}",
        serde_json::json!({
            "workload": "cnn_int8", "lib": "firebrand", "epochs": epochs,
            "observer": format!("{observer:?}"), "calibration_images": calib, "layers": converted,
            "fp32_accuracy": r4(fp32_acc), "int8_accuracy": r4(int8_acc),
            "fp32_images_per_s": fp32_speed.round(), "int8_images_per_s": int8_speed.round(),
            "speedup": (int8_speed / fp32_speed * 100.0).round() / 100.0,
            "fp32_bytes": fp32_bytes, "int8_bytes": int8_bytes,
            "size_ratio": (fp32_bytes as f64 / int8_bytes as f64 * 100.0).round() / 100.0,
            "quantize_seconds": (quantize_seconds * 100.0).round() / 100.0,
            "int8_backend": firebrand::ops::gemm::int8::int8_backend(),
        })
    );
}
