//! Criterion benches of the elementwise, reduction and softmax kernels, through
//! the `Tensor` API (so dispatch and allocation are included), at sizes from a
//! small MLP batch to a transformer activation.
//!
//! `cargo bench --bench ops`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use firebrand::prelude::*;
use std::time::Duration;

fn config<'a>(c: &'a mut Criterion, name: &str) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(20);
    g
}

const SHAPES: [(usize, usize); 3] = [(32, 128), (128, 784), (1024, 2048)];

fn elementwise(c: &mut Criterion) {
    let mut g = config(c, "elementwise");
    for (r, k) in SHAPES {
        manual_seed(0);
        let a = Tensor::randn([r, k], 0.0, 1.0);
        let b = Tensor::randn([r, k], 0.0, 1.0);
        let bias = Tensor::randn([k], 0.0, 1.0);
        let id = format!("{r}x{k}");
        g.throughput(Throughput::Elements((r * k) as u64));
        g.bench_function(BenchmarkId::new("add", &id), |x| x.iter(|| a.add(&b)));
        g.bench_function(BenchmarkId::new("add_bias_broadcast", &id), |x| x.iter(|| a.add(&bias)));
        g.bench_function(BenchmarkId::new("mul_transposed", &id), |x| x.iter(|| a.t().mul(&b.t())));
        g.bench_function(BenchmarkId::new("relu", &id), |x| x.iter(|| a.relu()));
        g.bench_function(BenchmarkId::new("exp", &id), |x| x.iter(|| a.exp()));
        g.bench_function(BenchmarkId::new("tanh", &id), |x| x.iter(|| a.tanh()));
        g.bench_function(BenchmarkId::new("gelu", &id), |x| x.iter(|| a.gelu()));
    }
    g.finish();
}

/// MobileNet's activations, forward and forward + backward, beside ReLU.
fn hard_activations(c: &mut Criterion) {
    let mut g = config(c, "hard_activations");
    for (r, k) in [(128, 784), (1024, 2048)] {
        manual_seed(0);
        let a = Tensor::randn([r, k], 0.0, 4.0);
        let ag = a.detach().requires_grad_(true);
        let id = format!("{r}x{k}");
        g.throughput(Throughput::Elements((r * k) as u64));
        g.bench_function(BenchmarkId::new("relu", &id), |x| x.iter(|| a.relu()));
        g.bench_function(BenchmarkId::new("relu6", &id), |x| x.iter(|| a.relu6()));
        g.bench_function(BenchmarkId::new("hardswish", &id), |x| x.iter(|| a.hardswish()));
        g.bench_function(BenchmarkId::new("hardsigmoid", &id), |x| x.iter(|| a.hardsigmoid()));
        for (name, f) in
            [("relu6_backward", Tensor::relu6 as fn(&Tensor) -> Tensor), ("hardswish_backward", Tensor::hardswish)]
        {
            g.bench_function(BenchmarkId::new(name, &id), |x| {
                x.iter(|| {
                    f(&ag).sum_all().backward();
                    ag.zero_grad();
                })
            });
        }
    }
    g.finish();
}

fn reductions(c: &mut Criterion) {
    let mut g = config(c, "reductions");
    for (r, k) in SHAPES {
        let a = Tensor::randn([r, k], 0.0, 1.0);
        let id = format!("{r}x{k}");
        g.throughput(Throughput::Elements((r * k) as u64));
        g.bench_function(BenchmarkId::new("sum_rows", &id), |x| x.iter(|| a.sum(&[1], false)));
        g.bench_function(BenchmarkId::new("sum_cols", &id), |x| x.iter(|| a.sum(&[0], false)));
        g.bench_function(BenchmarkId::new("max_rows", &id), |x| x.iter(|| a.max(&[1], false)));
        g.bench_function(BenchmarkId::new("argmax_rows", &id), |x| x.iter(|| a.argmax(1, false)));
        g.bench_function(BenchmarkId::new("sum_all", &id), |x| x.iter(|| a.sum_all()));
    }
    g.finish();
}

fn softmax(c: &mut Criterion) {
    let mut g = config(c, "softmax");
    for (r, k) in [(32, 10), (128, 784), (1024, 2048)] {
        let a = Tensor::randn([r, k], 0.0, 1.0);
        let id = format!("{r}x{k}");
        g.throughput(Throughput::Elements((r * k) as u64));
        g.bench_function(BenchmarkId::new("softmax", &id), |x| x.iter(|| a.softmax(-1)));
        g.bench_function(BenchmarkId::new("log_softmax", &id), |x| x.iter(|| a.log_softmax(-1)));
        // The composite reference the fused kernel replaces.
        g.bench_function(BenchmarkId::new("composite_softmax", &id), |x| {
            x.iter(|| {
                let e = a.sub(&a.max(&[-1], true)).exp();
                e.div(&e.sum(&[-1], true))
            })
        });
    }
    g.finish();
}

/// Per-op overhead on tiny tensors (dispatch, allocation, autograd bookkeeping).
fn overhead(c: &mut Criterion) {
    let mut g = config(c, "overhead");
    let a = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [4]);
    let b = Tensor::from_vec(vec![0.5f32, 0.25, 2.0, 1.0], [4]);
    let w = b.clone().requires_grad_(true);
    g.bench_function("add_4", |x| x.iter(|| a.add(&b)));
    g.bench_function("exp_4", |x| x.iter(|| a.exp()));
    g.bench_function("sum_4", |x| x.iter(|| a.sum_all()));
    g.bench_function("transpose_view", |x| x.iter(|| a.reshape([2, 2]).t()));
    g.bench_function("mul_4_recorded", |x| x.iter(|| a.mul(&w)));
    g.bench_function("mul_sum_backward_4", |x| {
        x.iter(|| {
            a.mul(&w).sum_all().backward();
            w.zero_grad();
        })
    });
    g.finish();
}

criterion_group!(benches, elementwise, hard_activations, reductions, softmax, overhead);
criterion_main!(benches);
