//! Convolution, pooling and batch-norm layers against PyTorch (float64
//! references from `reference/make_reference.py`: outputs, input and
//! parameter gradients, running statistics), plus gradchecks of the layers
//! on awkward shapes and their error messages.

use firebrand_autograd::{GradcheckOptions, Tensor, gradcheck, manual_seed};
use firebrand_nn::{
    AvgPool2d, BatchNorm1d, BatchNorm2d, Conv1d, Conv2d, ConvConfig, GlobalAvgPool, MaxPool2d, Module, ModuleExt,
    Padding, Sequential, load_weights, save_weights,
};
use serde_json::Value;

mod common;
use common::{cases, close_within, f32s, usizes};

fn close(got: &[f32], want: &[f32], what: &str) {
    close_within(got, want, what, 2e-5);
}

fn pair(spec: &Value, key: &str, default: usize) -> (usize, usize) {
    match spec.get(key) {
        Some(v) => {
            let p = usizes(v);
            (p[0], p[1])
        }
        None => (default, default),
    }
}

/// Builds the layer a reference case describes.
fn build(spec: &Value) -> Box<dyn Module> {
    let n = |k: &str| spec[k].as_u64().unwrap() as usize;
    match spec["layer"].as_str().unwrap() {
        kind @ ("conv2d" | "conv1d") => {
            let k = pair(spec, "k", 1);
            let padding = match &spec["padding"] {
                Value::String(s) if s == "same" => Padding::Same,
                v => match usizes(v)[..] {
                    [h, w] => Padding::Explicit(h, w),
                    [top, bottom, left, right] => Padding::Asymmetric { top, bottom, left, right },
                    ref p => panic!("padding {p:?}"),
                },
            };
            let config = ConvConfig {
                stride: pair(spec, "stride", 1),
                dilation: pair(spec, "dilation", 1),
                padding,
                groups: spec.get("groups").map_or(1, |g| g.as_u64().unwrap() as usize),
                bias: spec.get("bias").is_none_or(|b| b.as_bool().unwrap()),
                ..ConvConfig::default()
            };
            if kind == "conv2d" {
                Box::new(Conv2d::with_config(n("cin"), n("cout"), k, config))
            } else {
                Box::new(Conv1d::with_config(n("cin"), n("cout"), k.1, config))
            }
        }
        "maxpool" => Box::new(MaxPool2d::with_stride(n("k"), n("stride"), n("padding"))),
        "avgpool" => {
            let p = AvgPool2d::with_stride(n("k"), n("stride"), n("padding"));
            let include = spec.get("count_include_pad").is_none_or(|b| b.as_bool().unwrap());
            Box::new(if include { p } else { p.exclude_padding() })
        }
        "global_avg" => Box::new(GlobalAvgPool),
        "bn2d" => Box::new(BatchNorm2d::new(n("c"))),
        "bn1d" => Box::new(BatchNorm1d::new(n("c"))),
        other => panic!("unknown layer {other}"),
    }
}

#[test]
fn layers_match_pytorch_values_gradients_and_running_stats() {
    let c = cases();
    let layers = c["layers"].as_object().unwrap();
    assert!(layers.len() >= 14);
    for (name, case) in layers {
        let layer = build(&case["spec"]);
        let params = layer.named_parameters();
        for (pname, p) in &params {
            p.copy_(&Tensor::from_vec(f32s(&case[pname]), p.shape().clone())).unwrap();
        }
        let x = Tensor::from_vec(f32s(&case["x"]), usizes(&case["x_shape"])).requires_grad_(true);
        let y = layer.forward(&x);
        assert_eq!(y.dims(), usizes(&case["y_shape"]).as_slice(), "{name}: output shape");
        close(&y.to_vec::<f32>(), &f32s(&case["y"]), &format!("{name}: y"));
        y.mul(&Tensor::from_vec(f32s(&case["wout"]), y.shape().clone())).sum_all().backward();
        close(&x.grad().unwrap().to_vec::<f32>(), &f32s(&case["gx"]), &format!("{name}: grad x"));
        for (pname, p) in &params {
            let g = p.grad().unwrap_or_else(|| panic!("{name}: no grad for {pname}"));
            close(&g.to_vec::<f32>(), &f32s(&case[format!("g_{pname}")]), &format!("{name}: grad {pname}"));
        }
        for (bname, b) in layer.named_buffers() {
            let got = b.to_dtype(firebrand_autograd::DType::F32).to_vec::<f32>();
            close(&got, &f32s(&case[&bname]), &format!("{name}: buffer {bname}"));
        }
    }
}

