//! The same op tests on every device (candle's `test_device!` pattern):
//! `device_test!(name, body)` makes `name_cpu` and, with the `wgpu` feature,
//! `name_wgpu`, each running `body` on its device. A body computes ops in
//! `f32` on its device, forward and backward, and checks outputs and every
//! input's gradient against the same ops in `f64` on the CPU (whose fused
//! kernels are gradchecked; in `f64` the fused ops run their composite
//! forms, so the reference is independent of the kernels under test).
//! Tolerances are scaled by the largest reference magnitude. Shapes are
//! awkward on purpose: size 1, odd sizes, views, broadcasts, more elements
//! than one workgroup. Without an adapter the wgpu tests say so and pass,
//! except under `CI=true`.

use firebrand::nn::loss::{Reduction, Target, cross_entropy};
use firebrand::prelude::*;
use firebrand::{ConvOptions, UnaryOp, Window2d};

/// The device to test on, or `None` (after saying why) when it is absent.
fn open(dev: Device) -> Option<Device> {
    match Tensor::zeros([1]).to_device(dev) {
        Ok(_) => Some(dev),
        Err(e) => {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but {dev} is unavailable: {e}");
            eprintln!("SKIPPED on {dev}: {e}");
            None
        }
    }
}

macro_rules! device_test {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn cpu() {
                ($body)(Device::Cpu);
            }
            #[cfg(feature = "wgpu")]
            #[test]
            fn wgpu() {
                if let Some(d) = open(Device::Wgpu(0)) {
                    ($body)(d);
                }
            }
        }
    };
}

/// Runs `f` on `inputs` (f32 CPU tensors) moved to `dev` and, as the
/// reference, on their `f64` copies on the CPU; compares the outputs and
/// the gradients of `Σ out · w` (a fixed random `w`) for each input.
fn check(what: &str, dev: Device, inputs: &[Tensor], tol: f64, f: impl Fn(Device, &[Tensor]) -> Tensor) {
    let run = |d: Device, dt: DType| {
        let xs: Vec<Tensor> =
            inputs.iter().map(|t| t.to_dtype(dt).to_device(d).unwrap().detach().requires_grad_(true)).collect();
        let out = f(d, &xs);
        assert_eq!(out.device(), d, "{what}: output device");
        manual_seed(99);
        let w = Tensor::randn(out.shape().clone(), 0.0, 1.0).to_dtype(dt).to_device(d).unwrap();
        out.mul(&w).sum_all().backward();
        let mut v = vec![out.to_vec::<f64>()];
        v.extend(xs.iter().map(|x| x.grad().map(|g| g.to_vec::<f64>()).unwrap_or_default()));
        v
    };
    let (want, got) = (run(Device::Cpu, DType::F64), run(dev, DType::F32));
    for (k, (w, g)) in want.iter().zip(&got).enumerate() {
        let which = if k == 0 { "output".to_string() } else { format!("gradient of input {}", k - 1) };
        assert_eq!(w.len(), g.len(), "{what} on {dev}: {which} lengths");
        let scale = w.iter().filter(|v| v.is_finite()).fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (a, b)) in w.iter().zip(g).enumerate() {
            let ok = if a.is_finite() { (a - b).abs() <= tol * scale } else { a.is_nan() == b.is_nan() };
            assert!(ok, "{what} on {dev}: {which}[{i}] reference {a} vs {b} (scale {scale})");
        }
    }
}

fn randn(dims: &[usize], seed: u64) -> Tensor {
    manual_seed(seed);
    Tensor::randn(Shape::from(dims.to_vec()), 0.0, 1.0)
}

fn ids(v: &[i64], dims: &[usize], dev: Device) -> Tensor {
    Tensor::from_vec(v.to_vec(), Shape::from(dims.to_vec())).to_device(dev).unwrap()
}

