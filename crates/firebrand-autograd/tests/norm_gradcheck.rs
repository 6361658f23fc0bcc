//! The fused layer-norm op: gradcheck with and without scale and shift, on
//! odd sizes and a transposed input, and values and gradients equal to the
//! composite form built from primitive ops; RMS norm and the rotary
//! embedding of pairs likewise (gradcheck on the recorded form, the
//! one-pass inference form against the composite).

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

/// RMS norm as its definition, from primitive ops.
fn rms_composite(x: &Tensor, w: &Tensor, eps: f32) -> Tensor {
    x.mul(&x.square().mean(&[-1], true).affine(1.0, eps).rsqrt()).mul(w)
}

#[test]
fn rms_norm_gradcheck() {
    manual_seed(21);
    let opts = GradcheckOptions::default();
    for dims in [vec![1, 1], vec![3, 5], vec![2, 3, 7]] {
        let c = *dims.last().unwrap();
        let x = Tensor::randn(dims.clone(), 0.0, 1.0).requires_grad_(true);
        let w = Tensor::randn([c], 1.0, 0.3).requires_grad_(true);
        let r = gradcheck(|t| t[0].rms_norm(&t[1], 1e-5), &[x, w], opts);
        r.unwrap_or_else(|e| panic!("rms_norm {dims:?}: {e}"));
    }
    let xt = Tensor::randn([6, 3], 0.0, 1.0).requires_grad_(true);
    let w = Tensor::randn([6], 1.0, 0.3).requires_grad_(true);
    let r = gradcheck(|t| t[0].t().rms_norm(&t[1], 1e-5), &[xt, w], opts);
    r.unwrap_or_else(|e| panic!("rms_norm on a transposed input: {e}"));
}

/// The one-pass form (no graph) against the composite, on odd widths, a
/// transposed input, and a row of zeros (eps keeps it finite); NaN
/// propagates; a wrong weight is an error naming the op.
#[test]
fn fused_rms_norm_equals_the_composite_form() {
    manual_seed(22);
    for dims in [vec![1, 1], vec![3, 7], vec![2, 9], vec![4, 576], vec![2, 3, 17]] {
        let c = *dims.last().unwrap();
        let x = Tensor::randn(dims.clone(), 0.3, 2.0);
        let w = Tensor::randn([c], 1.0, 0.3);
        let want = rms_composite(&x, &w, 1e-6).to_vec::<f32>();
        let got = firebrand_autograd::with_no_grad(|| x.rms_norm(&w, 1e-6)).to_vec::<f32>();
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!((g - e).abs() <= 1e-6 * (1.0 + e.abs()), "{dims:?} at {i}: {g} vs {e}");
        }
    }
    let xt = Tensor::randn([5, 3], 0.0, 1.0).t();
    let w = Tensor::randn([5], 1.0, 0.3);
    let (got, want) = (xt.rms_norm(&w, 1e-6).to_vec::<f32>(), rms_composite(&xt, &w, 1e-6).to_vec::<f32>());
    assert!(got.iter().zip(&want).all(|(g, e)| (g - e).abs() <= 1e-6 * (1.0 + e.abs())), "{got:?} vs {want:?}");
    let zeros = Tensor::zeros([2, 4]).rms_norm(&Tensor::ones([4]), 1e-6).to_vec::<f32>();
    assert_eq!(zeros, vec![0.0; 8]);
    let nan = Tensor::from_vec(vec![1.0f32, f32::NAN, 2.0, 3.0], [2, 2]).rms_norm(&Tensor::ones([2]), 1e-6);
    let nan = nan.to_vec::<f32>();
    assert!(nan[0].is_nan() && nan[1].is_nan() && nan[2].is_finite(), "{nan:?}");
    let e = Tensor::zeros([2, 4]).try_rms_norm(&Tensor::ones([3]), 1e-6).unwrap_err().to_string();
    assert!(e.contains("rms_norm") && e.contains("(4,)"), "{e}");
}

/// The rotary embedding's composite form (the definition).
fn rope_composite(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let d = x.dims().to_vec();
    let (t, half) = (d[1], d[3] / 2);
    let (cos, sin) = (cos.reshape([1, t, 1, half]), sin.reshape([1, t, 1, half]));
    let pairs = x.reshape([d[0], d[1], d[2], half, 2]);
    let (x0, x1) = (pairs.select(-1, 0), pairs.select(-1, 1));
    let r0 = x0.mul(&cos).sub(&x1.mul(&sin));
    let r1 = x0.mul(&sin).add(&x1.mul(&cos));
    Tensor::stack(&[&r0, &r1], -1).reshape(d)
}

#[test]
fn rope_pairs_gradcheck() {
    manual_seed(23);
    let opts = GradcheckOptions::default();
    for [b, t, h, d] in [[1, 1, 1, 2], [2, 3, 2, 6]] {
        let x = Tensor::randn([b, t, h, d], 0.0, 1.0).requires_grad_(true);
        let c = Tensor::randn([t, d / 2], 0.0, 1.0).requires_grad_(true);
        let s = Tensor::randn([1, t, 1, d / 2], 0.0, 1.0).requires_grad_(true);
        let r = gradcheck(|v| v[0].rope_pairs(&v[1], &v[2]), &[x, c, s], opts);
        r.unwrap_or_else(|e| panic!("rope_pairs ({b}, {t}, {h}, {d}): {e}"));
    }
}

/// The one-pass form equals the composite bit for bit (the same roundings),
/// also on a strided view; bad shapes are errors naming the op.
#[test]
fn fused_rope_pairs_equals_the_composite_form() {
    manual_seed(24);
    for [b, t, h, d] in [[1, 1, 1, 2], [1, 1, 9, 64], [2, 5, 3, 10], [1, 17, 3, 64]] {
        let x = Tensor::randn([b, t, h, d], 0.0, 1.0);
        let angles = Tensor::randn([t, d / 2], 0.0, 3.0);
        let (c, s) = (angles.cos(), angles.sin());
        let want = rope_composite(&x, &c, &s).to_vec::<f32>();
        let got = firebrand_autograd::with_no_grad(|| x.rope_pairs(&c, &s)).to_vec::<f32>();
        assert_eq!(got, want, "({b}, {t}, {h}, {d})");
    }
    // A third of a wider tensor (a query split from a q/k/v product).
    let wide = Tensor::randn([1, 4, 3 * 8], 0.0, 1.0);
    let q = wide.narrow(2, 8, 8).reshape([1, 4, 2, 4]);
    let angles = Tensor::randn([4, 2], 0.0, 3.0);
    let (c, s) = (angles.cos(), angles.sin());
    assert_eq!(q.rope_pairs(&c, &s).to_vec::<f32>(), rope_composite(&q, &c, &s).to_vec::<f32>());
    let x = Tensor::zeros([1, 2, 1, 4]);
    let e = x.try_rope_pairs(&Tensor::zeros([2, 3]), &Tensor::zeros([2, 2])).unwrap_err().to_string();
    assert!(e.contains("rope_pairs") && e.contains("(2, 2)"), "{e}");
    let e = Tensor::zeros([1, 2, 1, 3]).try_rope_pairs(&c, &s).unwrap_err().to_string();
    assert!(e.contains("rope_pairs") && e.contains("odd"), "{e}");
}
