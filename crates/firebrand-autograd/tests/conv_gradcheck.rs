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