#[test]
fn batch_norm_eval_uses_running_statistics() {
    let c = &cases()["bn2d_eval"];
    let mut bn = BatchNorm2d::new(3).with_momentum(0.3);
    assert_eq!((bn.momentum(), bn.eps()), (0.3, 1e-5));
    bn.weight.as_ref().unwrap().copy_(&Tensor::from_vec(f32s(&c["weight"]), [3])).unwrap();
    bn.bias.as_ref().unwrap().copy_(&Tensor::from_vec(f32s(&c["bias"]), [3])).unwrap();
    // Same two training batches as the script (det() inputs, reproduced here).
    let det = |shape: [usize; 4], scale: f32, shift: f32| {
        let n: usize = shape.iter().product();
        Tensor::from_vec(
            (0..n).map(|i| (0.37 * i as f64 + 0.11).sin() as f32 * scale + shift).collect::<Vec<_>>(),
            shape,
        )
    };
    bn.forward(&det([4, 3, 3, 5], 1.0, 0.1));
    bn.forward(&det([2, 3, 4, 4], 2.0, -0.5));
    close(&bn.running_mean.to_vec::<f32>(), &f32s(&c["running_mean"]), "running_mean");
    close(&bn.running_var.to_vec::<f32>(), &f32s(&c["running_var"]), "running_var");
    assert_eq!(bn.num_batches_tracked.to_vec::<i64>(), vec![c["num_batches_tracked"].as_i64().unwrap()]);
    bn.eval();
    let y = bn.forward(&Tensor::from_vec(f32s(&c["x"]), [2, 3, 3, 3]));
    close(&y.to_vec::<f32>(), &f32s(&c["y"]), "eval y");
    // Running statistics do not move in evaluation mode.
    close(&bn.running_mean.to_vec::<f32>(), &f32s(&c["running_mean"]), "running_mean after eval");
}

/// Gradchecks the input gradient, then checks every parameter's gradient
/// against central differences taken by perturbing the parameter in place
/// (the layer reads its own tensors, so gradcheck cannot substitute them).
fn check(name: &str, layer: &dyn Module, x_shape: &[usize]) {
    check_at(name, layer, Tensor::randn(x_shape.to_vec(), 0.0, 1.0));
}

fn check_at(name: &str, layer: &dyn Module, x: Tensor) {
    let x = x.requires_grad_(true);
    if let Err(e) = gradcheck(|t| layer.forward(&t[0]), std::slice::from_ref(&x), GradcheckOptions::default()) {
        panic!("{name}: {e}");
    }
    let y0 = layer.forward(&x);
    let w = Tensor::randn(y0.shape().clone(), 0.0, 1.0);
    let loss = |x: &Tensor| layer.forward(x).mul(&w).sum_all().item() as f64;
    layer.zero_grad();
    layer.forward(&x).mul(&w).sum_all().backward();
    for (pname, p) in layer.named_parameters() {
        let g = p.grad().unwrap_or_else(|| panic!("{name}: no gradient for {pname}")).to_vec::<f32>();
        let n = p.elem_count();
        for i in (0..n).step_by(n.div_ceil(7)) {
            let eps = 1e-2f32;
            let at = |delta: f32| {
                p.update_f32("test", |v| v[i] += delta).unwrap();
                loss(&x.detach())
            };
            let plus = at(eps);
            let minus = at(-2.0 * eps);
            at(eps);
            let fd = (plus - minus) / (2.0 * eps as f64);
            assert!(
                (fd - g[i] as f64).abs() <= 2e-3 + 1e-2 * fd.abs(),
                "{name}: {pname}[{i}]: backward {} vs finite differences {fd}",
                g[i]
            );
        }
    }
}

