//! Gradchecks of convolution and pooling, with stride > 1, padding, dilation,
//! groups and odd sizes.

use firebrand_autograd::{ConvOptions, GradcheckOptions, Tensor, Window2d, gradcheck};

fn leaf(shape: &[usize], scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (0.37 * i as f32 + 0.11).sin() * scale).collect();
    Tensor::from_vec(v, shape.to_vec()).requires_grad_(true)
}

fn check(name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    if let Err(e) = gradcheck(f, inputs, GradcheckOptions::default()) {
        panic!("{name}: {e}");
    }
}

#[test]
fn conv2d_gradients() {
    let cases = [
        ([2, 3, 5, 4], [4, 3, 3, 3], ConvOptions { padding: (1, 1), ..Default::default() }),
        ([1, 2, 7, 6], [3, 2, 3, 2], ConvOptions { stride: (2, 3), padding: (1, 0), ..Default::default() }),
        (
            [1, 4, 6, 6],
            [4, 2, 2, 2],
            ConvOptions { dilation: (2, 2), padding: (1, 1), groups: 2, ..Default::default() },
        ),
    ];
    for (xs, ws, opts) in cases {
        let cout = ws[0];
        check("conv2d", &[leaf(&xs, 1.0), leaf(&ws, 0.5), leaf(&[cout], 0.3)], |t| {
            t[0].conv2d(&t[1], Some(&t[2]), opts)
        });
    }
    // The fused ReLU epilogue equals conv2d followed by relu (each gradchecked
    // above and in ops_gradcheck) in values and in every gradient. Finite
    // differences across ReLU's kink at 0 are unreliable, hence the comparison.
    let (xs, ws) = ([2, 3, 5, 4], [5, 3, 3, 3]);
    let opts = ConvOptions { padding: (1, 1), ..Default::default() };
    let t = [leaf(&xs, 1.0), leaf(&ws, 0.5), leaf(&[5], 0.3)];
    let wout = Tensor::randn([2, 5, 5, 4], 0.0, 1.0);
    let grads = |fused: bool| {
        t.iter().for_each(|p| p.zero_grad());
        let y = if fused {
            t[0].try_conv2d_relu(&t[1], Some(&t[2]), opts).unwrap()
        } else {
            t[0].conv2d(&t[1], Some(&t[2]), opts).relu()
        };
        y.mul(&wout).sum_all().backward();
        let mut v = vec![y.to_vec::<f32>()];
        v.extend(t.iter().map(|p| p.grad().unwrap().to_vec::<f32>()));
        v
    };
    let (fused, plain) = (grads(true), grads(false));
    assert!(fused[0].contains(&0.0) && fused[0].iter().any(|v| *v > 0.0), "ReLU is active");
    for (i, (a, b)) in fused.iter().zip(&plain).enumerate() {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "conv2d_relu output/grad {i}: {x} vs {y}");
        }
    }
    check("conv1d", &[leaf(&[2, 3, 9], 1.0), leaf(&[2, 3, 3], 0.5)], |t| {
        t[0].conv1d(&t[1], None, ConvOptions { stride: (1, 2), padding: (0, 1), ..Default::default() })
    });
}

#[test]
fn pooling_gradients() {
    // Distinct values so the maxima are unambiguous.
    let n = 2 * 3 * 5 * 5;
    let v: Vec<f32> = (0..n).map(|i| ((i * 37) % n) as f32 * 0.05).collect();
    let x = Tensor::from_vec(v, [2, 3, 5, 5]).requires_grad_(true);
    check("max_pool2d", std::slice::from_ref(&x), |t| t[0].max_pool2d(Window2d::new((2, 2), (2, 2), (1, 1))));
    check("max_pool2d-overlap", std::slice::from_ref(&x), |t| t[0].max_pool2d(Window2d::new((3, 3), (1, 2), (0, 0))));
    for cip in [true, false] {
        check("avg_pool2d", std::slice::from_ref(&x), |t| t[0].avg_pool2d(Window2d::new((3, 2), (2, 1), (1, 1)), cip));
    }
}

#[test]
fn conv_errors_name_shapes() {
    let x = Tensor::zeros([1, 3, 5, 5]);
    let e = x.try_conv2d(&Tensor::zeros([4, 2, 3, 3]), None, ConvOptions::default()).unwrap_err();
    assert_eq!(e.to_string(), "conv2d: shape mismatch between [1, 3, 5, 5] and [4, 2, 3, 3]");
    assert!(x.try_conv2d(&Tensor::zeros([4, 3, 7, 7]), None, ConvOptions::default()).is_err());
    assert!(Tensor::zeros([3, 5]).try_max_pool2d(Window2d::new((2, 2), (2, 2), (0, 0))).is_err());
}

