//! Training on `Device::Wgpu(0)` through the user-facing API (facade feature
//! `wgpu`): 20 optimizer steps of an MLP, a CNN, a character LSTM and a
//! small GPT give the CPU's losses within 1e-3 relative, with the model moved
//! by `to_device`, the optimizer built before the move, and the gradients
//! clipped on the device. Without an
//! adapter the tests say so (and fail under `CI=true`).
#![cfg(feature = "wgpu")]

use firebrand::nn::loss::{Reduction, Target, cross_entropy};
use firebrand::nn::{Conv2d, Embedding, Flatten, Gpt, GptConfig, LSTM, MaxPool2d, Padding};
use firebrand::optim::clip_grad_norm;
use firebrand::prelude::*;

fn device() -> Option<Device> {
    let dev = Device::Wgpu(0);
    match Tensor::zeros([1]).to_device(dev) {
        Ok(_) => Some(dev),
        Err(e) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but no wgpu adapter: {e}");
            eprintln!("SKIPPED: no wgpu adapter ({e})");
            None
        }
    }
}

/// The losses of 20 Adam steps on one batch on `dev`: the model built from
/// seed 0 (on the CPU) and moved, the batch drawn from seed 1 on the host.
fn losses<M: Module>(
    dev: Device,
    make: impl Fn() -> M,
    batch: impl Fn() -> (Tensor, Tensor),
    loss: impl Fn(&M, &Tensor, &Tensor) -> Tensor,
) -> Vec<f32> {
    manual_seed(0);
    let m = make();
    let mut opt = Adam::new(m.named_parameters(), 3e-3);
    m.to_device(dev).unwrap();
    assert!(m.parameters().iter().all(|p| p.device() == dev));
    manual_seed(1);
    let (x, y) = batch();
    let (x, y) = (x.to_device(dev).unwrap(), y.to_device(dev).unwrap());
    (0..20)
        .map(|_| {
            opt.zero_grad();
            let l = loss(&m, &x, &y);
            assert_eq!(l.device(), dev);
            l.backward();
            // Clipping in device ops (LayerNorm's weight and bias gradients
            // are views of one buffer there).
            clip_grad_norm(&m.parameters(), 1.0);
            opt.step();
            l.item()
        })
        .collect()
}

fn same_losses(what: &str, cpu: &[f32], gpu: &[f32]) {
    for (i, (c, g)) in cpu.iter().zip(gpu).enumerate() {
        assert!((c - g).abs() <= 1e-3 * c.abs().max(1e-3), "{what} step {i}: cpu {c} vs wgpu {g}");
    }
    assert!(cpu[19] < cpu[0], "{what} did not learn: {cpu:?}");
}

fn ce(out: &Tensor, y: &Tensor) -> Tensor {
    let classes = out.size(-1);
    cross_entropy(
        &out.reshape([out.elem_count() / classes, classes]),
        Target::Indices(&y.reshape([y.elem_count()])),
        0.0,
        Reduction::Mean,
    )
    .unwrap()
}

fn labels(n: usize, classes: i64) -> Tensor {
    Tensor::randint(0, classes, [n])
}

#[test]
fn mlp_and_cnn_train_on_the_device_as_on_the_cpu() {
    let Some(dev) = device() else { return };
    let mlp = || Sequential::new().add(Linear::new(20, 32).with_activation(Activation::Relu)).add(Linear::new(32, 5));
    let batch = || (Tensor::randn([16, 20], 0.0, 1.0), labels(16, 5));
    let run = |d| losses(d, mlp, batch, |m, x, y| ce(&m.forward(x), y));
    same_losses("mlp", &run(Device::Cpu), &run(dev));

    let cnn = || {
        Sequential::new()
            .add(Conv2d::new(1, 4, 3).padding(Padding::Same))
            .add(BatchNorm2d::new(4)) // fused with the ReLU in training; running statistics updated on the device
            .add(ReLU)
            .add(MaxPool2d::new(2))
            .add(Conv2d::new(4, 6, 3).with_activation(Activation::Relu))
            .add(Flatten)
            .add(Linear::new(6 * 3 * 3, 3))
    };
    let batch = || (Tensor::randn([8, 1, 10, 10], 0.0, 1.0), labels(8, 3));
    let run = |d| losses(d, cnn, batch, |m, x, y| ce(&m.forward(x), y));
    same_losses("cnn", &run(Device::Cpu), &run(dev));
}