#[test]
fn layers_pass_gradcheck_on_awkward_shapes() {
    manual_seed(3);
    let cfg = |stride, padding, dilation, groups| ConvConfig {
        stride: (stride, stride),
        padding,
        dilation: (dilation, dilation),
        groups,
        ..ConvConfig::default()
    };
    check("conv2d same 3x3", &Conv2d::new(2, 3, 3).padding(Padding::Same), &[2, 2, 5, 4]);
    check("conv2d same even", &Conv2d::with_config(2, 2, (2, 2), cfg(1, Padding::Same, 1, 1)), &[1, 2, 5, 5]);
    check(
        "conv2d stride 2 pad 1",
        &Conv2d::with_config(3, 2, (3, 3), cfg(2, Padding::Explicit(1, 1), 1, 1)),
        &[2, 3, 7, 6],
    );
    check("conv2d dilated grouped", &Conv2d::with_config(4, 4, (3, 3), cfg(1, Padding::Valid, 2, 2)), &[1, 4, 7, 7]);
    check("conv2d 1x1 on 1x1", &Conv2d::new(3, 2, 1), &[2, 3, 1, 1]);
    check("conv1d same even", &Conv1d::new(2, 3, 4).padding(Padding::Same), &[2, 2, 9]);
    check("conv1d stride", &Conv1d::new(2, 2, 3).stride(2), &[1, 2, 8]);
    // Max pooling has kinks at ties: distinct values 0.1 apart (a scrambled ramp).
    let ramp: Vec<f32> = (0..84).map(|i| ((i * 37) % 84) as f32 * 0.1 - 4.0).collect();
    check_at("maxpool 3/2 pad 1", &MaxPool2d::with_stride(3, 2, 1), Tensor::from_vec(ramp, [1, 2, 7, 6]));
    check("avgpool 2", &AvgPool2d::new(2), &[2, 1, 5, 5]);
    check("global avg", &GlobalAvgPool, &[2, 3, 3, 5]);
    check("bn2d", &BatchNorm2d::new(2), &[3, 2, 3, 3]);
    check("bn1d", &BatchNorm1d::new(3), &[5, 3]);
    check("bn1d seq", &BatchNorm1d::new(2), &[2, 2, 5]);
}

#[test]
fn same_padding_keeps_the_size_for_odd_and_even_kernels() {
    for (kh, kw, d) in [(3, 3, 1), (2, 2, 1), (4, 5, 1), (3, 2, 2), (1, 1, 3)] {
        let cfg = ConvConfig { padding: Padding::Same, dilation: (d, d), ..ConvConfig::default() };
        let y = Conv2d::with_config(1, 2, (kh, kw), cfg).forward(&Tensor::ones([1, 1, 9, 8]));
        assert_eq!(y.dims(), &[1, 2, 9, 8], "kernel {kh}x{kw}, dilation {d}");
    }
}