/// The direct depthwise kernel (channel multipliers 1 and 2, stride 2,
/// dilation, padding wider than the reach, odd sizes) and the 1x1 path
/// (one gemm per image): gradients by finite differences.
#[test]
fn depthwise_and_pointwise_gradients() {
    let dw = |groups: usize, stride, padding, dilation| ConvOptions { stride, padding, dilation, groups };
    let cases = [
        ([2, 3, 5, 7], [3, 1, 3, 3], dw(3, (1, 1), (1, 1), (1, 1))),
        ([1, 2, 9, 8], [4, 1, 3, 3], dw(2, (2, 2), (1, 1), (1, 1))),
        ([1, 3, 6, 5], [3, 1, 2, 3], dw(3, (2, 1), (2, 3), (2, 1))),
        ([2, 4, 3, 3], [5, 4, 1, 1], dw(1, (1, 1), (0, 0), (1, 1))), // pointwise
    ];
    for (xs, ws, opts) in cases {
        let cout = ws[0];
        check("depthwise/pointwise conv2d", &[leaf(&xs, 1.0), leaf(&ws, 0.5), leaf(&[cout], 0.3)], |t| {
            t[0].conv2d(&t[1], Some(&t[2]), opts)
        });
    }
}

/// Each channel of a depthwise convolution is a one-channel dense
/// convolution: the direct kernel with ReLU6 fused against that reference
/// (dense im2col path, unfused ReLU6), in values and all three gradients.
#[test]
fn depthwise_kernel_with_fused_relu6_equals_per_channel_dense_convolutions() {
    use firebrand_autograd::UnaryOp;
    let (c, m) = (3, 2);
    let opts = ConvOptions { stride: (2, 2), padding: (1, 1), groups: c, ..Default::default() };
    let t = [leaf(&[2, c, 11, 9], 4.0), leaf(&[c * m, 1, 3, 3], 1.5), leaf(&[c * m], 1.0)];
    let wout = Tensor::randn([2, c * m, 6, 5], 0.0, 1.0);
    let run = |direct: bool| {
        t.iter().for_each(|p| p.zero_grad());
        let y = if direct {
            t[0].try_conv2d_act(&t[1], Some(&t[2]), opts, Some(UnaryOp::Hardtanh(0.0, 6.0))).unwrap()
        } else {
            let one = ConvOptions { groups: 1, ..opts };
            let parts: Vec<Tensor> = (0..c * m)
                .map(|co| {
                    let (x, w, b) = (t[0].narrow(1, co / m, 1), t[1].narrow(0, co, 1), t[2].narrow(0, co, 1));
                    x.conv2d(&w, Some(&b), one)
                })
                .collect();
            Tensor::cat(&parts.iter().collect::<Vec<_>>(), 1).relu6()
        };
        y.mul(&wout).sum_all().backward();
        let mut v = vec![y.to_vec::<f32>()];
        v.extend(t.iter().map(|p| p.grad().unwrap().to_vec::<f32>()));
        v
    };
    let (direct, reference) = (run(true), run(false));
    assert!(direct[0].contains(&6.0) && direct[0].contains(&0.0), "both bounds are reached");
    for (i, (a, b)) in direct.iter().zip(&reference).enumerate() {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "output/grad {i}: {x} vs {y}");
        }
    }
}

/// `channel_affine`: values against broadcast ops, gradients by finite
/// differences (with and without the scale), and its shape errors.
#[test]
fn channel_affine_gradients_and_errors() {
    let t = [leaf(&[2, 3, 5], 1.0), leaf(&[3], 0.7), leaf(&[3], 0.4)];
    check("channel_affine", &t, |t| t[0].try_channel_affine(Some(&t[1]), Some(&t[2]), None).unwrap());
    check("channel_affine shift only", &[t[0].clone(), t[2].clone()], |t| {
        t[0].try_channel_affine(None, Some(&t[1]), None).unwrap()
    });
    let want = t[0].mul(&t[1].reshape([1, 3, 1])).add(&t[2].reshape([1, 3, 1]));
    let got = t[0].try_channel_affine(Some(&t[1]), Some(&t[2]), None).unwrap();
    assert!(got.sub(&want).abs().max_all().item() < 1e-6);
    let e = t[0].try_channel_affine(Some(&Tensor::ones([4])), None, None).unwrap_err();
    assert!(e.to_string().contains("channel_affine") && e.to_string().contains("[4]"), "{e}");
}