#[test]
fn char_lstm_and_gpt_train_on_the_device_as_on_the_cpu() {
    let Some(dev) = device() else { return };
    let lstm = || Sequential::new().add(Embedding::new(13, 8)).add(LSTM::new(8, 16)).add(Linear::new(16, 13));
    let batch = || (Tensor::randint(0, 13, [4, 9]), Tensor::randint(0, 13, [4, 9]));
    let run = |d| losses(d, lstm, batch, |m, x, y| ce(&m.forward(x), y));
    same_losses("char lstm", &run(Device::Cpu), &run(dev));

    let gpt = || Gpt::new(GptConfig { vocab_size: 13, context: 16, layers: 2, heads: 2, embed: 16, dropout: 0.0 });
    let batch = || (Tensor::randint(0, 13, [3, 11]), Tensor::randint(0, 13, [3, 11]));
    let run = |d| losses(d, gpt, batch, |m: &Gpt, x, y| m.loss(x, y));
    same_losses("gpt", &run(Device::Cpu), &run(dev));
}

#[test]
fn device_errors_are_typed() {
    let Some(dev) = device() else { return };
    let t = Tensor::ones([2, 2]).to_device(dev).unwrap();
    // Out-of-range indices: `tests/wgpu_index_errors.rs` (its own process).
    // Mixing devices stays a device mismatch (a 0-d CPU scalar may join).
    let e = t.try_add(&Tensor::ones([2, 2])).unwrap_err();
    assert!(matches!(e, Error::DeviceMismatch { .. }), "{e}");
    assert_eq!(t.add(&Tensor::scalar(1.0)).to_vec::<f32>(), [2.0; 4]);
    // An adapter that does not exist.
    let e = Tensor::zeros([1]).to_device(Device::Wgpu(64)).unwrap_err();
    assert!(matches!(e, Error::DeviceUnavailable { .. }) && e.to_string().contains("mesa-vulkan-drivers"), "{e}");
    assert!(!firebrand::wgpu::adapters().is_empty());
    // A tensor larger than a kernel can bind (lavapipe: under 160 MB) is a
    // typed error naming the size and the device, not a validation abort.
    match Tensor::zeros([40_000_000]).to_device(dev) {
        Ok(t) => assert_eq!(t.elem_count(), 40_000_000),
        Err(e) => {
            let m = e.to_string();
            assert!(m.contains("wgpu:0") && m.contains("160000000 bytes"), "{m}");
        }
    }
}

