//! Criterion benches of multi-head self-attention, the fused kernel against
//! the composite form (scores, `-inf` mask tensor, softmax, two batched
//! matmuls) that it replaced, at the `gpt` workload's shape (batch 12,
//! context 64, embedding 128, 4 heads, causal) and the `transformer_block`
//! workload's (batch 8, 128 positions, 512, 8 heads): the attention core
//! alone (`sdpa_core`), the whole layer with its projections
//! (`self_attention`), each forward alone and forward + backward, plus one GPT
//! training step.
//!
//! `cargo bench --bench transformer`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use firebrand::prelude::*;
use std::time::Duration;

/// (name, batch, positions, embedding, heads, causal)
const SHAPES: [(&str, usize, usize, usize, usize, bool); 2] =
    [("gpt_12x64x128_h4_causal", 12, 64, 128, 4, true), ("block_8x128x512_h8", 8, 128, 512, 8, false)];

fn attention(c: &mut Criterion) {
    let mut g = c.benchmark_group("self_attention");
    g.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500)).sample_size(20);
    for (name, b, t, e, h, causal) in SHAPES {
        for fused in [true, false] {
            manual_seed(0);
            let mha = MultiHeadAttention::new(e, h).causal(causal).fused(fused);
            let x = Tensor::randn([b, t, e], 0.0, 1.0).requires_grad_(true);
            let kind = if fused { "fused" } else { "composite" };
            g.bench_function(BenchmarkId::new(format!("forward_{kind}"), name), |bn| {
                bn.iter(|| with_no_grad(|| mha.forward(&x)))
            });
            g.bench_function(BenchmarkId::new(format!("forward_backward_{kind}"), name), |bn| {
                bn.iter(|| {
                    mha.forward(&x).sum_all().backward();
                    mha.zero_grad();
                    x.zero_grad();
                })
            });
        }
    }
    g.finish();
}

/// The attention core alone, `(B, heads, T, d)` operands: the fused op
/// against the composite (`q·kᵀ`, scale, `-inf` mask tensor, softmax, `·v`).
fn core(c: &mut Criterion) {
    let mut g = c.benchmark_group("sdpa_core");
    g.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500)).sample_size(20);
    for (name, b, t, e, h, causal) in SHAPES {
        manual_seed(0);
        let d = e / h;
        let [q, k, v] = [0, 1, 2].map(|_| Tensor::randn([b, h, t, d], 0.0, 1.0).requires_grad_(true));
        let opts = AttentionOptions { causal: causal.then_some(0), ..Default::default() };
        let mask = Tensor::from_vec(
            (0..t * t).map(|i| if causal && i % t > i / t { f32::NEG_INFINITY } else { 0.0 }).collect::<Vec<_>>(),
            [t, t],
        );
        let composite =
            || q.matmul(&k.transpose(-1, -2)).affine(1.0 / (d as f32).sqrt(), 0.0).add(&mask).softmax(-1).matmul(&v);
        let fused = || q.scaled_dot_product_attention(&k, &v, &opts);
        for (kind, f) in [("fused", &fused as &dyn Fn() -> Tensor), ("composite", &composite)] {
            g.bench_function(BenchmarkId::new(format!("forward_{kind}"), name), |bn| bn.iter(|| with_no_grad(f)));
            g.bench_function(BenchmarkId::new(format!("forward_backward_{kind}"), name), |bn| {
                bn.iter(|| {
                    f().sum_all().backward();
                    [&q, &k, &v].iter().for_each(|x| x.zero_grad());
                })
            });
        }
    }
    g.finish();
}

/// `LayerNorm` forward + backward at the GPT's `(12·64, 128)` and the block's `(8·128, 512)`.
fn layer_norm(c: &mut Criterion) {
    let mut g = c.benchmark_group("layer_norm");
    g.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500)).sample_size(20);
    for (name, dims) in [("12x64x128", [12, 64, 128]), ("8x128x512", [8, 128, 512])] {
        manual_seed(0);
        let ln = LayerNorm::new(dims[2]);
        let x = Tensor::randn(dims, 0.0, 1.0).requires_grad_(true);
        g.bench_function(BenchmarkId::new("forward", name), |bn| bn.iter(|| with_no_grad(|| ln.forward(&x))));
        g.bench_function(BenchmarkId::new("forward_backward", name), |bn| {
            bn.iter(|| {
                ln.forward(&x).sum_all().backward();
                ln.zero_grad();
                x.zero_grad();
            })
        });
    }
    g.finish();
}

fn gpt_step(c: &mut Criterion) {
    use firebrand::nn::{Gpt, GptConfig};
    let mut g = c.benchmark_group("gpt");
    g.measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500)).sample_size(20);
    manual_seed(0);
    let gpt = Gpt::new(GptConfig::char_level(84));
    let ids = Tensor::from_vec((0..12 * 64).map(|i| (i * 7 % 84) as i64).collect::<Vec<_>>(), [12, 64]);
    let targets = Tensor::from_vec((0..12 * 64).map(|i| (i * 5 % 84) as i64).collect::<Vec<_>>(), [12, 64]);
    g.bench_function("forward_backward_12x64", |bn| {
        bn.iter(|| {
            gpt.loss(&ids, &targets).backward();
            gpt.zero_grad();
        })
    });
    g.finish();
}

criterion_group!(benches, core, attention, layer_norm, gpt_step);
criterion_main!(benches);
