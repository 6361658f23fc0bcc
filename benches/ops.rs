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

/// The char_lstm workload's recurrence, `B = 128, T = 40, H = 128` over an
/// 84-symbol one-hot input: the whole layer forward (no graph), forward +
/// backward through the layer, and the scan op alone.
fn lstm(c: &mut Criterion) {
    use firebrand::nn::LSTM;
    let mut g = config(c, "lstm");
    g.measurement_time(Duration::from_secs(3));
    let (b, t, v, h) = (128, 40, 84, 128);
    manual_seed(0);
    let net = LSTM::new(v, h).return_sequences(false);
    let idx: Vec<i64> = (0..b * t).map(|i| ((i * 37 + 11) % v) as i64).collect();
    let x = Tensor::from_vec(idx, [b, t]).one_hot(v).to_dtype(DType::F32); // (B, T, V)
    let id = format!("b{b}_t{t}_h{h}");
    g.bench_function(BenchmarkId::new("layer_forward_no_grad", &id), |q| q.iter(|| with_no_grad(|| net.forward(&x))));
    g.bench_function(BenchmarkId::new("layer_forward_backward", &id), |q| {
        q.iter(|| {
            net.forward(&x).square().sum_all().backward();
            for p in net.parameters() {
                p.zero_grad();
            }
        })
    });
    let xw = Tensor::randn([t, b, 4 * h], 0.0, 1.0).requires_grad_(true);
    let w_hh = Tensor::randn([4 * h, h], 0.0, 0.1).requires_grad_(true);
    let (h0, c0) = (Tensor::zeros([b, h]), Tensor::zeros([b, h]));
    g.bench_function(BenchmarkId::new("scan_last_forward", &id), |q| {
        q.iter(|| with_no_grad(|| xw.try_lstm_scan_last(&w_hh, &h0, &c0, false).unwrap()))
    });
    g.bench_function(BenchmarkId::new("scan_last_forward_backward", &id), |q| {
        q.iter(|| {
            xw.try_lstm_scan_last(&w_hh, &h0, &c0, false).unwrap().sum_all().backward();
            xw.zero_grad();
            w_hh.zero_grad();
        })
    });
    // The step's products alone, and the weight gradients in both orientations
    // (`_t`: computed transposed and copied back), the figures behind
    // autograd's `weight_grad` choice.
    let hp = Tensor::randn([b, h], 0.0, 1.0);
    let w_ih = Tensor::randn([4 * h, v], 0.0, 0.1);
    let w_ih_t = w_ih.t();
    let w = Tensor::randn([4 * h, h], 0.0, 0.1);
    let back = Tensor::randn([b, 5 * h], 0.0, 1.0);
    let dxw = Tensor::randn([t * b, 4 * h], 0.0, 1.0);
    let hps = Tensor::randn([t * b, h], 0.0, 1.0);
    g.bench_function("mm_fwd_h_wt", |q| q.iter(|| hp.matmul(&w.t())));
    g.bench_function("mm_bwd_dg_w", |q| q.iter(|| back.narrow(1, 0, 4 * h).matmul(&w).contiguous()));
    g.bench_function("mm_bwd_dw", |q| q.iter(|| dxw.t().matmul(&hps)));
    g.bench_function("mm_bwd_dw_t", |q| q.iter(|| hps.t().matmul(&dxw).t().contiguous()));
    let xs = Tensor::randn([t * b, v], 0.0, 1.0);
    g.bench_function("mm_bwd_dwih", |q| q.iter(|| dxw.t().matmul(&xs)));
    g.bench_function("mm_bwd_dwih_t", |q| q.iter(|| xs.t().matmul(&dxw).t().contiguous()));
    let xh = Tensor::randn([t * b, v + h], 0.0, 1.0);
    g.bench_function("mm_bwd_dw_both_t", |q| q.iter(|| xh.t().matmul(&dxw)));
    g.bench_function("mm_fwd_proj", |q| q.iter(|| xs.matmul(&w_ih_t)));
    g.finish();
}

/// A product whose left operand is a transposed view (`gᵀ·x`, a weight
/// gradient) read in place, copied to row-major first, and the same product
/// with a row-major left operand: what the gemm's transposed-A path buys.
fn transposed_a(c: &mut Criterion) {
    let mut g = config(c, "transposed_a");
    for (m, k, n) in [(2048, 1024, 512), (512, 1024, 2048), (1536, 1024, 512)] {
        let gr = Tensor::randn([k, m], 0.0, 1.0);
        let x = Tensor::randn([k, n], 0.0, 1.0);
        let id = format!("{m}x{k}x{n}");
        g.bench_function(BenchmarkId::new("in_place", &id), |q| q.iter(|| gr.t().matmul(&x)));
        g.bench_function(BenchmarkId::new("copied", &id), |q| q.iter(|| gr.t().contiguous().matmul(&x)));
        let a = Tensor::randn([m, k], 0.0, 1.0);
        g.bench_function(BenchmarkId::new("row_major", &id), |q| q.iter(|| a.matmul(&x)));
    }
    g.finish();
}

/// The products of MobileNetV2's 1x1 convolutions at batch 16 (112x112 and
/// 56x56 planes): the forward `W·X_n`, the input gradient `Wᵀ·dY_n` and the
/// weight gradient `X_n·dY_nᵀ`, few rows against many columns; PyTorch's
/// counterparts in `benches/pytorch/gemm.py --pointwise`.
fn pointwise(c: &mut Criterion) {
    let mut g = config(c, "pointwise");
    for (cin, cout, hw) in [(16, 96, 12544), (32, 16, 12544), (24, 144, 3136), (144, 24, 3136)] {
        let w = Tensor::randn([cout, cin], 0.0, 1.0);
        let x = Tensor::randn([16, cin, hw], 0.0, 1.0);
        let gy = Tensor::randn([16, cout, hw], 0.0, 1.0);
        let id = format!("{cin}to{cout}x{hw}");
        g.bench_function(BenchmarkId::new("forward", &id), |q| q.iter(|| w.matmul(&x)));
        g.bench_function(BenchmarkId::new("input_grad", &id), |q| q.iter(|| w.t().matmul(&gy)));
        g.bench_function(BenchmarkId::new("weight_grad", &id), |q| q.iter(|| x.matmul(&gy.transpose(1, 2))));
    }
    g.finish();
}

criterion_group!(benches, elementwise, hard_activations, reductions, softmax, overhead, lstm, transposed_a, pointwise);
criterion_main!(benches);