#[test]
fn fit_on_the_device_and_checkpoints_across_devices() {
    let Some(dev) = device() else { return };
    let make = || {
        manual_seed(3);
        let net = Sequential::new().add(Linear::new(6, 8).with_activation(Activation::Relu)).add(Linear::new(8, 3));
        let opt = Adam::new(net.named_parameters(), 1e-2);
        Model::new(net, opt, Loss::CROSS_ENTROPY)
    };
    manual_seed(4);
    let data = TensorDataset::new(Tensor::randn([40, 6], 0.0, 1.0), labels(40, 3)).unwrap();
    let opts = FitOptions { epochs: 2, batch_size: 8, verbose: false, ..Default::default() };
    let (mut on_cpu, mut on_gpu) = (make(), make());
    on_gpu.to_device(dev).unwrap();
    let (hc, hg) = (on_cpu.fit(&data, &opts).unwrap(), on_gpu.fit(&data, &opts).unwrap());
    assert!(on_gpu.net.parameters().iter().all(|p| p.device() == dev));
    for (c, g) in hc.epochs.iter().zip(&hg.epochs) {
        assert!((c.loss - g.loss).abs() <= 1e-4 * c.loss, "epoch loss: cpu {} vs wgpu {}", c.loss, g.loss);
    }
    // Saved on the device, loaded on the CPU: the same weights and optimizer
    // state, so one more epoch on each side stays together.
    let dir = std::env::temp_dir().join(format!("firebrand-wgpu-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.ckpt.safetensors");
    on_gpu.save_checkpoint(&path, &hg).unwrap();
    let mut back = make();
    back.load_checkpoint(&path).unwrap();
    for ((_, a), (_, b)) in back.net.named_parameters().iter().zip(on_gpu.net.named_parameters()) {
        assert_eq!(a.device(), Device::Cpu);
        assert_eq!(a.to_vec::<f32>(), b.to_vec::<f32>());
    }
    let one = FitOptions { epochs: 1, ..opts.clone() };
    let (l_back, l_gpu) = (back.fit(&data, &one).unwrap(), on_gpu.fit(&data, &one).unwrap());
    let (a, b) = (l_back.epochs[0].loss, l_gpu.epochs[0].loss);
    assert!((a - b).abs() <= 1e-4 * a, "after resuming: cpu {a} vs wgpu {b}");
    // And a CPU checkpoint loads into a model on the device.
    let mut again = make();
    again.to_device(dev).unwrap();
    again.load_checkpoint(&path).unwrap();
    assert!(again.net.parameters().iter().all(|p| p.device() == dev));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn fit_on_the_device_stops_at_a_non_finite_gradient_and_a_nan_loss() {
    let Some(dev) = device() else { return };
    // d/dw = 2·(0 - 1)·3e38 overflows to -inf while the loss (1) and d/db
    // (-2) stay finite: only the device-side gradient scan can see it.
    let data = TensorDataset::new(Tensor::full(3e38, [8, 1]), Tensor::ones([8, 1])).unwrap();
    let make = || {
        let l = Linear::new(1, 1);
        l.weight.copy_(&Tensor::zeros([1, 1])).unwrap();
        l.bias.as_ref().unwrap().copy_(&Tensor::zeros([1])).unwrap();
        let net = Sequential::new().add(l);
        let opt = Sgd::new(net.named_parameters(), 0.1);
        let mut m = Model::new(net, opt, Loss::Mse);
        m.to_device(dev).unwrap();
        m
    };
    let opts = FitOptions { epochs: 1, batch_size: 8, shuffle: false, verbose: false, ..Default::default() };
    let err = make().fit(&data, &opts).unwrap_err();
    assert!(
        matches!(&err, FitError::NonFinite { batch: 0, step: 0, what, .. } if what == "non-finite gradient (-inf) in parameter `0.weight`"),
        "{err}"
    );
    // Skipped instead: no update reaches the weights on the device.
    let mut m = make();
    let h = m.fit(&data, &FitOptions { non_finite: NonFinite::SkipBatch, batch_size: 4, ..opts.clone() }).unwrap();
    assert_eq!(h.epochs[0].skipped_batches, 2);
    assert_eq!(m.net.named_parameters()[0].1.to_vec::<f32>(), [0.0]);
    // A NaN in the data: the loss itself is caught.
    let mut x = vec![1.0f32; 8];
    x[5] = f32::NAN;
    let nan = TensorDataset::new(Tensor::from_vec(x, [8, 1]), Tensor::ones([8, 1])).unwrap();
    let err = make().fit(&nan, &FitOptions { batch_size: 4, ..opts }).unwrap_err();
    assert!(matches!(&err, FitError::NonFinite { batch: 1, what, .. } if what == "non-finite loss (NaN)"), "{err}");
}

#[test]
fn to_device_is_differentiable_both_ways() {
    let Some(dev) = device() else { return };
    // A CPU leaf through the device and back: the gradient returns to the CPU.
    let x = Tensor::from_vec(vec![1.0f32, -2.0, 3.0], [3]).requires_grad_(true);
    let y = x
        .to_device(dev)
        .unwrap()
        .square()
        .to_device(Device::Cpu)
        .unwrap()
        .mul(&Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3]));
    y.sum_all().backward();
    let g = x.grad().expect("gradient");
    assert_eq!(g.device(), Device::Cpu);
    assert_eq!(g.to_vec::<f32>(), [2.0, -8.0, 18.0]);
    // A device leaf used on the CPU: its gradient stays on the device.
    let w = Tensor::from_vec(vec![0.5f32, 4.0], [2]).to_device(dev).unwrap().requires_grad_(true);
    w.to_device(Device::Cpu).unwrap().mul(&Tensor::from_vec(vec![3.0f32, -1.0], [2])).sum_all().backward();
    let gw = w.grad().expect("gradient");
    assert_eq!(gw.device(), dev);
    assert_eq!(gw.to_vec::<f32>(), [3.0, -1.0]);
}
