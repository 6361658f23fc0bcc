//! The fused ops in `f64`: softmax, log-softmax, layer norm, attention and
//! the LSTM scan run their composite forms, convolution and pooling plain
//! `f64` kernels, in double precision. Their values and gradients equal the
//! `f32` fused kernels' (to f32 rounding), masks and odd windows included.

use firebrand_autograd::{AttentionOptions, ConvOptions, DType, Tensor, Window2d, manual_seed};

fn close(a: &[f64], b: &[f32], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let y = *y as f64;
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{i}]: f64 {x} vs f32 {y}");
    }
}

/// Runs `f` on f32 leaves and on their f64 copies; compares outputs and every input's gradient.
fn compare(inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor, what: &str) {
    let leaves32: Vec<Tensor> = inputs.iter().map(|t| t.detach_copy().requires_grad_(true)).collect();
    let leaves64: Vec<Tensor> = inputs.iter().map(|t| t.to_dtype(DType::F64).requires_grad_(true)).collect();
    let (y32, y64) = (f(&leaves32), f(&leaves64));
    assert_eq!(y64.dtype(), DType::F64, "{what}: computed in f64");
    close(&y64.to_vec::<f64>(), &y32.to_vec::<f32>(), 1e-5, what);
    // A fixed, uneven weighting of the outputs gives every gradient entry a different value.
    let w = Tensor::rand(y32.shape().clone(), -1.0, 1.0);
    y32.mul(&w).sum_all().backward();
    y64.mul(&w.to_dtype(DType::F64)).sum_all().backward();
    for (i, (a, b)) in leaves64.iter().zip(&leaves32).enumerate() {
        let (ga, gb) = (a.grad().unwrap(), b.grad().unwrap());
        assert_eq!(ga.dtype(), DType::F64);
        close(&ga.to_vec::<f64>(), &gb.to_vec::<f32>(), 1e-4, &format!("{what}: grad of input {i}"));
    }
}

#[test]
fn softmax_and_log_softmax() {
    manual_seed(0);
    let x = Tensor::randn([3, 5, 7], 0.0, 2.0);
    compare(std::slice::from_ref(&x), |t| t[0].softmax(-1), "softmax");
    compare(std::slice::from_ref(&x), |t| t[0].log_softmax(1), "log_softmax over a middle dim");
    compare(std::slice::from_ref(&x), |t| t[0].transpose(0, 2).softmax(0), "softmax of a transposed view");
    // NaN in a row makes that row NaN, as in PyTorch; other rows are untouched.
    let v = Tensor::from_vec(vec![1.0f64, f64::NAN, 0.0, 1.0, 2.0, 3.0], [2, 3]).softmax(-1).to_vec::<f64>();
    assert!(v[..3].iter().all(|x| x.is_nan()) && v[3..].iter().all(|x| x.is_finite()));
}

#[test]
fn layer_norm_with_and_without_affine() {
    manual_seed(1);
    let x = Tensor::randn([4, 6], 1.0, 3.0);
    let (w, b) = (Tensor::randn([6], 1.0, 0.5), Tensor::randn([6], 0.0, 0.5));
    compare(&[x.clone(), w, b], |t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5), "layer_norm");
    compare(&[x], |t| t[0].layer_norm(None, None, 1e-5), "layer_norm without affine");
}

#[test]
fn attention_with_every_mask() {
    manual_seed(2);
    let (q, k, v) = (
        Tensor::randn([2, 3, 4, 8], 0.0, 1.0),
        Tensor::randn([2, 3, 6, 8], 0.0, 1.0),
        Tensor::randn([2, 3, 6, 8], 0.0, 1.0),
    );
    let qkv = [q, k, v];
    compare(&qkv, |t| t[0].scaled_dot_product_attention(&t[1], &t[2], &AttentionOptions::default()), "attention");
    let causal = AttentionOptions { causal: Some(2), ..Default::default() };
    compare(&qkv, |t| t[0].scaled_dot_product_attention(&t[1], &t[2], &causal), "causal attention, offset 2");
    // Batch 1's keys are all padding: its queries get zeros, and zero gradients.
    let pad = Tensor::from_vec(vec![0.0f32, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], [2, 6]);
    let padded = AttentionOptions { key_padding_mask: Some(&pad), ..Default::default() };
    compare(&qkv, |t| t[0].scaled_dot_product_attention(&t[1], &t[2], &padded), "key padding, one batch all masked");
    let bias = Tensor::randn([4, 6], 0.0, 1.0);
    let additive = AttentionOptions { attn_mask: Some(&bias), scale: Some(0.3), ..Default::default() };
    compare(&qkv, |t| t[0].scaled_dot_product_attention(&t[1], &t[2], &additive), "additive mask and scale");
    let q64 = qkv[0].to_dtype(DType::F64);
    // Dropout on the composite's weights: some weights dropped, the rest scaled.
    let dropout = AttentionOptions { dropout: 0.5, ..Default::default() };
    let kept = q64.try_scaled_dot_product_attention(&q64, &q64, &AttentionOptions::default()).unwrap();
    let dropped = q64.try_scaled_dot_product_attention(&q64, &q64, &dropout).unwrap();
    assert_eq!(dropped.dims(), kept.dims());
    assert!(dropped.sub(&kept).abs().max_all().item() > 1e-3, "dropout changed nothing");
    let bad = AttentionOptions { dropout: 1.0, ..Default::default() };
    let e = q64.try_scaled_dot_product_attention(&q64, &q64, &bad).unwrap_err();
    assert!(e.to_string().contains("dropout"), "{e}");
}