#[test]
fn layer_errors_name_the_layer_and_shapes() {
    let conv = Conv2d::new(3, 8, 3);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conv.forward(&Tensor::zeros([1, 2, 8, 8]))))
        .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(
        msg.starts_with("Conv2d(3 -> 8, 3x3") && msg.ends_with("expected input (N, 3, H, W), got [1, 2, 8, 8]"),
        "{msg}"
    );
    // "same" at stride 2 is TensorFlow's: the output is ceil(input / 2).
    let same2 = Conv2d::new(3, 8, 3).stride(2).padding(Padding::Same);
    assert_eq!(same2.forward(&Tensor::zeros([1, 3, 8, 8])).dims(), &[1, 8, 4, 4]);
    assert_eq!(same2.forward(&Tensor::zeros([1, 3, 7, 9])).dims(), &[1, 8, 4, 5]);
    let err =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| conv.forward(&Tensor::zeros([2, 8, 8])))).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("Conv2d") && msg.contains("[2, 8, 8]"), "{msg}");
    let bn = BatchNorm2d::new(4);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| bn.forward(&Tensor::zeros([2, 3, 4, 4]))))
        .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("BatchNorm2d(4)") && msg.contains("[2, 3, 4, 4]"), "{msg}");
    let pool = MaxPool2d::new(5);
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.forward(&Tensor::zeros([1, 1, 3, 3]))))
        .unwrap_err();
    assert!(err.downcast_ref::<String>().unwrap().contains("max_pool2d"));
}

#[test]
fn cnn_summary_and_state_dict_with_buffers_round_trip() {
    manual_seed(0);
    let model = Sequential::new()
        .add(Conv2d::new(1, 8, 3).padding(Padding::Same))
        .add(BatchNorm2d::new(8))
        .add(MaxPool2d::new(2))
        .add(GlobalAvgPool);
    let s = model.summary(&[1, 28, 28]);
    assert!(s.contains("Conv2d(1 -> 8, 3x3, same)") && s.contains("(None, 8, 28, 28)"), "{s}");
    assert!(s.contains("(None, 8, 14, 14)") && s.contains("(None, 8)"), "{s}");
    let names: Vec<String> = model.state_dict().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    );
    model.forward(&Tensor::randn([4, 1, 6, 6], 1.0, 2.0)); // moves the running statistics
    let path = std::env::temp_dir().join(format!("firebrand_cnn_{}.safetensors", std::process::id()));
    save_weights(&model, &path).unwrap();
    manual_seed(1);
    let other = Sequential::new()
        .add(Conv2d::new(1, 8, 3).padding(Padding::Same))
        .add(BatchNorm2d::new(8))
        .add(MaxPool2d::new(2))
        .add(GlobalAvgPool);
    load_weights(&other, &path, true).unwrap();
    for ((n, a), (_, b)) in model.state_dict().iter().zip(other.state_dict()) {
        assert_eq!(
            a.to_dtype(firebrand_autograd::DType::F32).to_vec::<f32>(),
            b.to_dtype(firebrand_autograd::DType::F32).to_vec::<f32>(),
            "{n}"
        );
    }
    std::fs::remove_file(path).unwrap();
}