device_test!(elementwise_broadcasts_and_views, |dev| {
    let (a, b) = (randn(&[3, 1, 5], 1), randn(&[4, 1], 2));
    check("binary broadcast", dev, &[a.clone(), b.clone()], 1e-5, |_, x| {
        x[0].mul(&x[1]).add(&x[0].tanh()).sub(&x[1].exp()).div(&x[0].square().affine(1.0, 1.0)).maximum(&x[1])
    });
    check("unary chain on a transposed view", dev, &[randn(&[7, 300], 3)], 1e-5, |_, x| {
        x[0].t().gelu().silu().sigmoid().add(&x[0].t().abs().sqrt()).softplus()
    });
    check("scalar operands from the host", dev, &[randn(&[5], 4)], 1e-6, |_, x| {
        x[0].mul(&Tensor::scalar(3.0)).where_cond(&x[0], &Tensor::scalar(-1.0)).add(&Tensor::scalar(0.5))
    });
});

device_test!(reductions_and_softmax, |dev| {
    let x = randn(&[3, 257, 5], 5);
    check("sum, mean, max over dims", dev, std::slice::from_ref(&x), 1e-5, |_, x| {
        x[0].sum(&[1], true).add(&x[0].mean(&[0, 2], true)).mul(&x[0].max(&[2], true)).sum(&[0], false)
    });
    check("softmax and log_softmax", dev, std::slice::from_ref(&x), 1e-5, |_, x| {
        x[0].softmax(-1).add(&x[0].transpose(1, 2).log_softmax(-1).transpose(1, 2))
    });
    check("matmul of views, batch broadcast", dev, &[randn(&[2, 3, 19, 17], 6), randn(&[17, 23], 7)], 1e-5, |_, x| {
        x[0].transpose(2, 3)
            .transpose(2, 3)
            .matmul(&x[1])
            .add(&x[0].narrow(3, 1, 16).matmul(&x[0].narrow(3, 0, 16).transpose(2, 3)).sum(&[3], true))
    });
});

device_test!(linear_with_bias_and_activation, |dev| {
    // A batched, transposed input; odd sizes; the bias in the product's
    // store, the activation its own op (gradients are recorded).
    let inputs = [randn(&[2, 37, 19], 31), randn(&[33, 37], 32), randn(&[33], 33)];
    check("linear of a view with bias and GELU", dev, &inputs, 1e-5, |_, x| {
        x[0].transpose(1, 2).linear(&x[1], Some(&x[2]), Some(UnaryOp::Gelu))
    });
    check("linear of size 1 without bias", dev, &[randn(&[1, 1], 34), randn(&[1, 1], 35)], 1e-5, |_, x| {
        x[0].linear(&x[1], None, None)
    });
});

device_test!(index_ops_concat_and_losses, |dev| {
    let table = randn(&[11, 6], 8);
    let idx = [3i64, 0, 10, 3, 3, 7];
    check("index_select (embedding) and its index_add backward", dev, std::slice::from_ref(&table), 1e-5, |d, x| {
        x[0].index_select(0, &ids(&idx, &[6], d)).tanh()
    });
    check("gather and scatter_add", dev, &[randn(&[4, 9], 9), randn(&[4, 3], 10)], 1e-5, |d, x| {
        let index = ids(&[0, 8, 8, 1, 2, 3, 4, 5, 6, 7, 7, 7], &[4, 3], d);
        x[0].gather(1, &index).add(&x[0].zeros_like().scatter_add(1, &index, &x[1]).narrow(1, 0, 3))
    });
    check("cat of views", dev, &[randn(&[2, 3, 4], 11), randn(&[4, 5, 2], 12)], 1e-6, |_, x| {
        Tensor::cat(&[&x[0], &x[1].permute(&[2, 1, 0]), &x[0].exp()], 1)
    });
    check("masked_fill and where", dev, &[randn(&[6, 7], 13)], 1e-6, |_, x| {
        let mask = x[0].gt(&Tensor::scalar(0.3));
        x[0].masked_fill(&mask, -2.0).add(&mask.where_cond(&x[0].square(), &x[0]))
    });
    check("cross-entropy", dev, &[randn(&[5, 7], 14)], 1e-5, |d, x| {
        let t = ids(&[0, 6, 3, 3, 1], &[5], d);
        cross_entropy(&x[0], Target::Indices(&t), 0.1, Reduction::Mean).unwrap()
    });
});