#[test]
fn convolution_in_every_form() {
    manual_seed(3);
    let x = Tensor::randn([2, 4, 7, 6], 0.0, 1.0);
    let (w, b) = (Tensor::randn([6, 4, 3, 2], 0.0, 0.5), Tensor::randn([6], 0.0, 0.5));
    let opts = ConvOptions { stride: (2, 1), padding: (1, 1), dilation: (1, 2), groups: 1 };
    compare(&[x.clone(), w.clone(), b.clone()], |t| t[0].conv2d(&t[1], Some(&t[2]), opts), "conv2d, strided, dilated");
    compare(
        &[x.clone(), w.clone(), b.clone()],
        |t| t[0].try_conv2d_relu(&t[1], Some(&t[2]), opts).unwrap(),
        "conv2d + relu",
    );
    let dw = ConvOptions { stride: (2, 1), padding: (1, 2), dilation: (1, 2), groups: 4 };
    compare(
        &[x.clone(), Tensor::randn([8, 1, 3, 3], 0.0, 1.0), Tensor::randn([8], 0.0, 1.0)],
        |t| t[0].conv2d(&t[1], Some(&t[2]), dw),
        "depthwise conv2d (direct kernel), multiplier 2",
    );
    compare(
        &[x.clone(), Tensor::randn([4], 1.0, 0.5), Tensor::randn([4], 0.0, 1.0)],
        |t| t[0].try_channel_affine(Some(&t[1]), Some(&t[2]), Some(firebrand_autograd::UnaryOp::Relu)).unwrap(),
        "channel_affine + relu",
    );
    let wg = Tensor::randn([6, 2, 3, 3], 0.0, 0.5);
    let grouped = ConvOptions { padding: (1, 1), groups: 2, ..Default::default() };
    compare(&[x.clone(), wg], |t| t[0].conv2d(&t[1], None, grouped), "grouped conv2d");
    let (x1, w1) = (Tensor::randn([2, 3, 9], 0.0, 1.0), Tensor::randn([5, 3, 3], 0.0, 0.5));
    compare(&[x1, w1], |t| t[0].conv1d(&t[1], None, ConvOptions::default()), "conv1d");
}

#[test]
fn pooling() {
    manual_seed(4);
    let x = Tensor::randn([2, 3, 7, 6], 0.0, 1.0);
    for win in [Window2d::new((2, 2), (2, 2), (0, 0)), Window2d::new((3, 3), (2, 1), (1, 1))] {
        compare(std::slice::from_ref(&x), |t| t[0].max_pool2d(win), &format!("max_pool2d {win:?}"));
        for cip in [true, false] {
            compare(std::slice::from_ref(&x), |t| t[0].avg_pool2d(win, cip), &format!("avg_pool2d {win:?} {cip}"));
        }
    }
    let nan = Tensor::from_vec(vec![1.0f64, f64::NAN, 3.0, 2.0], [1, 1, 2, 2]).max_pool2d(Window2d::new(
        (2, 2),
        (2, 2),
        (0, 0),
    ));
    assert!(nan.to_vec::<f64>()[0].is_nan(), "NaN propagates through max pooling");
}

#[test]
fn lstm_scan_both_ways() {
    manual_seed(5);
    // 37 rows: on a multi-threaded CPU the f32 scan splits the batch into
    // per-thread chunks of uneven size (18 and 19 on two threads).
    for (t, b, h) in [(4, 3, 5), (3, 37, 6)] {
        let inputs = [
            Tensor::randn([t, b, 4 * h], 0.0, 1.0),
            Tensor::randn([4 * h, h], 0.0, 0.4),
            Tensor::randn([b, h], 0.0, 1.0),
            Tensor::randn([b, h], 0.0, 1.0),
        ];
        for reverse in [false, true] {
            compare(
                &inputs,
                |x| x[0].try_lstm_scan(&x[1], &x[2], &x[3], reverse).unwrap(),
                &format!("lstm_scan b={b} reverse={reverse}"),
            );
            compare(
                &inputs,
                |x| x[0].try_lstm_scan_last(&x[1], &x[2], &x[3], reverse).unwrap(),
                &format!("lstm_scan_last b={b} reverse={reverse}"),
            );
        }
    }
}
