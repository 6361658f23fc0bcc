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

/// Training-mode batch norm over dim 1 from primitive ops: the reference for
/// the fused `try_batch_norm`.
fn batch_norm_composite(x: &Tensor, w: Option<&Tensor>, b: Option<&Tensor>, eps: f32) -> Tensor {
    let dims: Vec<isize> = std::iter::once(0).chain(2..x.rank() as isize).collect();
    let mut shape = vec![1; x.rank()];
    shape[1] = x.dims()[1];
    let mean = x.mean(&dims, true);
    let var = x.var(&dims, 0, true);
    let mut y = x.sub(&mean).mul(&var.affine(1.0, eps).rsqrt());
    if let Some(w) = w {
        y = y.mul(&w.reshape(shape.clone()));
    }
    if let Some(b) = b {
        y = y.add(&b.reshape(shape));
    }
    y
}

/// The fused batch norm: gradcheck on awkward shapes (one value per image,
/// odd planes, a 2-D input), with and without γ/β, and values, gradients and
/// statistics equal to the composite's.
#[test]
fn batch_norm_gradcheck_and_composite() {
    manual_seed(8);
    let opts = GradcheckOptions { atol: 2e-2, rtol: 2e-2, ..Default::default() };
    for dims in [vec![3, 2], vec![2, 3, 1, 5], vec![4, 2, 3, 3], vec![2, 5, 7]] {
        let c = dims[1];
        let x = Tensor::randn(dims.clone(), 3.0, 2.0).requires_grad_(true);
        let w = Tensor::randn([c], 1.0, 0.3).requires_grad_(true);
        let b = Tensor::randn([c], 0.0, 0.3).requires_grad_(true);
        let r = gradcheck(
            |t| t[0].try_batch_norm(Some(&t[1]), Some(&t[2]), 1e-5).unwrap().0,
            &[x.clone(), w.clone(), b.clone()],
            opts,
        );
        r.unwrap_or_else(|e| panic!("batch_norm {dims:?}: {e}"));
        let r = gradcheck(|t| t[0].try_batch_norm(None, None, 1e-3).unwrap().0, std::slice::from_ref(&x), opts);
        r.unwrap_or_else(|e| panic!("batch_norm {dims:?} without affine: {e}"));
        // Against the composite.
        let wout = Tensor::randn(dims.clone(), 0.0, 1.0);
        let run = |fused: bool| {
            for t in [&x, &w, &b] {
                t.zero_grad();
            }
            let y = if fused {
                x.try_batch_norm(Some(&w), Some(&b), 1e-5).unwrap().0
            } else {
                batch_norm_composite(&x, Some(&w), Some(&b), 1e-5)
            };
            y.mul(&wout).sum_all().backward();
            [y, x.grad().unwrap(), w.grad().unwrap(), b.grad().unwrap()].map(|t| t.to_vec::<f32>())
        };
        let (f, p) = (run(true), run(false));
        for (i, (a, b)) in f.iter().zip(&p).enumerate() {
            for (u, v) in a.iter().zip(b) {
                assert!((u - v).abs() <= 2e-4 * (1.0 + v.abs()), "{dims:?} output/grad {i}: {u} vs {v}");
            }
        }
        let (_, mean, var) = x.try_batch_norm(None, None, 1e-5).unwrap();
        let red: Vec<isize> = std::iter::once(0).chain(2..x.rank() as isize).collect();
        assert!(mean.sub(&x.mean(&red, false)).abs().max_all().item() < 1e-5);
        assert!(var.sub(&x.var(&red, 0, false)).abs().max_all().item() < 1e-4);
    }
    let e = Tensor::zeros([2, 3, 4]).try_batch_norm(Some(&Tensor::ones([4])), None, 1e-5).unwrap_err();
    assert!(e.to_string().contains("batch_norm") && e.to_string().contains("(3,)"), "{e}");
}

/// Batch norm with a fused activation: ReLU and ReLU6 (derivative applied
/// inside the backward passes, rows shorter and longer than its 1024-element
/// blocks) and SiLU (run after it as its own op): gradcheck, and values and
/// gradients equal to the batch norm followed by the activation op, in f32
/// and f64.
#[test]
fn batch_norm_with_a_fused_activation_equals_the_two_ops() {
    use firebrand_autograd::{DType, UnaryOp};
    manual_seed(9);
    let opts = GradcheckOptions { atol: 2e-2, rtol: 2e-2, ..Default::default() };
    for act in [UnaryOp::Relu, UnaryOp::Hardtanh(0.0, 6.0), UnaryOp::Silu] {
        for dims in [vec![3, 2], vec![2, 3, 1, 5], vec![2, 2, 40, 30]] {
            let c = dims[1];
            let x = Tensor::randn(dims.clone(), 3.0, 2.0).requires_grad_(true);
            let w = Tensor::randn([c], 1.0, 0.3).requires_grad_(true);
            // A shift that puts values on both sides of ReLU6's bounds.
            let b = Tensor::randn([c], 2.0, 1.0).requires_grad_(true);
            let wout = Tensor::randn(dims.clone(), 0.0, 1.0);
            for dtype in [DType::F32, DType::F64] {
                let [x, w, b] = [&x, &w, &b].map(|t| t.detach().to_dtype(dtype).requires_grad_(true));
                let run = |fused: bool| {
                    [&x, &w, &b].iter().for_each(|t| t.zero_grad());
                    let y = if fused {
                        x.try_batch_norm_act(Some(&w), Some(&b), 1e-5, Some(act)).unwrap().0
                    } else {
                        x.try_batch_norm(Some(&w), Some(&b), 1e-5).unwrap().0.unary(act)
                    };
                    y.mul(&wout.to_dtype(dtype)).sum_all().backward();
                    [y, x.grad().unwrap(), w.grad().unwrap(), b.grad().unwrap()].map(|t| t.to_vec::<f64>())
                };
                let (f, p) = (run(true), run(false));
                for (i, (a, b)) in f.iter().zip(&p).enumerate() {
                    for (u, v) in a.iter().zip(b) {
                        assert!(
                            (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                            "{} {dtype} {dims:?} output/grad {i}: {u} vs {v}",
                            act.name()
                        );
                    }
                }
            }
            if dims.len() < 4 || dims[2] < 10 {
                // Finite differences need every pre-activation away from a kink
                // (0, and 6 for ReLU6): redraw x until that holds.
                let mut x = x.detach();
                while x
                    .try_batch_norm(Some(&w), Some(&b), 1e-5)
                    .unwrap()
                    .0
                    .to_vec::<f32>()
                    .iter()
                    .any(|z| z.abs() < 0.05 || (z - 6.0).abs() < 0.05)
                {
                    x = Tensor::randn(dims.clone(), 3.0, 2.0);
                }
                let r = gradcheck(
                    |t| t[0].try_batch_norm_act(Some(&t[1]), Some(&t[2]), 1e-5, Some(act)).unwrap().0,
                    &[x.requires_grad_(true), w.clone(), b.clone()],
                    opts,
                );
                r.unwrap_or_else(|e| panic!("batch_norm + {} {dims:?}: {e}", act.name()));
            }
        }
    }
}