device_test!(normalization, |dev| {
    let (x, w, b) = (randn(&[3, 7, 33], 15), randn(&[33], 16), randn(&[33], 17));
    check("layer_norm", dev, &[x.clone(), w, b], 1e-4, |_, x| x[0].layer_norm(Some(&x[1]), Some(&x[2]), 1e-5));
    let (x, w, b) = (randn(&[4, 5, 3, 3], 18), randn(&[5], 19), randn(&[5], 20));
    check("batch_norm (training)", dev, &[x, w, b], 1e-4, |_, x| {
        x[0].try_batch_norm(Some(&x[1]), Some(&x[2]), 1e-5).unwrap().0.relu()
    });
});

device_test!(convolutions_and_pooling, |dev| {
    let x = randn(&[2, 4, 9, 8], 21);
    let cases = [
        ("dense 3x3 padded", vec![6, 4, 3, 3], ConvOptions { padding: (1, 1), ..Default::default() }),
        ("strided dilated", vec![5, 4, 3, 2], ConvOptions { stride: (2, 1), dilation: (2, 1), ..Default::default() }),
        ("grouped", vec![6, 2, 3, 3], ConvOptions { groups: 2, padding: (1, 0), ..Default::default() }),
        ("depthwise", vec![8, 1, 3, 3], ConvOptions { groups: 4, padding: (1, 1), ..Default::default() }),
        ("pointwise", vec![3, 4, 1, 1], ConvOptions::default()),
    ];
    for (name, wd, opts) in cases {
        let (w, b) = (randn(&wd, 22), randn(&[wd[0]], 23));
        check(&format!("conv2d {name}"), dev, &[x.clone(), w, b], 1e-4, |_, x| {
            x[0].conv2d(&x[1], Some(&x[2]), opts).relu()
        });
    }
    check("max and average pooling", dev, std::slice::from_ref(&x), 1e-5, |_, x| {
        let m = x[0].max_pool2d(Window2d::new((3, 3), (2, 2), (1, 1)));
        let a = x[0].avg_pool2d(Window2d::new((3, 3), (2, 2), (1, 1)), false);
        m.add(&a).add(&x[0].avg_pool2d(Window2d::new((2, 2), (2, 2), (0, 0)), true).sum_all())
    });
});