#[test]
fn batch_norm_folds_into_the_layer_before_it() {
    use firebrand_nn::{BatchNorm1d, Linear, ModuleExt, fuse_conv_bn, fuse_linear_bn};
    manual_seed(11);
    // Non-trivial statistics and affine parameters.
    let conv =
        Conv2d::with_config(4, 6, (3, 3), firebrand_nn::ConvConfig { stride: (2, 2), groups: 2, ..Default::default() });
    let mut bn = BatchNorm2d::new(6).with_eps(1e-3);
    for _ in 0..3 {
        bn.forward(&conv.forward(&Tensor::randn([5, 4, 9, 9], 0.7, 2.0)));
    }
    bn.weight.as_ref().unwrap().copy_(&Tensor::randn([6], 1.0, 0.3)).unwrap();
    bn.bias.as_ref().unwrap().copy_(&Tensor::randn([6], 0.0, 0.3)).unwrap();
    bn.eval();
    let x = Tensor::randn([3, 4, 9, 9], 0.0, 1.0);
    let fused = fuse_conv_bn(&conv, &bn).unwrap();
    let diff = bn.forward(&conv.forward(&x)).sub(&fused.forward(&x)).abs().max_all().item();
    assert!(diff < 1e-5, "conv + bn vs folded: {diff}");
    assert_eq!(fused.config().groups, 2);

    let lin = Linear::new(7, 5);
    let mut bn1 = BatchNorm1d::new(5);
    bn1.forward(&lin.forward(&Tensor::randn([16, 7], 1.0, 3.0)));
    bn1.eval();
    let x = Tensor::randn([4, 7], 0.0, 1.0);
    let fused = fuse_linear_bn(&lin, &bn1).unwrap();
    assert!(bn1.forward(&lin.forward(&x)).sub(&fused.forward(&x)).abs().max_all().item() < 1e-5);
    // A fused activation sits between: no folding, and the error says why.
    let e = fuse_linear_bn(&Linear::new(7, 5).with_activation(firebrand_nn::Activation::Relu), &bn1)
        .err()
        .expect("refused");
    assert!(e.to_string().contains("relu"), "{e}");
    assert!(fuse_conv_bn(&Conv2d::new(4, 3, 3), &bn).err().expect("refused").to_string().contains("3 output channels"));
    // On a Sequential: both kinds of pair.
    let mut net = Sequential::new().add(Linear::new(7, 5)).add(BatchNorm1d::new(5)).add(Linear::new(5, 2));
    net.forward(&Tensor::randn([8, 7], 0.0, 1.0));
    net.eval();
    let before = net.forward(&x);
    assert_eq!(net.fuse_batch_norms(), 1);
    assert_eq!(net.len(), 2);
    assert!(net.forward(&x).sub(&before).abs().max_all().item() < 1e-5);
    assert_eq!(net.num_parameters(), 7 * 5 + 5 + 5 * 2 + 2);
}

#[test]
fn eval_batch_norm_is_a_scale_and_shift_with_gradients() {
    manual_seed(12);
    let mut bn = BatchNorm2d::new(3).with_eps(1e-3);
    bn.forward(&Tensor::randn([4, 3, 5, 5], 1.0, 2.0));
    bn.eval();
    let x = Tensor::randn([2, 3, 4, 4], 0.0, 1.0).requires_grad_(true);
    let y = bn.forward(&x);
    // The definition, from primitive ops.
    let shape = [1, 3, 1, 1];
    let norm =
        x.detach().sub(&bn.running_mean.reshape(shape)).div(&bn.running_var.affine(1.0, 1e-3).sqrt().reshape(shape));
    let want = norm.mul(&bn.weight.as_ref().unwrap().reshape(shape)).add(&bn.bias.as_ref().unwrap().reshape(shape));
    assert!(y.sub(&want).abs().max_all().item() < 1e-5);
    y.sum_all().backward();
    // d/dγ = Σ normalized x per channel; d/dβ = the count; d/dx = γ / sqrt(var + ε).
    let gw = bn.weight.as_ref().unwrap().grad().unwrap().to_vec::<f32>();
    let want_gw = norm.sum(&[0, 2, 3], false).to_vec::<f32>();
    assert!(gw.iter().zip(&want_gw).all(|(a, b)| (a - b).abs() < 1e-4), "{gw:?} vs {want_gw:?}");
    assert_eq!(bn.bias.as_ref().unwrap().grad().unwrap().to_vec::<f32>(), vec![32.0; 3]);
    let (scale, _) = bn.eval_scale_shift();
    let gx = x.grad().unwrap().to_vec::<f32>();
    let s = scale.to_vec::<f32>();
    assert!(gx.iter().enumerate().all(|(i, g)| (g - s[(i / 16) % 3]).abs() < 1e-6));
}

