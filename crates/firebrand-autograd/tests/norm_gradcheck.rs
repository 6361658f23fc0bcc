//! The fused layer-norm op: gradcheck with and without scale and shift, on
//! odd sizes and a transposed input, and values and gradients equal to the
//! composite form built from primitive ops.

use firebrand_autograd::{GradcheckOptions, Tensor, gradcheck, manual_seed};

fn composite(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f32) -> Tensor {
    let mean = x.mean(&[-1], true);
    let var = x.var(&[-1], 0, true);
    let mut y = x.sub(&mean).mul(&var.affine(1.0, eps).rsqrt());
    if let Some(w) = w {
        y = y.mul(w);
    }
    if let Some(b) = b {
        y = y.add(b);
    }
    y
}

#[test]
fn layer_norm_gradcheck() {
    manual_seed(7);
    let opts = GradcheckOptions::default();
    for dims in [vec![1, 1], vec![3, 5], vec![2, 3, 7], vec![20, 4]] {
        let c = *dims.last().unwrap();
        let x = Tensor::randn(dims.clone(), 0.0, 1.0).requires_grad_(true);
        let w = Tensor::randn([c], 1.0, 0.3).requires_grad_(true);
        let b = Tensor::randn([c], 0.0, 0.3).requires_grad_(true);
        let r = gradcheck(|t| t[0].layer_norm(Some(&t[1]), Some(&t[2]), 1e-5), &[x.clone(), w, b], opts);
        r.unwrap_or_else(|e| panic!("layer_norm {dims:?} affine: {e}"));
        if c > 1 {
            let r = gradcheck(|t| t[0].layer_norm(None, None, 1e-5), std::slice::from_ref(&x), opts);
            r.unwrap_or_else(|e| panic!("layer_norm {dims:?}: {e}"));
        }
    }
    // A transposed (non-contiguous) input, normalized over its last dim.
    let xt = Tensor::randn([6, 3], 0.0, 1.0).requires_grad_(true);
    let w = Tensor::randn([6], 1.0, 0.3).requires_grad_(true);
    let r = gradcheck(|t| t[0].t().layer_norm(Some(&t[1]), None, 1e-5), &[xt, w], opts);
    r.unwrap_or_else(|e| panic!("layer_norm on a transposed input: {e}"));
}

#[test]
fn fused_layer_norm_equals_the_composite_form() {
    manual_seed(9);
    for dims in [vec![1, 1], vec![33, 129], vec![4, 7, 64]] {
        let c = *dims.last().unwrap();
        let x = Tensor::randn(dims.clone(), 0.5, 2.0).requires_grad_(true);
        let w = Tensor::randn([c], 1.0, 0.3).requires_grad_(true);
        let b = Tensor::randn([c], 0.0, 0.3).requires_grad_(true);
        let gout = Tensor::randn(dims.clone(), 0.0, 1.0);
        let run = |f: &dyn Fn() -> Tensor| {
            [&x, &w, &b].iter().for_each(|t| t.zero_grad());
            let y = f();
            y.mul(&gout).sum_all().backward();
            let mut out = vec![y.to_vec::<f32>()];
            out.extend([&x, &w, &b].iter().map(|t| t.grad().unwrap().to_vec::<f32>()));
            out
        };
        let fused = run(&|| x.layer_norm(Some(&w), Some(&b), 1e-5));
        let reference = run(&|| composite(&x, Some(&w), Some(&b), 1e-5));
        for (what, (a, e)) in ["y", "dx", "dw", "db"].iter().zip(fused.iter().zip(&reference)) {
            for (i, (p, q)) in a.iter().zip(e).enumerate() {
                assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{dims:?} {what}[{i}]: {p} vs {q}");
            }
        }
    }
}

#[test]
fn layer_norm_errors_name_the_shapes() {
    let msg = Tensor::zeros([2, 3]).try_layer_norm(Some(&Tensor::ones([4])), None, 1e-5).unwrap_err().to_string();
    assert!(msg.contains("layer_norm") && msg.contains("[4]") && msg.contains("[2, 3]"), "{msg}");
}