device_test!(attention_and_recurrence, |dev| {
    let (q, k, v) = (randn(&[2, 3, 5, 8], 24), randn(&[2, 3, 7, 8], 25), randn(&[2, 3, 7, 8], 26));
    check("attention, causal", dev, &[q.clone(), k.clone(), v.clone()], 1e-4, |_, x| {
        x[0].scaled_dot_product_attention(&x[1], &x[2], &AttentionOptions { causal: Some(2), ..Default::default() })
    });
    check("attention, key padding", dev, &[q, k, v], 1e-4, |d, x| {
        let pad =
            Tensor::from_vec(vec![0.0f32, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [2, 7]);
        let pad = pad.to_device(d).unwrap();
        let opts = AttentionOptions { key_padding_mask: Some(&pad), ..Default::default() };
        x[0].scaled_dot_product_attention(&x[1], &x[2], &opts)
    });
    let (t, b, h) = (4, 3, 5);
    check(
        "lstm_scan",
        dev,
        &[randn(&[t, b, 4 * h], 27), randn(&[4 * h, h], 28).affine(0.3, 0.0), randn(&[b, h], 29), randn(&[b, h], 30)],
        1e-4,
        |_, x| x[0].try_lstm_scan(&x[1], &x[2], &x[3], false).unwrap(),
    );
});

device_test!(attention_fused_awkward_shapes, |dev| {
    // Heads split from a fused (B, L, 3E) projection, read in place: more
    // queries and keys than one tile, causal.
    let (b, l, nh, d) = (2, 70, 2, 16);
    check("attention over a fused projection's views", dev, &[randn(&[b, l, 3 * nh * d], 31)], 1e-4, |_, x| {
        let e = nh * d;
        let heads = |i: usize| x[0].narrow(2, i * e, e).reshape([b, l, nh, d]).permute(&[0, 2, 1, 3]);
        heads(0).scaled_dot_product_attention(&heads(1), &heads(2), &AttentionOptions::causal())
    });
    check(
        "attention of size 1",
        dev,
        &[randn(&[1, 1, 1, 1], 32), randn(&[1, 1, 1, 1], 33), randn(&[1, 1, 1, 1], 34)],
        1e-5,
        |_, x| x[0].scaled_dot_product_attention(&x[1], &x[2], &AttentionOptions::default()),
    );
    // An odd head dim, 65 keys, an additive mask with −∞ entries and a
    // padding mask that blocks every key of the second batch entry.
    let (t, s, d) = (3, 65, 5);
    let (q, k, v) = (randn(&[2, 3, t, d], 35), randn(&[2, 3, s, d], 36), randn(&[2, 3, s, d], 37));
    check("attention with both masks", dev, &[q, k, v], 1e-4, |dev, x| {
        let pad: Vec<f32> = (0..2 * s).map(|i| (i >= s || i % 7 == 3) as u8 as f32).collect();
        let pad = Tensor::from_vec(pad, [2, s]).to_device(dev).unwrap();
        let mask: Vec<f32> =
            (0..t * s).map(|i| if i % 11 == 5 { f32::NEG_INFINITY } else { (i % 5) as f32 * -0.3 }).collect();
        let mask = Tensor::from_vec(mask, [t, s]).to_device(dev).unwrap();
        let opts = AttentionOptions {
            key_padding_mask: Some(&pad),
            attn_mask: Some(&mask),
            scale: Some(0.6),
            ..Default::default()
        };
        x[0].scaled_dot_product_attention(&x[1], &x[2], &opts)
    });
    // d = 64 (tiles of 16 keys), 67 queries over 67 keys with a cache-like
    // causal offset, keys and values broadcast over the heads.
    let (t, d) = (67, 64);
    check(
        "attention, d = 64, causal offset, broadcast keys",
        dev,
        &[randn(&[1, 3, t, d], 38), randn(&[1, 1, t, d], 39), randn(&[1, 1, t, d], 40)],
        1e-4,
        |_, x| {
            let (k, v) = (x[1].broadcast_to([1, 3, t, d]), x[2].broadcast_to([1, 3, t, d]));
            x[0].scaled_dot_product_attention(&k, &v, &AttentionOptions { causal: Some(5), ..Default::default() })
        },
    );
});

device_test!(attention_dropout_matches_the_cpu_kernel, |dev| {
    // The dropout mask is a hash of the seed and each weight's index, so the
    // device drops exactly the CPU kernel's weights (the f64 composite draws
    // its own mask, so the reference here is the CPU's f32 fused kernel).
    let (q, k, v) = (randn(&[2, 3, 9, 8], 41), randn(&[2, 3, 33, 8], 42), randn(&[2, 3, 33, 8], 43));
    let run = |d: Device| {
        let xs: Vec<Tensor> =
            [&q, &k, &v].iter().map(|t| t.to_device(d).unwrap().detach().requires_grad_(true)).collect();
        let opts = AttentionOptions { dropout: 0.3, dropout_seed: Some(0x5eed_1234_abcd), ..Default::default() };
        let y = xs[0].scaled_dot_product_attention(&xs[1], &xs[2], &opts);
        manual_seed(7);
        let w = Tensor::randn(y.shape().clone(), 0.0, 1.0).to_device(d).unwrap();
        y.mul(&w).sum_all().backward();
        let mut out = vec![y.to_vec::<f32>()];
        out.extend(xs.iter().map(|x| x.grad().unwrap().to_vec::<f32>()));
        out
    };
    let (want, got) = (run(Device::Cpu), run(dev));
    let plain = q.scaled_dot_product_attention(&k, &v, &AttentionOptions::default()).to_vec::<f32>();
    let changed = want[0].iter().zip(&plain).filter(|(a, b)| (*a - *b).abs() > 1e-3).count();
    assert!(changed > want[0].len() / 2, "dropout changed only {changed} of {} outputs", plain.len());
    for (n, (a, b)) in want.iter().zip(&got).enumerate() {
        let scale = a.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= 1e-4 * scale, "dropout attention on {dev}: tensor {n}[{i}] cpu {x} vs {y}");
        }
    }
});