/// An evaluation-mode `Sequential` runs `Conv2d → BatchNorm2d [→ activation]`
/// as one convolution when no graph is recorded: the same outputs as the
/// layers one by one (depthwise with its filters folded, dense and 1x1 with
/// the scale/shift/activation pass), and layer by layer when gradients are
/// wanted, so training through it is unchanged.
#[test]
fn eval_sequential_fuses_conv_batch_norm_and_activation_at_run_time() {
    use firebrand_autograd::with_no_grad;
    use firebrand_nn::{Activation, Padding, ReLU6, SiLU};
    manual_seed(21);
    let dw = ConvConfig { groups: 6, padding: Padding::Explicit(1, 1), stride: (2, 2), ..Default::default() };
    let mut net = Sequential::new()
        .add(Conv2d::new(3, 6, 3).padding(Padding::Same))
        .add(BatchNorm2d::new(6))
        .add(ReLU6)
        .add(Conv2d::with_config(6, 6, (3, 3), dw))
        .add(BatchNorm2d::new(6))
        .add(SiLU)
        .add(Conv2d::with_config(6, 4, (1, 1), ConvConfig { bias: false, ..Default::default() }))
        .add(BatchNorm2d::new(4))
        .add(Conv2d::new(4, 2, 1).with_activation(Activation::Relu)) // own activation: not fused with a BN
        .add(BatchNorm2d::new(2));
    for _ in 0..3 {
        net.forward(&Tensor::randn([4, 3, 9, 9], 0.5, 2.0)); // the running statistics move
    }
    net.eval();
    let x = Tensor::randn([2, 3, 9, 9], 0.0, 1.0);
    // Layer by layer, by hand.
    let layered = with_no_grad(|| net.layers().fold(x.clone(), |y, l| l.forward(&y)));
    let fused = with_no_grad(|| net.forward(&x));
    assert_eq!(fused.dims(), layered.dims());
    let diff = fused.sub(&layered).abs().max_all().item();
    assert!(diff < 1e-5, "run-time fusion differs by {diff}");
    // With gradients recorded the layers run one by one and every parameter gets its gradient.
    let y = net.forward(&x);
    assert!(y.sub(&layered).abs().max_all().item() < 1e-5);
    y.sum_all().backward();
    for (name, p) in net.named_parameters() {
        assert!(p.grad().is_some(), "{name} has a gradient");
    }
}

/// A training-mode `Sequential` runs `BatchNorm2d → ReLU6/ReLU/SiLU` as one
/// op with the activation inside: the same outputs, running statistics and
/// gradients as the layers one by one.
#[test]
fn training_sequential_fuses_batch_norm_and_activation() {
    use firebrand_nn::{ReLU, ReLU6, SiLU};
    let build = || {
        manual_seed(22);
        Sequential::new()
            .add(Conv2d::new(3, 6, 3))
            .add(BatchNorm2d::new(6))
            .add(ReLU6)
            .add(Conv2d::new(6, 5, 3))
            .add(BatchNorm2d::new(5))
            .add(ReLU)
            .add(Conv2d::new(5, 4, 1))
            .add(BatchNorm2d::new(4))
            .add(SiLU)
    };
    let (fused_net, layered_net) = (build(), build());
    let x = Tensor::randn([3, 3, 11, 10], 0.5, 2.0);
    let w = Tensor::randn([3, 4, 7, 6], 0.0, 1.0);
    let fused = fused_net.forward(&x);
    let layered = layered_net.layers().fold(x.clone(), |y, l| l.forward(&y));
    assert!(fused.sub(&layered).abs().max_all().item() < 1e-5);
    fused.mul(&w).sum_all().backward();
    layered.mul(&w).sum_all().backward();
    let other: std::collections::HashMap<String, Tensor> = layered_net.named_parameters().into_iter().collect();
    for (name, p) in fused_net.named_parameters() {
        let (a, b) = (p.grad().expect("gradient"), other[&name].grad().expect("gradient"));
        let diff = a.sub(&b).abs().max_all().item();
        assert!(diff < 1e-4 * (1.0 + b.abs().max_all().item()), "{name}: gradients differ by {diff}");
    }
    for ((name, a), (_, b)) in fused_net.named_buffers().into_iter().zip(layered_net.named_buffers()) {
        assert_eq!(a.to_vec::<f64>(), b.to_vec::<f64>(), "{name}");
    }
}
