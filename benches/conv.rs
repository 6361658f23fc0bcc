//! Criterion benches of convolution and pooling at the `fashion_mnist_cnn`
//! example's shapes (batch 32), through the `Tensor` API: each layer's forward
//! alone and forward + backward (gradients for the input and the weight),
//! eval-mode batch norm, and one whole training step of the example's network.
//!
//! `cargo bench --bench conv`

mod common;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use firebrand::prelude::*;
use std::time::Duration;

fn config<'a>(c: &'a mut Criterion, name: &str) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500)).sample_size(20);
    g
}

/// (name, input dims, out channels): the example's two convolutions.
const CONVS: [(&str, [usize; 4], usize); 2] =
    [("conv1_32x1x28x28", [32, 1, 28, 28], 32), ("conv2_32x32x14x14", [32, 32, 14, 14], 64)];

fn conv(c: &mut Criterion) {
    let mut g = config(c, "conv2d_3x3_same");
    for (name, dims, cout) in CONVS {
        manual_seed(0);
        let layer = Conv2d::new(dims[1], cout, 3).padding(Padding::Same);
        let x = Tensor::randn(dims, 0.0, 1.0);
        let xg = x.detach().requires_grad_(true);
        g.bench_function(BenchmarkId::new("forward", name), |b| b.iter(|| with_no_grad(|| layer.forward(&x))));
        // The first layer's input is data (no input gradient); the second's is not.
        let input = if dims[1] == 1 { &x } else { &xg };
        g.bench_function(BenchmarkId::new("forward_backward", name), |b| {
            b.iter(|| {
                layer.forward(input).sum_all().backward();
                layer.zero_grad();
                xg.zero_grad();
            })
        });
    }
    g.finish();
}

/// Eval-mode BatchNorm at a MobileNetV2 shape (batch 16, 96 channels, 56x56)
/// and at the example's, trained statistics and affine parameters.
fn batch_norm(c: &mut Criterion) {
    let mut g = config(c, "batch_norm2d_eval");
    for (name, dims) in [("16x96x56x56", [16, 96, 56, 56]), ("32x32x28x28", [32, 32, 28, 28])] {
        manual_seed(0);
        let mut bn = BatchNorm2d::new(dims[1]);
        bn.forward(&Tensor::randn(dims, 0.5, 2.0));
        bn.eval();
        let x = Tensor::randn(dims, 0.0, 1.0);
        g.bench_function(BenchmarkId::new("forward", name), |b| b.iter(|| with_no_grad(|| bn.forward(&x))));
    }
    g.finish();
}

fn pool(c: &mut Criterion) {
    let mut g = config(c, "max_pool2d_2x2");
    for (name, dims) in [("32x32x28x28", [32, 32, 28, 28]), ("32x64x14x14", [32, 64, 14, 14])] {
        let x = Tensor::randn(dims, 0.0, 1.0).requires_grad_(true);
        let pool = MaxPool2d::new(2);
        g.bench_function(BenchmarkId::new("forward", name), |b| b.iter(|| with_no_grad(|| pool.forward(&x))));
        g.bench_function(BenchmarkId::new("forward_backward", name), |b| {
            b.iter(|| {
                pool.forward(&x).sum_all().backward();
                x.zero_grad();
            })
        });
    }
    g.finish();
}

fn train_step(c: &mut Criterion) {
    let mut g = config(c, "cnn_train_step");
    manual_seed(0);
    let net = common::fashion_cnn();
    let mut adam = Adam::new(net.named_parameters(), 1e-3);
    let x = Tensor::rand([32, 1, 28, 28], 0.0, 1.0);
    let y = Tensor::from_vec((0..32).map(|i| i % 10).collect::<Vec<i64>>(), [32]);
    g.bench_function("batch32", |b| {
        b.iter(|| {
            let loss = Loss::CROSS_ENTROPY.compute(&net.forward(&x), &y);
            adam.zero_grad();
            loss.backward();
            adam.step();
        })
    });
    g.finish();
}

criterion_group!(benches, conv, batch_norm, pool, train_step);
criterion_main!(benches);