device_test!(half_precision_tensors_are_stored_on_every_device, |dev| {
    // f16 and bf16 live on each device at 2 bytes an element and convert
    // there; the values equal the CPU's conversions bit for bit.
    let x = randn(&[7, 9], 44).affine(300.0, 0.0);
    for dt in [DType::F16, DType::BF16] {
        let want = x.to_dtype(dt);
        let got = x.to_device(dev).unwrap().to_dtype(dt);
        assert_eq!((got.dtype(), got.device()), (dt, dev));
        let (w, g) = (want.t().contiguous().to_vec::<f32>(), got.t().contiguous().to_vec::<f32>());
        assert!(w.iter().zip(&g).all(|(a, b)| a.to_bits() == b.to_bits()), "{dt} on {dev}");
        let back = want.to_device(dev).unwrap().to_dtype(DType::F32).to_vec::<f32>();
        assert_eq!(back, want.to_dtype(DType::F32).to_vec::<f32>(), "{dt} widened on {dev}");
    }
});

device_test!(batch_norm_running_statistics_stay_on_the_device, |dev| {
    // Three training passes update the running statistics and the batch
    // count where they live (nothing read back), as on the CPU.
    let run = |d: Device| {
        manual_seed(3);
        let bn = firebrand::nn::BatchNorm2d::new(3);
        bn.to_device(d).unwrap();
        for s in 0..3 {
            let x = randn(&[4, 3, 5, 5], 50 + s).affine(2.0, 1.0).to_device(d).unwrap();
            let _ = bn.forward(&x);
        }
        (bn.running_mean.to_vec::<f32>(), bn.running_var.to_vec::<f32>(), bn.num_batches_tracked.to_vec::<i64>())
    };
    let (want, got) = (run(Device::Cpu), run(dev));
    assert_eq!(got.2, vec![3], "num_batches_tracked on {dev}");
    for (a, b) in want.0.iter().chain(&want.1).zip(got.0.iter().chain(&got.1)) {
        assert!((a - b).abs() < 1e-5, "running statistics on {dev}: {a} vs {b}");
    }
});

device_test!(non_finite_values_propagate_and_are_detected, |dev| {
    // Shader compilers may fold `0·x` or `x - x` to 0 and `x != x` to false;
    // NaN and inf must still come out as the CPU gives them.
    let v = [1.0f32, f32::NEG_INFINITY, f32::INFINITY, f32::NAN, 0.0, 3e38, -2.5];
    let x = Tensor::from_vec(v.to_vec(), [7]).to_device(dev).unwrap();
    let bits = |t: Tensor| t.to_vec::<bool>();
    assert_eq!(bits(x.isnan()), [false, false, false, true, false, false, false], "isnan on {dev}");
    assert_eq!(bits(x.isinf()), [false, true, true, false, false, false, false], "isinf on {dev}");
    assert_eq!(bits(x.isfinite()), [true, false, false, false, true, true, true], "isfinite on {dev}");
    let same = |got: Vec<f32>, want: Vec<f32>, what: &str| {
        for (g, w) in got.iter().zip(&want) {
            assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "{what} on {dev}: {got:?} vs {want:?}");
        }
    };
    let cpu = Tensor::from_vec(v.to_vec(), [7]);
    same(x.affine(0.0, 0.0).to_vec(), cpu.affine(0.0, 0.0).to_vec(), "0·x");
    same(x.sub(&x).to_vec(), cpu.sub(&cpu).to_vec(), "x - x");
    same(x.mul(&x).to_vec(), cpu.mul(&cpu).to_vec(), "x·x");
    assert!(x.sum_all().item().is_nan(), "a NaN in a sum on {dev}");
});
